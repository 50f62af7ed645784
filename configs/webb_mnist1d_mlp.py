"""A CPU-sized version of Webb et al.'s Table 2: MLP ensembles of M modules × H hidden units on MNIST-1D,
M·H = 256 hidden units in every architecture, each module trained with the modular loss at several λ.

Command (the config string picks the architecture, M×H):
  python -m jaxens.train --config=configs/webb_mnist1d_mlp.py:64x4 --workdir=runs/webb_mnist1d_64x4
  python experiments/webb_lambda.py --out=results/webb_lambda    # Table 2: every architecture, 3 trials, tuned
Recipe as configs/webb_fmnist_mlp.py (SGD with momentum 0.9 at a constant learning rate, batch 100, the
test error at the epoch of lowest validation error, mean-of-logits ensemble), on MNIST-1D's 4,000 training
examples with 500 held out for early stopping, 40 epochs (Webb et al.: 200). A single network (1x256) trains
without the modular loss. webb_lambda.py tunes the learning rate per architecture, trial and λ over
{0.02, 0.05, 0.1, 0.2, 0.5, 1} on each trial's own validation split (config.data.val_from_seed);
this file's 0.05 is one point of that grid.
Expected run time on 2 CPU cores: about 3 s (1x256) to 80 s (64x4) per run; the tuned Table 2, every trial, η and
λ of an architecture in one program (4 programs), 41 min.
Expected result (measured, tuned, 3 trials, test error at the best validation epoch, experiments/README.md):
1x256 38.4%; 4x64 at λ = 0 / 0.9 / 1: 34.4% / 28.5% / 36.7%; 64x4 at λ = 0 / 0.99 / 1: 55.8% / 32.4% / 38.2%
— an intermediate λ best for every architecture, beyond the trials' spread, as in Webb et al.'s Table 2.
"""

from jaxens.configs import webb_fmnist_mlp

ARCHITECTURES = {"1x256": (1, 256), "4x64": (4, 64), "16x16": (16, 16), "64x4": (64, 4)}


def get_config(architecture: str = "16x16"):
    if architecture not in ARCHITECTURES:
        raise ValueError(f"config string {architecture!r}: allowed: {', '.join(ARCHITECTURES)}")
    modules, hidden = ARCHITECTURES[architecture]
    # Webb's recipe (mean-of-logits ensemble, shared minibatches, SGD), for a single network or an ensemble.
    config = webb_fmnist_mlp.get_config("256x4" if modules > 1 else "1x1024")
    config.dataset = "mnist1d"
    config.data.val_size = 500
    config.eval.keep_best = True  # Webb et al. analyse the early-stopped model (DIR/best/).
    config.model.widths = (hidden,)
    config.ensemble.k = modules
    if modules > 1:
        config.loss.lam = (0.0, 0.5, 0.9, 0.95, 0.99, 1.0)
    config.train.num_epochs = 40
    config.train.steps_per_call = 100
    config.train.checkpoint_every = "10ep"
    config.eval.batch_size = 1000
    return config
