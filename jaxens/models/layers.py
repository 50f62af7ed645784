"""Building blocks shared by the models: the normalization choice and the compute dtype.

Conventions every model in `jaxens.models` follows:

- a Flax `nn.Module` for ONE member, called as `model.apply(variables, x, train=...)` on normalized float32
  inputs x [B, *input_shape], returning float32 logits [B, C];
- fields `num_classes`, `norm` (one of NORMS, where the architecture normalizes) and `dtype` (the compute
  dtype; parameters stay float32);
- submodules are called in forward order and no parameter is declared out of that order (see
  `jaxens.models.forward_order`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

NORMS = ("batch", "layer", "group", "none")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# GroupNorm uses gcd(GROUPS, channels) groups, so any channel count works.
GROUPS = 32


def norm(kind: str, train: bool, dtype: Any = jnp.float32, name: str | None = None) -> Callable[[jax.Array], jax.Array]:
    """The normalization layer `kind` over the last (channel) axis; call it inside a compact method.

    Args:
      kind: 'batch' (BatchNorm: batch statistics in training, running averages with momentum 0.9 in
        evaluation; each member keeps its own), 'layer' (LayerNorm over channels), 'group' (GroupNorm with
        gcd(32, channels) groups) or 'none' (identity).
      train: whether the model is in training mode.
      dtype: compute dtype.
      name: submodule name.

    Returns:
      A function x [..., C] → [..., C].
    """
    if kind == "batch":
        return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, name=name)
    if kind == "layer":
        return nn.LayerNorm(epsilon=1e-5, dtype=dtype, name=name)
    if kind == "group":
        return lambda x: nn.GroupNorm(num_groups=math.gcd(GROUPS, x.shape[-1]), epsilon=1e-5, dtype=dtype, name=name)(x)
    if kind == "none":
        return lambda x: x
    raise ValueError(f"norm={kind!r}: allowed: {', '.join(NORMS)}")


def logits_f32(x: jax.Array) -> jax.Array:
    """Logits leave the model in float32 whatever the compute dtype (losses and metrics need it)."""
    return x.astype(jnp.float32)
