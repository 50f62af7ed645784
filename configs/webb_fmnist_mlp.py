"""Webb et al.'s Fashion-MNIST MLP ensembles (§5.1, Table 2): M modules of H hidden units, ~815K parameters.

Command (the config string picks the architecture, M×H):
  python -m jaxens.train --config=configs/webb_fmnist_mlp.py:256x4 --workdir=runs/webb_256x4
  python -m jaxens.train --config=configs/webb_fmnist_mlp.py:1x1024 --workdir=runs/webb_1x1024
  (also 16x64 and 64x16; --config.loss.lam="(0.0,0.5,0.9,0.95,0.99,1.0)" for the paper's full λ grid)
Table 2 with Webb et al.'s protocol (the learning rate tuned per architecture and λ on each trial's own
validation split, 5 trials):
  python experiments/webb_lambda.py --config=configs/webb_fmnist_mlp.py --learning_rates=0.005,0.01,0.02,0.05 \
      --architectures=1x1024,16x64,64x16,256x4 --seeds=0,1,2,3,4 --out=results/webb_fmnist
Recipe: SGD with momentum 0.9 at a constant learning rate, batch 100, 10,000 training examples held out for
early stopping (each trial its own: config.data.val_from_seed), no augmentation, 200 epochs as in the paper,
test error reported at the epoch of lowest validation error (summary.json: groups[*].at_best_val). The λ
groups train side by side in one program on one shared minibatch, each from the same M initializations; the
ensemble is the mean of the modules' logits (Webb's normalized geometric mean). A single network (1x1024)
trains without the modular loss. The learning rate here (0.05) is one point of the grid: the trainer's loss
is k·L_λ, so η here is Webb's L_λ at k·η (their 256×4 runs' 5.15 and 1.536 are 0.020 and 0.006 here).
Expected run time on 2 CPU cores: 256x4 (4 λ groups, K = 1,024 modules) ~50 s per epoch, about 3 h for the
200 epochs; 1x1024 ~3.5 s per epoch.
Expected result (Table 2, test error at the best validation epoch): paper 1x1024 10.2%; 256x4 at
λ = 0 / 0.95 / 1: 16.3% / 10.3% / 10.5%. Measured here with --config.train.num_epochs=30, learning rate 0.05,
one trial: 1x1024 11.6%; 256x4 at λ = 0 / 0.95 / 0.99 / 1: 16.8% / 10.8% / 11.2% / 10.8% — independent
training far behind, joint ≈ λ 0.95.
"""

from jaxens import config as jaxens_config

ARCHITECTURES = {"1x1024": (1, 1024), "16x64": (16, 64), "64x16": (64, 16), "256x4": (256, 4)}


def get_config(architecture: str = "256x4"):
    if architecture not in ARCHITECTURES:
        raise ValueError(f"config string {architecture!r}: allowed: {', '.join(ARCHITECTURES)}")
    modules, hidden = ARCHITECTURES[architecture]
    config = jaxens_config.get_default_config()
    config.dataset = "fashion_mnist"
    config.data.val_size = 10_000
    config.eval.keep_best = True  # Webb et al. analyse the early-stopped model (DIR/best/).
    config.model.name = "mlp"
    config.model.widths = (hidden,)
    config.ensemble.k = modules
    config.ensemble.method = "mean_logit"
    if modules > 1:
        config.coupling.condition = "coupled_order"
        config.loss.lam = (0.0, 0.95, 0.99, 1.0)  # Table 2 (0, 0.95, 1) and Fig. 4 (0, 0.99, 1).
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.05
    config.optimizer.momentum = 0.9
    config.optimizer.schedule = "constant"
    config.train.batch_size = 100
    config.train.num_epochs = 200  # Webb et al. (§5.1), with early stopping on the validation split.
    config.train.steps_per_call = 500
    config.train.checkpoint_every = "5ep"
    config.eval.every_epochs = 1
    config.eval.batch_size = 2000
    return config
