"""Webb et al.'s modular loss: eq. 8 gradients, the ambiguity form (eq. 6), λ = 0 as independent training,
Theorem 1's bound — against NumPy re-derivations of each family's NLL."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxens import losses

M, B, C = 4, 6, 5


def _data(family, seed=0):
    rng = np.random.default_rng(seed)
    if family == "categorical":
        return rng.normal(size=(M, B, C)).astype(np.float32) * 2, rng.integers(0, C, size=B).astype(np.int32)
    if family == "gaussian":
        return rng.normal(size=(M, B, 3)).astype(np.float32), rng.normal(size=(B, 3)).astype(np.float32)
    return rng.normal(size=(M, B)).astype(np.float32) * 0.5, rng.poisson(2.0, size=B).astype(np.float32)


def _np_nll(family, eta, y):
    """−log q(y | η) per example, from the densities (float64)."""
    eta = np.asarray(eta, np.float64)
    if family == "categorical":
        z = eta - eta.max(-1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
        return -np.take_along_axis(log_p, np.broadcast_to(y, log_p.shape[:-1])[..., None], -1)[..., 0]
    if family == "gaussian":
        return np.sum(0.5 * (y - eta) ** 2 + 0.5 * np.log(2 * np.pi), axis=-1)
    rate = np.exp(eta)
    return rate - y * eta + np.array([math.lgamma(v + 1) for v in np.ravel(y)]).reshape(np.shape(y))


def _np_mean(family, eta):
    eta = np.asarray(eta, np.float64)
    if family == "categorical":
        e = np.exp(eta - eta.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    return eta if family == "gaussian" else np.exp(eta)


def _np_loss(family, outputs, y, lam):
    joint = _np_nll(family, np.mean(outputs, 0), y).mean()
    independent = np.mean([_np_nll(family, outputs[j], y).mean() for j in range(M)])
    return lam * joint + (1 - lam) * independent


FAMILIES = ["categorical", "gaussian", "poisson"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("lam", [0.0, 0.5, 0.95, 1.0])
def test_loss_and_eq8_gradient_against_the_closed_form(family, lam):
    outputs, y = _data(family)
    loss = losses.modular_loss(outputs, y, lam, family)
    assert float(loss) == pytest.approx(_np_loss(family, outputs, y, lam), rel=1e-5)
    grads = np.asarray(jax.grad(losses.modular_loss)(jnp.asarray(outputs), y, lam, family), np.float64)
    y_hat = _np_mean(family, outputs)  # [M, B, ...]
    y_bar = _np_mean(family, np.mean(outputs, 0))  # [B, ...]
    target = np.eye(C)[y] if family == "categorical" else y
    # Eq. 8 per example, divided by B for the batch mean.
    want = (y_hat - target - lam * (y_hat - y_bar)) / M / B
    np.testing.assert_allclose(grads, want, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_ambiguity_form_equals_the_modular_loss(family):
    """Eq. 6: (1/M) Σ_j NLL_j − (λ/M) Σ_j KL(q̄ ‖ q_j) = eq. 4, with the KLs computed here from the densities."""
    outputs, y = _data(family, seed=1)
    eta_bar = np.mean(np.asarray(outputs, np.float64), 0)
    if family == "categorical":
        q_bar = _np_mean(family, eta_bar)
        kls = [np.sum(q_bar * (np.log(q_bar) - np.log(_np_mean(family, outputs[j]))), -1) for j in range(M)]
    elif family == "gaussian":  # KL between unit-variance Gaussians: ½ (μ̄ − μ_j)².
        kls = [np.sum(0.5 * (eta_bar - outputs[j]) ** 2, -1) for j in range(M)]
    else:  # KL(Pois(a) ‖ Pois(b)) = a log(a/b) − a + b.
        a = np.exp(eta_bar)
        kls = [a * (eta_bar - outputs[j]) - a + np.exp(outputs[j]) for j in range(M)]
    ambiguity = np.mean([k.mean() for k in kls])
    assert float(losses.ambiguity(outputs, family)) == pytest.approx(ambiguity, rel=1e-4, abs=1e-6)
    independent = np.mean([_np_nll(family, outputs[j], y).mean() for j in range(M)])
    for lam in (0.0, 0.3, 1.0):
        eq6 = independent - lam * ambiguity
        assert float(losses.modular_loss(outputs, y, lam, family)) == pytest.approx(eq6, rel=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_lambda_zero_is_independent_training_scaled_by_one_over_m(family):
    outputs, y = _data(family, seed=2)
    grads = jax.grad(losses.modular_loss)(jnp.asarray(outputs), y, 0.0, family)
    fam = losses.family(family)
    for j in range(M):
        alone = jax.grad(lambda eta: fam.nll(eta, y).mean())(jnp.asarray(outputs[j]))
        np.testing.assert_allclose(grads[j], alone / M, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("lam", [1.2, -0.1])
def test_lambda_outside_the_unit_interval_is_rejected(lam):
    outputs, y = _data("categorical")
    with pytest.raises(ValueError, match=r"lam=.*must lie in \[0, 1\].*Theorem 1"):
        losses.modular_loss(outputs, y, lam, "categorical")


def test_bad_family_and_shapes_are_named():
    outputs, y = _data("categorical")
    with pytest.raises(ValueError, match="family='bernoulli': allowed: categorical, gaussian, poisson"):
        losses.modular_loss(outputs, y, 0.5, "bernoulli")
    with pytest.raises(ValueError, match=r"outputs of shape \(4, 6, 5\) and targets of shape \(5,\)"):
        jax.jit(losses.modular_loss, static_argnums=3)(outputs, y[:5], 0.5, "categorical")


@settings(max_examples=30, deadline=None)
@given(st.floats(0.0, 1.0), st.integers(0, 100))
def test_ambiguity_is_nonnegative_and_the_loss_decreases_in_lambda(lam, seed):
    """Jensen: A is convex, so the ambiguity is ≥ 0 and L_λ = mean NLL − λ·ambiguity falls as λ grows."""
    for family in FAMILIES:
        outputs, y = _data(family, seed=seed)
        amb = float(losses.ambiguity(outputs, family))
        assert amb >= -1e-6
        assert (
            float(losses.modular_loss(outputs, y, lam, family))
            <= float(losses.modular_loss(outputs, y, 0.0, family)) + 1e-5
        )
