"""Fort et al.'s SmallCNN (channels 16, 32, 32) and MediumCNN (64, 128, 256, 256) for CIFAR-10 (§3).

The paper gives the channels, dropout 0.1 and no augmentation. Our reading of the rest: per channel
count a 3×3 conv (same padding) → norm → ReLU → 2×2 max pool → dropout, then global average pooling and
a dense classifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxens.models.conv import Conv
from jaxens.models.layers import logits_f32, norm

SMALL_CNN = (16, 32, 32)
MEDIUM_CNN = (64, 128, 256, 256)


class FortCNN(nn.Module):
    """Images [B, H, W, C] → logits [B, num_classes].

    Attributes:
      channels: conv channels, input side first (SMALL_CNN or MEDIUM_CNN).
      num_classes: C.
      dropout: drop rate after each pooling (0.1 in the paper).
      norm: normalization after each conv (see jaxens.models.layers.NORMS).
      dtype: compute dtype.
    """

    channels: Sequence[int]
    num_classes: int
    dropout: float = 0.1
    norm: str = "batch"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for i, c in enumerate(self.channels):
            x = Conv(c, (3, 3), padding="SAME", use_bias=self.norm == "none", dtype=self.dtype, name=f"conv{i}")(x)
            x = nn.relu(norm(self.norm, train, self.dtype, f"norm{i}")(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")  # [B, H/2, W/2, c]
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = x.mean(axis=(1, 2))  # [B, c_last]
        return logits_f32(nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x))
