"""Set-up programs compiled at XLA:CPU's LLVM level 1 (`jaxens.setup_jit`) compute exactly what `jax.jit` at
the default level computes: every model's initial members, bit for bit, so no run's numbers move."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxens import config as config_lib
from jaxens import ensemble, models, spawn
from jaxens import rng as rng_lib
from jaxens.setup_jit import setup_jit

# (model, widths, norm, input shape): an MLP and a BatchNorm CNN (batch_stats); the other architectures are
# slow (ResNet-20's default compilation alone takes about a minute here).
CASES = [
    ("mlp", (32, 16), "none", (40,)),
    ("cnn1d", (8, 8), "batch", (40, 1)),
    pytest.param("resnet20", (), "batch", (32, 32, 3), marks=pytest.mark.slow),
    pytest.param("cnn2d", (32, 64), "batch", (28, 28, 1), marks=pytest.mark.slow),
    pytest.param("vit", (), "layer", (32, 32, 3), marks=pytest.mark.slow),
    pytest.param("densenet16_4", (), "batch", (32, 32, 3), marks=pytest.mark.slow),
    pytest.param("webb_cnn", (), "none", (28, 28, 1), marks=pytest.mark.slow),
    pytest.param("fort_small_cnn", (), "batch", (32, 32, 3), marks=pytest.mark.slow),
]


def _model(name, widths, norm, input_shape):
    c = config_lib.get_default_config().model
    c.name, c.norm = name, norm
    if widths:
        c.widths = widths
    return models.build(c, 10, input_shape)


@pytest.mark.parametrize("name,widths,norm,input_shape", CASES)
def test_members_initialize_bit_for_bit_as_under_jax_jit(name, widths, norm, input_shape):
    model, tx = _model(name, widths, norm, input_shape), optax.adam(1e-3)
    keys = rng_lib.member_streams(3, 4).init
    default = jax.jit(ensemble._init_members.__wrapped__, static_argnames=("model", "tx", "input_shape"))
    expected = default(keys, model=model, tx=tx, input_shape=input_shape)
    got = ensemble.init_ensemble(model, tx, rng_lib.member_streams(3, 4), input_shape)
    got = (got.params, got.batch_stats, got.opt_state)
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Spawn's re-initialization draws through the same compilation.
    fresh = spawn._fresh_variables(keys, model=model, input_shape=input_shape)
    for a, b in zip(jax.tree.leaves(fresh), jax.tree.leaves(expected[:2]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_setup_jit_is_jax_jit_with_static_arguments():
    @functools.partial(setup_jit, static_argnames="n")
    def draw(key, n):
        return jax.random.truncated_normal(key, -2.0, 2.0, (n,))

    key = jax.random.key(0)
    expected = jax.jit(lambda key: jax.random.truncated_normal(key, -2.0, 2.0, (5,)))(key)
    np.testing.assert_array_equal(draw(key, n=5), expected)
    assert draw(key, n=7).shape == (7,)
    assert jnp.issubdtype(draw(key, n=3).dtype, jnp.floating)


def test_setup_jit_inside_another_trace_is_a_plain_nested_jit():
    draw = setup_jit(lambda key: jax.random.normal(key, (3,)))
    key = jax.random.key(1)
    np.testing.assert_array_equal(jax.jit(lambda k: draw(k) * 2)(key), 2 * draw(key))
    assert jax.eval_shape(draw, key).shape == (3,)
