"""The small CIFAR-10 CNN of Webb et al. ("To Ensemble or Not Ensemble", §4.2, Table 3).

Five 3×3 convolutions with VALID padding, strides 1/2/1/2/1 and 32/64/64/128/128 filters, each followed by a
ReLU; an average pool over the final 3×3 map; a fully connected layer to the classes. On 32×32 inputs the
feature maps are 32 → 30 → 14 → 12 → 5 → 3, as in the table. With no normalization (the paper's choice) one
member has 279,050 parameters for 10 classes, so the paper's ensemble of 10 has ~2.8M.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxens.models.conv import Conv
from jaxens.models.layers import logits_f32, norm

# (filters, stride) of the five convolutions, input side first (Table 3).
WEBB_CNN_CONVS: tuple[tuple[int, int], ...] = ((32, 1), (64, 2), (64, 1), (128, 2), (128, 1))


class WebbCNN(nn.Module):
    """For images [B, H, W, 3]: 5 × [Conv(3×3, VALID) → norm → ReLU]; average pool; Dense(num_classes).

    Submodules, in forward order: conv1, norm1, ..., conv5, norm5 (the norms only when `norm` is not
    'none'), fc.

    Attributes:
      num_classes: C.
      norm: normalization between each convolution and its ReLU, one of `layers.NORMS`. The paper uses
        none ('none', the default); with any other choice the convolutions have no bias (the norm's own
        shift replaces it).
      dtype: compute dtype; parameters stay float32 and the logits are float32.
    """

    num_classes: int
    norm: str = "none"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits of a batch of images.

        Args:
          x: normalized images [B, H, W, 3] (32×32 for CIFAR-10).
          train: training mode (batch statistics for BatchNorm).

        Returns:
          float32 logits [B, num_classes].
        """
        use_bias = self.norm == "none"
        for i, (features, stride) in enumerate(WEBB_CNN_CONVS, start=1):
            # [B, H, W, C] → [B, (H - 3) // stride + 1, (W - 3) // stride + 1, features]
            x = Conv(
                features,
                (3, 3),
                strides=(stride, stride),
                padding="VALID",
                use_bias=use_bias,
                dtype=self.dtype,
                name=f"conv{i}",
            )(x)
            x = norm(self.norm, train, self.dtype, name=f"norm{i}")(x)
            x = nn.relu(x)
        # The table's 3×3 average pool covers the whole final 3×3 map: a global average pool.
        x = jnp.mean(x, axis=(1, 2))  # [B, 128]
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)  # [B, C]
        return logits_f32(x)
