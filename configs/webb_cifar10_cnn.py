"""Webb et al.'s CIFAR-10 ensemble of 10 Table-3 CNNs (§5.2), trained with the modular loss at several λ.

Command:
  python -m jaxens.train --config=configs/webb_cifar10_cnn.py --workdir=runs/webb_cifar10
Recipe: 10 modules (five 3×3 convolutions, no normalization), SGD with momentum 0.9, batch 100, flip and
crop augmentation, 10,000 training examples held out for early stopping (test error at the epoch of lowest
validation error: summary.json groups[*].at_best_val), 400 epochs. The λ groups (K = 4 × 10 = 40 CNNs)
train side by side in one program on one shared minibatch; the ensemble is the mean of the logits.
Webb et al. tuned the learning rate per λ: run this config at several --config.optimizer.learning_rate values
(and --config.grid.seed="(0,1,2)" --config.data.val_from_seed=True: every trial its own split, in one
program) and pick per λ with
`jaxens.results.select(results.load(DIR), by='optimizer.learning_rate')`; 0.01 is one such value.
Needs CIFAR-10 from TFDS (--config.data.tfds_dir); a GPU.
Expected run time: not measured yet (no GPU here).
Expected result (Webb et al. Fig. 3): joint training (λ = 1) worse than λ ≈ 0.9-0.99, which beat independent
training (λ = 0).
"""

from jaxens import config as jaxens_config


def get_config():
    config = jaxens_config.get_default_config()
    config.dataset = "cifar10"
    config.data.val_size = 10_000
    config.eval.keep_best = True  # Webb et al. analyse the early-stopped model (DIR/best/).
    config.data.augment = "crop_flip"
    config.model.name = "webb_cnn"
    config.ensemble.k = 10
    config.ensemble.method = "mean_logit"
    config.coupling.condition = "coupled_order"
    config.loss.lam = (0.0, 0.9, 0.99, 1.0)
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.01
    config.optimizer.momentum = 0.9
    config.train.batch_size = 100
    config.train.num_epochs = 400
    config.train.checkpoint_every = "10ep"
    config.eval.every_epochs = 1
    return config
