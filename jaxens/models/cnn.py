"""Small convolutional networks for MNIST-1D (1-D) and Fashion-MNIST (2-D), with BatchNorm."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax


def _conv_bn_relu(x: jax.Array, features: int, kernel: tuple[int, ...], strides: tuple[int, ...], train: bool):
    x = nn.Conv(features, kernel, strides=strides, padding="SAME", use_bias=False)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return nn.relu(x)


class CNN1D(nn.Module):
    """For sequences [B, L, C]: per width a stride-2 Conv(5) → BatchNorm → ReLU; flatten; Dense(C).

    Attributes:
      widths: channels per conv layer, input side first.
      num_classes: C.
      dropout: drop rate before the classifier.
    """

    widths: Sequence[int]
    num_classes: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for width in self.widths:
            x = _conv_bn_relu(x, width, (5,), (2,), train)  # [B, L/2, width]
        x = x.reshape((x.shape[0], -1))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)  # [B, C]


class CNN2D(nn.Module):
    """For images [B, H, W, C]: per width a stride-2 Conv(3×3) → BatchNorm → ReLU; global average pool;
    Dense(C). (Strided convolutions rather than max-pooling: 3x cheaper to train on CPU, measured.)

    Attributes:
      widths: channels per conv layer, input side first.
      num_classes: C.
      dropout: drop rate before the classifier.
    """

    widths: Sequence[int]
    num_classes: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for width in self.widths:
            x = _conv_bn_relu(x, width, (3, 3), (2, 2), train)  # [B, H/2, W/2, width]
        x = x.mean(axis=(1, 2))  # [B, width]
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)  # [B, C]
