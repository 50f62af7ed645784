"""Multi-layer perceptron."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax


class MLP(nn.Module):
    """Flatten → [Dense(w) → ReLU → Dropout] for each w in `widths` → Dense(num_classes).

    Attributes:
      widths: hidden units per layer, input side first.
      num_classes: C.
      dropout: drop rate after each hidden activation.
    """

    widths: Sequence[int]
    num_classes: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = x.reshape((x.shape[0], -1))  # [B, D]
        for width in self.widths:
            x = nn.relu(nn.Dense(width)(x))
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)  # [B, C]
