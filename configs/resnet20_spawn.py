"""Zamparo et al.'s main setting: ResNet-20 on CIFAR-10, children spawned from one parent (coupled-to-t-reset).

Command:
  python -m jaxens.train --config=configs/resnet20_spawn.py --workdir=runs/resnet20_spawn
  # the coupled-to-t baseline, spawning from the same parent without retraining it:
  python -m jaxens.train --config=configs/resnet20_spawn.py --workdir=runs/resnet20_spawn_noreset \
      --config.coupling.condition=coupled_to_t --config.coupling.parent_dir=runs/resnet20_spawn
Recipe (He et al.'s CIFAR ResNet): SGD with momentum 0.9, lr 0.1 divided by 10 at 50% and 75% of training,
weight decay 1e-4, batch 128, random crop (4-pixel padding) and horizontal flip; 160 epochs (T = 62,400 steps).
The parent trains once up to the last spawn time; the k = 4 children of each of the 6 spawn times then
train together (K = 24 members), each for T more steps with a restarted optimizer and schedule.
Needs CIFAR-10 from TFDS (prepared in --config.data.tfds_dir, or downloadable); without it the run stops
at once with the data layer's message. On a CPU-only machine try --config.dataset=fashion_mnist (slow:
ResNet-20 trains at ~110 images/s on 2 cores), or configs/mnist1d_spawn.py.
Expected run time: not measured yet on a GPU.
Expected result (Zamparo et al. Fig. 1b): the children's ensemble error grows with the spawn time t,
while each child's own error stays about that of an independently trained ResNet-20 (~8%).
"""

from jaxens import config as jaxens_config


def get_config():
    config = jaxens_config.get_default_config()
    config.dataset = "cifar10"
    config.data.augment = "crop_flip"
    config.model.name = "resnet20"
    config.ensemble.k = 4
    config.coupling.condition = "coupled_to_t_reset"
    config.coupling.t = ("0ep", "1ep", "2ep", "5ep", "10ep", "20ep")
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.1
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 1e-4
    config.optimizer.schedule = "piecewise"
    config.optimizer.boundaries = (0.5, 0.75)
    config.optimizer.decay_factor = 0.1
    config.train.batch_size = 128
    config.train.num_epochs = 160
    config.train.checkpoint_every = "5ep"
    config.eval.every_epochs = 5
    return config
