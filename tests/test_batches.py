"""Per-member minibatches: order and augmentation streams, reproducibility, augmentation, no host trips."""

from __future__ import annotations

import itertools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import small_config

from jaxens import data as data_lib
from jaxens import ensemble as ensemble_lib
from jaxens import models, optim, train_chunk, train_step
from jaxens import rng as rng_lib


@pytest.fixture(scope="module")
def digits():
    """sklearn digits (8×8×1 uint8 images, offline), on device."""
    return data_lib.load(small_config(**{"dataset": "digits", "model.name": "cnn2d", "train.batch_size": 32}))


def _indices(streams, member, steps, num_train, batch_size):
    """The member's example indices for each step, re-derived from the contract in jaxens.data.batch."""
    spe = num_train // batch_size
    out = []
    for s in steps:
        perm = jax.random.permutation(jax.random.fold_in(streams.order[member], s // spe), num_train)
        out.append(np.asarray(perm[(s % spe) * batch_size : (s % spe + 1) * batch_size]))
    return np.stack(out)


def test_no_coupling_orders_differ_and_coupled_order_shares_order_only(digits):
    steps = range(0, 100, 7)  # Crosses epoch boundaries (46 steps per epoch).
    independent = rng_lib.member_streams(0, 2)
    assert not np.array_equal(_indices(independent, 0, steps, 1497, 32), _indices(independent, 1, steps, 1497, 32))

    coupled = rng_lib.member_streams(0, 2, shared=("order",))
    np.testing.assert_array_equal(_indices(coupled, 0, steps, 1497, 32), _indices(coupled, 1, steps, 1497, 32))
    # The shared stream is member 0's; the others stay independent.
    np.testing.assert_array_equal(coupled.order[1], independent.order[0])
    np.testing.assert_array_equal(coupled.augment, independent.augment)
    assert not np.array_equal(coupled.init[0], coupled.init[1])

    ds = digits.to_device()
    kw = dict(batch_size=32, augment="crop_flip", padding=2)
    for step in (3, 50):
        (x0, y0), (x1, y1) = (
            data_lib.batch_at_step(ds, coupled.order[m], coupled.augment[m], step, **kw) for m in (0, 1)
        )
        np.testing.assert_array_equal(y0, y1)  # Same examples...
        assert not np.array_equal(x0, x1)  # ...augmented differently.
    both = rng_lib.member_streams(0, 2, shared=("order", "augment"))
    (x0, _), (x1, _) = (data_lib.batch_at_step(ds, both.order[m], both.augment[m], 3, **kw) for m in (0, 1))
    np.testing.assert_array_equal(x0, x1)


def test_batches_are_reproducible_from_keys_and_step(digits):
    ds = digits.to_device()
    streams = rng_lib.member_streams(3, 4)
    spe = data_lib.steps_per_epoch(ds.num_train, 32)
    kw = dict(batch_size=32, augment="crop_flip", padding=2)
    for step in (0, spe - 1, spe, 3 * spe + 5):
        epochs = jnp.full((4,), step // spe)
        orders = data_lib.epoch_orders(streams.order, epochs, ds.num_train)  # What the trainer computes.
        for m in range(4):
            x, y = data_lib.member_batch(ds, orders[m], streams.augment[m], step, **kw)
            x_ref, y_ref = data_lib.batch_at_step(ds, streams.order[m], streams.augment[m], step, **kw)
            np.testing.assert_array_equal(x, x_ref)
            np.testing.assert_array_equal(y, y_ref)
            idx = _indices(streams, m, [step], ds.num_train, 32)[0]
            np.testing.assert_array_equal(y, np.asarray(digits.train_y)[idx])


def test_each_epoch_is_a_permutation_of_the_training_indices():
    streams = rng_lib.member_streams(0, 3)
    n, b = 1000, 64
    orders = np.asarray(data_lib.epoch_orders(streams.order, jnp.array([0, 1, 5]), n))
    for row in orders:
        np.testing.assert_array_equal(np.sort(row), np.arange(n))
    spe = data_lib.steps_per_epoch(n, b)
    seen = np.concatenate([np.asarray(data_lib.batch_indices(orders[0], s, b, spe)) for s in range(spe)])
    assert len(np.unique(seen)) == spe * b  # No example twice within an epoch; the tail (n mod b) is dropped.
    assert not np.array_equal(orders[0], orders[1])


def _crop_offset(padded, out):
    """The (dy, dx) at which `out` [H, W, C] sits inside `padded`, found by exhaustive search, or None."""
    h, w = out.shape[:2]
    for dy, dx in itertools.product(range(padded.shape[0] - h + 1), range(padded.shape[1] - w + 1)):
        if np.array_equal(padded[dy : dy + h, dx : dx + w], out):
            return dy, dx
    return None


def test_crops_stay_within_the_padded_bounds():
    images = np.random.default_rng(0).integers(1, 256, (64, 8, 8, 3), dtype=np.uint8)  # No zeros inside.
    out = np.asarray(data_lib.augment_images("crop", jax.random.PRNGKey(1), images, padding=2))
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
    offsets = [_crop_offset(p, o) for p, o in zip(padded, out)]
    assert all(o is not None and 0 <= o[0] <= 4 and 0 <= o[1] <= 4 for o in offsets)
    assert len(set(offsets)) > 5  # Offsets vary per image.
    assert (0, 0) in offsets or (4, 4) in offsets or any(4 in o for o in offsets)  # Reaches the padding.


def test_a_flip_is_an_exact_mirror_and_crop_flip_composes():
    images = np.random.default_rng(0).integers(1, 256, (64, 8, 8, 3), dtype=np.uint8)
    out = np.asarray(data_lib.augment_images("flip", jax.random.PRNGKey(2), images))
    flipped = [np.array_equal(o, x[:, ::-1]) for o, x in zip(out, images)]
    kept = [np.array_equal(o, x) for o, x in zip(out, images)]
    assert all(f != k for f, k in zip(flipped, kept))  # Every image is exactly one of the two.
    assert 10 < sum(flipped) < 54

    out = np.asarray(data_lib.augment_images("crop_flip", jax.random.PRNGKey(3), images, padding=2))
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
    for p, o in zip(padded, out):
        assert _crop_offset(p, o) is not None or _crop_offset(p, o[:, ::-1]) is not None
    np.testing.assert_array_equal(
        out, np.asarray(data_lib.augment_images("crop_flip", jax.random.PRNGKey(3), images, padding=2))
    )
    assert np.array_equal(data_lib.augment_images("none", jax.random.PRNGKey(3), images), images)


@pytest.mark.parametrize("step_loop", ["device", "host"])
def test_training_steps_make_no_host_transfers(digits, step_loop):
    """Gathering and augmenting K members' batches happens on device: any implicit host↔device transfer
    inside the step raises under `jax.transfer_guard('disallow')`, and the compiled step holds the gather
    and no host callback, infeed or outfeed."""
    config = small_config(**{"dataset": "digits", "model.name": "cnn2d", "model.widths": (8,), "train.batch_size": 32})
    ds = digits.to_device()
    model = models.build(config.model, ds.num_classes)
    tx = optim.make_optimizer(config.optimizer, 100)
    state = ensemble_lib.init_ensemble(model, tx, rng_lib.member_streams(0, 3), ds.input_shape)
    chunk = train_chunk.TrainChunk(model, tx, 32, "vmap", step_loop, augment="crop_flip", padding=2)
    orders = data_lib.epoch_orders(state.rngs.order, jnp.zeros((3,), jnp.int32), ds.num_train)  # Once per epoch.
    jax.block_until_ready((state, orders))
    with jax.transfer_guard("disallow"):
        state, sums = chunk(state, orders, ds, 5)
        state, sums = chunk(state, orders, ds, 5)
        jax.block_until_ready(state)
    np.testing.assert_array_equal(state.step, [10, 10, 10])
    assert chunk.trace_count == 1
    # Members that reach their end step stop (a spawn sweep): the masked step is transfer-free too.
    ends = jax.device_put(np.array([12, 15, 20], np.int32))
    with jax.transfer_guard("disallow"):
        state, sums = chunk(state, orders, ds, 5, ends)
        jax.block_until_ready(state)
    np.testing.assert_array_equal(state.step, [12, 15, 15])
    assert np.all(np.asarray(sums["loss"]) > 0)

    mesh = ensemble_lib.placement_mesh(state)
    for checked in (False, True):  # The steps without and with the per-step divergence check.
        many, one = chunk._runs[checked]
        jitted, args = (
            (many, (state, orders, ds, np.int32(1), None, None))
            if step_loop == "device"
            else (one, (state, sums, orders, ds, None, None))
        )
        hlo = jitted.lower(*args, mesh=mesh).compile().as_text()
        assert "gather" in hlo
        for host_op in ("outfeed", "infeed", "callback", "send-done", "recv-done"):
            assert host_op not in hlo, host_op


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_the_chunk_trains_each_member_as_member_train_step_alone(digits, strategy):
    """The chunk maps `member_train_step` over the members (each gathers and augments its own batch): K
    members trained so equal, bit for bit, each member trained by `member_train_step` alone."""
    config = small_config(**{"dataset": "digits", "model.name": "cnn2d", "model.widths": (8,), "train.batch_size": 32})
    ds = digits.to_device()
    model = models.build(config.model, ds.num_classes)
    tx = optim.make_optimizer(config.optimizer, 100)
    init = ensemble_lib.init_ensemble(model, tx, rng_lib.member_streams(0, 3), ds.input_shape)
    kw = dict(augment="crop_flip", padding=2)
    chunk = train_chunk.TrainChunk(model, tx, 32, strategy, "host", **kw)
    orders = data_lib.epoch_orders(init.rngs.order, jnp.zeros((3,), jnp.int32), ds.num_train)
    stacked, _ = chunk(jax.tree.map(jnp.copy, init), orders, ds, 4)
    step = jax.jit(lambda s, o: train_step.member_train_step(model, tx, s, o, ds, 32, **kw))
    for m in range(3):
        alone = jax.tree.map(lambda a: a[m], init)
        for _ in range(4):  # All within epoch 0.
            alone, _ = step(alone, orders[m])
        for a, b in zip(jax.tree.leaves(stacked.params), jax.tree.leaves(alone.params), strict=True):
            np.testing.assert_array_equal(np.asarray(a[m]), np.asarray(b))


def test_a_child_spawned_mid_epoch_draws_the_parents_remaining_examples_in_its_own_order():
    """Zamparo et al. §1, spawned at step 5 of a 10-step epoch (N = 1,000, B = 100): in the spawn epoch each
    child sees exactly the 500 examples its parent had not drawn, so parent-then-child covers every example
    once (before: 753 distinct of 1,000); the children's remainders are in orders of their own; the next
    epoch is each child's own permutation. The orders are those the trainer's loop computes."""
    from jaxens import spawn as spawn_lib
    from jaxens.trainer import loop

    n, b, spe, t, k = 1000, 100, 10, 25, 3  # Spawn at step 25: epoch 2, step 5 of it.
    parent = rng_lib.member_streams(7, 1)
    children = spawn_lib.child_streams(spawn_lib.spawn_key(7, t), k)
    state = types.SimpleNamespace(rngs=children)
    spawned = (b, np.repeat(np.asarray(parent.order), k, axis=0))
    phase = loop.Phase("members", np.full(k, t), np.full(k, 60), spe, 5, spawned=spawned)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("member", "data"))
    orders = np.asarray(loop._epoch_orders(state, phase, np.full(k, 2), n, mesh))  # [K, N]
    parents_epoch = np.asarray(jax.random.permutation(jax.random.fold_in(parent.order[0], 2), n))
    parent_drew = parents_epoch[: 5 * b]  # The parent's steps 20-24.
    remainders = []
    for m in range(k):
        child_draws = np.concatenate([orders[m][s * b : (s + 1) * b] for s in range(5, spe)])  # Steps 25-29.
        np.testing.assert_array_equal(np.sort(np.concatenate([parent_drew, child_draws])), np.arange(n))
        remainders.append(child_draws)
        assert not np.array_equal(child_draws, parents_epoch[5 * b :])
    assert all(not np.array_equal(remainders[i], remainders[j]) for i in range(k) for j in range(i + 1, k))
    following = np.asarray(loop._epoch_orders(state, phase, np.full(k, 3), n, mesh))
    own = np.asarray(data_lib.epoch_orders(children.order, jnp.full((k,), 3), n))
    np.testing.assert_array_equal(following, own)
    # A child spawned at an epoch boundary has its own permutation from the start.
    at_boundary = loop.Phase("members", np.full(k, 20), np.full(k, 60), spe, 5, spawned=spawned)
    own = np.asarray(data_lib.epoch_orders(children.order, jnp.full((k,), 2), n))
    np.testing.assert_array_equal(np.asarray(loop._epoch_orders(state, at_boundary, np.full(k, 2), n, mesh)), own)
