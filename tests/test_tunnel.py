"""Low-loss tunnels (Fort et al. App. A Fig. S2; Garipov et al. 2018): the chain against hand-computed points,
the training-mode loss against NumPy, zero bends ≡ the linear path, and a fitted tunnel that beats the
straight line between two different optima."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import BN_EPS, DenseBN, init_variables, np_nll

from jaxens import landscape, metrics, models, tunnel


def np_train_logits(params, x):
    """NumPy DenseBN in training mode: BatchNorm normalizes with this batch's mean and biased variance."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    h = np.asarray(x, np.float64) @ p["dense0"]["kernel"] + p["dense0"]["bias"]
    h = (h - h.mean(0)) / np.sqrt(h.var(0) + BN_EPS) * p["bn0"]["scale"] + p["bn0"]["bias"]
    return np.maximum(h, 0.0) @ p["head"]["kernel"] + p["head"]["bias"]


def _mix(a, b, s):
    return jax.tree.map(lambda u, w: (1 - s) * np.asarray(u, np.float64) + s * np.asarray(w, np.float64), a, b)


@pytest.fixture(scope="module")
def dense_bn():
    rng = np.random.default_rng(0)
    model = DenseBN(widths=(6,))
    x = rng.normal(size=(30, 4)).astype(np.float32)
    y = rng.integers(0, 3, 30).astype(np.int32)
    train_x = rng.normal(size=(2, 15, 4)).astype(np.float32) * 1.5 + 0.3
    va, vb = init_variables(model, 1, x), init_variables(model, 2, x)
    va = {**va, "batch_stats": jax.tree.map(lambda s: s + 0.5, va["batch_stats"])}  # Stored ≠ recomputed.
    return model, va, vb, landscape.PathData(x, y, train_x)


