"""Fort et al. App. D limit curves against NumPy formulas, hand values, and the model they come from."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxens.metrics import limits

upper = jax.jit(limits.diversity_upper_limit)
lower = jax.jit(limits.diversity_lower_limit)
family = jax.jit(limits.diversity_family)


# ---------------------------------------------------------------------------------------------------------
# The idealized model of App. D, enumerated exactly (no closed forms): the true label is class 0; f* predicts
# class 0 with probability a* and each wrong class with probability (1 − a*)/(C − 1).


def _ref_prediction(a_ref, c):
    """[C] distribution of f*'s predicted label."""
    return np.array([a_ref] + [(1 - a_ref) / (c - 1)] * (c - 1))


def _enumerate_independent(a, a_ref, c):
    """D.1: f independent of f*, same kind of distribution with accuracy a → (accuracy of f, disagreement)."""
    joint = _ref_prediction(a_ref, c)[:, None] * _ref_prediction(a, c)[None, :]  # [r, s]
    return joint[:, 0].sum(), joint[~np.eye(c, dtype=bool)].sum()


def _enumerate_flips(a_ref, c, p_plus, p_minus):
    """D.2/D.3: f = f* with its label replaced, uniformly among the C − 1 others, with probability p₊ where f*
    is right (r = 0) and p₋ where it is wrong → (accuracy of f, disagreement with f*)."""
    trans = np.zeros((c, c))  # trans[r, s] = P(f predicts s | f* predicts r)
    for r in range(c):
        flip = p_plus if r == 0 else p_minus
        trans[r] = flip / (c - 1)
        trans[r, r] = 1 - flip
    joint = _ref_prediction(a_ref, c)[:, None] * trans
    return joint[:, 0].sum(), joint[~np.eye(c, dtype=bool)].sum()


# ---------------------------------------------------------------------------------------------------------
# Closed forms re-derived in NumPy, random vectorized inputs, under jit.


def test_curves_against_numpy_formulas_vectorized():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, size=(6, 5)).astype(np.float32)
    a_ref = rng.uniform(0.3, 1, size=(5,)).astype(np.float32)  # broadcasts over the last axis
    c = 10
    a64, r64 = a.astype(np.float64), a_ref.astype(np.float64)
    want_up = (1 - r64) * a64 + (1 - a64) * r64 + (1 - r64) * (1 - a64) * (c - 2) / (c - 1)
    want_lo = (c - 1) * (r64 - a64) / (c * r64 - 1)
    got_up, got_lo = upper(a, a_ref, c), lower(a, a_ref, c)
    assert got_up.shape == got_lo.shape == (6, 5)
    np.testing.assert_allclose(got_up, want_up, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_lo, want_lo, rtol=1e-4, atol=1e-5)
    # num_classes as an array broadcasts too.
    cs = np.array([2, 3, 10, 100, 1000])
    np.testing.assert_allclose(
        upper(a, a_ref, cs),
        (1 - r64) * a64 + (1 - a64) * r64 + (1 - r64) * (1 - a64) * (cs - 2) / (cs - 1),
        rtol=1e-5,
        atol=1e-6,
    )


