"""Multi-layer perceptron (Webb et al.'s Fashion-MNIST modules: one or more hidden layers)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxens.models.layers import logits_f32, norm


class MLP(nn.Module):
    """Flatten → [Dense(w) → norm → ReLU → Dropout] for each w in `widths` → Dense(num_classes).

    Attributes:
      widths: hidden units per layer, input side first (Webb's modules: (1024,), (64,), (16,), (4,)).
      num_classes: C.
      dropout: drop rate after each hidden activation.
      norm: normalization after each hidden Dense ('none' by default).
      dtype: compute dtype.
    """

    widths: Sequence[int]
    num_classes: int
    dropout: float = 0.0
    norm: str = "none"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = x.reshape((x.shape[0], -1))  # [B, D]
        for i, width in enumerate(self.widths):
            x = nn.Dense(width, dtype=self.dtype, name=f"dense{i}")(x)
            x = nn.relu(norm(self.norm, train, self.dtype, f"norm{i}")(x))
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return logits_f32(nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x))  # [B, C]
