"""Fort et al.'s CIFAR-10 setting (§3): 5 independently initialized networks with weight snapshots every epoch,
for the trajectory, subspace, diversity–accuracy, ensemble-size, shift and radial-plane analyses.

Command (the config string picks the network: small, medium or resnet20):
  python -m jaxens.train --config=configs/fort_cifar10_cnn.py:medium --workdir=runs/fort_cifar10_medium
  python experiments/fort_diversity.py --workdir=runs/fort_cifar10_medium --out=results/fort_cifar10_medium
  python experiments/fort_radial.py --workdir=runs/fort_cifar10_medium --out=results/fort_cifar10_radial
  (add --config.eval.shifted="('cifar10_corrupted/gaussian_noise_3',)" --config.eval.ood="('svhn_cropped',)"
  for Fig. 9 on the real shifted and out-of-distribution sets, prepared in --config.data.tfds_dir)
Recipe: SmallCNN (16, 32, 32 channels) and MediumCNN (64, 128, 256, 256) with Adam at 1.6e-3 halved every
10 of 40 epochs, batch 128, dropout 0.1, no augmentation. ResNet-20 v1 as Fort et al. trained it, "the learning
rate schedule used in Keras examples" (the Keras CIFAR-10 ResNet example, resnet_v1 with depth 20): Adam at
1e-3 for 200 epochs, × 0.1, 0.01, 0.001, 0.0005 from epochs 81, 121, 161 and 181 (its `lr_schedule(epoch)`
tests epoch > 80, ... on 0-based epochs), batch 32, L2 1e-4 (Keras adds 1e-4·Σw² to the loss: a gradient
term 2e-4·w, config.optimizer.weight_decay=2e-4), 1×1 projection shortcuts where the shape changes
(config.model.shortcut='B'), random crop and flip. Where it still differs: Keras regularizes the conv
kernels only (here every parameter, BatchNorm's too), shifts images by up to 10% with nearest-pixel fill
(here crops padded by 4 zeros), and subtracts the per-pixel mean (here per-channel standardization).
5,000 training images are held out (the samplers' 0.65 validation-accuracy threshold).
Needs CIFAR-10 from TFDS; an accelerator. The trajectory of 41 snapshots × 5 MediumCNNs (0.96 M parameters each) takes ~0.8 GB.
Expected run time: not measured yet (no GPU here).
Expected result (Fort et al. Fig. 6): test accuracy about 64% (small), 71% (medium), 90% (resnet20); the
independent optima more diverse than every subspace sample of equal accuracy.
"""

from jaxens import config as jaxens_config

NETWORKS = {"small": "fort_small_cnn", "medium": "fort_medium_cnn", "resnet20": "resnet20"}


def get_config(network: str = "medium"):
    if network not in NETWORKS:
        raise ValueError(f"config string {network!r}: allowed: {', '.join(NETWORKS)}")
    config = jaxens_config.get_default_config()
    config.dataset = "cifar10"
    config.data.val_size = 5000
    config.model.name = NETWORKS[network]
    config.ensemble.k = 5
    config.optimizer.name = "adam"
    config.optimizer.schedule = "piecewise"
    config.train.batch_size = 128
    config.trajectory.every = "1ep"
    if network == "resnet20":
        config.data.augment = "crop_flip"
        config.model.shortcut = "B"
        config.optimizer.learning_rate = 1e-3
        config.optimizer.boundaries = (81 / 200, 121 / 200, 161 / 200, 181 / 200)
        config.optimizer.decay_factors = (0.1, 0.1, 0.1, 0.5)
        config.optimizer.weight_decay = 2e-4
        config.train.batch_size = 32
        config.train.num_epochs = 200
        config.train.checkpoint_every = "10ep"
        config.eval.every_epochs = 10
        config.trajectory.every = "5ep"
    else:
        config.data.augment = "none"
        config.optimizer.learning_rate = 1.6e-3
        config.optimizer.boundaries = (0.25, 0.5, 0.75)
        config.optimizer.decay_factor = 0.5
        config.train.num_epochs = 40
        config.train.checkpoint_every = "5ep"
        config.eval.every_epochs = 5
    return config
