"""A CPU-sized layer re-initialization setting (Zamparo et al. §3): six-layer MLPs on MNIST-1D.

Command:
  python experiments/zamparo_reinit.py --config=configs/mnist1d_reinit.py --out=results/zamparo_reinit
  python -m jaxens.train --config=configs/mnist1d_reinit.py --workdir=runs/mnist1d_reinit \
      --config.coupling.reinit_fraction=0.3 --config.coupling.reinit_side=low   # one run
A parent trains 5 epochs; its k = 4 children restart optimizer and step-decay schedule and train 40 more
(coupled-to-t-reset). Six hidden layers of 64 units (24,074 parameters, no hidden layer above 18% of them)
give re-initialization fractions a fine grain: whole layers (kernel and bias) are re-drawn, from the input
side ('low') or the output side ('high'), until the fraction of the parameter count is covered.
Expected run time: about 10-15 s per run on 2 CPU cores.
Expected result (Zamparo et al. Fig. 1i, 3; measured over seeds 0-2, experiments/README.md): re-drawing the
input side restores the children's diversity, the error barrier between them and the ensemble's accuracy gain
at once (the first layer, 10.9% of the parameters: members' symmetric KL 1.94 → 2.60, barrier 0.02 → 0.48,
gain 0.037 → 0.069, the no-coupling level 0.070), the output side only gradually (20%: 1.99, 0.07, 0.040);
the ensemble error stays at 0.27-0.29 either way (no coupling: 0.265).
"""

from jaxens.configs import mnist1d_spawn


def get_config():
    config = mnist1d_spawn.get_config()  # Its recipe: MNIST-1D, k = 4, coupled-to-t-reset, SGD, 40 epochs.
    config.model.widths = (64, 64, 64, 64, 64, 64)
    config.coupling.t = ("5ep",)
    return config
