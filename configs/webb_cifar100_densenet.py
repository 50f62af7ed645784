"""Webb et al. Tables 4-5 (§5.3): DenseNet-BC ensembles on CIFAR-100 trained with the modular loss at
λ ∈ {0, 0.5, 0.9, 1}.

Command (the config string picks the configuration of Table 4):
  python -m jaxens.train --config=configs/webb_cifar100_densenet.py:DN-100-12-4 --workdir=runs/webb_dn100_s0
  (also DN-82-8-8 and DN-64-6-16; --config.seed=1, 2 for the paper's 3 trials of initialization)
Table 4: DN-100-12-4 = 4 modules of depth 100 and growth rate 12 (3.2 M parameters in all); DN-82-8-8 = 8 of
depth 82, growth 8 (2.1 M); DN-64-6-16 = 16 of depth 64, growth 6 (1.7 M) — `jaxens.models.densenet`.
Recipe (Huang et al.'s, as Webb et al. follow it): SGD with momentum 0.9 and batch 64, learning rate 0.1
decayed ×0.1 at epochs 150 and 225 of 300, weight decay 1e-4, crop and flip augmentation, trained on the
full training set (no validation split: Table 5 reports the test error at the end). The λ groups (K = 4 ×
modules) train side by side on one shared minibatch from the same initializations; the ensemble is the mean
of the logits. Webb et al. fill a V100 with each configuration: one λ per run (--config.loss.lam="(0.5,)")
fits a smaller card.
Needs CIFAR-100 from TFDS (--config.data.tfds_dir); a GPU.
Expected run time: not measured yet (no GPU here).
Expected result (Table 5, test error at λ = 0 / 0.5 / 0.9 / 1): DN-100-12-4 17.8 / 18.8 / 20.3 / 22.1%;
DN-82-8-8 19.9 / 20.0 / 22.4 / 25.7%; DN-64-6-16 25.0 / 23.5 / 25.9 / 29.6% — joint training (λ = 1) never
best, independent training best but for the smallest modules.
"""

from jaxens import config as jaxens_config

# Table 4: name → (model, modules).
CONFIGURATIONS = {
    "DN-100-12-4": ("densenet100_12", 4),
    "DN-82-8-8": ("densenet82_8", 8),
    "DN-64-6-16": ("densenet64_6", 16),
}


def get_config(configuration: str = "DN-100-12-4"):
    if configuration not in CONFIGURATIONS:
        raise ValueError(f"config string {configuration!r}: allowed: {', '.join(CONFIGURATIONS)}")
    model, modules = CONFIGURATIONS[configuration]
    config = jaxens_config.get_default_config()
    config.dataset = "cifar100"
    config.data.augment = "crop_flip"
    config.model.name = model
    config.ensemble.k = modules
    config.ensemble.method = "mean_logit"
    config.coupling.condition = "coupled_order"
    config.loss.lam = (0.0, 0.5, 0.9, 1.0)
    config.optimizer.name = "sgd"
    config.optimizer.momentum = 0.9
    config.optimizer.learning_rate = 0.1
    config.optimizer.weight_decay = 1e-4
    config.optimizer.schedule = "piecewise"
    config.optimizer.boundaries = (150 / 300, 225 / 300)
    config.optimizer.decay_factors = (0.1, 0.1)
    config.train.batch_size = 64
    config.train.num_epochs = 300
    config.train.checkpoint_every = "5ep"
    config.eval.every_epochs = 5
    config.eval.batch_size = 500
    return config
