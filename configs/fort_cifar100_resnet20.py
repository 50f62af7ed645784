"""Fort et al. Fig. 7a and S6 at the paper's scale: ResNet20v1 ensembles on CIFAR-100, snapshotted for the
diversity–accuracy plane.

Command:
  python -m jaxens.train --config=configs/fort_cifar100_resnet20.py --workdir=runs/fort_cifar100
  python experiments/fort_diversity.py --workdir=runs/fort_cifar100 --out=results/fort_cifar100
Recipe (Fort et al. §3): "the same ResNet20v1 as above with Adam optimizer, batch size 128 and total epochs of
200. The learning rate starts from 1e-3 and decays to (1e-4, 5e-5, 1e-5, 5e-7) at epochs (100, 130, 160,
190)": factors 0.1, 0.5, 0.2, 0.05 at those epochs; crop and flip augmentation; ResNet20v1 with 1×1
projection shortcuts and L2 2e-4 as in configs/fort_cifar10_cnn.py:resnet20. k = 5 independent members
(the red stars of Fig. 7a), each snapshotted every 5 epochs (the trajectory the subspace samplers are fitted
to); 5,000 training examples held out (subspace samples are accepted on validation accuracy, §5).
fort_diversity.py reports Fig. 7a's plane and Fig. S6's fitted exponent e (the paper's fit: e = 0.22).
Needs CIFAR-100 from TFDS (--config.data.tfds_dir); a GPU.
Expected run time: not measured yet (no GPU here).
Expected result (Fort et al. Fig. 7a): independent optima far more diverse than every subspace sample of
equal accuracy; the family's best exponent e well below 1.
"""

from jaxens.configs import fort_cifar10_cnn


def get_config():
    config = fort_cifar10_cnn.get_config("resnet20")
    config.dataset = "cifar100"
    config.train.batch_size = 128
    config.optimizer.learning_rate = 1e-3
    config.optimizer.boundaries = (100 / 200, 130 / 200, 160 / 200, 190 / 200)
    config.optimizer.decay_factors = (0.1, 0.5, 0.2, 0.05)  # 1e-3 → 1e-4 → 5e-5 → 1e-5 → 5e-7.
    return config
