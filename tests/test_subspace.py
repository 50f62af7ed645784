"""Subspace samplers and weight averaging against NumPy re-derivations of their definitions."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxens import landscape, subspace


def _iterates(seed=0, r=6):
    """R iterates of a two-leaf tree whose parameters have very different spreads (0.05 to 3)."""
    rng = np.random.default_rng(seed)
    spread_w = np.linspace(0.05, 3.0, 12).reshape(3, 4)
    w = rng.normal(size=(3, 4)) + rng.normal(size=(r, 3, 4)) * spread_w
    b = rng.normal(size=(5,)) + rng.normal(size=(r, 5)) * 0.5
    return {"dense": {"kernel": w.astype(np.float32), "bias": b.astype(np.float32)}}


def _flat(tree):
    """NumPy [..., P] of a tree's leaves flattened in the order jax.flatten_util uses (sorted keys)."""
    leaves = jax.tree.leaves(tree)
    lead = leaves[0].shape[:1]
    return np.concatenate([np.asarray(x, np.float64).reshape(*lead, -1) for x in leaves], axis=-1)


def _draw(sample, fit, n, seed=1):
    keys = jax.random.split(jax.random.PRNGKey(seed), n)
    return jax.jit(jax.vmap(lambda k: sample(k, fit)))(keys)


def test_weight_average_is_the_iterates_mean():
    its = _iterates()
    avg = subspace.weight_average(its)
    np.testing.assert_allclose(avg["dense"]["kernel"], its["dense"]["kernel"].mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(avg["dense"]["bias"], its["dense"]["bias"].mean(0), rtol=1e-6, atol=1e-6)


def test_diagonal_sample_std_matches_the_iterates_std():
    its = _iterates()
    fit = subspace.diagonal_fit(its)
    want_std = _flat(its).std(axis=0)  # Population std over R (ddof=0), per parameter.
    np.testing.assert_allclose(_flat(jax.tree.map(lambda x: x[None], fit.std))[0], want_std, rtol=1e-5)
    samples = _draw(subspace.diagonal_sample, fit, 40_000)
    got = _flat(samples)  # [S, P]
    # Relative standard error of a std estimate from S normal draws ≈ 1/√(2S) ≈ 0.35%.
    np.testing.assert_allclose(got.std(axis=0), want_std, rtol=0.02)
    np.testing.assert_allclose(got.mean(axis=0), _flat(its).mean(axis=0), atol=0.05)
    # Scaling the noise by the variance instead (the SWAG-diagonal slip) would give these, far off:
    assert np.abs(want_std**2 - want_std).max() > 1.0


def test_diagonal_scale_widens_the_spread():
    fit = subspace.diagonal_fit(_iterates())
    samples = _draw(lambda k, f: subspace.diagonal_sample(k, f, scale=3.0), fit, 20_000)
    np.testing.assert_allclose(_flat(samples).std(0), 3 * _flat(jax.tree.map(lambda x: x[None], fit.std))[0], rtol=0.03)


def test_low_rank_samples_lie_in_the_principal_span_around_the_mean():
    its = _iterates(r=7)
    rank = 3
    fit = subspace.low_rank_fit(its, rank)
    x = _flat(its)  # [R, P]
    mu = x.mean(0)
    _, s, wt = np.linalg.svd(x - mu, full_matrices=False)
    basis = wt[:rank]  # [k, P] orthonormal rows: NumPy's own top principal directions.
    samples = _flat(_draw(subspace.low_rank_sample, fit, 3000)) - mu  # [S, P]
    residual = samples - samples @ basis.T @ basis
    assert np.abs(residual).max() < 1e-4 * np.abs(samples).max()
    # The directions of the (k+1)-th component onwards are absent; the top ones carry variance s_i²/R.
    coords = samples @ basis.T  # [S, k]
    np.testing.assert_allclose(coords.std(0), s[:rank] / np.sqrt(x.shape[0]), rtol=0.06)
    np.testing.assert_allclose(_flat(jax.tree.map(lambda a: a[None], fit.mean))[0], mu, atol=1e-5)


def test_full_rank_low_rank_matches_the_diagonal_variances():
    its = _iterates(r=5)
    low = subspace.low_rank_fit(its, 4)
    var_low = (_flat(low.components) ** 2).sum(0)  # diag(V Vᵀ)
    np.testing.assert_allclose(var_low, _flat(its).var(0), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("rank", [0, 6])
def test_low_rank_rejects_ranks_the_iterates_cannot_support(rank):
    with pytest.raises(ValueError, match=r"rank=.*R - 1"):
        subspace.low_rank_fit(_iterates(r=6), rank)


def test_diagonal_needs_two_iterates():
    with pytest.raises(ValueError, match="at least 2"):
        subspace.diagonal_fit(jax.tree.map(lambda x: x[:1], _iterates()))


def test_random_subspace_at_zero_is_theta0_and_steps_are_relative_per_tensor():
    theta0 = jax.tree.map(lambda x: x[0], _iterates())
    key = jax.random.PRNGKey(3)
    same = subspace.random_subspace(key, theta0, 0.0)
    for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(theta0)):
        np.testing.assert_array_equal(a, b)
    moved = subspace.random_subspace(key, theta0, 0.25)
    for a, b in zip(jax.tree.leaves(moved), jax.tree.leaves(theta0)):
        np.testing.assert_allclose(np.linalg.norm(a - b), 0.25 * np.linalg.norm(b), rtol=1e-5)
    # The same key walks along one direction; another key gives another one.
    farther = subspace.random_subspace(key, theta0, 0.5)
    other = subspace.random_subspace(jax.random.PRNGKey(4), theta0, 0.25)
    d1, d2, d3 = (_flat(jax.tree.map(lambda x, y: (x - y)[None], t, theta0))[0] for t in (moved, farther, other))
    np.testing.assert_allclose(d2, 2 * d1, rtol=1e-5, atol=1e-6)
    assert abs(d1 @ d3) / (np.linalg.norm(d1) * np.linalg.norm(d3)) < 0.9


def test_dropout_subspace_keeps_a_p_keep_fraction_rescaled():
    theta0 = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(200, 100)) + 5.0, jnp.float32)}
    for p in (1.0, 0.7):
        out = np.asarray(subspace.dropout_subspace(jax.random.PRNGKey(0), theta0, p)["w"])
        kept = out != 0
        assert abs(kept.mean() - p) < 0.01
        np.testing.assert_allclose(out[kept], np.asarray(theta0["w"])[kept] / p, rtol=1e-6)


