"""Diversity kernels (KL, JS, disagreement) and weight cosine similarity against NumPy re-derivations."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import np_softmax
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jaxens.metrics import diversity, weights

# ---------------------------------------------------------------------------------------------------------
# Independent NumPy re-derivations (float64, straight from the formulas of docs/definitions.md:
# #kl-divergences-and-member-diversity, #jensen-shannon-divergence, #disagreement-and-normalized-disagreement,
# #weight-cosine-similarity).


def _np_kl(p, q):
    """Σ_c p_c log(p_c / q_c) over the last axis."""
    return np.sum(p * np.log(p / q), axis=-1)


def _np_argmax_differ(za, zb):
    return np.mean(np.argmax(za, -1) != np.argmax(zb, -1), axis=-1)


# Jitted kernels: one XLA compilation per function and shape (eager calls would compile op by op).
J = types.SimpleNamespace(
    **{
        name: jax.jit(getattr(diversity, name))
        for name in (
            "kl",
            "symmetric_kl",
            "pairwise_symmetric_kl",
            "member_diversity",
            "ensemble_kl",
            "js_divergence",
            "disagreement",
            "pairwise_disagreement",
            "normalized_disagreement",
        )
    }
)


def _logits(seed, shape, scale=3.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# KL family against NumPy, under jit, with a leading member axis.


def test_kl_against_numpy_with_member_axis_broadcast():
    zp, zq = _logits(0, (4, 30, 7)), _logits(1, (30, 7))
    got = jax.jit(diversity.kl)(zp, zq)  # [K, N] vs [N]: broadcast over members
    assert got.shape == (4, 30)
    np.testing.assert_allclose(got, _np_kl(np_softmax(zp), np_softmax(zq)[None]), rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(diversity.kl(zp, zq), got, rtol=1e-6, atol=1e-7)  # eager ≡ jit


def test_symmetric_kl_against_numpy():
    zp, zq = _logits(2, (3, 40, 5)), _logits(3, (3, 40, 5))
    p, q = np_softmax(zp), np_softmax(zq)
    want = np.mean(_np_kl(p, q) + _np_kl(q, p), axis=-1)  # [K]
    np.testing.assert_allclose(jax.jit(diversity.symmetric_kl)(zp, zq), want, rtol=2e-5)


def test_pairwise_symmetric_kl_and_member_diversity_against_numpy():
    z = _logits(4, (5, 25, 6))
    p = np_softmax(z)
    k = len(z)
    want = np.array([[np.mean(_np_kl(p[i], p[j]) + _np_kl(p[j], p[i])) for j in range(k)] for i in range(k)])
    got = jax.jit(diversity.pairwise_symmetric_kl)(z)
    assert got.shape == (k, k)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)
    pairs = [want[i, j] for i in range(k) for j in range(i + 1, k)]
    assert len(pairs) == k * (k - 1) // 2
    np.testing.assert_allclose(jax.jit(diversity.member_diversity)(z), np.mean(pairs), rtol=2e-5)


@pytest.mark.parametrize("method", ["mean_prob", "mean_logit"])
def test_ensemble_kl_against_numpy(method):
    za, zb = _logits(5, (3, 20, 4)), _logits(6, (2, 20, 4))  # Ka = 3, Kb = 2

    def ens(z):
        if method == "mean_prob":
            return np_softmax(z).mean(0)
        return np_softmax(np.asarray(z, np.float64).mean(0))

    pa, pb = ens(za), ens(zb)
    want = np.mean(_np_kl(pa, pb) + _np_kl(pb, pa))
    got = jax.jit(diversity.ensemble_kl, static_argnames="method")(za, zb, method=method)
    np.testing.assert_allclose(got, want, rtol=2e-5)


def test_js_divergence_against_numpy():
    z = _logits(7, (4, 30, 5))
    p = np_softmax(z)
    p_bar = p.mean(0)
    want = np.mean(np.sum(_np_kl(p, p_bar[None]), axis=0))  # Σ_m KL(p_m‖p̄), mean over examples
    got = jax.jit(diversity.js_divergence)(z)
    np.testing.assert_allclose(got, want, rtol=2e-5)
    # The same number through entropies: Σ_m KL(p_m‖p̄) = K·H(p̄) − Σ_m H(p_m) (K times the textbook JS).
    ent = lambda x: -np.sum(x * np.log(x), axis=-1)  # noqa: E731
    np.testing.assert_allclose(got, np.mean(len(z) * ent(p_bar) - ent(p).sum(0)), rtol=1e-4)


def test_disagreement_against_numpy():
    za, zb = _logits(8, (3, 50, 4)), _logits(9, (50, 4))
    got = jax.jit(diversity.disagreement)(za, zb)
    assert got.shape == (3,)
    np.testing.assert_allclose(got, _np_argmax_differ(za, zb[None]), atol=1e-7)

    z = _logits(10, (4, 50, 4))
    pred = z.argmax(-1)
    want = np.array([[np.mean(pred[i] != pred[j]) for j in range(4)] for i in range(4)])
    np.testing.assert_allclose(jax.jit(diversity.pairwise_disagreement)(z), want, atol=1e-7)


def test_normalized_disagreement_against_numpy():
    rng = np.random.default_rng(11)
    ref, z = _logits(12, (60, 5)), _logits(13, (3, 60, 5))  # a reference and 3 sampled functions
    labels = rng.integers(0, 5, size=60)
    err = np.mean(z.argmax(-1) != labels, axis=-1)  # 1 − accuracy of each sampled function
    want = _np_argmax_differ(ref[None], z) / err
    np.testing.assert_allclose(jax.jit(diversity.normalized_disagreement)(ref, z, labels), want, rtol=1e-6)


def test_pairwise_functions_vmap_over_extra_leading_axis():
    z = _logits(14, (2, 3, 10, 4))  # [B, K, N, C]
    for fn in (J.pairwise_symmetric_kl, J.pairwise_disagreement):
        got = jax.jit(jax.vmap(fn))(z)
        np.testing.assert_allclose(got, np.stack([fn(z[b]) for b in range(2)]), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------------------
# Hand-computed cases.


def test_identical_members_give_zero():
    z = _logits(15, (20, 6))
    members = np.stack([z, z, z])  # [3, N, C], all the same function
    assert float(jnp.max(J.kl(members, z))) == 0.0
    assert float(jnp.max(J.symmetric_kl(members, z))) == 0.0
    np.testing.assert_array_equal(J.pairwise_symmetric_kl(members), np.zeros((3, 3)))
    assert float(J.member_diversity(members)) == pytest.approx(0.0, abs=1e-6)  # O(K) form: rounding only.
    assert float(J.js_divergence(members)) == pytest.approx(0.0, abs=1e-6)
    assert float(J.ensemble_kl(members, members[:1])) == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_array_equal(J.disagreement(members, z), np.zeros(3))
    np.testing.assert_array_equal(J.pairwise_disagreement(members), np.zeros((3, 3)))
    # Logits shifted by a per-example constant are the same distribution (and the same argmax).
    shifted = z + np.arange(20, dtype=np.float32)[:, None] * 10
    assert float(J.symmetric_kl(z, shifted)) == pytest.approx(0.0, abs=1e-5)
    assert float(J.disagreement(z, shifted)) == 0.0


def test_hand_computed_two_members():
    # Example 0: p = (0.5, 0.5), q = (0.9, 0.1). Example 1: both (0.2, 0.8).
    #   KL(p‖q) = 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1) = 0.5(−0.587787) + 0.5(1.609438) = 0.510826
    #   KL(q‖p) = 0.9 ln(0.9/0.5) + 0.1 ln(0.1/0.5) = 0.529008 − 0.160944          = 0.368064
    #   symmetric, example 0: 0.878890; example 1: 0 → mean 0.439445.
    #   p̄ (example 0) = (0.7, 0.3): KL(p‖p̄) = 0.5 ln(5/7) + 0.5 ln(5/3) = 0.087177,
    #   KL(q‖p̄) = 0.9 ln(9/7) + 0.1 ln(1/3) = 0.116322 → JS = 0.203499 on example 0, 0 on example 1 → 0.101749.
    #   Argmax: example 0 is a tie for p (→ class 0) vs class 0 for q; example 1 agrees → disagreement 0.
    p = np.array([[0.5, 0.5], [0.2, 0.8]])
    q = np.array([[0.9, 0.1], [0.2, 0.8]])
    zp, zq = np.log(p).astype(np.float32), np.log(q).astype(np.float32)
    np.testing.assert_allclose(J.kl(zp, zq), [0.510826, 0.0], atol=1e-5)
    np.testing.assert_allclose(J.kl(zq, zp), [0.368064, 0.0], atol=1e-5)
    assert float(J.symmetric_kl(zp, zq)) == pytest.approx(0.439445, abs=1e-5)
    members = np.stack([zp, zq])
    np.testing.assert_allclose(J.pairwise_symmetric_kl(members), [[0, 0.439445], [0.439445, 0]], atol=1e-5)
    assert float(J.member_diversity(members)) == pytest.approx(0.439445, abs=1e-5)
    assert float(J.js_divergence(members)) == pytest.approx(0.101749, abs=1e-5)
    assert float(J.disagreement(zp, zq)) == 0.0
    # Class 1 wins example 0 for a third member → disagrees with both on 1 of 2 examples.
    zr = np.log(np.array([[0.3, 0.7], [0.2, 0.8]])).astype(np.float32)
    np.testing.assert_allclose(J.pairwise_disagreement(np.stack([zp, zq, zr]))[2], [0.5, 0.5, 0.0])
    # Normalized: f = zr has labels (1, 0) → accuracy 1/2; disagreement with zp is 1/2 → 1.
    assert float(J.normalized_disagreement(zp, zr, np.array([1, 0]))) == pytest.approx(1.0)


def test_masked_classes_contribute_nothing():
    # A class with logit −inf under both has probability 0: KL equals the KL over the remaining classes.
    zp, zq = _logits(16, (10, 4)), _logits(17, (10, 4))
    mask = np.array([-np.inf, 0, 0, 0], np.float32)
    np.testing.assert_allclose(J.kl(zp + mask, zq + mask), J.kl(zp[:, 1:], zq[:, 1:]), rtol=1e-5)
    np.testing.assert_allclose(J.symmetric_kl(zp + mask, zq + mask), J.symmetric_kl(zp[:, 1:], zq[:, 1:]), rtol=1e-5)
    # Zero under q only: KL(p‖q) is infinite.
    assert np.all(np.isinf(J.kl(zp, zq + mask)))


# ---------------------------------------------------------------------------------------------------------
# Argument checks: raised while tracing, naming the arguments.


def test_shape_mismatches_raise_at_trace_time():
    z = np.zeros((3, 10, 4), np.float32)
    with pytest.raises(ValueError, match="logits_p.*logits_q"):
        jax.jit(diversity.kl)(z, np.zeros((3, 9, 4), np.float32))  # different N
    with pytest.raises(ValueError, match="logits_p.*logits_q"):
        jax.jit(diversity.symmetric_kl)(z, np.zeros((3, 10, 5), np.float32))  # different C
    with pytest.raises(ValueError, match="do not broadcast"):
        jax.jit(diversity.symmetric_kl)(z, np.zeros((2, 10, 4), np.float32))
    with pytest.raises(ValueError, match="logits_a.*logits_b"):
        jax.jit(diversity.disagreement)(z, np.zeros((10, 3), np.float32))
    with pytest.raises(ValueError, match="member_logits_a.*member_logits_b"):
        jax.jit(diversity.ensemble_kl)(z, np.zeros((2, 11, 4), np.float32))
    with pytest.raises(ValueError, match="labels"):
        jax.jit(diversity.normalized_disagreement)(z[0], z, np.zeros(9, np.int32))
    with pytest.raises(ValueError, match="ref_logits.*logits"):
        jax.jit(diversity.normalized_disagreement)(z[0, :9], z, np.zeros(10, np.int32))
    with pytest.raises(ValueError, match="K ≥ 2"):
        jax.jit(diversity.member_diversity)(z[:1])
    with pytest.raises(ValueError, match=r"member_logits.*\[K, N, C\]"):
        jax.jit(diversity.pairwise_symmetric_kl)(z[0])
    with pytest.raises(ValueError, match=r"member_logits.*\[K, N, C\]"):
        jax.jit(diversity.pairwise_disagreement)(z[None])


# ---------------------------------------------------------------------------------------------------------
# Weight-space cosine similarity.


def _tree(seed, k=None):
    rng = np.random.default_rng(seed)
    lead = () if k is None else (k,)
    return {
        "dense": {
            "kernel": rng.normal(size=lead + (5, 3)).astype(np.float32),
            "bias": rng.normal(size=lead + (3,)).astype(np.float32),
        },
        "conv": [rng.normal(size=lead + (2, 2, 1, 4)).astype(np.float32)],
    }


def _np_flat(tree):
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree_util.tree_leaves(tree)])


def test_cosine_similarity_against_numpy():
    ta, tb = _tree(20), _tree(21)
    a, b = _np_flat(ta), _np_flat(tb)
    want = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert float(jax.jit(weights.cosine_similarity)(ta, tb)) == pytest.approx(want, rel=1e-5, abs=1e-6)
    # Mixed dtypes: a bfloat16 copy is compared in float32.
    tb16 = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), tb)
    b16 = _np_flat(jax.tree.map(lambda x: np.asarray(x.astype(jnp.float32)), tb16))
    assert float(weights.cosine_similarity(ta, tb16)) == pytest.approx(
        a @ b16 / (np.linalg.norm(a) * np.linalg.norm(b16)), rel=1e-5, abs=1e-6
    )


def test_pairwise_cosine_similarity_against_numpy_and_vmap():
    stacked = _tree(22, k=4)
    flat = np.stack([_np_flat(jax.tree.map(lambda x, m=m: x[m], stacked)) for m in range(4)])  # [K, P]
    unit = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    got = jax.jit(weights.pairwise_cosine_similarity)(stacked)
    np.testing.assert_allclose(got, unit @ unit.T, rtol=1e-5, atol=1e-6)
    # One member against all, with a leading member axis via vmap, matches the pairwise row.
    first = jax.tree.map(lambda x: x[0], stacked)
    row = jax.jit(jax.vmap(weights.cosine_similarity, in_axes=(None, 0)))(first, stacked)
    np.testing.assert_allclose(row, got[0], rtol=1e-5, atol=1e-6)


def test_cosine_similarity_hand_computed():
    # θa = (1, 0 | 0), θb = (1, 1 | 0): cos = 1/√2. θc = −θa: cos = −1. Orthogonal (0, 0 | 3): 0.
    ta = {"w": np.array([1.0, 0.0], np.float32), "b": np.array(0.0, np.float32)}
    tb = {"w": np.array([1.0, 1.0], np.float32), "b": np.array(0.0, np.float32)}
    tc = jax.tree.map(lambda x: -x, ta)
    td = {"w": np.array([0.0, 0.0], np.float32), "b": np.array(3.0, np.float32)}
    assert float(weights.cosine_similarity(ta, tb)) == pytest.approx(1 / np.sqrt(2), rel=1e-6)
    assert float(weights.cosine_similarity(ta, tc)) == pytest.approx(-1.0)
    assert float(weights.cosine_similarity(ta, td)) == 0.0


def test_cosine_similarity_mismatches_raise():
    ta = _tree(23)
    with pytest.raises(ValueError, match="tree_a and tree_b.*structure"):
        jax.jit(weights.cosine_similarity)(ta, {"dense": ta["dense"]})
    bad = dict(ta, conv=[np.zeros((2, 2, 1, 5), np.float32)])
    with pytest.raises(ValueError, match=r"conv.*\(2, 2, 1, 4\).*\(2, 2, 1, 5\)"):
        jax.jit(weights.cosine_similarity)(ta, bad)
    with pytest.raises(ValueError, match="no leaves"):
        weights.cosine_similarity({}, {})
    stacked = _tree(24, k=3)
    stacked["dense"]["bias"] = stacked["dense"]["bias"][:2]
    with pytest.raises(ValueError, match="bias.*K = "):
        jax.jit(weights.pairwise_cosine_similarity)(stacked)


# ---------------------------------------------------------------------------------------------------------
# Hypothesis properties (fixed shapes: one compilation each).

_K, _N, _C = 3, 4, 5
_logit_values = st.floats(-30, 30, width=32, allow_nan=False)
_member_logits = hnp.arrays(np.float32, (_K, _N, _C), elements=_logit_values)
_sym_kl = jax.jit(diversity.symmetric_kl)
_pair_kl = jax.jit(diversity.pairwise_symmetric_kl)
_pair_dis = jax.jit(diversity.pairwise_disagreement)
_cos = jax.jit(weights.cosine_similarity)
_pair_cos = jax.jit(weights.pairwise_cosine_similarity)


@settings(max_examples=40, deadline=None)
@given(_member_logits)
def test_symmetric_kl_is_symmetric_and_nonnegative(z):
    forward, backward = np.asarray(_sym_kl(z[0], z[1])), np.asarray(_sym_kl(z[1], z[0]))
    assert forward >= 0.0
    assert forward == backward
    assert np.isfinite(forward)


@settings(max_examples=40, deadline=None)
@given(_member_logits)
def test_pairwise_matrices_symmetric_with_zero_diagonal(z):
    for m in (np.asarray(_pair_kl(z)), np.asarray(_pair_dis(z))):
        assert m.shape == (_K, _K)
        np.testing.assert_array_equal(m, m.T)
        np.testing.assert_array_equal(np.diag(m), np.zeros(_K))
        assert np.all(m >= 0)
    assert np.all(np.asarray(_pair_dis(z)) <= 1)


_weight_values = st.floats(-1e3, 1e3, width=32, allow_nan=False)
_weight_tree = st.fixed_dictionaries(
    {
        "kernel": hnp.arrays(np.float32, (_K, 3, 2), elements=_weight_values),
        "bias": hnp.arrays(np.float32, (_K, 2), elements=_weight_values),
    }
)


@settings(max_examples=40, deadline=None)
@given(_weight_tree)
def test_cosine_similarity_bounded_and_one_with_itself(stacked):
    norms = np.sqrt(sum(np.sum(np.asarray(x, np.float64).reshape(_K, -1) ** 2, axis=1) for x in stacked.values()))
    assume(np.all(norms > 1e-3))
    a = jax.tree.map(lambda x: x[0], stacked)
    b = jax.tree.map(lambda x: x[1], stacked)
    cos = float(_cos(a, b))
    assert -1.0 <= cos <= 1.0
    assert float(_cos(a, a)) == pytest.approx(1.0, abs=1e-6)
    pair = np.asarray(_pair_cos(stacked))
    assert np.all((pair >= -1.0) & (pair <= 1.0))
    np.testing.assert_array_equal(pair, pair.T)
    np.testing.assert_allclose(np.diag(pair), np.ones(_K), atol=1e-6)
    assert pair[0, 1] == pytest.approx(cos, abs=1e-5)
