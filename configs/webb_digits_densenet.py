"""A CPU-sized version of Webb et al.'s Tables 4-5: DenseNet-BC ensembles trained with the modular loss at
λ ∈ {0, 0.5, 0.9, 1}, on scikit-learn's 8×8 digits (CIFAR-100 cannot be had here;
configs/webb_cifar100_densenet.py is the paper's setting).

Command:
  python -m jaxens.train --config=configs/webb_digits_densenet.py --workdir=runs/webb_digits_densenet_s0
  (--config.seed=1, 2 for the paper's 3 trials of initialization)
4 modules of DenseNet-BC depth 16, growth rate 4 (`densenet16_4`: 2 bottleneck layers a block) per λ group
(K = 16), on the digits' fixed 1,497 / 300 split; the recipe of configs/webb_cifar100_densenet.py (Huang et
al.'s: SGD with momentum 0.9, batch 64, learning rate 0.1 decayed ×0.1 at 50% and 75% of training, weight
decay 1e-4, the test error at the end, no validation split) over 30 epochs, without augmentation (8×8 digits).
Expected run time on 2 CPU cores: about 5 min per run alone, most of it compiling the 16 unrolled DenseNets
(three trials side by side: 712 s each).
Expected result (Webb et al. Table 5: joint training never best). Measured (3 trials, experiments/README.md):
ensemble test error 0.4 / 0.4 / 0.4 / 0.2% at λ = 0 / 0.5 / 0.9 / 1, all within the spread (about one of the
300 test digits): inconclusive here; the modules' mean error 1.6 / 1.2 / 2.7 / 57.7% shows joint training's
module degradation.
"""

from jaxens.configs import webb_cifar100_densenet


def get_config():
    config = webb_cifar100_densenet.get_config("DN-64-6-16")
    config.dataset = "digits"
    config.data.augment = "none"
    config.model.name = "densenet16_4"
    config.ensemble.k = 4
    config.train.num_epochs = 30
    config.train.checkpoint_every = "10ep"
    config.eval.every_epochs = 5
    config.eval.batch_size = 300
    return config
