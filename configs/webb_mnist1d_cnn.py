"""A CPU-sized version of Webb et al. Fig. 6: an ensemble of 10 CNN modules trained with the modular loss at
several λ, on MNIST-1D (CIFAR-10 cannot be had here; configs/webb_cifar10_cnn.py is the paper's setting).

Command (the config string picks the architecture, M×H: M modules of a 1-D CNN with two convolutions of H
channels):
  python -m jaxens.train --config=configs/webb_mnist1d_cnn.py:10x32 --workdir=runs/webb_mnist1d_cnn
  python experiments/webb_lambda.py --config=configs/webb_mnist1d_cnn.py --architectures=1x32,10x32 \\
      --learning_rates=0.05,0.1 --out=results/webb_cnn    # Fig. 6, learning rate per λ, three trials
Recipe as configs/webb_mnist1d_mlp.py (SGD with momentum 0.9 at a constant learning rate, batch 100, 500
training examples held out for early stopping, test error at the epoch of lowest validation error,
mean-of-logits ensemble), λ ∈ {0, 0.5, 0.9, 0.99, 1}, 30 epochs (evaluated every 2) instead of Webb's 400.
1x32 is the single network.
Expected run time on 2 CPU cores: about 4.5 min (10x32, 5 λ groups, K = 50 CNNs) and 10 s (1x32) per run.
Expected result (Webb et al. Fig. 6: the error falls from λ = 0, then rises sharply towards λ = 1). Measured
(3 trials, learning rate selected from {0.05, 0.1}, experiments/README.md): 10x32 at λ = 0 / 0.5 / 0.9 / 0.99
/ 1: 3.7 / 3.9 / 4.3 / 4.5 / 4.7% test error, single network 5.3% — joint training worst beyond the spread,
but no initial fall: independent training is best here.
"""

from jaxens.configs import webb_mnist1d_mlp

ARCHITECTURES = {"1x32": (1, 32), "10x32": (10, 32)}


def get_config(architecture: str = "10x32"):
    if architecture not in ARCHITECTURES:
        raise ValueError(f"config string {architecture!r}: allowed: {', '.join(ARCHITECTURES)}")
    modules, channels = ARCHITECTURES[architecture]
    config = webb_mnist1d_mlp.get_config("1x256" if modules == 1 else "4x64")
    config.model.name = "cnn1d"
    config.model.widths = (channels, channels)
    config.ensemble.k = modules
    if modules > 1:
        config.loss.lam = (0.0, 0.5, 0.9, 0.99, 1.0)
    config.train.num_epochs = 30
    config.eval.every_epochs = 2
    return config
