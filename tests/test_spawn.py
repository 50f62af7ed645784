"""Spawning children from a parent, and layer re-initialization masks (Zamparo et al. §1, §3)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import small_config, train_steps

from jaxens import data as data_lib
from jaxens import ensemble as ensemble_lib
from jaxens import models, optim, train_chunk
from jaxens import reinit as reinit_lib
from jaxens import rng as rng_lib
from jaxens import spawn as spawn_lib

FAST_COMPILE = {"xla_backend_optimization_level": 0}


@pytest.fixture(scope="module")
def parent_setup():
    """A one-member CNN (BatchNorm) trained 30 steps on augmented digits: (config, model, tx, chunk, ds, state)."""
    config = small_config(
        **{
            "dataset": "digits",
            "model.name": "cnn2d",
            "model.widths": (8, 16),
            "train.batch_size": 64,
            "optimizer.schedule": "cosine",
            "ensemble.k": 1,
        }
    )
    ds = data_lib.load(config).to_device()
    model = models.build(config.model, ds.num_classes)
    tx = optim.make_optimizer(config.optimizer, 200)
    chunk = train_chunk.TrainChunk(model, tx, 64, "vmap", "host", augment="crop_flip", padding=1)
    state = ensemble_lib.init_ensemble(model, tx, rng_lib.member_streams(0, 1), ds.input_shape)
    state = train_steps(chunk, state, ds, 30, 64, steps_per_call=10)
    return config, model, tx, chunk, ds, state


def _tree_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_children_equal_the_parent_except_their_streams(parent_setup):
    _, _, tx, _, _, parent = parent_setup
    children = spawn_lib.spawn(parent, 3, jax.random.PRNGKey(7))
    assert children.k == 3
    for c in range(3):
        child = jax.tree.map(lambda x: x[c : c + 1], children)
        assert _tree_equal(child.params, parent.params)
        assert _tree_equal(child.batch_stats, parent.batch_stats) and jax.tree.leaves(parent.batch_stats)
        assert _tree_equal(child.opt_state, parent.opt_state)
        np.testing.assert_array_equal(child.step, parent.step)
        for stream in ("order", "augment", "dropout"):
            assert not np.array_equal(getattr(child.rngs, stream), getattr(parent.rngs, stream))
    assert len({tuple(np.asarray(k)) for k in children.rngs.order}) == 3  # Every child its own order.


def test_reset_optimizer_restarts_state_and_schedule(parent_setup):
    _, _, tx, _, _, parent = parent_setup
    children = spawn_lib.spawn(parent, 2, jax.random.PRNGKey(7), reset_optimizer=True, tx=tx)
    params0 = jax.tree.map(lambda x: x[0], parent.params)
    fresh = tx.init(params0)
    child0 = jax.tree.map(lambda x: x[0], children.opt_state)
    assert _tree_equal(child0, fresh)
    # The first child update is that of a fresh optimizer (schedule at step 0, no momentum), unlike the parent's.
    grads = jax.tree.map(jnp.ones_like, params0)
    child_update, _ = tx.update(grads, child0, params0)
    fresh_update, _ = tx.update(grads, tx.init(params0), params0)
    parent_update, _ = tx.update(grads, jax.tree.map(lambda x: x[0], parent.opt_state), params0)
    assert _tree_equal(child_update, fresh_update) and not _tree_equal(child_update, parent_update)
    assert _tree_equal(children.params, jax.tree.map(lambda x: jnp.concatenate([x, x]), parent.params))


def test_a_child_with_the_parents_streams_continues_the_parent_bitwise(parent_setup):
    _, _, _, chunk, ds, parent = parent_setup
    copy = jax.tree.map(jnp.copy, parent)  # The chunk donates its input.
    child = spawn_lib.spawn(copy, 1, jax.random.PRNGKey(1), streams=parent.rngs)
    child = train_steps(chunk, child, ds, 25, 64, steps_per_call=10)  # Crosses an epoch boundary (20 steps).
    continued = train_steps(chunk, jax.tree.map(jnp.copy, parent), ds, 25, 64, steps_per_call=10)
    assert _tree_equal(child.params, continued.params)
    assert _tree_equal(child.batch_stats, continued.batch_stats)
    assert _tree_equal(child.opt_state, continued.opt_state)


@pytest.fixture(scope="module")
def resnet20():
    model = models.build(small_config(**{"dataset": "cifar10", "model.name": "resnet20"}).model, 10)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))["params"]
    return model, shapes, models.forward_order(model, (32, 32, 3))


@pytest.mark.parametrize("side", ["low", "high"])
@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.1, 0.25, 0.5, 0.9, 1.0])
def test_mask_covers_the_fraction_with_whole_tensors_from_one_side(resnet20, side, fraction):
    _, shapes, order = resnet20
    m = reinit_lib.mask(shapes, order, fraction, side)
    sizes = {p: int(np.prod(models.order.get_path(shapes, p).shape)) for p in order}
    total = sum(sizes.values())
    assert total == 269_722
    chosen = [p for p in order if models.order.get_path(m, p)]
    seq = order if side == "low" else order[::-1]
    assert chosen == sorted(chosen, key=order.index)  # A mask selects whole tensors...
    assert set(chosen) == set(seq[: len(chosen)])  # ...a contiguous run from its side.
    covered = sum(sizes[p] for p in chosen)
    assert covered >= fraction * total
    if chosen:  # Minimal: without its last tensor the run falls short.
        assert covered - sizes[seq[len(chosen) - 1]] < fraction * total
    assert reinit_lib.covered_fraction(shapes, m) == pytest.approx(covered / total)
    if fraction > 0:
        first = ("stem_conv", "kernel") if side == "low" else ("head", "bias")
        assert models.order.get_path(m, first)


def test_reinit_at_spawn_draws_fresh_tensors_per_child():
    config = small_config(**{"model.widths": (16, 16), "ensemble.k": 1})
    model = models.build(config.model, 10)
    tx = optim.make_optimizer(config.optimizer, 100)
    parent = ensemble_lib.init_ensemble(model, tx, rng_lib.member_streams(3, 1), (40, 1))
    # A parent with momentum: every slot 0.5.
    parent = parent.replace(opt_state=jax.tree.map(lambda x: jnp.full_like(x, 0.5), parent.opt_state))
    params0 = jax.tree.map(lambda x: x[0], parent.params)
    order = models.forward_order(model, (40, 1))

    none = spawn_lib.spawn(
        parent,
        2,
        jax.random.PRNGKey(0),
        tx=tx,
        reinit=spawn_lib.Reinit(reinit_lib.mask(params0, order, 0.0, "low"), model, (40, 1)),
    )
    assert _tree_equal(none.params, jax.tree.map(lambda x: jnp.concatenate([x, x]), parent.params))
    assert _tree_equal(none.opt_state, jax.tree.map(lambda x: jnp.concatenate([x, x]), parent.opt_state))

    m = reinit_lib.mask(params0, order, 0.3, "high")  # head and dense1: 442 of 1,098 parameters.
    children = spawn_lib.spawn(parent, 2, jax.random.PRNGKey(0), tx=tx, reinit=spawn_lib.Reinit(m, model, (40, 1)))
    # SGD's momentum of a re-initialized tensor restarts at zero; the others keep the parent's.
    trace = children.opt_state[1][0].trace
    for path in order:
        expected = 0.0 if models.order.get_path(m, path) else 0.5
        np.testing.assert_array_equal(models.order.get_path(trace, path), expected)
    for path in order:
        child = [models.order.get_path(children.params, path)[c] for c in (0, 1)]
        before = models.order.get_path(parent.params, path)[0]
        if models.order.get_path(m, path):
            if path[-1] == "kernel":  # Biases initialize to zeros: equal draws by construction.
                assert not np.array_equal(child[0], child[1]) and not np.array_equal(child[0], before)
        else:
            np.testing.assert_array_equal(child[0], before)
            np.testing.assert_array_equal(child[1], before)
    assert models.order.get_path(m, ("head", "kernel")) and not models.order.get_path(m, ("dense0", "kernel"))
