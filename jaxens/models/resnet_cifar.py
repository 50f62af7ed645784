"""ResNet v1 for 32×32 inputs (He et al. 2016, §4.2): ResNet-20/32/56, the ResNet20v1 of Fort et al. and Zamparo et al.

depth = 6n + 2: a 3×3 stem conv with 16 channels, then three stages of n basic blocks with 16, 32 and 64
channels (the first block of stages 2 and 3 halves the resolution), global average pooling and a dense
classifier. Basic block: conv3×3 → norm → ReLU → conv3×3 → norm, plus the shortcut, then ReLU.

Shortcuts where the shape changes: "A" (the paper's CIFAR choice, no parameters) subsamples by 2 and
pads the new channels with zeros; "B" is a 1×1 strided projection conv followed by a norm.
Every 3×3 conv pads one pixel on each side (not TF's 'SAME', which pads (0, 1) at stride 2 on even sizes).
Parameter counts with BatchNorm, 10 classes: ResNet-20 A 269,722, B 272,474 (tested by hand).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxens.models.conv import Conv
from jaxens.models.layers import logits_f32, norm

SHORTCUTS = ("A", "B")


def _pad(kernel: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """k // 2 zeros on each side, as He et al.'s CIFAR networks (PyTorch padding=1 for 3×3).

    Not 'SAME': at stride 2 on an even size that pads (0, 1), so the residual branch would sample pixels one
    off the option-A shortcut x[:, ::2, ::2], and PyTorch weights would not give PyTorch's outputs. At
    stride 1 both are (1, 1); a 1×1 conv gets no padding either way.
    """
    kh, kw = kernel
    return ((kh // 2, kh // 2), (kw // 2, kw // 2))


class BasicBlock(nn.Module):
    """x [B, H, W, C_in] → [B, H/stride, W/stride, features]."""

    features: int
    stride: int
    shortcut: str = "A"
    norm: str = "batch"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        conv = lambda f, k, s, name: Conv(f, k, (s, s), padding=_pad(k), use_bias=False, dtype=self.dtype, name=name)
        y = conv(self.features, (3, 3), self.stride, "conv1")(x)
        y = nn.relu(norm(self.norm, train, self.dtype, "norm1")(y))
        y = conv(self.features, (3, 3), 1, "conv2")(y)
        y = norm(self.norm, train, self.dtype, "norm2")(y)
        if x.shape[-1] != self.features or self.stride != 1:
            if self.shortcut == "A":
                x = x[:, :: self.stride, :: self.stride, :]
                extra = self.features - x.shape[-1]
                x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
            else:
                x = conv(self.features, (1, 1), self.stride, "shortcut_conv")(x)
                x = norm(self.norm, train, self.dtype, "shortcut_norm")(x)
        return nn.relu(x + y)


class ResNetCIFAR(nn.Module):
    """ResNet v1 of depth 6n + 2 for 32×32 images [B, 32, 32, 3] → logits [B, C].

    Attributes:
      depth: 20, 32, 56, ... (6n + 2).
      num_classes: C.
      shortcut: 'A' (zero-padding identity) or 'B' (1×1 projection + norm).
      width: channels of the first stage (16 in the paper; stages use width, 2·width, 4·width).
      norm: normalization layer (see jaxens.models.layers.NORMS).
      dtype: compute dtype.
    """

    depth: int
    num_classes: int
    shortcut: str = "A"
    width: int = 16
    norm: str = "batch"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if (self.depth - 2) % 6:
            raise ValueError(f"depth={self.depth}: must be 6n + 2 (20, 32, 44, 56, 110)")
        if self.shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut={self.shortcut!r}: allowed: A, B")
        n = (self.depth - 2) // 6
        x = Conv(self.width, (3, 3), padding=_pad((3, 3)), use_bias=False, dtype=self.dtype, name="stem_conv")(x)
        x = nn.relu(norm(self.norm, train, self.dtype, "stem_norm")(x))  # [B, 32, 32, w]
        for stage in range(3):
            for block in range(n):
                stride = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(
                    self.width * 2**stage,
                    stride,
                    self.shortcut,
                    self.norm,
                    self.dtype,
                    name=f"stage{stage + 1}_block{block + 1}",
                )(x, train)  # [B, 32/2^stage, 32/2^stage, w·2^stage]
        x = x.mean(axis=(1, 2))  # [B, 4w]
        return logits_f32(nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x))  # [B, C]
