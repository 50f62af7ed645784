"""Fort et al.'s setup on Fashion-MNIST: 5 independently initialized MLPs with weight snapshots every epoch.

The training recipe of Fort et al. §3 (Adam, batch 128, dropout 0.1, learning rate 1.6e-3 halved at
regular intervals) on a 784-256-256-10 MLP, shortened to 20 epochs (halved every 5). Every epoch's weights
of all members are kept (config.trajectory) for the trajectory, subspace and diversity–accuracy analyses of
experiments/fort_diversity.py; 5000 training images are held out for the samplers' validation threshold.

Command:
  python -m jaxens.train --config=configs/fort_fmnist_mlp.py --workdir=runs/fort_fmnist
  python experiments/fort_diversity.py --workdir=runs/fort_fmnist --out=results/fort_fmnist
Needs Debian's dataset-fashion-mnist (bootstrap.sh installs it) or --config.data.dir.
Expected run time: about 3 minutes of training on 2 CPU cores (measured: 2 min 41 s),
then about 3 minutes for the analysis (measured: 2 min 35 s); the trajectory takes 103 MB of disk.
Expected result: members at ~0.10 test error, the ensemble about half a point lower (measured: members
0.0999-0.1036, ensemble 0.0959, ensemble NLL 0.288 against ~0.33 for members).
"""

from jaxens import config as jaxens_config


def get_config():
    config = jaxens_config.get_default_config()
    config.dataset = "fashion_mnist"
    config.data.val_size = 5000
    config.model.name = "mlp"
    config.model.widths = (256, 256)
    config.model.dropout = 0.1
    config.ensemble.k = 5
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1.6e-3
    config.optimizer.schedule = "piecewise"
    config.optimizer.boundaries = (0.25, 0.5, 0.75)
    config.optimizer.decay_factor = 0.5
    config.train.batch_size = 128
    config.train.num_epochs = 20
    config.train.checkpoint_every = "5ep"
    config.eval.every_epochs = 5
    config.trajectory.every = "1ep"
    return config
