"""A CPU-sized spawn sweep: MLPs on MNIST-1D, children spawned at four times (coupled-to-t-reset).

Command:
  python -m jaxens.train --config=configs/mnist1d_spawn.py --workdir=runs/mnist1d_spawn
The parent trains up to the last spawn time (10 epochs); the k = 4 children of each spawn time then
train together (K = 16), each for T = 40 more epochs with a restarted optimizer and step-decay schedule.
Expected run time: about 40 s on 2 CPU cores (measured: 37-46 s).
Expected result (Zamparo et al.'s trend): the longer the coupling, the less the children's ensemble gains.
Measured (children's mean member error → ensemble error, ensemble NLL):
  t=0ep 0.319 → 0.313, 1.035;  t=2ep 0.310 → 0.301, 1.071;  t=5ep 0.314 → 0.311, 1.120;  t=10ep 0.316 → 0.310, 1.184;
  against --config.coupling.condition=no_coupling: 0.332 → 0.293, 0.899 (coupled_order: 0.332 → 0.301, 0.901).
"""

from jaxens import config as jaxens_config


def get_config():
    config = jaxens_config.get_default_config()
    config.dataset = "mnist1d"
    config.model.name = "mlp"
    config.model.widths = (256, 256)
    config.ensemble.k = 4
    config.coupling.condition = "coupled_to_t_reset"
    config.coupling.t = ("0ep", "2ep", "5ep", "10ep")
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.05
    config.optimizer.momentum = 0.9
    config.optimizer.schedule = "piecewise"
    config.optimizer.boundaries = (0.5, 0.75)
    config.train.batch_size = 100
    config.train.num_epochs = 40
    config.train.steps_per_call = 40
    config.eval.every_epochs = 10
    config.train.checkpoint_every = "10ep"
    return config
