"""Optimizers and learning-rate schedules from the config, built with optax.

Besides the usual optimizers this module implements cyclical stochastic-gradient MCMC (cSG-MCMC, Zhang et
al., ICLR 2020, "Cyclical Stochastic Gradient MCMC for Bayesian Deep Learning"): the `cyclical` step-size
schedule (also usable with plain SGD: cyclical SGD / snapshot ensembles) and the `sgmcmc` optimizer, whose
sampling steps add Langevin noise. Its noise key is an extra argument of `update` (`noise_key=`), which
`optax.chain` forwards; every optimizer built here accepts it (the others ignore it).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

PyTree = Any


# --- The cyclical schedule (Zhang et al. 2020, eq. 1) ----------------------------------------------------


def cycle_length(total_steps: int, cycles: int) -> int:
    """⌈K/M⌉: the steps of one cycle when `total_steps` K steps are split into `cycles` M cycles.

    Raises:
      ValueError: unless 1 <= cycles <= total_steps.
    """
    if isinstance(cycles, bool) or not isinstance(cycles, int) or not 1 <= cycles <= total_steps:
        raise ValueError(f"config.optimizer.cycles={cycles!r}: must be an integer in [1, total steps = {total_steps}]")
    return -(-total_steps // cycles)


def cycle_proportion(step: jax.Array, total_steps: int, cycles: int) -> jax.Array:
    """r(k) = mod(k, ⌈K/M⌉) / ⌈K/M⌉ ∈ [0, 1): how far step k (0-based, the optimizer's count) is into its cycle."""
    length = cycle_length(total_steps, cycles)
    return jnp.mod(step, length) / length


def cyclical_schedule(init_value: float, total_steps: int, cycles: int) -> optax.Schedule:
    """Zhang et al.'s cyclical cosine step size (eq. 1): α_k = (α_0/2)·[cos(π·r(k)) + 1].

    r(k) = mod(k, ⌈K/M⌉)/⌈K/M⌉ (`cycle_proportion`): every cycle restarts at α_0 and decays towards 0 (its
    last step has α_0/2·[cos(π(L−1)/L) + 1], L = ⌈K/M⌉). With K divisible by M there are exactly M cycles;
    otherwise the last one is cut short at K (see `cycle_ends`).

    Args:
      init_value: α_0.
      total_steps: K.
      cycles: M, in [1, K].
    """
    cycle_length(total_steps, cycles)  # Checks the arguments now, not at the first step.

    def schedule(count):
        r = cycle_proportion(count, total_steps, cycles)
        return 0.5 * init_value * (jnp.cos(jnp.pi * r) + 1.0)

    return schedule


def first_sampling_offset(total_steps: int, cycles: int, exploration: float) -> int:
    """The smallest offset j = mod(k, L) into a cycle with j/L >= β; steps with mod(k, L) >= j sample.

    Decided in float64 exactly as `j / L >= exploration` reads, so a hand computation of r(k) >= β agrees
    at the boundary. Returns L (no step of a cycle samples) when β > (L − 1)/L: cycles too short for β.
    """
    length = cycle_length(total_steps, cycles)
    if not 0 <= exploration < 1:
        raise ValueError(f"config.optimizer.exploration={exploration!r}: must lie in [0, 1)")
    j = max(0, math.ceil(exploration * length) - 1)
    while j < length and not j / length >= exploration:
        j += 1
    return j


def is_sampling_step(step: jax.Array, total_steps: int, cycles: int, exploration: float) -> jax.Array:
    """Whether optimizer step k (0-based) is a sampling step of cSG-MCMC: r(k) >= β (else exploration).

    Args:
      step: k, an integer array of any shape.
      total_steps, cycles: K and M of the cyclical schedule.
      exploration: β in [0, 1), the exploration share of each cycle.

    Returns:
      A boolean array shaped like `step`.
    """
    length = cycle_length(total_steps, cycles)
    return jnp.mod(step, length) >= first_sampling_offset(total_steps, cycles, exploration)


def cycle_ends(total_steps: int, cycles: int) -> tuple[int, ...]:
    """The steps at which a cycle ends: L, 2L, … ≤ K (L = ⌈K/M⌉), the cSG-MCMC sample times.

    A member's weights after s updates (its `state.step == s`) are a sample when s is in this tuple: the last
    update of the cycle used its smallest step size, the next one restarts at α_0. When L does not divide K
    the cut-short last cycle never reaches its small step sizes and gives no sample, so there may be fewer
    than M ends (e.g. K = 10, M = 4: L = 3, ends (3, 6, 9)).
    """
    length = cycle_length(total_steps, cycles)
    return tuple(range(length, total_steps + 1, length))


def sample_steps(total_steps: int, cycles: int, per_cycle: int = 1, spacing: int = 1) -> tuple[int, ...]:
    """The cSG-MCMC sample times: in every cycle (`cycle_ends`) the weights after its last update and after
    the `per_cycle` − 1 updates `spacing`, 2·`spacing`, ... steps before it. Zhang et al. keep the ends of
    the last 3 epochs of each cycle (per_cycle = 3, spacing = the steps per epoch).

    Raises:
      ValueError: the samples of one cycle would reach into the cycle before it.
    """
    length = cycle_length(total_steps, cycles)
    if per_cycle < 1 or (per_cycle - 1) * spacing >= length:
        raise ValueError(
            f"config.optimizer.samples_per_cycle={per_cycle}: {per_cycle} samples {spacing} steps apart do not fit "
            f"in a cycle of {length} steps"
        )
    return tuple(end - j * spacing for end in cycle_ends(total_steps, cycles) for j in range(per_cycle - 1, -1, -1))


def make_schedule(c: ml_collections.ConfigDict, total_steps: int, learning_rate=None) -> optax.Schedule:
    """The learning rate as a function of the optimizer's own step count.

    `constant`; `cosine` decay to 0 over `total_steps`; `piecewise`: multiplied by `decay_factor` (or by
    `decay_factors[i]`) at each of `boundaries` (fractions of `total_steps`), e.g. the ResNet step decay ×0.1
    at 50% and 75%;
    `cyclical`: `cycles` cosine cycles over `total_steps` (`cyclical_schedule`, Zhang et al. 2020 eq. 1).

    `learning_rate` (a float or a traced scalar) replaces `c.learning_rate` as the schedule's peak.
    """
    lr = c.learning_rate if learning_rate is None else learning_rate
    if c.schedule == "constant":
        return optax.constant_schedule(lr)
    if c.schedule == "cosine":
        return optax.cosine_decay_schedule(lr, decay_steps=total_steps)
    if c.schedule == "piecewise":
        factors = tuple(c.decay_factors) or (c.decay_factor,) * len(c.boundaries)
        return optax.piecewise_constant_schedule(lr, {int(b * total_steps): f for b, f in zip(c.boundaries, factors)})
    if c.schedule == "cyclical":
        return cyclical_schedule(lr, total_steps, c.cycles)
    raise ValueError(f"config.optimizer.schedule={c.schedule!r}: allowed: constant, cosine, piecewise, cyclical")


# --- SG-MCMC: SGLD and SGHMC steps with a sampling/exploration switch ----------------------------------


class SGMCMCState(NamedTuple):
    """State of `sgmcmc`.

    Attributes:
      count: [] int32, the updates taken (k of the step-size schedule and of the sampling switch).
      velocity: the SGHMC buffer b, shaped like the parameters; `optax.EmptyState()` for SGLD (momentum 0).
    """

    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count; the name follows optax's states
    velocity: PyTree


def langevin_noise(noise_key: jax.Array, params: PyTree) -> PyTree:
    """ξ ~ N(0, I) shaped like `params`: leaf i (in `jax.tree.leaves` order) draws from split(key, n)[i].

    The derivation is a contract (tests re-derive it).
    """
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(noise_key, len(leaves))
    return jax.tree.unflatten(treedef, [jax.random.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)])


