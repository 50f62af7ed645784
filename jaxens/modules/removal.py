"""Robustness to module removal (Webb et al. §4.1 "Robustness", Fig. 4): `removal_curve`."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxens.metrics import classification
from jaxens.modules._common import (
    _check_count,
    _check_members_labels,
    _check_method,
    _combined_log_probs,
    _concrete,
    _map_subsets,
    _member_values,
)

__all__ = ["RemovalCurve", "removal_curve"]


class RemovalCurve(NamedTuple):
    """Ensemble error after dropping modules at random (`removal_curve`); R = len(num_removed), T trials.

    Attributes:
      num_removed: [R] int32, how many modules were dropped.
      error_mean: [R] ensemble error of the remaining M − n modules, mean over the T random draws.
      error_std: [R] population standard deviation (ddof = 0) of that error over the T draws.
      errors: [R, T] the error of every draw.
      kept: [R, T, M] bool, which modules each draw kept (exactly M − n per row; nested over n, see
        `removal_curve`).
    """

    num_removed: jax.Array
    error_mean: jax.Array
    error_std: jax.Array
    errors: jax.Array
    kept: jax.Array


@functools.partial(jax.jit, static_argnames=("num_trials", "num_modules"))
def _keep_masks(key: jax.Array, num_removed: jax.Array, num_trials: int, num_modules: int) -> jax.Array:
    """[R, T, M] masks: draw t keeps all but the first n modules of the t-th random order of the modules.

    Each of the T orders ranks the modules by 32 random bits each (a tie, probability about M²/2³³ per order,
    is broken by module index), so the n removed modules are a uniformly random n-subset for every n. One
    random-bits call: `jax.random.permutation` sorts several rounds of bits and compiles slowly on CPU.
    Jitted apart from the errors, so that one compilation serves every method and set of logits.
    """
    bits = jax.random.bits(key, (num_trials, num_modules), jnp.uint32)  # [T, M]
    rank = jnp.argsort(jnp.argsort(bits, axis=-1), axis=-1)  # [T, M] position of each module in order t
    return rank[None, :, :] >= num_removed[:, None, None]  # [R, T, M]


@functools.partial(jax.jit, static_argnames=("method",))
def _removal_curve(member_logits, labels, num_removed, kept, method) -> RemovalCurve:
    num_modules = member_logits.shape[0]
    weights = kept / jnp.sum(kept, axis=-1, keepdims=True)  # [R, T, M], each row sums to 1
    values = _member_values(member_logits, method)  # [M, N, C]

    def subset_error(w):  # [M] → []
        return classification.error(_combined_log_probs(w, values, method), labels)

    errors = _map_subsets(subset_error, weights.reshape(-1, num_modules), values)  # [R·T]
    errors = errors.reshape(kept.shape[:2])  # [R, T]
    return RemovalCurve(
        num_removed=num_removed,
        error_mean=jnp.mean(errors, axis=1),
        error_std=jnp.std(errors, axis=1),
        errors=errors,
        kept=kept,
    )


def removal_curve(
    member_logits: jax.Array,
    labels: jax.Array,
    num_removed,
    key: jax.Array,
    num_trials: int = 20,
    method: str = "mean_logit",
) -> RemovalCurve:
    """Ensemble ERROR with n randomly chosen modules removed, for each n (Webb et al. §4.1, Fig. 4).

    For each n in `num_removed` and each of `num_trials` draws, n of the M modules are chosen uniformly at
    random without replacement and dropped; the remaining M − n modules are combined with `method` (Webb:
    'mean_logit', softmax of their mean logits) and the error 1 − accuracy of the argmax is measured. Fig. 4
    plots this test error against the number of modules dropped, averaged over 20 random removals (the
    default `num_trials`). n = 0 gives the full ensemble's error in every trial.

    The draws use common random numbers: trial t draws one uniformly random order of the M modules from
    `key`, and for every n removes the first n modules of that order. Each point of the curve is thus an
    average over uniformly random n-subsets (the same expected curve as independent draws for each n, which
    is what Webb et al.'s own script does), while a trial's errors over n are those of removing modules one
    by one, as in anytime prediction, so differences between points vary less than with independent draws.
    The draws depend on (key, num_trials, M) only, not on which n are requested nor on their order. They are
    vectorized: each draw is a keep mask [M], and the remaining modules' mean is a masked mean over all M
    (see the `jaxens.modules` docstring). error_std is the spread over these draws for one set of logits; Fig. 4's
    error bars are over training runs, which needs one call per run.

    Args:
      member_logits: [M, N, C] logits of the M modules.
      labels: [N] int true labels.
      num_removed: [R] ints (sequence or array) with 0 ≤ n < M, how many modules to drop.
      key: PRNG key (typed or raw).
      num_trials: T ≥ 1 random draws per n (static under jit).
      method: 'mean_logit' (default, Webb) or 'mean_prob', how the remaining modules are combined.

    Returns:
      `RemovalCurve` with error_mean and error_std [R], errors [R, T] and the keep masks kept [R, T, M].

    Raises:
      ValueError: if member_logits is not [M, N, C], labels not [N], num_removed not a 1-D integer sequence
        (or, when concrete, has a value outside [0, M)), num_trials not a positive int, or method unknown.
    """
    _check_members_labels(member_logits, labels)
    _check_method(method)
    _check_count(num_trials, "num_trials")
    num_modules = member_logits.shape[0]
    num_removed = jnp.asarray(num_removed)
    if num_removed.ndim != 1 or num_removed.shape[0] < 1 or not np.issubdtype(num_removed.dtype, np.integer):
        raise ValueError(
            f"num_removed: expected a non-empty 1-D sequence of ints, got shape {tuple(num_removed.shape)} "
            f"and dtype {num_removed.dtype}"
        )
    if _concrete(num_removed):
        low, high = int(np.min(num_removed)), int(np.max(num_removed))
        if low < 0 or high >= num_modules:
            bad = low if low < 0 else high
            raise ValueError(f"num_removed: {bad} outside [0, {num_modules}) (M = member_logits.shape[0])")
    num_removed = num_removed.astype(jnp.int32)
    kept = _keep_masks(key, num_removed, num_trials, num_modules)  # [R, T, M]
    return _removal_curve(member_logits, labels, num_removed, kept, method)
