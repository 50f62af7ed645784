"""Module dominance (Webb et al. §4.2 "Module Dominance", Fig. 7) and the entropy of the modules' predictions
that goes with it (§4.3, Table 6): `dominance`, `entropy_statistics`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxens.metrics import checks, classification, diversity
from jaxens.modules._common import _check_members_labels, _check_method

__all__ = ["Dominance", "EntropyStatistics", "Summary", "dominance", "entropy_statistics"]


class Summary(NamedTuple):
    """min, max, mean and population std (ddof = 0) of a set of values, each of the same shape.

    Attributes:
      min: the smallest value.
      max: the largest value.
      mean: the mean.
      std: the population standard deviation (ddof = 0).
    """

    min: jax.Array
    max: jax.Array
    mean: jax.Array
    std: jax.Array


def _summary(x: jax.Array, axis: int) -> Summary:
    return Summary(jnp.min(x, axis=axis), jnp.max(x, axis=axis), jnp.mean(x, axis=axis), jnp.std(x, axis=axis))


class EntropyStatistics(NamedTuple):
    """Entropy of each module's predicted class distribution (`entropy_statistics`), in nats.

    Attributes:
      per_module: `Summary` with fields [M]: min, max, mean and std over the N examples of each module's
        per-example entropy H[q_i(·|x_n)].
      over_modules: `Summary` with fields []: min, max, mean and std over the M modules of the per-module mean
        entropy H[q_i] = per_module.mean — the four rows of Webb et al.'s Table 6.
    """

    per_module: Summary
    over_modules: Summary


def entropy_statistics(member_logits: jax.Array) -> EntropyStatistics:
    """Entropy statistics of the modules' predicted class distributions (Webb et al. §4.3, Table 6).

    H[q_i](x) = −Σ_c q_i(c|x) log q_i(c|x) in nats (`jaxens.metrics.entropy`), q_i = softmax of module i's
    logits. Table 6 summarizes, over the modules, the entropy "per module, averaged over the test set":
    H[q_i] = mean_n H[q_i](x_n), and min_i, max_i, mean_i, std_i of it. Very low and very high per-module
    entropies side by side (over- and under-confident modules) go with module dominance (λ = 1).

    Args:
      member_logits: [M, N, C] logits of the M modules.

    Returns:
      `EntropyStatistics`: per_module (fields [M], over examples) and over_modules (fields [], Table 6).

    Raises:
      ValueError: if member_logits is not [M, N, C].
    """
    checks.members(member_logits)
    h = classification.entropy(member_logits)  # [M, N]
    per_module = _summary(h, axis=1)  # fields [M]
    return EntropyStatistics(per_module=per_module, over_modules=_summary(per_module.mean, axis=0))


class Dominance(NamedTuple):
    """Module errors against the ensemble's (`dominance`).

    Attributes:
      module_error: [M] each module's own error.
      best_module: [] int32 index of the module with the lowest error (the first on ties).
      best_module_error: [] its error, min_i module_error.
      ensemble_error: [] the whole ensemble's error.
      gap: [] best_module_error − ensemble_error, THE dominance indicator: about 0 (or negative) when one
        module carries the ensemble; positive by how much combining beats the best module alone.
      runner_up_gap: [] second-lowest module error − best_module_error: large when a single module is much
        better than all others (Fig. 7); NaN when M = 1.
      best_module_agreement: [] fraction of examples on which the ensemble predicts the best module's class.
    """

    module_error: jax.Array
    best_module: jax.Array
    best_module_error: jax.Array
    ensemble_error: jax.Array
    gap: jax.Array
    runner_up_gap: jax.Array
    best_module_agreement: jax.Array


def dominance(member_logits: jax.Array, labels: jax.Array, method: str = "mean_logit") -> Dominance:
    """Module dominance: is the ensemble carried by one module? (Webb et al. §4.2, Fig. 7; §4.3.)

    Under joint training (λ = 1) Webb et al. find "a single module achieves a relatively low error rate on
    its own and the remainder of the modules make only small contributions to the ensemble predictions": the
    geometric-mean combination lets one confident module veto the others. The indicator chosen here is

      gap = min_i err(module i) − err(ensemble),

    the error the ensemble gains over its best module. gap ≈ 0 (or < 0) says the ensemble does no better
    than one module (dominance); a clearly positive gap says the modules' combination matters. Read it with
    runner_up_gap = (second-lowest module error) − (lowest module error), large when one module is much
    better than all the rest (the single low curve of Fig. 7), and best_module_agreement = fraction of
    examples where the ensemble's argmax equals the best module's (1 − `jaxens.metrics.disagreement`).

    Args:
      member_logits: [M, N, C] logits of the M modules.
      labels: [N] int true labels.
      method: 'mean_logit' (default, Webb) or 'mean_prob', the ensemble's combination.

    Returns:
      `Dominance` (module_error [M], the rest []).

    Raises:
      ValueError: if member_logits is not [M, N, C], labels not [N], or method unknown.
    """
    _check_members_labels(member_logits, labels)
    _check_method(method)
    ensemble = classification.ensemble_log_probs(member_logits, method)  # [N, C]
    module_error = classification.error(member_logits, labels)  # [M]
    ensemble_error = classification.error(ensemble, labels)  # []
    best = jnp.argmin(module_error).astype(jnp.int32)
    best_error = module_error[best]
    if member_logits.shape[0] > 1:
        lowest_two = jnp.sort(module_error)[:2]
        runner_up_gap = lowest_two[1] - lowest_two[0]
    else:
        runner_up_gap = jnp.full((), jnp.nan, module_error.dtype)
    agreement = 1.0 - diversity.disagreement(ensemble, member_logits[best])
    return Dominance(
        module_error=module_error,
        best_module=best,
        best_module_error=best_error,
        ensemble_error=ensemble_error,
        gap=best_error - ensemble_error,
        runner_up_gap=runner_up_gap,
        best_module_agreement=agreement,
    )