def sgmcmc(
    step_size: optax.ScalarOrSchedule,
    num_train: int,
    *,
    temperature: float = 1.0,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    sampling: Callable[[jax.Array], jax.Array] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Stochastic-gradient MCMC with Zhang et al.'s (2020) exploration and sampling stages.

    The trainer's loss L̄ is the MEAN loss over a minibatch, so the potential of the posterior over N
    training examples is U(θ) = N·L̄(θ) + (wd·N/2)‖θ‖² (a Gaussian prior; the weight decay term wd·θ joins the
    gradient as in plain SGD). Written per data point, as in Zhang et al.'s reference implementation, with
    g = ∇L̄(θ) + wd·θ and α_k = `step_size(k)`:

    - SGLD (momentum m = 0), Welling & Teh 2011:
        θ ← θ − α_k g + [sampling] sqrt(2 α_k T / N) ξ,  ξ ~ N(0, I)
      i.e. SGLD on U with step α_k / N: θ ← θ − (α_k/N) ∇U + sqrt(2 (α_k/N) T) ξ.
    - SGHMC (m > 0), Chen et al. 2014, with friction 1 − m:
        b ← m b − α_k g + [sampling] sqrt(2 α_k (1 − m) T / N) ξ,  θ ← θ + b.

    `sampling(k)` says whether step k is a sampling step; otherwise it is an exploration step, which adds
    NO noise (plain SGD / SGD with momentum, bit for bit the same update without the noise term). This
    follows the paper (Zhang et al. 2020, Alg. 1: r(k) < β → SGD, else SG-MCMC); a "Langevin noise in the
    exploration stage" reading is the reverse of it. Temperature T = 1 samples the posterior; T < 1 sharpens
    it ("cold" posterior); T = 0 never adds noise (then no key is needed).

    The samples of cSG-MCMC are the weights at the end of each cycle (`cycle_ends`).

    Args:
      step_size: α_k, a float or a schedule of the count (e.g. `cyclical_schedule`).
      num_train: N, the training-set size (scales the noise).
      temperature: T >= 0.
      momentum: m in [0, 1); 0 gives SGLD, otherwise SGHMC.
      weight_decay: wd >= 0, the Gaussian prior's precision per data point.
      sampling: k -> bool array, the sampling switch; None: every step samples (plain SGLD/SGHMC).

    Returns:
      A transform whose `update(grads, state, params, *, noise_key=None)` returns the parameter increment
      (to add with `optax.apply_updates`). `noise_key` (a raw uint32 key [2]) draws ξ via `langevin_noise`;
      it is required when temperature > 0.
    """
    if isinstance(num_train, bool) or not isinstance(num_train, int) or num_train < 1:
        raise ValueError(f"num_train={num_train!r}: the training-set size N must be a positive integer")
    if not temperature >= 0:
        raise ValueError(f"config.optimizer.temperature={temperature!r}: must be >= 0")
    if not 0 <= momentum < 1:
        raise ValueError(f"config.optimizer.momentum={momentum!r}: sgmcmc needs momentum in [0, 1)")
    if not weight_decay >= 0:
        raise ValueError(f"config.optimizer.weight_decay={weight_decay!r}: must be >= 0")
    schedule = step_size if callable(step_size) else optax.constant_schedule(step_size)
    noise_factor = 2.0 * temperature * (1.0 - momentum) / num_train  # noise std = sqrt(α_k · noise_factor)

    def init_fn(params):
        velocity = jax.tree.map(jnp.zeros_like, params) if momentum else optax.EmptyState()
        return SGMCMCState(count=jnp.zeros([], jnp.int32), velocity=velocity)

    def update_fn(grads, state, params=None, *, noise_key=None, **extra_args):
        del extra_args  # Other transforms' extra arguments.
        if params is None:
            raise ValueError("sgmcmc: update needs params (for the weight decay and the update's shapes)")
        alpha = schedule(state.count)
        if weight_decay:
            grads = jax.tree.map(lambda g, p: g + weight_decay * p, grads, params)
        if momentum:
            steps = jax.tree.map(lambda b, g: momentum * b - alpha * g, state.velocity, grads)
        else:
            steps = jax.tree.map(lambda g: -alpha * g, grads)
        if temperature:
            if noise_key is None:
                raise ValueError("sgmcmc: update(..., noise_key=key) is required when config.optimizer.temperature > 0")
            noisy = sampling is None or sampling(state.count)
            std = jnp.sqrt(alpha * noise_factor)
            xi = langevin_noise(noise_key, params)
            steps = jax.tree.map(lambda s, x: jnp.where(noisy, s + std * x, s), steps, xi)
        velocity = steps if momentum else state.velocity
        return steps, SGMCMCState(count=optax.safe_increment(state.count), velocity=velocity)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def make_optimizer(
    c: ml_collections.ConfigDict, total_steps: int, num_train: int | None = None, per_member: tuple[str, ...] = ()
) -> optax.GradientTransformationExtraArgs:
    """One member's optimizer. Its state (momentum, schedule count) lives on the member axis.

    Every optimizer returned accepts `update(..., noise_key=key)`; only `sgmcmc` reads it.

    Args:
      c: `config.optimizer`.
      total_steps: steps the schedule spans.
      num_train: N, the number of training examples the loss averages over (after any validation
        hold-out, `Dataset.num_train`). Required by `sgmcmc`, whose noise scales with 1/N.
      per_member: hyperparameters ('learning_rate', 'weight_decay', 'momentum'; sgd, adam, adamw) held in the
        optimizer's state (`optax.inject_hyperparams`) instead of fixed, so that each member of a stacked
        state has its own (`set_hyperparameters`; config.grid). A weight decay or momentum held so is applied
        even where a member's value is 0, which adds exact zeros.

    Raises:
      ValueError: an unknown name or schedule, or `sgmcmc` without `num_train` (or with `per_member`).
    """
    if per_member:
        if c.name == "sgmcmc":
            raise ValueError("config.grid: sgmcmc's hyperparameters cannot vary per member; allowed: sgd, adam, adamw")
        initial = {name: float(c[name]) for name in per_member}

        def build(learning_rate=None, weight_decay=None, momentum=None):  # inject_hyperparams reads the names.
            held = dict(learning_rate=learning_rate, weight_decay=weight_decay, momentum=momentum)
            return _optimizer(c, total_steps, num_train, **{n: v for n, v in held.items() if v is not None})

        return optax.inject_hyperparams(build)(**initial)
    return _optimizer(c, total_steps, num_train)


def _optimizer(c, total_steps: int, num_train: int | None, **values):
    """`make_optimizer` with `values` (traced scalars held per member) in place of c's learning_rate,
    weight_decay or momentum; a decay or momentum held so keeps its transform even at 0."""
    lr = make_schedule(c, total_steps, values.get("learning_rate"))
    weight_decay, momentum = values.get("weight_decay", c.weight_decay), values.get("momentum", c.momentum)
    if c.name == "adamw":
        return optax.adamw(lr, weight_decay=weight_decay)
    decay = optax.add_decayed_weights(weight_decay) if "weight_decay" in values or weight_decay else optax.identity()
    if c.name == "sgd":
        trace = momentum if "momentum" in values else (c.momentum or None)
        return optax.chain(decay, optax.sgd(lr, momentum=trace, nesterov=c.nesterov))
    if c.name == "adam":
        return optax.chain(decay, optax.adam(lr))
    if c.name == "sgmcmc":
        if num_train is None:
            raise ValueError(
                "config.optimizer.name='sgmcmc': make_optimizer needs num_train (the training-set size N, "
                "which scales the Langevin noise): make_optimizer(c, total_steps, num_train=dataset.num_train)"
            )
        sampling = functools.partial(
            is_sampling_step, total_steps=total_steps, cycles=c.cycles, exploration=c.exploration
        )
        return sgmcmc(
            lr,
            num_train,
            temperature=c.temperature,
            momentum=c.momentum,
            weight_decay=c.weight_decay,
            sampling=sampling,
        )
    raise ValueError(f"config.optimizer.name={c.name!r}: allowed: sgd, adam, adamw, sgmcmc")


def set_hyperparameters(opt_state, values: dict[str, Any] | None):
    """The stacked optimizer state `opt_state` (leaves [K, ...]) of a `make_optimizer(..., per_member=...)`
    with each member's hyperparameters `values` ({name: [K]}); without them, as it is."""
    if not values:
        return opt_state
    held = {name: jnp.asarray(v, opt_state.hyperparams[name].dtype) for name, v in values.items()}
    return opt_state._replace(hyperparams={**opt_state.hyperparams, **held})


def hyperparameters(opt_state) -> dict | None:
    """The per-member hyperparameters an optimizer state holds ({name: [K]}), or None for a fixed optimizer."""
    return getattr(opt_state, "hyperparams", None)
