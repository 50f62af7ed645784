"""Fort et al. Fig. 7b and 10 at the paper's scale: ResNet50v2 ensembles on ImageNet, evaluated on ImageNet-C.

Command:
  python -m jaxens.train --config=configs/fort_imagenet_resnet50.py --workdir=runs/fort_imagenet
  python experiments/fort_diversity.py --workdir=runs/fort_imagenet --out=results/fort_imagenet
Recipe (Fort et al. §3): "ImageNet is trained with ResNet50v2 and momentum optimizer (0.9 momentum), with batch
size 256 and 160 epochs. The learning rate starts from 0.15 and decays to (0.015, 0.0015) at epochs (80,
120)"; 224×224 center crops with random crops and flips; weight decay 1e-4 (He et al.'s). k = 4 independent
members snapshotted every 10 epochs (Fig. 7b's plane; the paper skips the PCA subspace on ImageNet, so run
fort_diversity.py with its random, dropout and diagonal samplers as wanted). Fig. 10: the test (ImageNet
validation) split and ImageNet-C's gaussian_noise at intensities 1-5 as shifted sets (each 50,000 images;
add other corruptions of `jaxens.data.registry.IMAGENET_CORRUPTIONS` as host memory allows).
Needs ImageNet and ImageNet-C prepared in TFDS (manual download; --config.data.tfds_dir); GPUs or a TPU.
Expected run time: not measured yet (no accelerator here).
Expected result (Fort et al. Fig. 7b, 10): independent optima more diverse than subspace samples at equal
accuracy, the separation larger than on CIFAR; random subspace the best subspace method, complementary to
ensembling, under every corruption intensity.
"""

from jaxens import config as jaxens_config


def get_config():
    config = jaxens_config.get_default_config()
    config.dataset = "imagenet2012"
    config.data.image_size = 224
    config.data.augment = "crop_flip"
    config.data.val_size = 10_000
    config.model.name = "resnet50_v2"
    config.ensemble.k = 4
    config.optimizer.name = "sgd"
    config.optimizer.momentum = 0.9
    config.optimizer.learning_rate = 0.15
    config.optimizer.weight_decay = 1e-4
    config.optimizer.schedule = "piecewise"
    config.optimizer.boundaries = (80 / 160, 120 / 160)
    config.optimizer.decay_factors = (0.1, 0.1)  # 0.15 → 0.015 → 0.0015.
    config.train.batch_size = 256
    config.train.num_epochs = 160
    config.train.checkpoint_every = "1ep"
    config.trajectory.every = "10ep"
    config.eval.every_epochs = 5
    config.eval.batch_size = 500
    config.eval.shifted = tuple(f"imagenet2012_corrupted/gaussian_noise_{s}" for s in range(1, 6))
    return config
