"""A CPU-sized spawn sweep on Fashion-MNIST: MLP children spawned at three times (coupled-to-t-reset).

Command:
  python -m jaxens.train --config=configs/fmnist_spawn.py --workdir=runs/fmnist_spawn
Needs Debian's dataset-fashion-mnist (bootstrap.sh installs it) or --config.data.dir.
The parent trains up to the last spawn time (3 epochs); the k = 3 children of each spawn time then train
together (K = 9), each for T = 10 more epochs with a restarted optimizer and step-decay schedule.
Expected run time: about 5 minutes on 2 CPU cores (measured: 5 min 13 s while tests shared the machine).
Expected result: children at ~0.10 test error; these MLPs gain little from ensembling at any spawn time
(measured, mean member → ensemble error: t=0ep 0.1041 → 0.1023, t=1ep 0.1038 → 0.1026, t=3ep 0.1014 → 0.1010).
"""

from jaxens import config as jaxens_config


def get_config():
    config = jaxens_config.get_default_config()
    config.dataset = "fashion_mnist"
    config.model.name = "mlp"
    config.model.widths = (512, 256)
    config.ensemble.k = 3
    config.coupling.condition = "coupled_to_t_reset"
    config.coupling.t = ("0ep", "1ep", "3ep")
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.05
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 5e-4
    config.optimizer.schedule = "piecewise"
    config.optimizer.boundaries = (0.5, 0.75)
    config.train.batch_size = 128
    config.train.num_epochs = 10
    config.eval.every_epochs = 5
    config.train.checkpoint_every = "5ep"
    return config
