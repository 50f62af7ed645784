"""DenseNet-BC for 32×32 inputs (Huang et al., "Densely Connected Convolutional Networks", CVPR 2017).

The CIFAR layout: a 3×3 stem convolution with 2k channels (k the growth rate); three dense blocks of
n = (depth − 4) / 6 bottleneck layers at 32×32, 16×16 and 8×8, each layer adding k channels to its input;
a compressing transition between blocks; norm → ReLU → global average pool → Dense(C) at the end. The "B" is
the 1×1 bottleneck convolution (to 4k channels) in every layer, the "C" the compression of the transitions.

Webb et al. (§4.3, Table 4) ensemble three configurations on CIFAR-100; `WEBB_DENSENETS` names them. With
100 classes one member has 800,032 (depth 100, k 12), 266,556 (82, 8) and 105,316 (64, 6) parameters, so
the ensembles of 4, 8 and 16 members have 3.20M, 2.13M and 1.69M, the table's 3.2M, 2.1M and 1.7M.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxens.models.conv import Conv
from jaxens.models.layers import logits_f32, norm

# Webb et al.'s Table 4 configurations: name → (depth, growth rate).
WEBB_DENSENETS: dict[str, tuple[int, int]] = {
    "densenet100_12": (100, 12),
    "densenet82_8": (82, 8),
    "densenet64_6": (64, 6),
}

NUM_BLOCKS = 3

# Convolution kernels drawn from N(0, 2 / (kh · kw · out_channels)), untruncated: the initialization of the
# reference implementations of DenseNet.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class DenseNetBC(nn.Module):
    """For images [B, 32, 32, 3]: DenseNet-BC with `depth` layers and growth rate `growth_rate`.

    Submodules, in forward order: conv0; for block b = 1..3 and layer l = 1..n: blockb_layerl_norm1,
    blockb_layerl_conv1 (1×1 to 4k), blockb_layerl_norm2, blockb_layerl_conv2 (3×3 to k); after blocks 1 and
    2: transb_norm, transb_conv; then norm_final, fc. Convolutions have no bias.

    Attributes:
      depth: 3 · 2n + 4 weighted layers (n bottleneck layers per block; e.g. 100 for n = 16).
      growth_rate: k, the channels each bottleneck layer adds.
      num_classes: C.
      compression: θ; a transition maps m channels to floor(θ · m).
      norm: normalization before every ReLU, one of `layers.NORMS` ('batch' in the paper).
      dtype: compute dtype; parameters stay float32 and the logits are float32.
    """

    depth: int
    growth_rate: int
    num_classes: int
    compression: float = 0.5
    norm: str = "batch"
    dtype: Any = jnp.float32

    def _conv(self, features: int, kernel: int, name: str) -> nn.Conv:
        return Conv(
            features,
            (kernel, kernel),
            padding="SAME",
            use_bias=False,
            dtype=self.dtype,
            kernel_init=_conv_init,
            name=name,
        )

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits of a batch of images.

        Args:
          x: normalized images [B, H, W, 3] (32×32 for CIFAR; each transition halves H and W, rounding
            down, so sides of at least 4).
          train: training mode (batch statistics for BatchNorm).

        Returns:
          float32 logits [B, num_classes].

        Raises:
          ValueError: if depth − 4 is not a positive multiple of 6 or compression is not in (0, 1].
        """
        if self.depth < 10 or (self.depth - 4) % 6 != 0:
            raise ValueError(
                f"DenseNet-BC depth={self.depth}: must be 6n + 4 with n >= 1 bottleneck layers per block "
                "(e.g. 40, 64, 82, 100, 190)"
            )
        if not 0.0 < self.compression <= 1.0:
            raise ValueError(f"DenseNet-BC compression={self.compression}: must be in (0, 1]")
        n = (self.depth - 4) // 6
        k = self.growth_rate

        x = self._conv(2 * k, 3, "conv0")(x)  # [B, H, W, 2k]
        for b in range(1, NUM_BLOCKS + 1):
            for i in range(1, n + 1):
                prefix = f"block{b}_layer{i}"
                y = nn.relu(norm(self.norm, train, self.dtype, name=f"{prefix}_norm1")(x))  # [B, h, w, c]
                y = self._conv(4 * k, 1, f"{prefix}_conv1")(y)  # [B, h, w, 4k]
                y = nn.relu(norm(self.norm, train, self.dtype, name=f"{prefix}_norm2")(y))
                y = self._conv(k, 3, f"{prefix}_conv2")(y)  # [B, h, w, k]
                x = jnp.concatenate([x, y], axis=-1)  # [B, h, w, c + k]
            if b < NUM_BLOCKS:
                out = int(self.compression * x.shape[-1])  # floor(θ · c)
                x = nn.relu(norm(self.norm, train, self.dtype, name=f"trans{b}_norm")(x))
                x = self._conv(out, 1, f"trans{b}_conv")(x)  # [B, h, w, floor(θ c)]
                x = nn.avg_pool(x, (2, 2), strides=(2, 2))  # [B, h / 2, w / 2, floor(θ c)]
        x = nn.relu(norm(self.norm, train, self.dtype, name="norm_final")(x))
        x = jnp.mean(x, axis=(1, 2))  # [B, c]
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)  # [B, C]
        return logits_f32(x)
