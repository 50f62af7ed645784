"""Small strided CNNs for MNIST-1D (1-D) and Fashion-MNIST / digits (2-D)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxens.models.conv import Conv
from jaxens.models.layers import logits_f32, norm


class StridedCNN(nn.Module):
    """Per width a stride-2 conv → norm → ReLU; then flatten (1-D) or global average pool (2-D); Dense(C).

    Strided convolutions rather than max-pooling: 3x cheaper to train on CPU (measured).

    Attributes:
      widths: channels per conv layer, input side first.
      num_classes: C.
      kernel: conv window, (5,) for sequences [B, L, C] or (3, 3) for images [B, H, W, C].
      dropout: drop rate before the classifier.
      norm: normalization after each conv (see jaxens.models.layers.NORMS).
      dtype: compute dtype.
    """

    widths: Sequence[int]
    num_classes: int
    kernel: Sequence[int] = (3, 3)
    dropout: float = 0.0
    norm: str = "batch"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        strides = (2,) * len(self.kernel)
        for i, width in enumerate(self.widths):
            x = Conv(
                width,
                tuple(self.kernel),
                strides,
                padding="SAME",
                use_bias=self.norm == "none",
                dtype=self.dtype,
                name=f"conv{i}",
            )(x)
            x = nn.relu(norm(self.norm, train, self.dtype, f"norm{i}")(x))  # [B, L/2 (, W/2), width]
        # Sequences keep their positions (flatten); images are pooled.
        x = x.reshape((x.shape[0], -1)) if len(self.kernel) == 1 else x.mean(axis=(1, 2))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return logits_f32(nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x))  # [B, C]
