"""Convolution as patches × kernel (im2col): the conv the models use on CPU, where XLA's own is slow to train.

On this project's 2-core CPU, XLA's convolution gradients took 2x (kernel gradient) to 3x (input gradient)
longer than the forward pass, and vmapping conv members lowers to grouped convolutions, slower still.
Written as strided slices of the padded input, concatenated into patches [B, *out, kh·kw·C_in] and
multiplied by the kernel reshaped to [kh·kw·C_in, C_out], a convolution is a GEMM, and so are both of its
gradients (autodiff transposes the slices into pads and the product into two GEMMs); under vmap it stays
batched GEMMs. `benchmarks/conv_paths.py` measures it against `lax.conv_general_dilated`.

The patches are not kept for the backward pass (`jax.checkpoint`): they hold kh·kw copies of the input,
so they are rebuilt from it (slices are cheap), and memory stays that of the XLA convolution.

`conv_general_dilated` takes `lax.conv_general_dilated`'s arguments (Flax's `nn.Conv(...,
conv_general_dilated=...)` hook, used by every model through `Conv`) and computes the same function. Its
'auto' choice is im2col for strided convs on CPU (channel-last, no dilation or feature groups) and XLA's
convolution otherwise: measured on 2 cores (forward + both gradients, batch 100-128), im2col ran strided
3x3 convs 1.0-2.2x faster, but stride-1 ones 0.71-1.3x (its patches of large maps with few channels are
memory-bound), and accelerators have fast convolutions of their own.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

IMPLEMENTATIONS = ("auto", "im2col", "xla")


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    precision=None,
    implementation: str = "auto",
    **kwargs,
) -> jax.Array:
    """`lax.conv_general_dilated`, computed as im2col where that is supported and chosen.

    Args:
      implementation: 'im2col', 'xla', or 'auto' (im2col for strided convs when the default backend is
        the CPU).
      Others: as `lax.conv_general_dilated`.
    """
    xla = lambda: lax.conv_general_dilated(  # noqa: E731
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation,
        rhs_dilation,
        dimension_numbers,
        feature_group_count,
        precision=precision,
        **kwargs,
    )
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation={implementation!r}: allowed: {', '.join(IMPLEMENTATIONS)}")
    strided = any(s > 1 for s in window_strides)
    if implementation == "xla" or (implementation == "auto" and (jax.default_backend() != "cpu" or not strided)):
        return xla()
    n = lhs.ndim - 2
    channel_last = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == lax.ConvDimensionNumbers(
        (0, n + 1, *range(1, n + 1)), (n + 1, n, *range(n)), (0, n + 1, *range(1, n + 1))
    )
    undilated = all(d == 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
    if not (channel_last and undilated and feature_group_count == 1 and not kwargs):
        return xla()
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:-1], rhs.shape[:-2], window_strides, padding)
    return _im2col(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding), precision)


def patches(x: jax.Array, window: Sequence[int], strides: Sequence[int], padding) -> jax.Array:
    """The conv patches of channel-last x [B, *spatial, C]: [B, *out, prod(window)·C], window offsets major
    (row-major over the window) and channels minor, matching a kernel [*window, C, C_out] reshaped."""
    x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    out = [(size - w) // s + 1 for size, w, s in zip(x.shape[1:-1], window, strides)]
    cols = [
        x[(slice(None), *(slice(o, o + (m - 1) * s + 1, s) for o, m, s in zip(offset, out, strides)))]
        for offset in itertools.product(*(range(w) for w in window))
    ]  # prod(window) × [B, *out, C]
    return cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)


@jax.named_call
def _im2col(x, kernel, strides, padding, precision):
    window = kernel.shape[:-2]

    def conv(x, kernel):
        p = patches(x, window, strides, padding)  # [B, *out, kh·kw·C_in]
        flat = kernel.reshape(math.prod(kernel.shape[:-1]), kernel.shape[-1])  # [kh·kw·C_in, C_out]
        return jnp.matmul(p, flat, precision=precision)  # [B, *out, C_out]

    # Keep only x and the kernel for the backward pass; the patches are rebuilt there.
    return jax.checkpoint(conv, policy=jax.checkpoint_policies.nothing_saveable)(x, kernel)


# flax.linen.Conv computing with `conv_general_dilated` ('auto'): the convolution every jaxens model uses.
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
