"""Layer re-initialization at spawn (Zamparo et al. §3): boolean masks over whole parameter tensors.

Parameter tensors are ordered along the forward pass (`jaxens.models.forward_order`). `side='low'` takes
whole tensors from the input side, `side='high'` from the output side, until the chosen fraction of the
parameter *count* is covered (so the mask may cover a little more than the fraction, never less). The
masked tensors are replaced by fresh initializer draws. All functions are pure and work on any params
pytree of one member.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxens.models.order import param_paths, param_sizes

SIDES = ("low", "high")
PyTree = Any
Path = tuple[str, ...]


def mask(params: PyTree, order: Sequence[Path], fraction: float, side: str) -> PyTree:
    """Which tensors to re-initialize: a pytree of Python bools with the structure of `params`.

    Args:
      params: one member's parameters (any pytree of dicts; only shapes are read).
      order: every tensor's path, input side first (`jaxens.models.forward_order`).
      fraction: in [0, 1], the share of the parameter count to cover.
      side: 'low' (from the input) or 'high' (from the output).

    Returns:
      Booleans, True for the tensors to re-initialize: the shortest run of whole tensors from `side`
      whose sizes sum to at least `fraction` of all parameters (none for fraction 0).
    """
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction={fraction!r}: must lie in [0, 1]")
    if side not in SIDES:
        raise ValueError(f"side={side!r}: allowed: {', '.join(SIDES)}")
    sizes = param_sizes(params, order)
    total = sum(sizes)
    if total != sum(math.prod(x.shape) for x in jax.tree.leaves(params)):
        raise ValueError("order does not list every parameter tensor of params exactly once")
    chosen, covered = set(), 0
    for path, size in zip(order if side == "low" else reversed(order), sizes if side == "low" else reversed(sizes)):
        if covered >= fraction * total:
            break
        chosen.add(tuple(path))
        covered += size
    treedef = jax.tree.structure(params)
    return jax.tree.unflatten(treedef, [path in chosen for path in param_paths(params)])


def covered_fraction(params: PyTree, tensor_mask: PyTree) -> float:
    """Share of the parameter count that `tensor_mask` selects."""
    sizes = [math.prod(x.shape) for x in jax.tree.leaves(params)]
    picked = [s for s, m in zip(sizes, jax.tree.leaves(tensor_mask)) if m]
    return sum(picked) / sum(sizes)


def reinitialize(params: PyTree, fresh: PyTree, tensor_mask: PyTree) -> PyTree:
    """`fresh` where the mask is True, `params` elsewhere (tensor by tensor; a pure function)."""
    return jax.tree.map(lambda p, f, m: f if m else p, params, fresh, tensor_mask)


def changed(params_a: PyTree, params_b: PyTree) -> PyTree:
    """Per tensor, whether two parameter pytrees differ anywhere (for tests and inspection)."""
    return jax.tree.map(lambda a, b: bool(jnp.any(a != b)), params_a, params_b)
