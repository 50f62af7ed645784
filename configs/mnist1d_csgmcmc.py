"""Cyclical SG-MCMC (Zhang et al. 2020) on MNIST-1D: 3 cSGHMC chains from independent initializations.

Fort et al. Appendix C (Fig. S5): are the samples of one cSG-MCMC chain (the weights at the ends of its
cycles) as diverse in function space as independently trained ensemble members? Each of the K = 3
members is one chain (config.coupling.condition='no_coupling': its own init, data order and noise);
4 cycles of 15 epochs, cosine step size restarting at 0.05 (`cyclical`); the first 80% of each cycle is SGD
with momentum (exploration), the last 20% (3 epochs) adds SGHMC noise (sampling). The weights are saved
at each cycle end (config.trajectory.every = the cycle length) to workdir/trajectory/: 4 samples per
chain. Keep trajectory.every equal to the cycle length (T / cycles steps) when changing the epochs or
cycles. experiments/fort_csgmcmc.py compares the samples' diversity with an independent SGD ensemble.

Temperature: T = 1 is the Bayesian posterior of the N = 4000 training examples (noise std
sqrt(2·lr·(1 − momentum)·T/N) per step, weight decay 5e-4 as the Gaussian prior, as in Zhang et al.'s
CIFAR setup). `:cold` sets T = 1/N, the default of Zhang et al.'s reference code (the code Fort et al.
ran): noise that small makes the chains nearly cyclical SGD (snapshot ensembles).

Command:
  python -m jaxens.train --config=configs/mnist1d_csgmcmc.py --workdir=runs/mnist1d_csgmcmc
  python -m jaxens.train --config=configs/mnist1d_csgmcmc.py:cold --workdir=runs/mnist1d_csgmcmc_cold
Expected run time: about 40-70 s on 2 CPU cores (measured 62 s for T = 1, 69 s for :cold, shared cores).
Expected result: final samples a little worse than SGD members of configs/mnist1d_ensemble.py (~0.33 test
error) at T = 1, about as good with :cold; the 3-chain ensemble of final samples ~3 points better
(measured, seed 0: T = 1 chains 0.336/0.374/0.354, ensemble 0.316; :cold chains 0.315/0.342/0.347,
ensemble 0.311; samples of earlier cycles up to 0.41 at T = 1).
"""

from jaxens import config as jaxens_config

NUM_TRAIN = 4000  # MNIST-1D's training examples (config.data.val_size = 0).


def get_config(arg: str = ""):
    if arg not in ("", "cold"):
        raise ValueError(f"configs/mnist1d_csgmcmc.py:{arg}: unknown variant; allowed: '' (T = 1), 'cold' (T = 1/N)")
    config = jaxens_config.get_default_config()
    config.dataset = "mnist1d"
    config.model.name = "mlp"
    config.model.widths = (256, 256)
    config.ensemble.k = 3  # Chains.
    config.coupling.condition = "no_coupling"
    config.optimizer.name = "sgmcmc"
    config.optimizer.learning_rate = 0.05
    config.optimizer.momentum = 0.9  # SGHMC (0 would be SGLD).
    config.optimizer.weight_decay = 5e-4
    config.optimizer.schedule = "cyclical"
    config.optimizer.cycles = 4
    config.optimizer.exploration = 0.8
    config.optimizer.temperature = 1.0 / NUM_TRAIN if arg == "cold" else 1.0
    config.train.batch_size = 100  # 40 steps per epoch: T = 2400 steps, cycles of 600.
    config.train.num_epochs = 60
    config.train.steps_per_call = 40
    config.trajectory.every = "15ep"  # The cycle length: one sample per cycle end.
    return config