def test_family_against_numpy_formula_vectorized():
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 1, size=(7, 1)).astype(np.float32)
    e = np.array([0.22, 0.5, 1.0, 2.0], np.float32)
    a_ref, c = 0.85, 100
    p64, e64 = p.astype(np.float64), e.astype(np.float64)
    p_minus = p64**e64
    want_acc = a_ref * (1 - p64) + (1 - a_ref) * p_minus / (c - 1)
    want_dis = a_ref * p64 + (1 - a_ref) * p_minus
    acc, dis = family(p, a_ref, c, e)
    assert acc.shape == dis.shape == (7, 4)
    np.testing.assert_allclose(acc, want_acc, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dis, want_dis, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Hand-computed points.


def test_hand_computed_points():
    # C = 10, a* = 0.9, a = 0.8:
    #   upper = 0.1·0.8 + 0.2·0.9 + 0.1·0.2·(8/9) = 0.08 + 0.18 + 0.017778 = 0.277778
    #   lower = 9·(0.9 − 0.8) / (10·0.9 − 1) = 0.9 / 8 = 0.1125
    assert float(upper(0.8, 0.9, 10)) == pytest.approx(0.277778, abs=1e-6)
    assert float(lower(0.8, 0.9, 10)) == pytest.approx(0.1125, abs=1e-6)
    # C = 2 (binary), a* = 0.75, a = 0.6:
    #   upper = 0.25·0.6 + 0.4·0.75 + 0 = 0.15 + 0.3 = 0.45 (two wrong binary labels always agree)
    #   lower = 1·(0.75 − 0.6) / (1.5 − 1) = 0.3
    assert float(upper(0.6, 0.75, 2)) == pytest.approx(0.45, abs=1e-6)
    assert float(lower(0.6, 0.75, 2)) == pytest.approx(0.3, abs=1e-6)
    # Family, C = 10, a* = 0.9, p = 0.25, e = 0.5 → p₊ = 0.25, p₋ = 0.5:
    #   accuracy = 0.9·0.75 + 0.1·0.5/9 = 0.675 + 0.005556 = 0.680556
    #   disagreement = 0.9·0.25 + 0.1·0.5 = 0.225 + 0.05 = 0.275
    acc, dis = family(0.25, 0.9, 10, 0.5)
    assert float(acc) == pytest.approx(0.680556, abs=1e-6)
    assert float(dis) == pytest.approx(0.275, abs=1e-6)


def test_curves_meet_where_the_paper_says():
    a_ref = np.array([0.6, 0.75, 0.9, 0.99], np.float32)
    for c in (2, 10, 100):
        # Lower limit: f = f* at a = a*, d = 0.
        np.testing.assert_allclose(lower(a_ref, a_ref, c), 0.0, atol=1e-6)
        # Both curves pass through chance accuracy a = 1/C with d = (C − 1)/C:
        #   upper(1/C) = [(1 − a*) + (C − 1)a* + (1 − a*)(C − 2)]/C = (C − 1)/C,
        #   lower(1/C) = (C − 1)(a* − 1/C)/(C a* − 1) = (C − 1)/C.
        np.testing.assert_allclose(upper(1.0 / c, a_ref, c), (c - 1) / c, rtol=1e-5)
        np.testing.assert_allclose(lower(1.0 / c, a_ref, c), (c - 1) / c, rtol=1e-5)
        # Lower limit reaches d = 1 (every label flipped) at a = (1 − a*)/(C − 1).
        np.testing.assert_allclose(lower((1 - a_ref) / (c - 1), a_ref, c), 1.0, rtol=1e-5)
        # Between them the upper limit is above the lower one.
        a = np.linspace(1.0 / c, a_ref, 9, dtype=np.float32)  # [9, 4]
        assert np.all(np.asarray(upper(a, a_ref, c)) >= np.asarray(lower(a, a_ref, c)) - 1e-6)


def test_family_endpoints_and_special_exponents():
    a_ref, c = 0.9, 10
    p = np.linspace(0, 1, 11, dtype=np.float32)
    for e in (0.22, 1.0, 3.0):
        acc, dis = family(p, a_ref, c, e)
        assert float(acc[0]) == pytest.approx(a_ref) and float(dis[0]) == 0.0  # p = 0: f = f*
        assert float(acc[-1]) == pytest.approx((1 - a_ref) / (c - 1)) and float(dis[-1]) == pytest.approx(1.0)
    # e = 1 (p₊ = p₋) is the lower limit of D.2 / eq. 2.
    acc, dis = family(p, a_ref, c, 1.0)
    np.testing.assert_allclose(dis, lower(acc, a_ref, c), atol=1e-5)
    np.testing.assert_allclose(dis, p, atol=1e-6)
    # Large e (p₋ → 0 for p < 1): only correct labels flip, d = a* − a.
    acc, dis = family(p[:-1], a_ref, c, 200.0)
    np.testing.assert_allclose(dis, a_ref - np.asarray(acc), atol=1e-5)
    # e < 1 lies above the lower limit at equal accuracy (more diverse for its accuracy).
    acc, dis = family(p[1:-1], a_ref, c, 0.22)
    assert np.all(np.asarray(dis) > np.asarray(lower(acc, a_ref, c)))


# ---------------------------------------------------------------------------------------------------------
# The curves against the model of App. D itself.


@pytest.mark.parametrize("c", [2, 3, 10])
def test_upper_limit_is_the_uncorrelated_model(c):
    for a_ref in (0.6, 0.9):
        for a in (0.2, 0.5, 0.75, 1.0):
            acc, dis = _enumerate_independent(a, a_ref, c)
            assert acc == pytest.approx(a)
            assert float(upper(a, a_ref, c)) == pytest.approx(dis, abs=1e-6)


@pytest.mark.parametrize("c", [2, 3, 10])
def test_lower_limit_and_family_are_the_flip_model(c):
    for a_ref in (0.7, 0.95):
        for p in (0.0, 0.1, 0.5, 0.9, 1.0):
            acc, dis = _enumerate_flips(a_ref, c, p, p)
            assert dis == pytest.approx(p)
            assert float(lower(acc, a_ref, c)) == pytest.approx(dis, abs=2e-5)
            for e in (0.22, 0.5, 2.0):
                acc, dis = _enumerate_flips(a_ref, c, p, p**e)
                got_acc, got_dis = family(p, a_ref, c, e)
                assert float(got_acc) == pytest.approx(acc, abs=1e-6)
                assert float(got_dis) == pytest.approx(dis, abs=1e-6)


def test_family_against_monte_carlo_simulation():
    # Simulate the D.3 process on labels and predictions, the way one would perturb a real solution.
    rng = np.random.default_rng(2)
    n, c, a_ref, p, e = 200_000, 5, 0.8, 0.3, 0.22
    y = rng.integers(0, c, size=n)
    correct = rng.random(n) < a_ref
    ref = np.where(correct, y, (y + rng.integers(1, c, size=n)) % c)  # wrong labels uniform over the others
    flip_prob = np.where(ref == y, p, p**e)
    flipped = rng.random(n) < flip_prob
    f = np.where(flipped, (ref + rng.integers(1, c, size=n)) % c, ref)  # new label uniform over the others
    acc, dis = family(p, a_ref, c, e)
    tol = 5 * np.sqrt(0.25 / n)  # five binomial standard deviations
    assert float(acc) == pytest.approx(np.mean(f == y), abs=tol)
    assert float(dis) == pytest.approx(np.mean(f != ref), abs=tol)
    # Sanity check of the simulation itself: the simulated reference has accuracy a*.
    assert np.mean(ref == y) == pytest.approx(a_ref, abs=tol)


# ---------------------------------------------------------------------------------------------------------
# Argument checks (eager calls) and jit.


def test_invalid_values_raise_when_concrete():
    with pytest.raises(ValueError, match="num_classes"):
        limits.diversity_upper_limit(0.5, 0.9, 1)
    with pytest.raises(ValueError, match="^acc=1.5"):
        limits.diversity_lower_limit(1.5, 0.9, 10)
    with pytest.raises(ValueError, match="ref_acc"):
        limits.diversity_lower_limit(0.5, -0.1, 10)
    with pytest.raises(ValueError, match="p="):
        limits.diversity_family(np.array([0.5, 1.2]), 0.9, 10, 0.5)
    with pytest.raises(ValueError, match="exponent"):
        limits.diversity_family(0.5, 0.9, 10, -1.0)


def test_jit_matches_eager_and_returns_float():
    a = jnp.linspace(0.1, 0.9, 5)
    np.testing.assert_allclose(upper(a, 0.9, 10), limits.diversity_upper_limit(np.asarray(a), 0.9, 10), rtol=1e-6)
    out = limits.diversity_lower_limit(np.array([1, 0]), 1, 10)  # integer inputs → float result
    assert jnp.issubdtype(out.dtype, jnp.floating)
    np.testing.assert_allclose(out, [0.0, 1.0], atol=1e-6)


@pytest.mark.parametrize("e", [0.22, 1.0, 3.0])
def test_fit_recovers_the_exponent_of_simulated_flips(e):
    """Points made by flipping a simulated solution's labels (the D.3 process, not its formula) at several p:
    the fitted exponent is the one that made them; a wrong exponent fits worse."""
    rng = np.random.default_rng(3)
    n, c, a_ref = 50_000, 10, 0.7
    y = rng.integers(0, c, size=n)
    ref = np.where(rng.random(n) < a_ref, y, (y + rng.integers(1, c, size=n)) % c)
    a_star = float(np.mean(ref == y))
    acc, dis = [], []
    for p in np.linspace(0.02, 0.6, 15):
        flipped = rng.random(n) < np.where(ref == y, p, p**e)
        f = np.where(flipped, (ref + rng.integers(1, c, size=n)) % c, ref)
        acc.append(np.mean(f == y))
        dis.append(np.mean(f != ref))
    fit = limits.fit_family_exponent(acc, dis, a_star, c)
    assert fit["exponent"] == pytest.approx(e, rel=0.1)
    other = limits.fit_family_exponent(acc, dis, a_star, c, exponents=[4 * e])
    assert other["mse"] > 10 * fit["mse"]
    with pytest.raises(ValueError, match="no points"):
        limits.fit_family_exponent([], [], a_star, c)
