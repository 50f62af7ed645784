"""Shared by the module analyses: argument checks and the combination of a weighted subset of modules.

How a subset is combined (a masked mean over all M modules, batched over subsets) is described in the
`jaxens.modules` docstring.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxens.metrics import checks

_METHODS = ("mean_prob", "mean_logit")
_DECISIONS = ("argmax", "threshold")
# Subsets combined per step of `lax.map`: one batched matrix product [B, M] × [M, N·C] each, so memory stays
# O(B·N·C) however many subsets there are. B is at most 64, and smaller when B·N·C would pass 2²³ values.
_MAX_SUBSETS_PER_STEP = 64
_MAX_VALUES_PER_STEP = 2**23


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_method(method: str) -> None:
    if method not in _METHODS:
        raise ValueError(f"method={method!r}: allowed: 'mean_prob', 'mean_logit'")


def _check_decision(decision: str) -> None:
    if decision not in _DECISIONS:
        raise ValueError(f"decision={decision!r}: allowed: 'argmax', 'threshold'")


def _check_count(value, name: str, low: int = 1, high: int | None = None) -> None:
    """A Python int (static under jit) in [low, high]."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name}: expected an int ≥ {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{name}: expected an int in [{low}, {high}], got {value!r}")


def _check_members_labels(member_logits, labels, logits_name: str = "member_logits", labels_name: str = "labels"):
    checks.members(member_logits, logits_name)
    checks.logits_labels(member_logits, labels, logits_name, labels_name)


def _check_class(cls, num_classes: int, name: str = "cls") -> None:
    cls_arr = jnp.asarray(cls)
    if cls_arr.ndim != 0 or not np.issubdtype(cls_arr.dtype, np.integer):
        raise ValueError(f"{name}: expected one integer class index, got {cls!r}")
    if _concrete(cls) and not 0 <= int(cls_arr) < num_classes:
        raise ValueError(f"{name}={int(cls_arr)}: outside [0, {num_classes}) (C = member_logits.shape[-1])")


def _member_values(member_logits: jax.Array, method: str) -> jax.Array:
    """What a subset's weighted mean is taken of: logits ('mean_logit') or probabilities ('mean_prob')."""
    z = member_logits.astype(jnp.promote_types(member_logits.dtype, jnp.float32))  # [M, N, C]
    return z if method == "mean_logit" else jax.nn.softmax(z, axis=-1)


def _combined_log_probs(weights: jax.Array, values: jax.Array, method: str) -> jax.Array:
    """Log-probabilities [..., N, C] of the weighted subsets `weights` [..., M] (rows sum to 1)."""
    mixed = jnp.einsum("...m,mnc->...nc", weights, values, precision=jax.lax.Precision.HIGHEST)
    if method == "mean_logit":
        return jax.nn.log_softmax(mixed, axis=-1)
    return jnp.log(mixed)  # A convex combination of probability vectors is normalized already.


def _map_subsets(fn, weights: jax.Array, values: jax.Array) -> jax.Array:
    """`fn` of each row of `weights` [S, M] (subsets of the modules of `values` [M, N, C]), a batch at a time."""
    per_subset = values.shape[1] * values.shape[2]
    batch = max(1, min(weights.shape[0], _MAX_SUBSETS_PER_STEP, _MAX_VALUES_PER_STEP // max(per_subset, 1)))
    return jax.lax.map(fn, weights, batch_size=batch)
