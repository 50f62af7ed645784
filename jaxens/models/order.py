"""Parameter tensors in forward order (input side first), for Zamparo et al.'s layer re-initialization (§3).

The order is observed, not declared: `forward_order` traces one forward pass (shapes only, no compute)
with a method interceptor that records the order in which modules are first called. A parameter tensor
takes the position of the module that owns it; inside one module the kernel (or embedding) comes before
the scale and the bias. Models must therefore call their submodules in forward order and declare no
parameter in a parent out of that order (see `jaxens.models.layers`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# Order of tensors inside one module.
_IN_MODULE_RANK = {"kernel": 0, "embedding": 0, "scale": 1, "bias": 2}

Path = tuple[str, ...]


def _key_name(key: Any) -> str:
    return str(getattr(key, "key", getattr(key, "name", key)))


def get_path(tree, path: Path):
    """The leaf of a nested dict at `path`."""
    for key in path:
        tree = tree[key]
    return tree


def param_paths(params) -> list[Path]:
    """Every parameter tensor's path (tuple of dict keys), in pytree (alphabetical) order."""
    return [tuple(_key_name(k) for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def forward_order(model: nn.Module, input_shape: tuple[int, ...]) -> list[Path]:
    """Paths of the model's parameter tensors, input side first.

    Args:
      model: a model of `jaxens.models` (one member).
      input_shape: shape of one example.

    Returns:
      Each parameter path exactly once, e.g. [('conv0', 'kernel'), ('bn0', 'scale'), ..., ('head', 'bias')].
    """
    first_call: dict[Path, int] = {}

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__":
            first_call.setdefault(tuple(context.module.path), len(first_call))
        return next_fun(*args, **kwargs)

    key = jax.random.PRNGKey(0)
    with nn.intercept_methods(record):
        variables = jax.eval_shape(
            lambda: model.init({"params": key, "dropout": key}, jnp.zeros((1, *input_shape), jnp.float32), train=False)
        )
    paths = param_paths(variables["params"])
    missing = [p for p in paths if p[:-1] not in first_call]
    if missing:
        raise ValueError(f"parameters {missing} belong to no called module; cannot order them")
    return sorted(paths, key=lambda p: (first_call[p[:-1]], _IN_MODULE_RANK.get(p[-1], 3), p[-1]))


def param_sizes(params, paths: Sequence[Path]) -> list[int]:
    """Number of scalars of each tensor in `paths` (of one member's params; leading axes count too)."""
    return [math.prod(get_path(params, p).shape) for p in paths]
