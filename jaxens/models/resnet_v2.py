"""Pre-activation ResNet with bottleneck blocks (He et al. 2016, "Identity mappings in deep residual networks").

Each block adds a residual branch F(x) to an untouched identity path, and every convolution of F is preceded
by its normalization and ReLU ("pre-activation"):

    F = norm → ReLU → 1×1 conv(w) → norm → ReLU → 3×3 conv(w, stride) → norm → ReLU → 1×1 conv(4w).

Where a block changes the shape (the first block of each stage), the shortcut is a 1×1 strided convolution of
the pre-activated input norm → ReLU(x), which then also feeds F. Since the last block leaves its output
un-normalized, the network ends with norm → ReLU before the global average pool.

ResNet-50 v2 (stage sizes 3, 4, 6, 3; width 64) has 25,549,352 parameters at 1000 classes with BatchNorm
(BatchNorm running averages are not parameters): Keras' ResNet50V2 figure of 25,568,360 trainable parameters
less its 19,008 convolution biases (the stem and, per block, the last 1×1 and the shortcut convolutions carry
a bias there; here no convolution does, each feeds or follows a norm).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxens.models.conv import Conv
from jaxens.models.layers import logits_f32, norm

# Output channels of a bottleneck block per channel of its 3×3 convolution.
EXPANSION = 4


class BottleneckV2(nn.Module):
    """One pre-activation bottleneck block: [B, H, W, C_in] → [B, H/s, W/s, 4·features].

    Submodules, in forward order: norm1, shortcut (only when the shape changes), conv1, norm2, conv2, norm3,
    conv3 (the norms only when `norm` is not 'none').

    Attributes:
      features: w, the channels of the 1×1 and 3×3 convolutions; the block outputs 4w.
      strides: s, the stride of the 3×3 convolution and of the projection shortcut.
      norm: normalization kind, one of `layers.NORMS`.
      dtype: compute dtype; parameters stay float32.
    """

    features: int
    strides: int = 1
    norm: str = "batch"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """The block's output x + F(x), with a projection shortcut where the shape changes.

        Args:
          x: feature maps [B, H, W, C_in].
          train: training mode (batch statistics for BatchNorm).

        Returns:
          feature maps [B, H/s, W/s, 4w] in the compute dtype.
        """
        out_features = EXPANSION * self.features
        s = (self.strides, self.strides)
        preact = nn.relu(norm(self.norm, train, self.dtype, name="norm1")(x))  # [B, H, W, C_in]
        if x.shape[-1] != out_features or self.strides != 1:
            # Projection of the pre-activated input (v2 paper, appendix): [B, H/s, W/s, 4w].
            shortcut = Conv(out_features, (1, 1), strides=s, use_bias=False, dtype=self.dtype, name="shortcut")(preact)
        else:
            shortcut = x  # identity path, not normalized
        y = Conv(self.features, (1, 1), use_bias=False, dtype=self.dtype, name="conv1")(preact)  # [B, H, W, w]
        y = nn.relu(norm(self.norm, train, self.dtype, name="norm2")(y))
        # [B, H, W, w] → [B, H/s, W/s, w]
        y = Conv(
            self.features, (3, 3), strides=s, padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype, name="conv2"
        )(y)
        y = nn.relu(norm(self.norm, train, self.dtype, name="norm3")(y))
        y = Conv(out_features, (1, 1), use_bias=False, dtype=self.dtype, name="conv3")(y)  # [B, H/s, W/s, 4w]
        return shortcut + y


class ResNetV2(nn.Module):
    """Pre-activation bottleneck ResNet for images [B, H, W, C_in] → float32 logits [B, num_classes].

    Stem: for ImageNet-sized inputs a 7×7 stride-2 convolution and a 3×3 stride-2 max pool (224 → 56); with
    `small_inputs` (Tiny-ImageNet 64×64, CIFAR 32×32) a 3×3 stride-1 convolution and no pool. Then stage i
    (i = 1..4) stacks stage_sizes[i-1] blocks of width w = width·2^(i-1), the first block of stages 2..4 with
    stride 2; then norm → ReLU → global average pool → Dense(num_classes).

    Submodules, in forward order: stem_conv, stage1_block1, ..., stage1_block{n1}, stage2_block1, ...,
    stage4_block{n4}, final_norm (when `norm` is not 'none'), head.

    Attributes:
      stage_sizes: blocks per stage; (3, 4, 6, 3) is ResNet-50, (3, 4, 23, 3) ResNet-101.
      num_classes: C.
      width: channels of the stem and of the first stage's 3×3 convolutions.
      norm: normalization kind, one of `layers.NORMS`.
      dtype: compute dtype; parameters stay float32 and the logits are float32.
      small_inputs: use the small-image stem (3×3 stride-1 convolution, no max pool).
    """

    num_classes: int
    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    width: int = 64
    norm: str = "batch"
    dtype: Any = jnp.float32
    small_inputs: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits of a batch of images.

        Args:
          x: normalized images [B, H, W, C_in].
          train: training mode (batch statistics for BatchNorm).

        Returns:
          float32 logits [B, num_classes].
        """
        if self.small_inputs:
            # [B, H, W, C_in] → [B, H, W, width]
            x = Conv(self.width, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype, name="stem_conv")(
                x
            )
        else:
            # [B, H, W, C_in] → [B, H/2, W/2, width] → [B, H/4, W/4, width]
            x = Conv(
                self.width,
                (7, 7),
                strides=(2, 2),
                padding=((3, 3), (3, 3)),
                use_bias=False,
                dtype=self.dtype,
                name="stem_conv",
            )(x)
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                strides = 2 if i > 0 and j == 0 else 1
                # [B, H, W, C] → [B, H/strides, W/strides, 4·width·2^i]
                x = BottleneckV2(self.width * 2**i, strides, self.norm, self.dtype, name=f"stage{i + 1}_block{j + 1}")(
                    x, train
                )
        x = nn.relu(norm(self.norm, train, self.dtype, name="final_norm")(x))
        x = jnp.mean(x, axis=(1, 2))  # [B, 4·width·2^(stages-1)]
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)  # [B, C]
        return logits_f32(x)


def resnet50_v2(num_classes: int, **kw: Any) -> ResNetV2:
    """ResNet-50 v2: stage sizes (3, 4, 6, 3); `kw` sets the other ResNetV2 fields (width, norm, dtype, ...)."""
    return ResNetV2(num_classes=num_classes, stage_sizes=(3, 4, 6, 3), **kw)
