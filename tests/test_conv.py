"""jaxens.models.conv: the im2col convolution computes XLA's convolution, values and gradients."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxens.models import conv as conv_lib

CASES = [
    # (input shape, kernel window, strides, padding)
    ((3, 28, 28, 1), (3, 3), (2, 2), "SAME"),
    ((3, 14, 14, 5), (3, 3), (1, 1), "SAME"),
    ((3, 15, 15, 3), (3, 3), (2, 2), "VALID"),
    ((3, 9, 8, 3), (3, 3), (2, 2), ((1, 1), (1, 1))),
    ((3, 32, 32, 3), (8, 8), (8, 8), "VALID"),  # A ViT patch embedding.
    ((3, 16, 16, 3), (1, 1), (2, 2), "SAME"),  # A strided 1x1 projection shortcut.
    ((3, 40, 2), (5,), (2,), "SAME"),  # MNIST-1D's 1-D conv.
]


def _numpy_conv(x, w, strides, pads):
    """The definition: y[b, o, c'] = sum over window offsets d and channels c of xpad[b, o*s + d, c] w[d, c, c']."""
    x = np.pad(x, ((0, 0), *pads, (0, 0)))
    window, out = w.shape[:-2], [(n - k) // s + 1 for n, k, s in zip(x.shape[1:-1], w.shape[:-2], strides)]
    y = np.zeros((x.shape[0], *out, w.shape[-1]))
    for o in np.ndindex(*out):
        for d in np.ndindex(*window):
            idx = tuple(oi * s + di for oi, s, di in zip(o, strides, d))
            y[(slice(None), *o)] += x[(slice(None), *idx)] @ w[d]
    return y


@pytest.mark.parametrize("shape, window, strides, padding", CASES)
def test_im2col_equals_the_definition_and_xlas_conv_with_gradients(shape, window, strides, padding):
    kx, kw = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(kx, shape)
    w = jax.random.normal(kw, (*window, shape[-1], 4)) / np.sqrt(np.prod(window) * shape[-1])
    dn = ("NHWC", "HWIO", "NHWC") if len(shape) == 4 else ("NWC", "WIO", "NWC")
    pads = lax.padtype_to_pads(shape[1:-1], window, strides, padding) if isinstance(padding, str) else padding

    def f(impl):
        return lambda x, w: conv_lib.conv_general_dilated(
            x, w, strides, padding, dimension_numbers=dn, implementation=impl
        )

    y = jax.jit(f("im2col"))(x, w)
    np.testing.assert_allclose(
        y, _numpy_conv(np.asarray(x, np.float64), np.asarray(w, np.float64), strides, pads), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(y, f("xla")(x, w), rtol=1e-5, atol=1e-5)
    loss = lambda impl: lambda x, w: jnp.sum(jnp.tanh(f(impl)(x, w)))  # noqa: E731
    grads = jax.jit(jax.grad(loss("im2col"), argnums=(0, 1)))(x, w)
    for got, want in zip(grads, jax.grad(loss("xla"), argnums=(0, 1))(x, w)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _primitives(fn, *args) -> set[str]:
    return {e.primitive.name for e in jax.make_jaxpr(fn)(*args).eqns}


def test_auto_uses_im2col_for_strided_convs_on_cpu_and_xla_otherwise():
    assert jax.default_backend() == "cpu"
    x, w = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
    dn = ("NHWC", "HWIO", "NHWC")
    auto = functools.partial(conv_lib.conv_general_dilated, padding="SAME", dimension_numbers=dn)
    assert "conv_general_dilated" not in _primitives(lambda x, w: auto(x, w, (2, 2)), x, w)
    assert "conv_general_dilated" in _primitives(lambda x, w: auto(x, w, (1, 1)), x, w)
    # Dilation and feature groups are left to XLA, whatever the choice.
    dilated = lambda x, w: auto(x, w, (2, 2), rhs_dilation=(2, 2), implementation="im2col")  # noqa: E731
    assert "conv_general_dilated" in _primitives(dilated, x, w)
    grouped = lambda x, w: auto(x, w[:, :, :1], (2, 2), feature_group_count=3, implementation="im2col")  # noqa: E731
    assert "conv_general_dilated" in _primitives(grouped, x, jnp.ones((3, 3, 3, 6)))
    with pytest.raises(ValueError, match="implementation='cudnn': allowed: auto, im2col, xla"):
        auto(x, w, (2, 2), implementation="cudnn")


def test_the_models_conv_is_a_flax_conv_with_the_same_parameters():
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 12, 12, 3))
    ours, theirs = conv_lib.Conv(5, (3, 3), (2, 2)), nn.Conv(5, (3, 3), (2, 2))
    variables = theirs.init(jax.random.PRNGKey(2), x)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(2), x)) == jax.tree.map(jnp.shape, variables)
    np.testing.assert_allclose(ours.apply(variables, x), theirs.apply(variables, x), rtol=1e-5, atol=1e-6)
