"""Cyclical SG-MCMC (Zhang et al. 2020) on MNIST-1D: 3 cSGHMC chains from independent initializations.

Fort et al. Appendix C (Fig. S5): are the samples of one cSG-MCMC chain as diverse in function space as
independently trained ensemble members? Each of the K = 3 members is one chain
(config.coupling.condition='no_coupling': its own init, data order and noise).

The default is cSGHMC as Zhang et al.'s reference code sets it for CIFAR-10 (cifar_csghmc.py), at MNIST-1D's
size: friction α = 0.9, i.e. momentum 1 − α = 0.1 here (their update b ← (1 − α)·b − lr·g, p ← p + b);
step size 0.5 at the start of each of 4 cosine cycles over 200 epochs (cycles of 50 epochs); weight decay
5e-4 (the Gaussian prior); batch 64; temperature 1/N, their default (noise std sqrt(2·lr·α/N²) per step, as
their sqrt(2·lr·α·temperature/datasize) with temperature = 1/datasize); Langevin noise in the last 5 epochs
of each cycle (their `(epoch % 50) + 1 > 45`: exploration β = 0.9) and 3 samples per cycle, the weights at
the ends of its last 3 epochs (their `(epoch % 50) + 1 > 47`; config.optimizer.samples_per_cycle = 3, every
epoch snapshotted: config.trajectory.every = '1ep', 200 snapshots of 3 × 78k parameters, ~190 MB).

Variants named for what they are (jaxens's earlier setting, before the paper-faithful default):
  :sghmc_m09        momentum 0.9, temperature 1 (the posterior of the N = 4000 examples), step size 0.05,
                    4 cycles of 15 epochs, noise in the last 20% of each, one sample per cycle end
  :sghmc_m09_cold   the same at temperature 1/N

Command:
  python -m jaxens.train --config=configs/mnist1d_csgmcmc.py --workdir=runs/mnist1d_csgmcmc
  python -m jaxens.train --config=configs/mnist1d_csgmcmc.py:sghmc_m09 --workdir=runs/mnist1d_sghmc_m09
  python experiments/fort_csgmcmc.py --out=results/fort_csgmcmc   # compares the samples with an SGD ensemble
Expected run time: about 2-3 min on 2 CPU cores (measured 132 s: 12,400 steps); the variants 40-70 s
(measured 62 s and 69 s, shared cores).
Expected result (measured, seed 0): the default's chains end at 0.279/0.279/0.290 test error, the 3-chain
ensemble at 0.262 (NLL 0.78); its 12 samples per chain lie within 0.277-0.297. The variants: chains
0.336/0.374/0.354, ensemble 0.316 at temperature 1; 0.315/0.342/0.347, ensemble 0.311 cold.
"""

from jaxens import config as jaxens_config

NUM_TRAIN = 4000  # MNIST-1D's training examples (config.data.val_size = 0).
VARIANTS = ("", "sghmc_m09", "sghmc_m09_cold")


def get_config(arg: str = ""):
    if arg not in VARIANTS:
        raise ValueError(
            f"configs/mnist1d_csgmcmc.py:{arg}: unknown variant; allowed: {', '.join(map(repr, VARIANTS))}"
        )
    config = jaxens_config.get_default_config()
    config.dataset = "mnist1d"
    config.model.name = "mlp"
    config.model.widths = (256, 256)
    config.ensemble.k = 3  # Chains.
    config.coupling.condition = "no_coupling"
    config.optimizer.name = "sgmcmc"
    config.optimizer.weight_decay = 5e-4
    config.optimizer.schedule = "cyclical"
    config.optimizer.cycles = 4
    if arg == "":  # Zhang et al.'s cSGHMC.
        config.optimizer.learning_rate = 0.5
        config.optimizer.momentum = 0.1  # Friction α = 0.9.
        config.optimizer.temperature = 1.0 / NUM_TRAIN
        config.optimizer.exploration = 0.9  # Noise in the last 5 of 50 epochs.
        config.optimizer.samples_per_cycle = 3
        config.train.batch_size = 64  # 62 steps per epoch: T = 12,400 steps, cycles of 3,100.
        config.train.num_epochs = 200
        config.train.steps_per_call = 62
        config.trajectory.every = "1ep"  # Includes the ends of every cycle's last 3 epochs.
    else:
        config.optimizer.learning_rate = 0.05
        config.optimizer.momentum = 0.9  # SGHMC (0 would be SGLD).
        config.optimizer.temperature = 1.0 / NUM_TRAIN if arg == "sghmc_m09_cold" else 1.0
        config.optimizer.exploration = 0.8
        config.train.batch_size = 100  # 40 steps per epoch: T = 2400 steps, cycles of 600.
        config.train.num_epochs = 60
        config.train.steps_per_call = 40
        config.trajectory.every = "15ep"  # The cycle length: one sample per cycle end.
    return config
