"""The radial plane (Fort et al. Fig. 5): exact optima, projections against NumPy Gram–Schmidt, chunked grid
evaluation against a loop over points and a NumPy forward pass, recomputed BatchNorm statistics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import BN_EPS, DenseBN, init_variables, np_nll

from jaxens import landscape, models, plane


def _np_tree(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def np_forward(params, x, stats=None):
    """NumPy DenseBN logits; stats None: training mode (each BN uses this batch's mean and biased variance).

    Returns (logits [N, 3], {layer: (batch mean, batch var)}).
    """
    p = _np_tree(params)
    h = np.asarray(x, np.float64)
    seen = {}
    for i in range(2):
        h = h @ p[f"dense{i}"]["kernel"] + p[f"dense{i}"]["bias"]
        if stats is None:
            mu, var = h.mean(0), h.var(0)
        else:
            mu, var = (np.asarray(stats[f"bn{i}"][s], np.float64) for s in ("mean", "var"))
        seen[f"bn{i}"] = (h.mean(0), h.var(0))
        h = np.maximum(0.0, (h - mu) / np.sqrt(var + BN_EPS) * p[f"bn{i}"]["scale"] + p[f"bn{i}"]["bias"])
    return h @ p["head"]["kernel"] + p["head"]["bias"], seen


def np_stats(params, train_x):
    """Mean over batches of each BN layer's training-mode batch mean and variance (landscape's definition)."""
    per_batch = [np_forward(params, xb)[1] for xb in np.asarray(train_x)]
    return {
        name: {"mean": np.mean([b[name][0] for b in per_batch], 0), "var": np.mean([b[name][1] for b in per_batch], 0)}
        for name in ("bn0", "bn1")
    }


def _perturb(variables, seed):
    """BatchNorm scale/bias away from 1/0 and running statistics away from 0/1 (so that every choice matters)."""
    rng = np.random.default_rng(seed)
    params = dict(variables["params"])
    stats = {}
    for name in ("bn0", "bn1"):
        width = params[name]["scale"].shape[0]
        params[name] = {
            "scale": jnp.asarray(rng.uniform(0.5, 2.0, width), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=width) * 0.5, jnp.float32),
        }
        stats[name] = {
            "mean": jnp.asarray(rng.normal(size=width), jnp.float32),
            "var": jnp.asarray(rng.uniform(0.5, 3.0, width), jnp.float32),
        }
    return {"params": params, "batch_stats": stats}


@pytest.fixture(scope="module")
def dense_bn():
    rng = np.random.default_rng(0)
    model = DenseBN()
    x = rng.normal(size=(40, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=40).astype(np.int32)
    train_x = (rng.normal(size=(3, 16, 4)) * 2 + 0.5).astype(np.float32)  # [num_batches, B, D]
    va, vb = (_perturb(init_variables(model, seed, x), seed) for seed in (1, 2))
    return model, va, vb, landscape.PathData(x, y, train_x)


@pytest.fixture(scope="module")
def mlp():
    rng = np.random.default_rng(3)
    model = models.MLP((8,), num_classes=4)
    x = rng.normal(size=(50, 5)).astype(np.float32)
    y = rng.integers(0, 4, 50).astype(np.int32)
    return model, init_variables(model, 4, x), init_variables(model, 5, x), landscape.PathData(x, y)


def _equal(tree_a, tree_b):
    jax.tree.map(np.testing.assert_array_equal, tree_a, tree_b)
    assert jax.tree.structure(tree_a) == jax.tree.structure(tree_b)


# ---- Points and coordinates ----


def test_point_optima_exact_origin_zero_and_hand_values():
    a = {"w": jnp.array([0.1, -2.3, 7.7], jnp.float32), "b": {"c": jnp.array(1e-8, jnp.float32)}}
    b = {"w": jnp.array([3.0, 0.3, -1.1], jnp.float32), "b": {"c": jnp.array(5.0, jnp.float32)}}
    _equal(plane.point(a, b, 1.0, 0.0), a)
    _equal(plane.point(a, b, 0.0, 1.0), b)
    _equal(plane.point(a, b, jnp.float32(0), jnp.float32(0)), jax.tree.map(jnp.zeros_like, a))
    mixed = plane.point(a, b, 2.0, -0.5)  # 2a − b/2
    np.testing.assert_allclose(mixed["w"], [0.2 - 1.5, -4.6 - 0.15, 15.4 + 0.55], rtol=1e-6)
    np.testing.assert_allclose(mixed["b"]["c"], 2e-8 - 2.5, rtol=1e-6)
    # Under jit with traced coefficients too.
    _equal(jax.jit(plane.point)(a, b, 1.0, 0.0), a)


def test_grid_order():
    g = plane.grid((0.0, 1.0), (-1.0, 1.0), (2, 3))
    np.testing.assert_allclose(g, [[0, -1], [1, -1], [0, 0], [1, 0], [0, 1], [1, 1]])
    assert g.shape == (6, 2) and g.dtype == np.float32
    assert plane.grid((0, 1), (0, 1), 4).shape == (16, 2)
    with pytest.raises(ValueError, match="num"):
        plane.grid((0, 1), (0, 1), 1)


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in jax.tree.leaves(tree)])


def _np_basis(params_a, params_b):
    """NumPy float64 Gram–Schmidt: e1 ∝ θa, e2 ∝ θb − (θb·e1)e1."""
    a, b = _flat(params_a), _flat(params_b)
    e1 = a / np.linalg.norm(a)
    b_orth = b - (b @ e1) * e1
    return e1, b_orth / np.linalg.norm(b_orth)


def test_frame_and_uv_match_numpy_gram_schmidt(mlp):
    _, va, vb, _ = mlp
    pa, pb = va["params"], vb["params"]
    e1, e2 = _np_basis(pa, pb)
    a, b = _flat(pa), _flat(pb)
    f = jax.jit(plane.frame)(pa, pb)
    np.testing.assert_allclose([f.norm_a, f.b_along, f.b_perp], [np.linalg.norm(a), b @ e1, b @ e2], rtol=1e-5)
    coords = np.array([[1, 0], [0, 1], [0, 0], [0.3, -1.7], [2.0, 0.5]], np.float32)
    want = np.stack([[(x * a + y * b) @ e1, (x * a + y * b) @ e2] for x, y in coords.astype(np.float64)])
    uv = jax.jit(plane.to_uv)(coords, f)
    np.testing.assert_allclose(uv, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax.jit(plane.from_uv)(uv, f), coords, rtol=1e-5, atol=1e-6)


def test_project_recovers_plane_points_and_distance(mlp):
    _, va, vb, _ = mlp
    pa, pb = va["params"], vb["params"]
    e1, e2 = _np_basis(pa, pb)
    coords = np.array([[1, 0], [0, 1], [0.25, 0.75], [-0.4, 1.3], [1.5, -0.2]], np.float32)
    stacked = jax.jit(jax.vmap(lambda c: plane.point(pa, pb, c[0], c[1])))(coords)  # leaves [S, ...]
    proj = jax.jit(jax.vmap(plane.project, in_axes=(0, None, None)))(stacked, pa, pb)
    np.testing.assert_allclose(proj.coords, coords, atol=1e-5)
    scale = np.linalg.norm(_flat(pa))
    assert np.all(np.asarray(proj.distance) < 1e-5 * scale)
    np.testing.assert_allclose(
        proj.uv, jax.jit(plane.to_uv)(coords, jax.jit(plane.frame)(pa, pb)), rtol=1e-5, atol=1e-5
    )

    # Off the plane: add a direction orthogonal to both optima (NumPy Gram–Schmidt of a random vector).
    rng = np.random.default_rng(6)
    r = rng.normal(size=e1.shape)
    r = r - (r @ e1) * e1 - (r @ e2) * e2
    r = 3.0 * r / np.linalg.norm(r)  # ‖r‖ = 3
    leaves, treedef = jax.tree.flatten(pa)
    sizes = np.cumsum([leaf.size for leaf in leaves])[:-1]
    offset = jax.tree.unflatten(
        treedef, [jnp.asarray(c.reshape(leaf.shape), jnp.float32) for c, leaf in zip(np.split(r, sizes), leaves)]
    )
    off = jax.tree.map(lambda p, o: p + o, plane.point(pa, pb, 0.6, 0.3), offset)
    got = jax.jit(plane.project)(off, pa, pb)
    np.testing.assert_allclose(got.coords, [0.6, 0.3], atol=1e-4)
    np.testing.assert_allclose(got.distance, 3.0, rtol=1e-4)
    # An arbitrary pytree: least squares in NumPy.
    p = _flat(off)
    xy, *_ = np.linalg.lstsq(np.stack([_flat(pa), _flat(pb)], 1), p, rcond=None)
    np.testing.assert_allclose(got.coords, xy, atol=1e-4)
    np.testing.assert_allclose(got.uv, [p @ e1, p @ e2], rtol=1e-5)


def test_project_checks_structure(mlp):
    _, va, vb, _ = mlp
    with pytest.raises(ValueError, match="params"):
        plane.project({"w": jnp.zeros(3)}, va["params"], vb["params"])


# ---- The variables of a plane point ----


def test_plane_optima_reproduce_their_predictions(mlp, dense_bn):
    # No BatchNorm: the variables at (1, 0) and (0, 1) are the optima's, bit for bit.
    model, va, vb, data = mlp
    for coords, want in (([1.0, 0.0], va), ([0.0, 1.0], vb)):
        got = jax.jit(lambda c: plane.point_variables(model.apply, va, vb, c))(jnp.asarray(coords))
        _equal(got, want)
        np.testing.assert_array_equal(model.apply(got, data.x), model.apply(want, data.x))
    origin = plane.point_variables(model.apply, va, vb, [0.0, 0.0])
    assert all(np.all(np.asarray(leaf) == 0) for leaf in jax.tree.leaves(origin))

    # BatchNorm, recomputation off: the optima's own statistics, bit for bit.
    model, va, vb, data = dense_bn
    got = plane.point_variables(model.apply, va, vb, [1.0, 0.0], recompute_batch_stats=False)
    _equal(got, va)
    # Recomputation on: θ_a's params exactly, statistics measured for them on the training batches.
    got = jax.jit(lambda c: plane.point_variables(model.apply, va, vb, c, data.train_x))(jnp.array([0.0, 1.0]))
    _equal(got["params"], vb["params"])
    want = np_stats(vb["params"], data.train_x)
    for layer in ("bn0", "bn1"):
        for stat in ("mean", "var"):
            np.testing.assert_allclose(got["batch_stats"][layer][stat], want[layer][stat], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("coords", [(0.5, 0.5), (1.3, -0.4)])
def test_recomputed_stats_at_a_plane_point_match_numpy(dense_bn, coords):
    model, va, vb, data = dense_bn
    got = plane.point_variables(model.apply, va, vb, coords, data.train_x)
    x, y = coords
    params = jax.tree.map(
        lambda a, b: x * np.asarray(a, np.float64) + y * np.asarray(b, np.float64), va["params"], vb["params"]
    )
    want = np_stats(params, data.train_x)
    for layer in ("bn0", "bn1"):
        for stat in ("mean", "var"):
            np.testing.assert_allclose(got["batch_stats"][layer][stat], want[layer][stat], rtol=1e-4, atol=1e-5)


# ---- The grid evaluation ----


def _loop_reference(model, va, vb, coords, data, recompute):
    """Per point on its own (no vmap, no chunks): JAX error/agreement and a NumPy loss."""

    @jax.jit
    def variables_at(c):
        x, y = c[0], c[1]
        mix = lambda s, t: jax.tree.map(lambda u, w: x * u + y * w, s, t)  # noqa: E731
        if recompute:
            v = {"params": mix(va["params"], vb["params"]), "batch_stats": va["batch_stats"]}
            return landscape.recompute_batch_stats(model.apply, v, data.train_x)
        return {"params": mix(va["params"], vb["params"]), "batch_stats": mix(va["batch_stats"], vb["batch_stats"])}

    logits_at = jax.jit(lambda v: model.apply(v, data.x, train=False))
    ref_a = np.argmax(logits_at(variables_at(jnp.array([1.0, 0.0]))), -1)
    ref_b = np.argmax(logits_at(variables_at(jnp.array([0.0, 1.0]))), -1)
    rows = []
    for c in coords:
        v = variables_at(jnp.asarray(c))
        pred = np.argmax(logits_at(v), -1)
        np_logits, _ = np_forward(v["params"], data.x, v["batch_stats"])
        rows.append(
            {
                "error": np.mean(pred != data.y),
                "loss": np_nll(np_logits, data.y),
                "agreement_a": np.mean(pred == ref_a),
                "agreement_b": np.mean(pred == ref_b),
            }
        )
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}


@pytest.mark.parametrize("recompute", [True, False])
def test_chunked_grid_equals_loop(dense_bn, recompute):
    model, va, vb, data = dense_bn
    coords = np.array([[1, 0], [0, 1], [0.5, 0.5], [0.2, 0.9], [1.1, 0.1], [0.7, 0.0], [0.4, 1.2]], np.float32)
    if recompute:
        coords = np.concatenate([coords, [[0.0, 0.0], [-0.5, 1.5]]]).astype(np.float32)  # G = 9
    out = plane.radial_plane(model.apply, va, vb, coords, data, chunk_size=4, recompute_batch_stats=recompute)
    want = _loop_reference(model, va, vb, coords, data, recompute)
    np.testing.assert_allclose(out["error"], want["error"], atol=1e-6)
    np.testing.assert_allclose(out["agreement_a"], want["agreement_a"], atol=1e-6)
    np.testing.assert_allclose(out["agreement_b"], want["agreement_b"], atol=1e-6)
    np.testing.assert_allclose(out["loss"], want["loss"], rtol=1e-4)
    np.testing.assert_array_equal(out["coords"], coords)
    assert out["uv"].shape == (len(coords), 2)
    # The optima agree with themselves everywhere; the rest of the grid really varies.
    assert float(out["agreement_a"][0]) == 1.0 and float(out["agreement_b"][1]) == 1.0
    assert len(np.unique(np.round(np.asarray(out["loss"]), 4))) == len(coords)


def test_plane_optima_match_direct_evaluation(mlp):
    model, va, vb, data = mlp
    out = plane.radial_plane(
        model.apply, va, vb, [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], data, chunk_size=2, batch_size=10
    )
    la, lb = (np.asarray(model.apply(v, data.x), np.float64) for v in (va, vb))
    pa, pb = la.argmax(-1), lb.argmax(-1)
    np.testing.assert_allclose(out["error"][:2], [np.mean(pa != data.y), np.mean(pb != data.y)], atol=1e-6)
    np.testing.assert_allclose(out["loss"][:2], [np_nll(la, data.y), np_nll(lb, data.y)], rtol=1e-5)
    np.testing.assert_allclose(out["agreement_a"][:2], [1.0, np.mean(pa == pb)], atol=1e-6)
    np.testing.assert_allclose(out["agreement_b"][:2], [np.mean(pa == pb), 1.0], atol=1e-6)
    assert np.mean(pa == pb) < 1.0  # The two networks differ, so the test can tell the references apart.
    f = plane.frame(va["params"], vb["params"])
    np.testing.assert_allclose(out["uv"][0], [f.norm_a, 0.0], rtol=1e-6)


def test_one_compile_per_shape(mlp):
    model, va, vb, data = mlp
    calls = []

    def apply_fn(*args, **kwargs):  # Called only while tracing.
        calls.append(1)
        return model.apply(*args, **kwargs)

    plane.radial_plane(apply_fn, va, vb, plane.grid((0, 1), (0, 1), 3), data, chunk_size=4)
    traced = len(calls)
    plane.radial_plane(apply_fn, va, vb, plane.grid((-1, 2), (0, 3), 3), data, chunk_size=4)
    assert traced > 0 and len(calls) == traced


def test_argument_errors(mlp, dense_bn):
    model, va, vb, data = mlp
    with pytest.raises(ValueError, match="coords"):
        plane.radial_plane(model.apply, va, vb, [0.5, 0.5], data)
    with pytest.raises(ValueError, match="chunk_size"):
        plane.radial_plane(model.apply, va, vb, [[0.5, 0.5]], data, chunk_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        plane.radial_plane(model.apply, va, vb, [[0.5, 0.5]], data, batch_size=7)
    with pytest.raises(ValueError, match="degenerate"):
        plane.radial_plane(model.apply, va, jax.tree.map(lambda p: 2 * p, va), [[0.5, 0.5]], data)
    other = init_variables(models.MLP((9,), num_classes=4), 0, data.x)
    with pytest.raises(ValueError, match="variables_a and variables_b"):
        plane.radial_plane(model.apply, va, other, [[0.5, 0.5]], data)
    model, va, vb, data = dense_bn
    with pytest.raises(ValueError, match="train_x"):
        plane.radial_plane(model.apply, va, vb, [[0.5, 0.5]], data._replace(train_x=None))
    with pytest.raises(ValueError, match="train_x"):
        plane.radial_plane(model.apply, va, vb, [[0.5, 0.5]], data._replace(train_x=data.train_x[..., :3]))
