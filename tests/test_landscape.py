"""Linear paths, BatchNorm recomputation and the error barrier against hand and NumPy re-derivations."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import BN_EPS, DenseBN, init_variables

from jaxens import landscape, metrics, models


def _small_cnn():
    """jaxens' 1-D strided CNN (conv → BatchNorm → ReLU, twice) with 4 and 6 channels."""
    return models.StridedCNN((4, 6), num_classes=3, kernel=(5,), norm="batch")


@functools.partial(jax.jit, static_argnums=0)
def _eval(model, variables, x, y):
    """(error, mean NLL) of eval-mode logits."""
    logits = model.apply(variables, x, train=False)
    return metrics.error(logits, y), metrics.nll(logits, y)


def _np_stats(params, train_x):
    """NumPy: per-BN-layer mean over batches of the batch mean and biased variance of the layer's input."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    sums = {"bn0": [0.0, 0.0], "bn1": [0.0, 0.0]}
    for xb in np.asarray(train_x, np.float64):
        h = xb
        for i in range(2):
            h = h @ p[f"dense{i}"]["kernel"] + p[f"dense{i}"]["bias"]  # Pre-BN activations [B, width].
            mu, var = h.mean(0), h.var(0)
            sums[f"bn{i}"][0] += mu
            sums[f"bn{i}"][1] += var
            # Training mode: this layer normalizes with this batch's statistics.
            h = np.maximum(0.0, (h - mu) / np.sqrt(var + BN_EPS) * p[f"bn{i}"]["scale"] + p[f"bn{i}"]["bias"])
    n = train_x.shape[0]
    return {name: {"mean": m / n, "var": v / n} for name, (m, v) in sums.items()}


def _perturb_bn(variables, seed):
    """BatchNorm scale and bias away from 1 and 0 (so that the second layer's input depends on them)."""
    rng = np.random.default_rng(seed)
    params = dict(variables["params"])
    for name in ("bn0", "bn1"):
        width = params[name]["scale"].shape[0]
        params[name] = {
            "scale": jnp.asarray(rng.uniform(0.5, 2.0, width), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=width) * 0.5, jnp.float32),
        }
    return {**variables, "params": params}