def test_accepted_is_the_validation_threshold():
    np.testing.assert_array_equal(subspace.accepted([0.64, 0.65, 0.9]), [False, True, True])


class DenseBN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Dense(5)(x)))
        return nn.Dense(3)(x)


def test_predict_points_recomputes_batch_norm_per_sample_like_a_loop():
    model = DenseBN()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 4)).astype(np.float32)
    train_x = (rng.normal(size=(2, 10, 4)) * 3 + 1).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), x[:1])
    fit = subspace.diagonal_fit(
        jax.tree.map(lambda p: p[None] + rng.normal(size=(4, *p.shape)).astype(np.float32), variables["params"])
    )
    samples = _draw(subspace.diagonal_sample, fit, 5)  # leaves [5, ...]
    stacked = {"params": samples, "batch_stats": jax.tree.map(lambda s: jnp.stack([s] * 5), variables["batch_stats"])}
    got = landscape.predict_points(model.apply, stacked, x, train_x=train_x, chunk_size=2)
    for i in range(5):
        one = {"params": jax.tree.map(lambda p: p[i], samples), "batch_stats": variables["batch_stats"]}
        # Reference: the layer's input on each training batch, NumPy mean and biased variance, averaged.
        p = jax.tree.map(lambda a: np.asarray(a, np.float64), one["params"])
        h = np.asarray(train_x, np.float64) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]  # [J, B, 5]
        stats = {"BatchNorm_0": {"mean": h.mean(1).mean(0), "var": h.var(1).mean(0)}}
        want = model.apply({"params": one["params"], "batch_stats": stats}, x)
        np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-4)
