"""A small Vision Transformer (Dosovitskiy et al. 2021, "An image is worth 16x16 words") for 64×64 images.

The image is cut into non-overlapping patches, each linearly embedded (a convolution whose kernel and stride
are the patch size); a learned class token is prepended and learned position embeddings are added; `depth`
pre-LayerNorm encoder blocks follow, then a final LayerNorm, and the class token's output is classified.

The default (patch 8, hidden 192, depth 6, 3 heads, MLP 768, the width of ViT-Ti at half its depth) turns a
64×64 Tiny-ImageNet image into 64 patches + 1 class token and has 2,757,896 parameters at 200 classes.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxens.models.conv import Conv
from jaxens.models.layers import logits_f32, norm

# Transformers normalize each token over its features: the only normalization the ViT accepts.
VIT_NORMS = ("layer",)


class ClassTokenPosEmbed(nn.Module):
    """Prepends a learned class token and adds learned position embeddings: [B, N, D] → [B, N + 1, D].

    Both are float32 parameters: `cls_token` [1, 1, D] (zeros) and `pos_embedding` [1, N + 1, D] (normal, std
    0.02), cast to the compute dtype.

    Attributes:
      dtype: compute dtype.
    """

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Token sequence with the class token first.

        Args:
          x: patch embeddings [B, N, D].

        Returns:
          tokens [B, N + 1, D] in the compute dtype; token 0 is the class token.
        """
        b, n, d = x.shape
        cls_token = self.param("cls_token", nn.initializers.zeros, (1, 1, d), jnp.float32)
        pos_embedding = self.param("pos_embedding", nn.initializers.normal(stddev=0.02), (1, n + 1, d), jnp.float32)
        cls_tokens = jnp.broadcast_to(cls_token.astype(self.dtype), (b, 1, d))  # [B, 1, D]
        x = jnp.concatenate([cls_tokens, x.astype(self.dtype)], axis=1)  # [B, N + 1, D]
        return x + pos_embedding.astype(self.dtype)


class EncoderBlock(nn.Module):
    """Pre-LN transformer encoder block: [B, T, D] → [B, T, D].

    x = x + Dropout(Attention(LayerNorm(x))); x = x + Dropout(Dense(D)(Dropout(GELU(Dense(mlp_dim)(LayerNorm(x)))))).

    Submodules, in forward order: norm1, attn, norm2, mlp_in, mlp_out.

    Attributes:
      heads: attention heads (they split D).
      mlp_dim: hidden units of the MLP.
      dropout: drop rate after the attention and after each MLP layer.
      norm: normalization kind ('layer').
      dtype: compute dtype; parameters stay float32.
    """

    heads: int
    mlp_dim: int
    dropout: float = 0.0
    norm: str = "layer"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """The block's output.

        Args:
          x: tokens [B, T, D].
          train: training mode (dropout on).

        Returns:
          tokens [B, T, D] in the compute dtype.
        """
        d = x.shape[-1]
        y = norm(self.norm, train, self.dtype, name="norm1")(x)
        y = nn.MultiHeadDotProductAttention(num_heads=self.heads, dtype=self.dtype, name="attn")(
            y, y, deterministic=not train
        )  # [B, T, D]
        y = nn.Dropout(self.dropout, deterministic=not train)(y)
        x = x + y
        y = norm(self.norm, train, self.dtype, name="norm2")(x)
        y = nn.gelu(nn.Dense(self.mlp_dim, dtype=self.dtype, name="mlp_in")(y))  # [B, T, mlp_dim]
        y = nn.Dropout(self.dropout, deterministic=not train)(y)
        y = nn.Dense(d, dtype=self.dtype, name="mlp_out")(y)  # [B, T, D]
        y = nn.Dropout(self.dropout, deterministic=not train)(y)
        return x + y


class ViT(nn.Module):
    """Vision Transformer for images [B, H, W, C_in] → float32 logits [B, num_classes].

    Submodules, in forward order: patch_embed, embed, block0, ..., block{depth-1}, final_norm, head.

    Attributes:
      num_classes: C.
      patch_size: P; H and W must be multiples of it (N = H·W / P² patches).
      hidden: D, the token width.
      depth: encoder blocks.
      heads: attention heads per block (must divide D).
      mlp_dim: hidden units of each block's MLP.
      dropout: drop rate after the embeddings, the attention and the MLP layers (rng name 'dropout').
      norm: 'layer' only (LayerNorm); anything else raises ValueError.
      dtype: compute dtype; parameters stay float32 and the logits are float32.
    """

    num_classes: int
    patch_size: int = 8
    hidden: int = 192
    depth: int = 6
    heads: int = 3
    mlp_dim: int = 768
    dropout: float = 0.0
    norm: str = "layer"
    dtype: Any = jnp.float32

    def __post_init__(self):
        if self.norm not in VIT_NORMS:
            raise ValueError(f"ViT norm={self.norm!r}: allowed: {', '.join(VIT_NORMS)}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits of a batch of images.

        Args:
          x: normalized images [B, H, W, C_in].
          train: training mode (dropout on).

        Returns:
          float32 logits [B, num_classes].
        """
        p = self.patch_size
        # [B, H, W, C_in] → [B, H/P, W/P, D]
        x = Conv(self.hidden, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, name="patch_embed")(x)
        x = x.reshape((x.shape[0], -1, self.hidden))  # [B, N, D]
        x = ClassTokenPosEmbed(self.dtype, name="embed")(x)  # [B, T = N + 1, D]
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        for i in range(self.depth):
            x = EncoderBlock(self.heads, self.mlp_dim, self.dropout, self.norm, self.dtype, name=f"block{i}")(
                x, train
            )  # [B, T, D]
        x = norm(self.norm, train, self.dtype, name="final_norm")(x)
        x = x[:, 0]  # class token [B, D]
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)  # [B, C]
        return logits_f32(x)
