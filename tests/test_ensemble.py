"""The stacked ensemble: strategies agree, K=1 equals a hand-written loop, members are independent."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import small_config, train_steps

from jaxens import data as data_lib
from jaxens import ensemble as ensemble_lib
from jaxens import models, optim, train_chunk, train_step
from jaxens import rng as rng_lib


def _setup(config, dataset):
    model = models.build(config.model, dataset.num_classes)
    spe = data_lib.steps_per_epoch(dataset.num_train, config.train.batch_size)
    tx = optim.make_optimizer(config.optimizer, spe * config.train.num_epochs)
    state = ensemble_lib.init_ensemble(
        model, tx, rng_lib.member_streams(config.seed, config.ensemble.k), dataset.input_shape
    )
    return model, tx, state


def _trained(config, dataset, num_steps, strategy):
    model, tx, state = _setup(config, dataset)
    chunk = train_chunk.TrainChunk(model, tx, config.train.batch_size, strategy, "host")
    return train_steps(chunk, state, dataset, num_steps, config.train.batch_size)


@pytest.mark.parametrize(
    "overrides",
    [
        {"model.name": "mlp", "model.dropout": 0.2},
        {"model.name": "cnn1d", "model.widths": (8, 8), "model.dropout": 0.1},  # BatchNorm + dropout.
    ],
    ids=["mlp", "cnn1d"],
)
def test_vmap_and_loop_strategies_agree(mnist1d, overrides):
    config = small_config(**overrides)
    dataset = mnist1d.to_device()
    a = _trained(config, dataset, 10, "vmap")  # Crosses an epoch boundary (8 steps per epoch).
    b = _trained(config, dataset, 10, "loop")
    np.testing.assert_array_equal(a.step, b.step)
    for name in ("params", "batch_stats", "opt_state"):
        jax.tree.map(
            lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6), getattr(a, name), getattr(b, name)
        )
    # And the parameters did move.
    _, _, init = _setup(config, dataset)
    assert not np.allclose(jax.tree.leaves(a.params)[0], jax.tree.leaves(init.params)[0])


def test_k1_equals_plain_single_model_loop(mnist1d):
    """A K=1 ensemble against a single-model optax loop written here from the documented key derivation."""
    config = small_config(**{"ensemble.k": 1, "model.dropout": 0.1, "optimizer.weight_decay": 1e-3})
    dataset = mnist1d.to_device()
    num_steps, batch = 11, config.train.batch_size
    ens = _trained(config, dataset, num_steps, "vmap")

    # Independent reference: keys per the contract in jaxens/rng.py and jaxens/data/order.py.
    member_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0)
    init_key, order_key, dropout_key = (jax.random.fold_in(member_key, i) for i in (0, 1, 3))
    model = models.MLP(widths=(32,), num_classes=10, dropout=0.1)
    params = model.init({"params": init_key}, jnp.zeros((1, 40, 1)), train=False)["params"]
    tx = optax.chain(optax.add_decayed_weights(1e-3), optax.sgd(0.05, momentum=0.9))
    opt_state = tx.init(params)
    x_all = np.asarray(mnist1d.train_x, np.float32)
    x_all = (x_all - x_all.mean()) / x_all.std()
    y_all = np.asarray(mnist1d.train_y)
    n = len(y_all)
    spe = n // batch

    @jax.jit
    def step(params, opt_state, x, y, key):
        def loss_fn(p):
            logits = model.apply({"params": p}, x, train=True, rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    for s in range(num_steps):
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(order_key, s // spe), n))
        idx = perm[(s % spe) * batch : (s % spe + 1) * batch]
        params, opt_state = step(params, opt_state, x_all[idx], y_all[idx], jax.random.fold_in(dropout_key, s))

    assert int(ens.step[0]) == num_steps
    jax.tree.map(lambda e, r: np.testing.assert_allclose(e[0], r, rtol=1e-4, atol=1e-5), ens.params, params)


def test_members_have_different_params_and_orders(mnist1d):
    config = small_config()
    dataset = mnist1d.to_device()
    _, _, state = _setup(config, dataset)
    kernel = np.asarray(state.params["dense0"]["kernel"])  # [K, D, H]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not np.allclose(kernel[i], kernel[j])
    orders = np.asarray(data_lib.epoch_orders(state.rngs.order, jnp.zeros(3, jnp.int32), dataset.num_train))
    assert orders.shape == (3, dataset.num_train)
    for row in orders:
        np.testing.assert_array_equal(np.sort(row), np.arange(dataset.num_train))
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    # Same keys, same epoch → same order; next epoch → a new order.
    again = np.asarray(data_lib.epoch_orders(state.rngs.order, jnp.zeros(3, jnp.int32), dataset.num_train))
    np.testing.assert_array_equal(orders, again)
    nxt = np.asarray(data_lib.epoch_orders(state.rngs.order, jnp.ones(3, jnp.int32), dataset.num_train))
    assert not np.array_equal(orders[0], nxt[0])


@pytest.mark.parametrize("step_loop", ["device", "host"])
def test_one_trace_for_every_chunk_length(mnist1d, step_loop):
    config = small_config()
    dataset = mnist1d.to_device()
    model, tx, state = _setup(config, dataset)
    chunk = train_chunk.TrainChunk(model, tx, config.train.batch_size, "vmap", step_loop)
    state = train_steps(chunk, state, dataset, 13, config.train.batch_size, steps_per_call=3)  # Lengths 3,3,2,3,2.
    assert int(state.step[0]) == 13
    assert chunk.trace_count == 1


def test_device_and_host_step_loops_agree(mnist1d):
    config = small_config(**{"model.name": "cnn1d", "model.widths": (8,), "model.dropout": 0.1})
    dataset = mnist1d.to_device()
    results = []
    for step_loop in ("device", "host"):
        model, tx, state = _setup(config, dataset)
        chunk = train_chunk.TrainChunk(model, tx, config.train.batch_size, "vmap", step_loop)
        orders = data_lib.epoch_orders(state.rngs.order, jnp.zeros(3, jnp.int32), dataset.num_train)
        results.append(jax.device_get(chunk(state, orders, dataset, 5)))
    (a, sums_a), (b, sums_b) = results
    np.testing.assert_array_equal(a.step, b.step)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6), (a, sums_a), (b, sums_b))


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_predictor_equals_loop_over_members(mnist1d, strategy):
    config = small_config(**{"model.name": "cnn1d", "model.widths": (8,)})
    dataset = mnist1d.to_device()
    model, tx, state = _setup(config, dataset)
    chunk = train_chunk.TrainChunk(model, tx, config.train.batch_size, strategy, "host")
    state = train_steps(chunk, state, dataset, 4, config.train.batch_size)  # Non-trivial BN statistics.
    logits = ensemble_lib.Predictor(model, 300, strategy)(state, dataset.test_x, dataset)  # 1000 = 3·300 + 100.
    assert logits.shape == (3, 1000, 10)
    x = dataset.normalize(dataset.test_x)
    for m in range(3):
        variables = {
            "params": jax.tree.map(lambda a: a[m], state.params),
            "batch_stats": jax.tree.map(lambda a: a[m], state.batch_stats),
        }
        ref = model.apply(variables, x, train=False)
        np.testing.assert_allclose(logits[m], ref, rtol=1e-5, atol=1e-5)


def test_batchnorm_statistics_are_per_member(mnist1d):
    config = small_config(**{"model.name": "cnn1d", "model.widths": (8,)})
    dataset = mnist1d.to_device()
    state = _trained(config, dataset, 3, "vmap")
    mean = np.asarray(jax.tree.leaves(state.batch_stats)[0])  # [K, channels]
    assert mean.shape[0] == 3
    assert not np.allclose(mean[0], mean[1])  # Different init and batches → different statistics.


def test_auto_step_loop_choice():
    assert train_chunk.resolve_step_loop("auto", host_loop_on_cpu=True, backend="cpu") == "host"
    assert train_chunk.resolve_step_loop("auto", host_loop_on_cpu=False, backend="cpu") == "device"
    assert train_chunk.resolve_step_loop("auto", host_loop_on_cpu=True, backend="gpu") == "device"
    assert train_chunk.resolve_step_loop("host", host_loop_on_cpu=False) == "host"
    with pytest.raises(ValueError, match="step_loop='scan'"):
        train_chunk.resolve_step_loop("scan", host_loop_on_cpu=False)
    # Only the models with stride-1 (XLA) convolutions step from the host on CPU.
    assert [name for name in ("mlp", "cnn1d", "cnn2d", "resnet20") if models.MODELS[name].host_loop_on_cpu] == [
        "resnet20"
    ]


@pytest.mark.parametrize("strategy, step_loop", [("vmap", "device"), ("loop", "host")])
def test_a_diverging_member_is_frozen_and_leaves_the_others_bitwise_unchanged(mnist1d, strategy, step_loop):
    """Member 1's updates are scaled by 1e8: it diverges, keeps the finite state it had before the failing
    step and records that step; members 0 and 2 end bitwise as with scales (1, 1, 1)."""
    config = small_config()
    dataset = mnist1d.to_device()
    model, tx, state = _setup(config, dataset)
    chunk = train_chunk.TrainChunk(model, tx, config.train.batch_size, strategy, step_loop)
    orders = data_lib.epoch_orders(state.rngs.order, jnp.zeros((3,), jnp.int32), dataset.num_train)
    copy = lambda s: jax.tree.map(jnp.copy, s)  # noqa: E731  (the chunk donates its input)
    calm, calm_sums = chunk(copy(state), orders, dataset, 8, None, jnp.array([1.0, 1.0, 1.0]))
    wild, wild_sums = chunk(copy(state), orders, dataset, 8, None, jnp.array([1.0, 1e8, 1.0]))

    np.testing.assert_array_equal(calm.diverged, [-1, -1, -1])
    s = int(wild.diverged[1])
    assert 0 <= s < 8 and list(np.asarray(wild.diverged)) == [-1, s, -1]
    np.testing.assert_array_equal(wild.step, [8, s, 8])  # Frozen at the step that failed.
    assert all(np.isfinite(np.asarray(x[1])).all() for x in jax.tree.leaves(wild.params))
    for a, b in zip(jax.tree.leaves(calm), jax.tree.leaves(wild)):
        np.testing.assert_array_equal(np.asarray(a)[[0, 2]], np.asarray(b)[[0, 2]])
    # The frozen state is the one member 1 had after s steps.
    partial, _ = chunk(copy(state), orders, dataset, s, None, jnp.array([1.0, 1e8, 1.0])) if s else (state, None)
    for a, b in zip(jax.tree.leaves(partial.params), jax.tree.leaves(wild.params)):
        np.testing.assert_array_equal(np.asarray(a)[1], np.asarray(b)[1])
    np.testing.assert_array_equal(wild_sums["steps"], [8, s, 8])  # Metric sums count the steps taken.
    # The calm chunk ran without the per-step check, the wild one with it (rerun): XLA fuses the loss
    # differently in the two programs, so the sums may differ in the last bit (the states do not).
    np.testing.assert_allclose(np.asarray(wild_sums["loss"])[[0, 2]], np.asarray(calm_sums["loss"])[[0, 2]], rtol=1e-6)


@pytest.mark.parametrize(
    "strategy, step_loop, lams", [("vmap", "device", ()), ("loop", "host", ()), ("vmap", "device", (0.5,))]
)
def test_the_chunk_end_check_gives_the_states_of_the_per_step_check(mnist1d, strategy, step_loop, lams):
    """divergence_check='chunk' (the steps without the check, the chunk's end verified finite, a rerun under
    the per-step check when it is not) ends in the state of 'step' bit for bit: without divergence, with
    member 1 diverging (under λ its group-mates take its non-finite gradients), and in a chunk that starts
    with member 1 already frozen. Only a failed verification traces the checked program."""
    config = small_config()
    dataset = mnist1d.to_device()
    model, tx, state = _setup(config, dataset)
    orders = data_lib.epoch_orders(state.rngs.order, jnp.zeros((3,), jnp.int32), dataset.num_train)
    copy = lambda s: jax.tree.map(jnp.copy, s)  # noqa: E731  (the chunk donates its input)
    chunks = {
        check: train_chunk.TrainChunk(model, tx, 16, strategy, step_loop, lams=lams, divergence_check=check)
        for check in ("chunk", "step")
    }
    for scales, traces in (([1.0, 1.0, 1.0], 1), ([1.0, 1e8, 1.0], 2)):
        ends = {
            check: chunk(copy(state), orders, dataset, 8, None, jnp.array(scales)) for check, chunk in chunks.items()
        }
        assert chunks["chunk"].trace_count == traces  # The checked program only once a verification failed.
        # A second chunk from there (member 1 frozen in the wild case: the per-step check from the start).
        again = {
            check: chunk(copy(ends[check][0]), orders, dataset, 4, None, jnp.array(scales))
            for check, chunk in chunks.items()
        }
        for (fast, fast_sums), (checked, checked_sums) in (
            (ends["chunk"], ends["step"]),
            (again["chunk"], again["step"]),
        ):
            for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(checked)):
                np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(fast_sums["steps"], checked_sums["steps"])
            np.testing.assert_allclose(fast_sums["loss"], checked_sums["loss"], rtol=1e-6)
        diverged = np.asarray(ends["step"][0].diverged)
        assert (diverged >= 0).any() == (scales[1] > 1)


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_a_shared_batch_gathered_once_trains_like_per_member_batches(mnist1d, strategy):
    """Under coupled_order every member's batch is the same: gathering it once gives the per-member path's
    numbers (to float rounding: the matmuls differ in shape), across an epoch boundary."""
    config = small_config(**{"coupling.condition": "coupled_order", "model.dropout": 0.1})
    dataset = mnist1d.to_device()
    model, tx, _ = _setup(config, dataset)
    streams = rng_lib.member_streams(config.seed, 3, ("order",))
    assert train_step.shared_batch_of(("order",), "none", spawning=False)
    assert not train_step.shared_batch_of(("order",), "crop", spawning=False)
    assert not train_step.shared_batch_of((), "none", spawning=False)
    out = {}
    for shared in (False, True):
        state = ensemble_lib.init_ensemble(model, tx, jax.tree.map(jnp.copy, streams), dataset.input_shape)
        chunk = train_chunk.TrainChunk(model, tx, config.train.batch_size, strategy, "host", shared_batch=shared)
        out[shared] = train_steps(chunk, state, dataset, 10, config.train.batch_size)
    np.testing.assert_array_equal(out[True].step, out[False].step)
    for a, b in zip(jax.tree.leaves(out[True].params), jax.tree.leaves(out[False].params)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
