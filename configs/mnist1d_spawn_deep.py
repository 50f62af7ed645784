"""A CPU-sized spawn sweep where the ensembles' gains are large against the seeds' spread: six-layer MLPs on
MNIST-1D (the network of configs/mnist1d_reinit.py), children spawned at five times.

Command:
  python experiments/zamparo_coupling.py --config=configs/mnist1d_spawn_deep.py --out=results/zamparo_deep
  python -m jaxens.train --config=configs/mnist1d_spawn_deep.py --workdir=runs/mnist1d_spawn_deep   # one run
The recipe of configs/mnist1d_spawn.py (SGD, momentum 0.9, learning rate 0.05 with step decay, batch 100,
k = 4, T = 40 epochs after the spawn, coupled-to-t-reset) on a deeper, narrower MLP, 40-64×6-10 (24,074
parameters), whose independent members differ far more than the two-layer MLP's: the no-coupling
ensemble's accuracy gain over its mean member is 0.070 ± 0.007 over seeds 0-2 (10 times its spread),
against 0.031 ± 0.007 for configs/mnist1d_spawn.py.
Expected run time: about 30 s per run on 2 CPU cores (K = 20 children); zamparo_coupling.py's 12 runs took
350 s (shared with a test run).
Expected result (Zamparo et al. Fig. 1a/b; measured over seeds 0-2, experiments/README.md): under
coupled-to-t the children's accuracy gain falls from 0.043 ± 0.011 (t = 0) to 0.025 ± 0.000 (t = 10 epochs)
and their calibration worsens (MACE 0.101 → 0.146, ECE 0.066 → 0.114); under coupled-to-t-reset the trend is
inside the spread; coupled-order is indistinguishable from no coupling.
"""

from jaxens.configs import mnist1d_spawn


def get_config():
    config = mnist1d_spawn.get_config()
    config.model.widths = (64, 64, 64, 64, 64, 64)
    config.coupling.t = ("0ep", "1ep", "2ep", "5ep", "10ep")
    return config