@pytest.fixture(scope="module")
def digits_optima():
    """Two MLPs trained on 400 sklearn digits from different initializations (two different optima)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data[:400] / 16.0 - 0.3).astype(np.float32)
    y = d.target[:400].astype(np.int32)
    model = models.MLP((16,), num_classes=10)
    tx = optax.adam(0.02)

    @jax.jit
    def train(key):
        params = model.init(key, x[:1])["params"]

        def step(carry, _):
            p, s = carry
            loss, g = jax.value_and_grad(lambda q: metrics.nll(model.apply({"params": q}, x), y))(p)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), loss

        (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), None, length=100)
        return params, losses[-1]

    (pa, la), (pb, lb) = train(jax.random.PRNGKey(1)), train(jax.random.PRNGKey(2))
    assert float(la) < 0.05 and float(lb) < 0.05  # Both fit the training set.
    return model, {"params": pa}, {"params": pb}, x, y


def test_init_bends_on_the_linear_path(dense_bn):
    _, va, vb, _ = dense_bn
    bends = tunnel.init_bends(va["params"], vb["params"], 2)
    for i, s in enumerate((1 / 3, 2 / 3)):
        want = _mix(va["params"], vb["params"], s)
        jax.tree.map(lambda got, w: np.testing.assert_allclose(got[i], w, rtol=1e-6, atol=1e-7), bends, want)
    assert tunnel.count_bends(bends) == 2
    assert tunnel.count_bends(tunnel.init_bends(va["params"], vb["params"], 0)) == 0
    # fit_tunnel starts there: zero steps return the initial bends.
    model, _, _, data = dense_bn
    fit = tunnel.fit_tunnel(
        model.apply, va, vb, data.x, data.y, num_bends=2, num_steps=0, key=jax.random.PRNGKey(0), batch_size=10
    )
    jax.tree.map(np.testing.assert_array_equal, fit.bends, bends)


def test_chain_point_hand_computed():
    a = {"w": jnp.array([0.0, 0.0])}
    bends = {"w": jnp.array([[1.0, 2.0], [3.0, 0.0]])}  # n = 2: segments [0, 1/3], [1/3, 2/3], [2/3, 1]
    b = {"w": jnp.array([4.0, 4.0])}
    point = jax.jit(tunnel.chain_point)
    np.testing.assert_array_equal(point(a, bends, b, 0.0)["w"], [0.0, 0.0])
    np.testing.assert_array_equal(point(a, bends, b, 1.0)["w"], [4.0, 4.0])
    np.testing.assert_allclose(point(a, bends, b, 1 / 6)["w"], [0.5, 1.0], rtol=1e-6)  # a ↔ φ1 midpoint
    np.testing.assert_allclose(point(a, bends, b, 0.5)["w"], [2.0, 1.0], rtol=1e-6)  # φ1 ↔ φ2 midpoint
    np.testing.assert_allclose(point(a, bends, b, 2 / 3)["w"], [3.0, 0.0], atol=1e-5)  # φ2
    np.testing.assert_allclose(point(a, bends, b, 0.75)["w"], [3.25, 1.0], rtol=1e-6)  # φ2 + ¼(b − φ2)
    # Gradient w.r.t. the bends at t = 0.4 (segment 1, τ = 0.2): (1 − τ) on φ1, τ on φ2.
    g = jax.grad(lambda ph: point(a, ph, b, 0.4)["w"].sum())(bends)["w"]
    np.testing.assert_allclose(g, [[0.8, 0.8], [0.2, 0.2]], rtol=1e-5)
    # Zero bends: the straight line, exactly as landscape.interpolate computes it.
    none = {"w": jnp.zeros((0, 2))}
    for t in (0.0, 0.3, 1.0):
        np.testing.assert_array_equal(point(a, none, b, t)["w"], landscape.interpolate(a, b, jnp.float32(t))["w"])


def test_tunnel_loss_is_training_mode_cross_entropy(dense_bn):
    model, va, vb, data = dense_bn
    rng = np.random.default_rng(1)
    bends = jax.tree.map(
        lambda p: p + jnp.asarray(rng.normal(size=p.shape), jnp.float32) * 0.3,
        tunnel.init_bends(va["params"], vb["params"], 1),
    )
    ts = np.array([0.2, 0.9], np.float32)  # segment 0 at τ = 0.4; segment 1 at τ = 0.8
    got = jax.jit(tunnel.tunnel_loss, static_argnums=0)(model.apply, va, bends, vb, data.x, data.y, ts)
    phi = jax.tree.map(lambda p: np.asarray(p[0], np.float64), bends)
    want = np.mean(
        [
            np_nll(np_train_logits(_mix(va["params"], phi, 0.4), data.x), data.y),
            np_nll(np_train_logits(_mix(phi, vb["params"], 0.8), data.x), data.y),
        ]
    )
    np.testing.assert_allclose(got, want, rtol=1e-4)


@pytest.mark.parametrize("recompute", [True, False])
def test_zero_bends_is_the_linear_path(dense_bn, recompute):
    model, va, vb, data = dense_bn
    ts = np.linspace(0, 1, 5, dtype=np.float32)
    zero = tunnel.init_bends(va["params"], vb["params"], 0)
    path = tunnel.evaluate_path(model.apply, va, zero, vb, ts, data, recompute_batch_stats=recompute, chunk_size=2)
    lin = landscape.linear_path(model.apply, va, vb, ts, data, recompute_batch_stats=recompute)
    np.testing.assert_allclose(path["error"], lin["error"], atol=1e-6)
    np.testing.assert_allclose(path["loss"], lin["loss"], rtol=1e-5)
    np.testing.assert_array_equal(path["t"], ts)
    assert float(path["agreement_a"][0]) == 1.0 and float(path["agreement_b"][-1]) == 1.0


TS = np.linspace(0, 1, 21, dtype=np.float32)  # One grid for the digits tests: one compiled evaluate_path.


def test_evaluate_path_agreement_against_direct_predictions(digits_optima):
    model, va, vb, x, y = digits_optima
    data = landscape.PathData(x, y)
    rng = np.random.default_rng(2)
    bends = jax.tree.map(
        lambda p: p + jnp.asarray(rng.normal(size=p.shape), jnp.float32) * 0.2,
        tunnel.init_bends(va["params"], vb["params"], 1),
    )
    path = tunnel.evaluate_path(model.apply, va, bends, vb, TS, data)
    pred = lambda params: np.argmax(np.asarray(model.apply({"params": params}, data.x)), -1)  # noqa: E731
    pa, pb = pred(va["params"]), pred(vb["params"])
    mid = pred(jax.tree.map(lambda p: p[0], bends))  # t = 0.5 is the bend itself
    quarter = pred(jax.tree.map(lambda u, p: 0.5 * u + 0.5 * p[0], va["params"], bends))
    assert np.mean(mid == pa) < 1.0 and np.mean(mid == pb) < 1.0  # The references can be told apart.
    for t, p in ((0.0, pa), (0.5, mid), (0.25, quarter), (1.0, pb)):
        i = int(np.flatnonzero(TS == t)[0])
        assert float(path["agreement_a"][i]) == pytest.approx(np.mean(p == pa), abs=1e-6)
        assert float(path["agreement_b"][i]) == pytest.approx(np.mean(p == pb), abs=1e-6)
        assert float(path["error"][i]) == pytest.approx(np.mean(p != data.y), abs=1e-6)


def test_fitted_tunnel_beats_the_linear_path(digits_optima):
    model, va, vb, x, y = digits_optima
    data = landscape.PathData(x, y)
    linear = landscape.linear_path(model.apply, va, vb, TS, data)
    fit = tunnel.fit_tunnel(
        model.apply,
        va,
        vb,
        x,
        y,
        num_bends=1,
        num_steps=100,
        key=jax.random.PRNGKey(0),
        batch_size=200,
        learning_rate=0.01,
    )
    path = tunnel.evaluate_path(model.apply, va, fit.bends, vb, TS, data)
    lin_max, tun_max = float(np.max(linear["loss"])), float(np.max(path["loss"]))
    ends = max(float(linear["loss"][0]), float(linear["loss"][-1]))
    assert lin_max > 3 * ends  # The straight line crosses a barrier ...
    assert tun_max < 0.25 * lin_max  # ... the fitted chain avoids most of it (measured: ~1/15 to 1/40).
    assert fit.losses.shape == (100,) and np.all(np.isfinite(fit.losses))
    assert float(np.mean(fit.losses[-20:])) < float(np.mean(fit.losses[:5]))
    # The endpoints never move: the chain still starts and ends exactly at the optima.
    ends = jax.jit(jax.vmap(tunnel.chain_point, in_axes=(None, None, None, 0)))(
        va["params"], fit.bends, vb["params"], jnp.array([0.0, 1.0])
    )
    jax.tree.map(lambda e, a, b: np.testing.assert_array_equal(e, np.stack([a, b])), ends, va["params"], vb["params"])
    np.testing.assert_allclose(np.asarray(path["loss"])[[0, -1]], np.asarray(linear["loss"])[[0, -1]], rtol=1e-6)


def test_fit_with_batchnorm_and_several_ts(dense_bn):
    model, va, vb, data = dense_bn
    sgd = optax.sgd(0.05)
    fit = functools.partial(
        tunnel.fit_tunnel, model.apply, va, vb, data.x, data.y, num_bends=2, num_steps=40, batch_size=10, num_ts=3,
        optimizer=sgd,
    )  # fmt: skip
    first = fit(key=jax.random.PRNGKey(1))
    assert tunnel.count_bends(first.bends) == 2 and np.all(np.isfinite(first.losses))
    # Continuing from given bends (the same compiled program): the bends keep moving from where they were.
    more = fit(key=jax.random.PRNGKey(2), bends=first.bends)
    assert tunnel.count_bends(more.bends) == 2
    assert float(np.mean(more.losses)) < float(np.mean(first.losses[:10]))


def test_argument_errors(dense_bn):
    model, va, vb, data = dense_bn
    fit = functools.partial(
        tunnel.fit_tunnel, model.apply, va, vb, data.x, data.y, key=jax.random.PRNGKey(0), batch_size=10
    )
    with pytest.raises(ValueError, match="num_bends"):
        fit(num_bends=0, num_steps=1)
    with pytest.raises(ValueError, match="batch_size"):
        fit(num_bends=1, num_steps=1, batch_size=31)
    with pytest.raises(ValueError, match="num_ts"):
        fit(num_bends=1, num_steps=1, num_ts=0)
    with pytest.raises(ValueError, match="train_x"):
        tunnel.fit_tunnel(model.apply, va, vb, data.x, data.y[:5], 1, 1, jax.random.PRNGKey(0))
    bends = tunnel.init_bends(va["params"], vb["params"], 1)
    with pytest.raises(ValueError, match="ts"):
        tunnel.evaluate_path(model.apply, va, bends, vb, [[0.0, 1.0]], data)
    with pytest.raises(ValueError, match="bends"):
        tunnel.evaluate_path(model.apply, va, jax.tree.map(lambda p: p[0], bends), vb, [0.0, 1.0], data)
    with pytest.raises(ValueError, match="train_x"):
        tunnel.evaluate_path(model.apply, va, bends, vb, [0.0, 1.0], data._replace(train_x=None))


def test_radial_cut_against_direct_predictions_and_the_radial_plane(digits_optima):
    """Fig. S3's stitched cut: (t, r) is r·chain_point(t); checked on a bend and inside a segment against
    predictions computed here, and, with zero bends, against `plane.radial_plane` at (r(1 − t), r t)."""
    from jaxens import plane

    model, va, vb, x, y = digits_optima
    data = landscape.PathData(x, y)
    rng = np.random.default_rng(3)
    bends = jax.tree.map(
        lambda p: p + jnp.asarray(rng.normal(size=p.shape), jnp.float32) * 0.2,
        tunnel.init_bends(va["params"], vb["params"], 1),
    )
    ts, radii = np.array([0.0, 0.25, 0.5, 1.0], np.float32), np.array([0.5, 1.0, 1.5], np.float32)
    cut = tunnel.radial_cut(model.apply, va, bends, vb, ts, radii, data, chunk_size=5)
    assert cut["error"].shape == (4, 3)
    pred = lambda params: np.argmax(np.asarray(model.apply({"params": params}, x)), -1)  # noqa: E731
    pa, pb = pred(va["params"]), pred(vb["params"])
    bend = jax.tree.map(lambda p: p[0], bends)
    for (i, t), (j, r) in [((2, 0.5), (0, 0.5)), ((1, 0.25), (2, 1.5)), ((3, 1.0), (1, 1.0))]:
        on_chain = jax.tree.map(lambda u, w: 0.5 * u + 0.5 * w, va["params"], bend) if t == 0.25 else None
        point = {0.5: bend, 0.25: on_chain, 1.0: vb["params"]}[t]
        p = pred(jax.tree.map(lambda w: r * w, point))
        assert float(cut["error"][i, j]) == pytest.approx(np.mean(p != y), abs=1e-6)
        assert float(cut["agreement_a"][i, j]) == pytest.approx(np.mean(p == pa), abs=1e-6)
        assert float(cut["agreement_b"][i, j]) == pytest.approx(np.mean(p == pb), abs=1e-6)

    zero = tunnel.init_bends(va["params"], vb["params"], 0)
    straight = tunnel.radial_cut(model.apply, va, zero, vb, ts, radii, data)
    coords = np.array([[r * (1 - t), r * t] for t in ts for r in radii], np.float32)
    flat = plane.radial_plane(model.apply, va, vb, coords, data, chunk_size=None)
    for key in ("error", "agreement_a", "agreement_b"):
        np.testing.assert_allclose(np.asarray(straight[key]).ravel(), np.asarray(flat[key]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(straight["loss"]).ravel(), np.asarray(flat["loss"]), rtol=1e-4)
