"""Cyclical SG-MCMC (Zhang et al. 2020): schedule, sampling switch, noise scale, SGHMC, per-member noise.

References are written here from the formulas (NumPy, float64), not from jaxens.optim.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import REPO, small_config, train_steps

from jaxens import config as config_lib
from jaxens import data as data_lib
from jaxens import ensemble as ensemble_lib
from jaxens import models, optim, train_chunk, train_step
from jaxens import rng as rng_lib
from jaxens import steps as steps_lib
from jaxens.trainer import validation


def np_alpha(k, alpha0, total, cycles):
    """α_k = α_0/2 [cos(π mod(k, ⌈K/M⌉)/⌈K/M⌉) + 1] in float64."""
    length = math.ceil(total / cycles)
    return alpha0 / 2 * (np.cos(np.pi * (np.asarray(k) % length) / length) + 1)


def np_sampling(k, total, cycles, beta):
    length = math.ceil(total / cycles)
    return (np.asarray(k) % length) / length >= beta


def _opt_config(**fields):
    c = config_lib.get_default_config().optimizer
    c.unlock()
    c.update({"name": "sgmcmc", "schedule": "cyclical", "momentum": 0.0, **fields})
    return c


def _tree(seed, scale=1.0):
    rng = np.random.default_rng(seed)
    return {
        "dense": {
            "kernel": jnp.asarray(rng.normal(size=(5, 3)) * scale, jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(3,)) * scale, jnp.float32),
        },
        "out": jnp.asarray(rng.normal(size=(7,)) * scale, jnp.float32),
    }


# --- Schedule and sampling switch --------------------------------------------------------------------


@pytest.mark.parametrize("total,cycles", [(12, 3), (10, 4), (7, 7), (9, 1), (10, 6)])
def test_cyclical_schedule_matches_formula(total, cycles):
    k = np.arange(total + 3)
    got = optim.make_schedule(_opt_config(learning_rate=0.4, cycles=cycles), total)(jnp.asarray(k))
    np.testing.assert_allclose(got, np_alpha(k, 0.4, total, cycles), rtol=1e-6, atol=1e-7)
    length = math.ceil(total / cycles)
    # Every cycle restarts at α_0 and decays monotonically until its last step.
    for start in range(0, total, length):
        assert float(got[start]) == pytest.approx(0.4)
        cycle = np.asarray(got[start : min(start + length, total)])
        assert np.all(np.diff(cycle) < 0)


def test_cyclical_schedule_by_hand():
    # K = 8, M = 2: L = 4, r = 0, 1/4, 1/2, 3/4; α = α0·(1, (1+√½)/2, 1/2, (1−√½)/2).
    got = np.asarray(optim.cyclical_schedule(1.0, 8, 2)(jnp.arange(8)))
    h = math.sqrt(0.5)
    np.testing.assert_allclose(got, [1, (1 + h) / 2, 0.5, (1 - h) / 2] * 2, rtol=1e-6)


def test_cycle_ends():
    assert optim.cycle_ends(12, 3) == (4, 8, 12)
    assert optim.cycle_ends(10, 4) == (3, 6, 9)  # L = 3; the one-step last cycle yields no sample.
    assert optim.cycle_ends(10, 6) == (2, 4, 6, 8, 10)  # ⌈10/6⌉ = 2: five full cycles.
    assert optim.cycle_ends(5, 1) == (5,)
    # Each end is the step after the smallest step size of its cycle, just before the restart at α_0.
    alpha = np_alpha(np.arange(12), 1.0, 12, 3)
    for end in optim.cycle_ends(12, 3)[:-1]:
        assert alpha[end] == 1.0 and alpha[end - 1] == alpha[:end].min()
    with pytest.raises(ValueError, match="config.optimizer.cycles=13"):
        optim.cycle_ends(12, 13)
    with pytest.raises(ValueError, match="config.optimizer.cycles=0"):
        optim.cycle_length(12, 0)


@pytest.mark.parametrize(
    "total,cycles,beta", [(40, 4, 0.7), (40, 4, 0.8), (12, 3, 0.5), (12, 3, 0.0), (10, 4, 0.6), (100, 3, 0.95)]
)
def test_sampling_switch_matches_formula(total, cycles, beta):
    k = np.arange(2 * total)
    got = np.asarray(optim.is_sampling_step(jnp.asarray(k), total, cycles, beta))
    np.testing.assert_array_equal(got, np_sampling(k, total, cycles, beta))


def test_sampling_switch_boundary_by_hand():
    # L = 10, β = 0.7: r = 0.7 exactly at offset 7 samples (r(k) >= β), offset 6 explores.
    got = np.asarray(optim.is_sampling_step(jnp.arange(20), 40, 4, 0.7))
    np.testing.assert_array_equal(got, ([False] * 7 + [True] * 3) * 2)


# --- One transform, against hand-written updates ------------------------------------------------------


def test_exploration_steps_equal_plain_sgd():
    """Steps with r(k) < β are SGD with weight decay and the cyclical step size, bit for bit."""
    total, cycles, wd = 12, 3, 1e-2
    c = _opt_config(learning_rate=0.3, cycles=cycles, exploration=0.5, weight_decay=wd)
    tx = optim.make_optimizer(c, total, num_train=50)
    plain = optax.chain(optax.add_decayed_weights(wd), optax.sgd(optim.make_schedule(c, total)))
    params = _tree(0)
    state, plain_state = tx.init(params), plain.init(params)
    sampling = np_sampling(np.arange(total), total, cycles, 0.5)
    for k in range(total):
        grads = _tree(100 + k)
        key = jax.random.PRNGKey(k)
        upd, state = tx.update(grads, state, params, noise_key=key)
        ref, plain_state = plain.update(grads, plain_state, params)
        same = [np.array_equal(a, b) for a, b in zip(jax.tree.leaves(upd), jax.tree.leaves(ref))]
        if sampling[k]:
            assert not any(same), k
        else:
            assert all(same), k
        params = optax.apply_updates(params, upd)


def test_sampling_noise_std():
    """On a zero gradient a sampling step is pure noise of std sqrt(2 α_k T / N) per parameter."""
    n_params, alpha, temperature, num_train = 400_000, 0.2, 0.5, 1000
    tx = optim.sgmcmc(alpha, num_train, temperature=temperature)
    params = {"w": jnp.zeros((n_params,)), "b": jnp.zeros((3,))}
    key = jax.random.PRNGKey(7)
    upd, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params, noise_key=key)
    w = np.asarray(upd["w"], np.float64)
    expected = math.sqrt(2 * alpha * temperature / num_train)  # 0.01414
    # The sample std of 4e5 normals is within 0.5% (≈ 4.5 standard errors of 0.11%).
    assert abs(w.std() / expected - 1) < 5e-3
    assert abs(w.mean()) < 5 * expected / math.sqrt(n_params)
    # And it is ξ of the documented key derivation: leaf i draws from split(key, n_leaves)[i].
    keys = jax.random.split(key, 2)  # Leaves in tree order: 'b', 'w'.
    np.testing.assert_allclose(upd["w"], expected * jax.random.normal(keys[1], (n_params,)), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(upd["b"], expected * jax.random.normal(keys[0], (3,)), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("momentum,schedule", [(0.0, "cyclical"), (0.5, "constant")])
def test_temperature_zero_adds_no_noise(momentum, schedule):
    total = 10
    c = _opt_config(learning_rate=0.1, cycles=2, exploration=0.0, temperature=0.0, momentum=momentum, schedule=schedule)
    tx = optim.make_optimizer(c, total, num_train=10)
    plain = optax.sgd(optim.make_schedule(c, total), momentum=momentum or None)
    params = _tree(1)
    state, plain_state = tx.init(params), plain.init(params)
    for k in range(total):  # Every step is a sampling step (β = 0); none needs a key.
        grads = _tree(200 + k)
        upd, state = tx.update(grads, state, params)
        ref, plain_state = plain.update(grads, plain_state, params)
        # optax's momentum keeps b = g + m b with the step size outside, ours b = m b − α g: the same
        # updates at a constant step size, in exact arithmetic.
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), upd, ref)
        params = optax.apply_updates(params, upd)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgld_and_sghmc_against_numpy(momentum):
    """Several steps across exploration and sampling stages against a float64 re-derivation."""
    total, cycles, beta, alpha0, temperature, wd, num_train = 9, 3, 0.4, 0.05, 0.8, 3e-3, 20
    c = _opt_config(
        learning_rate=alpha0,
        cycles=cycles,
        exploration=beta,
        temperature=temperature,
        momentum=momentum,
        weight_decay=wd,
    )
    tx = optim.make_optimizer(c, total, num_train=num_train)
    params = _tree(2)
    state = tx.init(params)
    theta = {p: np.asarray(v, np.float64) for p, v in _flat(params).items()}
    buf = {p: np.zeros_like(v) for p, v in theta.items()}
    for k in range(total):
        grads = _tree(300 + k)
        key = jax.random.fold_in(jax.random.PRNGKey(3), k)
        upd, state = tx.update(grads, state, params, noise_key=key)
        params = optax.apply_updates(params, upd)
        # Reference: ξ per the documented derivation (leaf i of split(key, n)), everything else by hand.
        names = list(_flat(params))  # tree (sorted) order
        xi = dict(zip(names, jax.random.split(key, len(names))))
        a = np_alpha(k, alpha0, total, cycles)
        for name, g in _flat(grads).items():
            g = np.asarray(g, np.float64) + wd * theta[name]
            noise = 0.0
            if np_sampling(k, total, cycles, beta):
                std = math.sqrt(2 * a * (1 - momentum) * temperature / num_train)
                noise = std * np.asarray(jax.random.normal(xi[name], theta[name].shape), np.float64)
            buf[name] = momentum * buf[name] - a * g + noise
            theta[name] = theta[name] + buf[name]
    assert int(state.count) == total
    for name, v in _flat(params).items():
        np.testing.assert_allclose(v, theta[name], rtol=1e-5, atol=1e-6)


def _flat(tree):
    return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def test_missing_num_train_or_key_is_an_error():
    c = _opt_config(cycles=2)
    with pytest.raises(ValueError, match="num_train"):
        optim.make_optimizer(c, 10)
    tx = optim.make_optimizer(c, 10, num_train=100)
    params = _tree(0)
    with pytest.raises(ValueError, match="noise_key"):
        tx.update(params, tx.init(params), params)


def test_every_optimizer_accepts_the_noise_key():
    params = _tree(0)
    for name in ("sgd", "adam", "adamw"):
        c = _opt_config(name=name, schedule="constant", momentum=0.9)
        tx = optim.make_optimizer(c, 10)
        a, _ = tx.update(params, tx.init(params), params, noise_key=jax.random.PRNGKey(0))
        b, _ = tx.update(params, tx.init(params), params)
        jax.tree.map(np.testing.assert_array_equal, a, b)


# --- In the trainer: per-member noise from the dropout stream -----------------------------------------


def _chunk_run(config, dataset, streams, num_steps, strategy="vmap", **overrides):
    model = models.build(config.model, dataset.num_classes, dataset.input_shape)
    spe = data_lib.steps_per_epoch(dataset.num_train, config.train.batch_size)
    tx = optim.make_optimizer(config.optimizer, spe * config.train.num_epochs, num_train=dataset.num_train)
    state = ensemble_lib.init_ensemble(model, tx, jax.tree.map(jnp.copy, streams), dataset.input_shape)
    init = jax.tree.map(jnp.copy, state)  # The trainer donates its input state.
    chunk = train_chunk.TrainChunk(model, tx, config.train.batch_size, strategy, "host", **overrides)
    return model, tx, init, train_steps(chunk, state, dataset, num_steps, config.train.batch_size)


SGLD = {
    "optimizer.name": "sgmcmc",
    "optimizer.schedule": "cyclical",
    "optimizer.cycles": 2,
    "optimizer.exploration": 0.0,
    "optimizer.momentum": 0.0,
    "ensemble.k": 2,
}


def test_noise_key_contract_and_per_member_noise(mnist1d):
    """Members sharing init and order differ only by their noise, which is sqrt(2 α T/N) ξ(noise key)."""
    config = small_config(**SGLD)
    dataset = mnist1d.to_device()
    shared = ("init", "order", "augment")
    streams = rng_lib.member_streams(config.seed, 2, shared)
    _, _, init, noisy = _chunk_run(config, dataset, streams, 1)
    config0 = small_config(**SGLD, **{"optimizer.temperature": 0.0})
    _, _, _, plain = _chunk_run(config0, dataset, streams, 1)
    # One step: θ_noisy − θ_plain = sqrt(2 α_0 T / N) ξ, ξ from the documented key of each member.
    std = math.sqrt(2 * config.optimizer.learning_rate * 1.0 / dataset.num_train)
    for m in range(2):
        dropout_stream = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed), m), 3)
        key = jax.random.fold_in(jax.random.fold_in(dropout_stream, 0), 1)
        assert not np.array_equal(key, jax.random.fold_in(dropout_stream, 0))  # Not the dropout key.
        np.testing.assert_array_equal(train_step.noise_key(streams.dropout[m], jnp.int32(0)), key)
        params_m = jax.tree.map(lambda a: a[m], init.params)
        xi = optim.langevin_noise(key, params_m)
        jax.tree.map(
            lambda n, p, x: np.testing.assert_allclose(n[m] - p[m], std * x, rtol=1e-3, atol=2e-6),
            noisy.params,
            plain.params,
            xi,
        )
    # Same init and batches, different dropout streams → different noise → different members.
    k0 = noisy.params["dense0"]["kernel"]
    assert not np.allclose(k0[0], k0[1])
    np.testing.assert_array_equal(plain.params["dense0"]["kernel"][0], plain.params["dense0"]["kernel"][1])
    # Sharing the dropout stream too shares the noise: the members stay identical.
    _, _, _, same = _chunk_run(config, dataset, rng_lib.member_streams(config.seed, 2, (*shared, "dropout")), 3)
    jax.tree.map(lambda a: np.testing.assert_array_equal(a[0], a[1]), same.params)


def test_ensemble_path_equals_loop_over_members(mnist1d):
    """SGHMC with dropout: the vmapped trainer ≡ the loop strategy ≡ member_train_step member by member."""
    config = small_config(
        **{
            **SGLD,
            "optimizer.momentum": 0.9,
            "optimizer.exploration": 0.5,
            "optimizer.weight_decay": 1e-3,
            "model.dropout": 0.1,
        }
    )
    dataset = mnist1d.to_device()
    streams = rng_lib.member_streams(config.seed, 2)
    num_steps = 10  # Crosses an epoch (8 steps) and the sampling stage of cycle 1 (steps 4-7 of 8).
    model, tx, init, ens = _chunk_run(config, dataset, streams, num_steps)
    _, _, _, looped = _chunk_run(config, dataset, streams, num_steps, strategy="loop")
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)  # noqa: E731
    jax.tree.map(close, ens.params, looped.params)
    step = jax.jit(lambda s, o: train_step.member_train_step(model, tx, s, o, dataset, config.train.batch_size))
    spe = data_lib.steps_per_epoch(dataset.num_train, config.train.batch_size)
    for m in range(2):
        state = jax.tree.map(lambda a: a[m], init)
        for s in range(num_steps):
            order = jax.random.permutation(jax.random.fold_in(state.rngs.order, s // spe), dataset.num_train)
            state, _ = step(state, order)
        jax.tree.map(lambda e, r: close(e[m], r), ens.params, state.params)
        jax.tree.map(lambda e, r: close(e[m], r), ens.opt_state, state.opt_state)


def test_joint_step_gives_each_member_its_noise(mnist1d):
    """Under the modular loss at λ = 0 (independent members on one shared minibatch) the joint step draws
    the same per-member noise as the member step under coupled_order."""
    overrides = {**SGLD, "coupling.condition": "coupled_order"}
    config = small_config(**overrides)
    dataset = mnist1d.to_device()
    streams = rng_lib.member_streams(config.seed, 2, ("order",))
    _, _, _, independent = _chunk_run(config, dataset, streams, 3)
    _, _, _, joint = _chunk_run(small_config(**overrides, **{"loss.lam": (0.0,)}), dataset, streams, 3, lams=(0.0,))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), independent.params, joint.params)
    assert not np.allclose(joint.params["dense0"]["kernel"][0], joint.params["dense0"]["kernel"][1])


# --- Config validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides,pattern",
    [
        ({"optimizer.cycles": 0}, r"config\.optimizer\.cycles=0: must be >= 1"),
        ({"optimizer.schedule": "cyclical", "optimizer.cycles": 17}, r"config\.optimizer\.cycles=17: .*T = 16"),
        ({"optimizer.name": "sgmcmc", "optimizer.cycles": 17}, r"config\.optimizer\.cycles=17"),
        ({"optimizer.temperature": -1.0}, r"config\.optimizer\.temperature=-1\.0: must be >= 0"),
        ({"optimizer.exploration": 1.0}, r"config\.optimizer\.exploration=1\.0: must lie in \[0, 1\)"),
        ({"optimizer.exploration": -0.1}, r"config\.optimizer\.exploration=-0\.1"),
        ({"optimizer.name": "sgmcmc", "optimizer.momentum": 1.0}, r"config\.optimizer\.momentum=1\.0: sgmcmc"),
        ({"optimizer.name": "sgmcmc", "optimizer.nesterov": True}, r"config\.optimizer\.nesterov=True: sgmcmc"),
        # 16 cycles of T = 16 steps: one step per cycle, r = 0 < β, never a sampling step.
        ({"optimizer.name": "sgmcmc", "optimizer.cycles": 16}, r"config\.optimizer\.exploration=0\.8: .*never sample"),
        ({"optimizer.schedule": "cyclic"}, r"config\.optimizer\.schedule='cyclic': .*cyclical"),
        ({"optimizer.name": "sgld"}, r"config\.optimizer\.name='sgld': .*sgmcmc"),
    ],
)
def test_invalid_configs_name_the_field(overrides, pattern):
    with pytest.raises(config_lib.ConfigError, match=pattern):
        small_config(**overrides)


def test_valid_sgmcmc_configs():
    # T = 16: 2 cycles of 8 steps, r = 7/8 >= 0.8 samples; 4 cycles of 4 steps need β <= 3/4.
    small_config(**{"optimizer.name": "sgmcmc", "optimizer.schedule": "cyclical", "optimizer.cycles": 2})
    small_config(**{"optimizer.name": "sgmcmc", "optimizer.cycles": 4, "optimizer.exploration": 0.75})
    small_config(**{"optimizer.name": "sgmcmc", "optimizer.cycles": 16, "optimizer.temperature": 0.0})
    small_config(**{"optimizer.name": "sgd", "optimizer.schedule": "cyclical", "optimizer.cycles": 16})


def test_shipped_config_snapshots_every_sample():
    for arg in ("", "sghmc_m09", "sghmc_m09_cold"):
        config = config_lib.load_file(f"{REPO}/configs/mnist1d_csgmcmc.py", arg)
        validation.validate(config)
        spe = 4000 // config.train.batch_size
        total = spe * config.train.num_epochs
        every = steps_lib.parse(config.trajectory.every, spe)
        samples = optim.sample_steps(total, config.optimizer.cycles, config.optimizer.samples_per_cycle, spe)
        assert len(samples) == config.optimizer.cycles * config.optimizer.samples_per_cycle
        assert all(s % every == 0 for s in samples)  # Every sample is snapshotted.
    assert config.optimizer.temperature == pytest.approx(1 / 4000)


def test_the_default_csgmcmc_config_is_zhang_et_al_s_csghmc():
    """Zhang et al.'s cifar_csghmc.py (200 epochs, M = 4): noise where (epoch % 50) + 1 > 45, samples saved after
    the epochs where (epoch % 50) + 1 > 47, friction α = 0.9 (momentum 1 − α), temperature 1/N, lr 0.5."""
    config = config_lib.load_file(f"{REPO}/configs/mnist1d_csgmcmc.py")
    o = config.optimizer
    assert (o.momentum, o.learning_rate, o.weight_decay, o.cycles) == (0.1, 0.5, 5e-4, 4)
    assert o.temperature == pytest.approx(1 / 4000) and config.train.num_epochs == 200
    spe = 4000 // config.train.batch_size
    total = spe * 200
    epoch_of = np.arange(total) // spe  # The epoch of each update (0-based, as Zhang's loop counts).
    noisy = np.asarray(optim.is_sampling_step(jnp.arange(total), total, o.cycles, o.exploration))
    np.testing.assert_array_equal(noisy, (epoch_of % 50) + 1 > 45)
    saved_after = [e for e in range(200) if (e % 50) + 1 > 47]  # Zhang saves a model after these epochs.
    assert optim.sample_steps(total, o.cycles, o.samples_per_cycle, spe) == tuple((e + 1) * spe for e in saved_after)
