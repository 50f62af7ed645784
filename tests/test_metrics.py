"""Metric kernels against NumPy re-derivations from the formulas."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import np_softmax

from jaxens import metrics


def test_error_and_nll_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 50, 5)).astype(np.float32) * 3
    labels = rng.integers(0, 5, size=50)
    for m in range(3):
        p = np_softmax(logits[m].astype(np.float64))
        want_err = np.mean(p.argmax(-1) != labels)
        want_nll = -np.mean(np.log(p[np.arange(50), labels]))
        assert float(metrics.error(logits[m], labels)) == pytest.approx(want_err, abs=1e-7)
        assert float(metrics.nll(logits[m], labels)) == pytest.approx(want_nll, rel=1e-5)
    np.testing.assert_allclose(
        jax.jit(metrics.nll)(logits, labels),
        [-np.mean(np.log(np_softmax(logits[m].astype(np.float64))[np.arange(50), labels])) for m in range(3)],
        rtol=1e-5,
    )


def test_ensemble_log_probs_against_numpy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 20, 6)).astype(np.float32) * 2
    mean_prob = np.mean([np_softmax(z.astype(np.float64)) for z in logits], axis=0)
    np.testing.assert_allclose(np.exp(metrics.ensemble_log_probs(logits, "mean_prob")), mean_prob, rtol=1e-5)
    geo = np.exp(np.mean([np.log(np_softmax(z.astype(np.float64))) for z in logits], axis=0))
    geo /= geo.sum(-1, keepdims=True)
    np.testing.assert_allclose(np.exp(metrics.ensemble_log_probs(logits, "mean_logit")), geo, rtol=1e-5)


def test_hand_computed_case():
    # Two members, two examples, two classes. Member probabilities of class 1: (0.9, 0.2) and (0.3, 0.4).
    p1 = np.array([[0.1, 0.9], [0.8, 0.2]])
    p2 = np.array([[0.7, 0.3], [0.6, 0.4]])
    logits = np.log(np.stack([p1, p2]))
    labels = np.array([1, 1])
    ens = metrics.ensemble_log_probs(logits)  # Mean probabilities: [[0.4, 0.6], [0.7, 0.3]].
    np.testing.assert_allclose(np.exp(ens), [[0.4, 0.6], [0.7, 0.3]], rtol=1e-6)
    assert float(metrics.error(ens, labels)) == pytest.approx(0.5)
    assert float(metrics.nll(ens, labels)) == pytest.approx(-(np.log(0.6) + np.log(0.3)) / 2, rel=1e-6)


def test_mismatched_labels_named():
    with pytest.raises(ValueError, match="labels"):
        metrics.error(np.zeros((5, 3)), np.zeros(4, np.int32))


def test_entropy_and_confidence_against_numpy_with_impossible_classes():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(3, 30, 4)).astype(np.float32)
    logits[:, :5, 0] = -np.inf  # Class 0 impossible for the first examples: 0 · log 0 = 0.
    p = np_softmax(logits.astype(np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        want = -np.sum(np.where(p > 0, p * np.log(p), 0.0), axis=-1)
    np.testing.assert_allclose(metrics.entropy(logits), want, rtol=1e-5)
    np.testing.assert_allclose(metrics.confidence(logits), p.max(-1), rtol=1e-6)
    assert float(metrics.entropy(np.array([[0.0, -np.inf]]))[0]) == 0.0


def test_bad_arguments_raise_naming_them_at_trace_time_or_eagerly():
    logits = np.zeros((3, 5, 4), np.float32)
    # Trace time: under jit, before anything runs.
    with pytest.raises(ValueError, match=r"labels of shape \(6,\) does not match logits of shape \(3, 5, 4\)"):
        jax.jit(metrics.nll)(logits, np.zeros(6, np.int32))
    with pytest.raises(ValueError, match="logits_p .* and logits_q"):
        jax.jit(metrics.symmetric_kl)(logits, np.zeros((3, 5, 3), np.float32))
    with pytest.raises(ValueError, match=r"member_logits: expected \[K, N, C\]"):
        metrics.ensemble_log_probs(np.zeros((2, 3, 5, 4), np.float32))
    # Label values are checked in eager calls.
    with pytest.raises(ValueError, match=r"labels: label 4 outside \[0, 4\)"):
        metrics.error(logits, np.array([0, 1, 2, 3, 4]))
    with pytest.raises(ValueError, match="integer class indices"):
        metrics.ece(logits, np.zeros(5, np.float32))