@pytest.fixture(scope="module")
def dense_bn():
    rng = np.random.default_rng(0)
    model = DenseBN()
    x = rng.normal(size=(40, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=40).astype(np.int32)
    train_x = (rng.normal(size=(3, 16, 4)) * 2 + 0.5).astype(np.float32)  # [num_batches, B, D]
    va, vb = (_perturb_bn(init_variables(model, seed, x), seed) for seed in (1, 2))
    return model, va, vb, landscape.PathData(x, y, train_x)


def test_interpolate_endpoints_and_midpoint():
    a = {"w": jnp.array([1.0, 2.0]), "b": {"c": jnp.array(3.0)}}
    b = {"w": jnp.array([3.0, -2.0]), "b": {"c": jnp.array(5.0)}}
    mid = landscape.interpolate(a, b, 0.25)
    np.testing.assert_allclose(mid["w"], [1.5, 1.0])
    np.testing.assert_allclose(mid["b"]["c"], 3.5)
    assert jax.tree.all(jax.tree.map(lambda u, v: bool(jnp.all(u == v)), landscape.interpolate(a, b, 0.0), a))
    assert jax.tree.all(jax.tree.map(lambda u, v: bool(jnp.all(u == v)), landscape.interpolate(a, b, 1.0), b))


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_recomputed_stats_match_numpy(dense_bn, alpha):
    model, va, vb, data = dense_bn
    params = landscape.interpolate(va["params"], vb["params"], alpha)
    variables = {"params": params, "batch_stats": va["batch_stats"]}
    new = jax.jit(lambda v, t: landscape.recompute_batch_stats(model.apply, v, t))(variables, data.train_x)
    want = _np_stats(params, data.train_x)
    assert jax.tree.structure(new["batch_stats"]) == jax.tree.structure(va["batch_stats"])
    for layer in ("bn0", "bn1"):
        for stat in ("mean", "var"):
            np.testing.assert_allclose(new["batch_stats"][layer][stat], want[layer][stat], rtol=1e-4, atol=1e-5)
    jax.tree.map(np.testing.assert_array_equal, new["params"], params)


def test_linear_path_uses_recomputed_stats(dense_bn):
    # The path's α = 0.5 point is evaluated with the NumPy-measured statistics of the midpoint network.
    model, va, vb, data = dense_bn
    path = landscape.linear_path(model.apply, va, vb, [0.5], data)
    params = landscape.interpolate(va["params"], vb["params"], 0.5)
    want_stats = jax.tree.map(lambda s: jnp.asarray(s, jnp.float32), _np_stats(params, data.train_x))
    err, loss = _eval(model, {"params": params, "batch_stats": want_stats}, data.x, data.y)
    np.testing.assert_allclose(path["loss"][0], loss, rtol=1e-4)
    assert float(path["error"][0]) == pytest.approx(float(err))


def test_recompute_agrees_with_flax_running_update():
    # One batch, stored statistics zero: Flax's training step leaves (1 − momentum)·(batch statistic),
    # computed by nn.BatchNorm itself, for every layer of a jaxens CNN.
    model = _small_cnn()
    x = jax.random.normal(jax.random.PRNGKey(3), (1, 10, 16, 1)) * 1.5 + 0.3
    variables = init_variables(model, 4, x[0])
    zeros = jax.tree.map(jnp.zeros_like, variables["batch_stats"])
    _, updates = jax.jit(lambda v, xb: model.apply(v, xb, train=True, mutable=["batch_stats"]))(
        {**variables, "batch_stats": zeros}, x[0]
    )
    new = jax.jit(lambda v, t: landscape.recompute_batch_stats(model.apply, v, t))(variables, x)
    jax.tree.map(
        lambda got, upd: np.testing.assert_allclose(0.1 * got, upd, rtol=1e-5, atol=1e-7),
        new["batch_stats"],
        updates["batch_stats"],
    )


def test_self_interpolation_has_zero_barrier():
    model = _small_cnn()
    rng = np.random.default_rng(5)
    x = rng.normal(size=(30, 16, 1)).astype(np.float32)
    train_x = rng.normal(size=(2, 12, 16, 1)).astype(np.float32)
    data = landscape.PathData(x, rng.integers(0, 3, 30).astype(np.int32), train_x)
    v = init_variables(model, 6, x)
    for baseline in landscape.BASELINES:
        out = landscape.barrier(model.apply, v, v, data, num_alphas=5, baseline=baseline)
        np.testing.assert_allclose(out["error"], out["error"][0])
        np.testing.assert_allclose(out["loss"], out["loss"][0], rtol=1e-5)
        assert float(out["barrier"]) == pytest.approx(0.0, abs=1e-7)
    np.testing.assert_allclose(out["alpha"], np.linspace(0, 1, 5), atol=1e-7)


@pytest.mark.parametrize("recompute", [True, False])
def test_vmapped_path_equals_loop(dense_bn, recompute):
    model, va, vb, data = dense_bn
    alphas = np.array([0.0, 0.3, 0.5, 1.0, 1.2], np.float32)
    path = landscape.linear_path(model.apply, va, vb, alphas, data, recompute_batch_stats=recompute)

    @jax.jit
    def one_alpha(alpha):  # One α on its own: no vmap.
        if recompute:
            v = {"params": landscape.interpolate(va["params"], vb["params"], alpha), "batch_stats": va["batch_stats"]}
            v = landscape.recompute_batch_stats(model.apply, v, data.train_x)
        else:
            v = landscape.interpolate(va, vb, alpha)
        logits = model.apply(v, data.x, train=False)
        return metrics.error(logits, data.y), metrics.nll(logits, data.y)

    for i, alpha in enumerate(alphas):
        err, loss = one_alpha(alpha)
        assert float(path["error"][i]) == pytest.approx(float(err))
        assert float(path["loss"][i]) == pytest.approx(float(loss), rel=1e-5)
    # Chunked evaluation gives the same numbers.
    chunked = landscape.linear_path(model.apply, va, vb, alphas, data, recompute_batch_stats=recompute, batch_size=10)
    np.testing.assert_allclose(chunked["loss"], path["loss"], rtol=1e-5)
    np.testing.assert_allclose(chunked["error"], path["error"])


def test_recompute_changes_the_midpoint(dense_bn):
    model, va, vb, data = dense_bn
    on = landscape.linear_path(model.apply, va, vb, [0.5], data)
    off = landscape.linear_path(model.apply, va, vb, [0.5], data, recompute_batch_stats=False)
    assert float(on["loss"][0]) != pytest.approx(float(off["loss"][0]), rel=1e-3)


def test_model_without_batchnorm():
    model = models.MLP((8,), num_classes=3, norm="none")
    rng = np.random.default_rng(7)
    x = rng.normal(size=(25, 6)).astype(np.float32)
    y = rng.integers(0, 3, 25).astype(np.int32)
    va, vb = init_variables(model, 8, x), init_variables(model, 9, x)
    assert landscape.recompute_batch_stats(model.apply, va, x[None]) is va
    data = landscape.PathData(x, y)  # No training batches needed.
    path = landscape.linear_path(model.apply, va, vb, [0.0, 0.5, 1.0], data)
    for i, alpha in enumerate((0.0, 0.5, 1.0)):
        _, loss = _eval(model, landscape.interpolate(va, vb, alpha), x, y)
        assert float(path["loss"][i]) == pytest.approx(float(loss), rel=1e-5)
    assert float(landscape.barrier(model.apply, va, vb, data, num_alphas=3)["barrier"]) >= 0.0


def test_barrier_hand_computed():
    errors = np.array([0.1, 0.3, 0.5, 0.2])
    alphas = np.array([0.0, 1 / 3, 2 / 3, 1.0])
    # mean: 0.5 − (0.1 + 0.2)/2.
    assert float(landscape.error_barrier(errors, alphas)) == pytest.approx(0.35, abs=1e-6)
    # linear: baselines 0.1, 0.1333, 0.1667, 0.2 → excess 0, 0.1667, 0.3333, 0.
    assert float(landscape.error_barrier(errors, alphas, "linear")) == pytest.approx(1 / 3, abs=1e-6)
    # Order of the grid does not matter; leading axes are kept; jit over the errors.
    perm = np.array([3, 1, 0, 2])
    assert float(landscape.error_barrier(errors[perm], alphas[perm], "linear")) == pytest.approx(1 / 3, abs=1e-6)
    stacked = jax.jit(lambda e: landscape.error_barrier(e, alphas, "mean"))(np.stack([errors, errors[::-1]]))
    np.testing.assert_allclose(stacked, [0.35, 0.35], atol=1e-6)


@pytest.mark.parametrize("alphas", [[0.25, 0.5, 1.0], [0.0, 0.5, 0.75]])
def test_barrier_needs_endpoints(alphas):
    with pytest.raises(ValueError, match="alphas must include"):
        landscape.error_barrier(np.zeros(3), alphas)


def test_barrier_argument_errors(dense_bn):
    with pytest.raises(ValueError, match="baseline"):
        landscape.error_barrier(np.zeros(2), [0.0, 1.0], baseline="max")
    with pytest.raises(ValueError, match="errors of shape"):
        landscape.error_barrier(np.zeros(3), [0.0, 1.0])
    model, va, vb, data = dense_bn
    with pytest.raises(ValueError, match="train_x"):
        landscape.linear_path(model.apply, va, vb, [0.0, 1.0], data._replace(train_x=None))


def test_dropout_is_off_unless_a_key_is_given():
    # An MLP with BatchNorm after each hidden Dense and dropout after each ReLU: the second BN sees dropout.
    rng = np.random.default_rng(10)
    train_x = rng.normal(size=(2, 16, 5)).astype(np.float32)
    with_dropout = models.MLP((8, 8), num_classes=3, dropout=0.5, norm="batch")
    without = models.MLP((8, 8), num_classes=3, dropout=0.0, norm="batch")
    v = init_variables(without, 11, train_x[0])
    recompute = jax.jit(landscape.recompute_batch_stats, static_argnums=0)
    off = recompute(with_dropout.apply, v, train_x)
    want = recompute(without.apply, v, train_x)
    jax.tree.map(np.testing.assert_array_equal, off["batch_stats"], want["batch_stats"])
    on = recompute(with_dropout.apply, v, train_x, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(on["batch_stats"]["norm0"]["mean"], want["batch_stats"]["norm0"]["mean"])
    assert not np.allclose(on["batch_stats"]["norm1"]["var"], want["batch_stats"]["norm1"]["var"])
