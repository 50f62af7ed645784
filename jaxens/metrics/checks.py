"""Argument checks shared by the metric kernels: shapes at trace time, label values when they are concrete.

Shapes are static under `jax.jit`, so a mismatch raises while tracing, before anything runs. Label values
are only known in an eager call (not under `jit`); there a label outside [0, C) raises too.
"""

from __future__ import annotations

import jax
import numpy as np


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def logits_labels(
    logits: jax.Array, labels: jax.Array, logits_name: str = "logits", labels_name: str = "labels"
) -> None:
    """`logits` [..., N, C] and integer `labels` [N]: same N; in an eager call every label in [0, C).

    Raises:
      ValueError: naming both arguments and their shapes (or the offending label).
    """
    if logits.ndim < 2:
        raise ValueError(f"{logits_name}: expected [..., N, C], got shape {tuple(logits.shape)}")
    if labels.ndim != 1 or labels.shape[0] != logits.shape[-2]:
        raise ValueError(
            f"{labels_name} of shape {tuple(labels.shape)} does not match {logits_name} of shape "
            f"{tuple(logits.shape)}: expected [N] with N = {logits.shape[-2]}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{labels_name}: expected integer class indices, got dtype {labels.dtype}")
    if _concrete(labels) and labels.shape[0]:
        low, high = int(np.min(labels)), int(np.max(labels))
        num_classes = logits.shape[-1]
        if low < 0 or high >= num_classes:
            bad = high if high >= num_classes else low
            raise ValueError(f"{labels_name}: label {bad} outside [0, {num_classes}) (C = {logits_name}.shape[-1])")


def same_shape(a: jax.Array, b: jax.Array, name_a: str, name_b: str) -> None:
    """Two logits arrays over the same examples and classes ([..., N, C] each, equal N and C).

    Raises:
      ValueError: naming both arguments and their shapes.
    """
    if a.ndim < 2 or b.ndim < 2 or a.shape[-2:] != b.shape[-2:]:
        raise ValueError(
            f"{name_a} of shape {tuple(a.shape)} and {name_b} of shape {tuple(b.shape)}: expected [..., N, C] "
            "with the same N examples and C classes"
        )


def members(member_logits: jax.Array, name: str = "member_logits") -> None:
    """Stacked members [K, N, C] (at least one member).

    Raises:
      ValueError: naming the argument and its shape.
    """
    if member_logits.ndim != 3 or member_logits.shape[0] < 1:
        raise ValueError(f"{name}: expected [K, N, C] (K members stacked), got shape {tuple(member_logits.shape)}")
