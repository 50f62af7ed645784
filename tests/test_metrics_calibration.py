"""Calibration kernels against NumPy re-derivations from the formulas of
docs/definitions.md#calibration-ece-mce-mace, hand-worked cases, properties."""

from __future__ import annotations

import fractions
import functools
import math

import hypothesis.extra.numpy as hnp
import jax
import numpy as np
import pytest
from conftest import np_softmax, random_logits
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxens.metrics import calibration, classification

# ----- NumPy reference, written from the definitions (float64, loops over bins) -----


def _np_brier(logits, labels):
    p = np_softmax(logits)  # [..., N, C]
    onehot = np.eye(p.shape[-1])[labels]  # [N, C]
    return ((p - onehot) ** 2).sum(-1).mean(-1)


def _np_bins_1(logits, labels, num_bins):
    """One member: per-bin count, confidence sum and number correct, looping over examples."""
    p = np_softmax(logits)
    count, conf_sum, correct_sum = np.zeros(num_bins), np.zeros(num_bins), np.zeros(num_bins)
    for n in range(p.shape[0]):
        conf = p[n].max()
        b = min(int(np.floor(conf * num_bins)), num_bins - 1)
        count[b] += 1
        conf_sum[b] += conf
        correct_sum[b] += float(np.argmax(p[n]) == labels[n])
    return count, conf_sum, correct_sum


def _np_calibration_1(logits, labels, num_bins):
    """One member: (ECE, MCE, MACE) straight from the definitions, empty bins skipped."""
    count, conf_sum, correct_sum = _np_bins_1(logits, labels, num_bins)
    total = count.sum()
    gaps, weights = [], []
    for b in range(num_bins):
        if count[b] == 0:
            continue
        acc_b, conf_b = correct_sum[b] / count[b], conf_sum[b] / count[b]
        gaps.append(abs(acc_b - conf_b))
        weights.append(count[b] / total)
    gaps, weights = np.array(gaps), np.array(weights)
    return float(np.sum(weights * gaps)), float(np.max(gaps)), float(np.mean(gaps))


def _np_confusion_1(logits, labels, num_classes):
    m = np.zeros((num_classes, num_classes), np.int64)
    for t, pred in zip(labels, np.argmax(logits, -1)):
        m[t, pred] += 1
    return m


# ----- Against the reference on random inputs -----


def test_brier_against_numpy():
    logits, labels = random_logits(0, (3, 200, 7))
    np.testing.assert_allclose(calibration.brier(logits, labels), _np_brier(logits, labels), rtol=1e-5)
    np.testing.assert_allclose(calibration.brier(logits[1], labels), _np_brier(logits[1], labels), rtol=1e-5)
    per_example = calibration.brier_per_example(logits, labels)
    assert per_example.shape == (3, 200)
    np.testing.assert_allclose(per_example.mean(-1), _np_brier(logits, labels), rtol=1e-5)


@pytest.mark.parametrize("num_bins", [1, 4, 15])
def test_bins_against_numpy(num_bins):
    logits, labels = random_logits(1, (2, 300, 5))
    bins = calibration.calibration_bins(logits, labels, num_bins)
    assert isinstance(bins, calibration.Bins)
    for field in bins:
        assert field.shape == (2, num_bins)
    for m in range(2):
        count, conf_sum, correct_sum = _np_bins_1(logits[m], labels, num_bins)
        np.testing.assert_array_equal(bins.count[m], count)
        np.testing.assert_array_equal(bins.correct_sum[m], correct_sum)
        np.testing.assert_allclose(bins.confidence_sum[m], conf_sum, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_bins", [1, 10, 15])
def test_ece_mce_mace_against_numpy(num_bins):
    logits, labels = random_logits(2, (3, 250, 6), scale=2.0)
    got = [
        calibration.ece(logits, labels, num_bins),
        calibration.mce(logits, labels, num_bins),
        calibration.mace(logits, labels, num_bins),
    ]
    for g in got:
        assert g.shape == (3,)
    for m in range(3):
        want = _np_calibration_1(logits[m], labels, num_bins)
        np.testing.assert_allclose([float(g[m]) for g in got], want, rtol=1e-5, atol=1e-6)
        # Without the member axis: the same numbers.
        single = [
            calibration.ece(logits[m], labels, num_bins),
            calibration.mce(logits[m], labels, num_bins),
            calibration.mace(logits[m], labels, num_bins),
        ]
        np.testing.assert_allclose([float(s) for s in single], want, rtol=1e-5, atol=1e-6)


def test_confusion_matrix_against_numpy():
    logits, labels = random_logits(3, (2, 120, 4))
    got = calibration.confusion_matrix(logits, labels, 4)
    assert got.shape == (2, 4, 4)
    assert np.issubdtype(got.dtype, np.integer)
    for m in range(2):
        np.testing.assert_array_equal(got[m], _np_confusion_1(logits[m], labels, 4))
    np.testing.assert_array_equal(got.sum(-1), np.broadcast_to(np.bincount(labels, minlength=4), (2, 4)))
    np.testing.assert_array_equal(calibration.confusion_matrix(logits[0], labels), got[0])


def test_confusion_matrix_hand_computed():
    # Predictions (argmax): 0, 1, 1, 2, 0; true labels: 0, 1, 2, 2, 1.
    logits = np.array([[5, 0, 0], [0, 5, 0], [0, 5, 0], [0, 0, 5], [5, 0, 0]], np.float32)
    labels = np.array([0, 1, 2, 2, 1])
    want = np.array(
        [
            [1, 0, 0],  # true 0: predicted 0 once
            [1, 1, 0],  # true 1: predicted 0 and 1
            [0, 1, 1],
        ]
    )  # true 2: predicted 1 and 2
    np.testing.assert_array_equal(calibration.confusion_matrix(logits, labels, 3), want)
    with pytest.raises(ValueError, match="num_classes"):
        calibration.confusion_matrix(logits, labels, 4)


# ----- Hand-worked cases -----


def test_confidence_exactly_one_falls_in_last_bin():
    # softmax([0, -inf, -inf]) = [1, 0, 0] and softmax([200, 0, 0]) = [1, ~1e-87 → 0, 0] in float32: conf == 1.0.
    logits = np.array([[0.0, -np.inf, -np.inf], [200.0, 0.0, 0.0]], np.float32)
    labels = np.array([0, 1])
    assert np.all(np.asarray(jax.nn.softmax(logits).max(-1)) == 1.0)  # The premise of the test.
    for num_bins in (1, 3, 15):
        bins = calibration.calibration_bins(logits, labels, num_bins)
        np.testing.assert_array_equal(bins.count, np.eye(num_bins)[-1] * 2)
        np.testing.assert_array_equal(bins.correct_sum, np.eye(num_bins)[-1] * 1)
        np.testing.assert_allclose(bins.confidence_sum, np.eye(num_bins)[-1] * 2.0)
    # One right, one wrong, both at confidence 1: |acc − conf| = 0.5 in the one non-empty bin.
    assert float(calibration.ece(logits, labels)) == pytest.approx(0.5)
    assert float(calibration.mce(logits, labels)) == pytest.approx(0.5)
    assert float(calibration.mace(logits, labels)) == pytest.approx(0.5)


def test_bin_edges_belong_to_the_upper_bin():
    # softmax([0, 0]) = [0.5, 0.5] exactly: with 2 bins, 0.5 · 2 = 1 → bin 1; with 4 bins → bin 2.
    logits = np.zeros((3, 2), np.float32)
    labels = np.array([0, 0, 1])  # argmax of a tie is class 0.
    np.testing.assert_array_equal(calibration.calibration_bins(logits, labels, 2).count, [0, 3])
    np.testing.assert_array_equal(calibration.calibration_bins(logits, labels, 4).count, [0, 0, 3, 0])
    np.testing.assert_array_equal(calibration.calibration_bins(logits, labels, 4).correct_sum, [0, 0, 2, 0])


def _logits_from_top_confidence(confs, correct):
    """Two-class logits log([c, 1 − c]) and labels: the label is class 0 where `correct`, else class 1."""
    confs = np.asarray(confs, np.float64)
    with np.errstate(divide="ignore"):  # Confidence 1 → logits [0, −inf].
        logits = np.log(np.stack([confs, 1 - confs], -1)).astype(np.float32)
    labels = np.where(correct, 0, 1)
    return logits, labels


def test_hand_worked_ece_mce_mace():
    # Five bins of width 0.2. Bin [0.4, 0.6): confidences 0.55 (right), 0.58 (wrong): acc 1/2, conf 0.565,
    # gap 0.065. Bin [0.6, 0.8): 0.7 three times, two right: acc 2/3, conf 0.7, gap 1/30. Bin [0.8, 1]:
    # 0.9 (wrong): acc 0, gap 0.9. Bins [0, 0.2) and [0.2, 0.4) are empty.
    logits, labels = _logits_from_top_confidence(
        [0.55, 0.58, 0.7, 0.7, 0.7, 0.9], [True, False, True, True, False, False]
    )
    bins = calibration.calibration_bins(logits, labels, 5)
    np.testing.assert_array_equal(bins.count, [0, 0, 2, 3, 1])
    np.testing.assert_array_equal(bins.correct_sum, [0, 0, 1, 2, 0])
    np.testing.assert_allclose(bins.confidence_sum, [0, 0, 1.13, 2.1, 0.9], rtol=1e-6)
    want_ece = (2 * 0.065 + 3 * (1 / 30) + 1 * 0.9) / 6  # = 1.13 / 6
    want_mce = 0.9
    want_mace = (0.065 + 1 / 30 + 0.9) / 3  # Three non-empty bins, unweighted.
    assert float(calibration.ece(logits, labels, 5)) == pytest.approx(want_ece, rel=1e-5)
    assert float(calibration.mce(logits, labels, 5)) == pytest.approx(want_mce, rel=1e-5)
    assert float(calibration.mace(logits, labels, 5)) == pytest.approx(want_mace, rel=1e-5)
    # The *_from_bins functions give the same from the statistics alone.
    assert float(calibration.ece_from_bins(bins)) == pytest.approx(want_ece, rel=1e-5)
    assert float(calibration.mce_from_bins(bins)) == pytest.approx(want_mce, rel=1e-5)
    assert float(calibration.mace_from_bins(bins)) == pytest.approx(want_mace, rel=1e-5)


def test_perfectly_calibrated_toy_case():
    # Confidence 0.75: three of four right; confidence 0.875: seven of eight right; confidence 1: all right.
    # Each group sits inside one bin of width 0.1, where accuracy equals confidence.
    logits, labels = _logits_from_top_confidence(
        [0.75] * 4 + [0.875] * 8 + [1.0] * 2, [True] * 3 + [False] + [True] * 7 + [False] + [True] * 2
    )
    for fn in (calibration.ece, calibration.mce, calibration.mace):
        value = float(fn(logits, labels, 10))
        assert value == pytest.approx(0.0, abs=1e-6)  # 7 of the 10 bins are empty: no NaN either.


def test_empty_bins_give_no_nan_and_no_examples_give_nan():
    logits, labels = _logits_from_top_confidence([0.9, 0.95], [True, False])
    for num_bins in (15, 100):
        for fn in (calibration.ece, calibration.mce, calibration.mace):
            assert np.isfinite(float(fn(logits, labels, num_bins)))
    empty = calibration.Bins(np.zeros(15, np.int32), np.zeros(15, np.float32), np.zeros(15, np.int32))
    for fn in (calibration.ece_from_bins, calibration.mce_from_bins, calibration.mace_from_bins):
        assert np.isnan(float(fn(empty)))


# ----- jit, member axis, argument errors -----


def test_under_jit_with_member_axis():
    logits, labels = random_logits(4, (4, 64, 3))
    for fn in (calibration.ece, calibration.mce, calibration.mace):
        jitted = jax.jit(fn, static_argnames="num_bins")
        np.testing.assert_allclose(jitted(logits, labels, num_bins=7), fn(logits, labels, 7), rtol=1e-6)
        np.testing.assert_allclose(jitted(logits, labels, num_bins=7), [fn(z, labels, 7) for z in logits], rtol=1e-6)
    np.testing.assert_allclose(jax.jit(calibration.brier)(logits, labels), _np_brier(logits, labels), rtol=1e-5)
    np.testing.assert_array_equal(
        jax.jit(calibration.confusion_matrix, static_argnums=2)(logits, labels, 3),
        [_np_confusion_1(z, labels, 3) for z in logits],
    )
    jit_bins = jax.jit(calibration.calibration_bins, static_argnums=2)(logits, labels, 5)
    eager_bins = calibration.calibration_bins(logits, labels, 5)
    for a, b in zip(jit_bins, eager_bins):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    # Vmapping over the member axis is the same as passing it.
    np.testing.assert_allclose(
        jax.vmap(calibration.mace, in_axes=(0, None))(logits, labels), calibration.mace(logits, labels), rtol=1e-6
    )


@pytest.mark.parametrize(
    "fn",
    [
        calibration.brier,
        calibration.calibration_bins,
        calibration.ece,
        calibration.mce,
        calibration.mace,
        functools.partial(calibration.confusion_matrix, num_classes=3),
        calibration.brier_per_example,
    ],
)
def test_label_length_mismatch_names_arguments(fn):
    logits = np.zeros((2, 5, 3), np.float32)
    with pytest.raises(ValueError, match=r"labels.*logits"):
        fn(logits, np.zeros(4, np.int32))
    with pytest.raises(ValueError, match=r"labels.*logits"):
        jax.jit(fn)(logits, np.zeros(6, np.int32))
    with pytest.raises(ValueError, match="labels"):
        fn(logits, np.array([0, 1, 2, 3, 0]))  # Label 3 outside [0, C).


def test_bad_num_bins():
    logits, labels = random_logits(5, (10, 3))
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="num_bins"):
            calibration.ece(logits, labels, bad)


# ----- Properties -----


_N, _C = 16, 4  # One shape, so that each number of bins compiles once.


@functools.partial(jax.jit, static_argnums=2)
def _all_calibration(logits, labels, num_bins):
    bins = calibration.calibration_bins(logits, labels, num_bins)
    from_bins = (calibration.ece_from_bins(bins), calibration.mce_from_bins(bins), calibration.mace_from_bins(bins))
    kernels = (
        calibration.ece(logits, labels, num_bins),
        calibration.mce(logits, labels, num_bins),
        calibration.mace(logits, labels, num_bins),
    )
    return bins, from_bins, kernels


@settings(max_examples=50, deadline=None)
@given(
    logits=hnp.arrays(np.float32, (2, _N, _C), elements=st.floats(-30, 30, width=32)),
    labels=hnp.arrays(np.int32, (_N,), elements=st.integers(0, _C - 1)),
    num_bins=st.sampled_from([1, 2, 15]),
)
def test_calibration_errors_bounded_and_ordered(logits, labels, num_bins):
    bins, (ece, mce, mace), kernels = jax.device_get(_all_calibration(logits, labels, num_bins))
    eps = 1e-6
    for value in (ece, mce, mace):
        assert np.all(np.isfinite(value))
        assert np.all(value >= -eps) and np.all(value <= 1 + eps)
    assert np.all(mce >= mace - eps)
    assert np.all(mce >= ece - eps)
    np.testing.assert_array_equal(bins.count.sum(-1), _N)
    # The kernels are the *_from_bins of the same statistics (one implementation).
    np.testing.assert_array_equal(np.stack(kernels), np.stack([ece, mce, mace]))


# ----- Exactly tied top logits -----


def _tied_logits(j, num_classes, top, others):
    """[1, num_classes] float32 logits: the first j equal to `top`, the rest equal to `others`."""
    return np.array([[top] * j + [others] * (num_classes - j)], np.float32)


@pytest.mark.parametrize("j", range(2, 16))
def test_tied_top_logits_give_confidence_one_over_j_and_its_exact_bin(j):
    # j tied top logits and every other class impossible (or no other class): p_top = 1/j exactly, so the
    # float32 confidence must be 1/j correctly rounded, and its bin the bin of the rational 1/j (for
    # j = 3, 5, 15 that is a bin edge: 1/3 = 5/15 is the first value of bin 5, not the last of bin 4).
    num_bins = 15
    exact = fractions.Fraction(1, j)
    want_bin = min(math.floor(exact * num_bins), num_bins - 1)
    cases = [
        _tied_logits(j, j, 0.0, 0.0),  # All logits equal.
        _tied_logits(j, j, -12.75, -12.75),
        _tied_logits(j, j + 3, 3.5, -np.inf),  # Other classes impossible.
    ]
    for logits in cases:
        labels = np.zeros(1, np.int32)
        for fn in (classification.confidence, jax.jit(classification.confidence)):
            conf = np.asarray(fn(logits))
            assert conf.dtype == np.float32
            got = (float(conf[0]), int(calibration.bin_index(conf, num_bins)[0]))
            assert got == (np.float32(exact), want_bin), logits
        bins = calibration.calibration_bins(logits, labels, num_bins)
        np.testing.assert_array_equal(bins.count, np.eye(num_bins, dtype=np.int32)[want_bin])


@pytest.mark.parametrize("j", range(2, 6))
def test_tied_top_logits_with_much_lower_others(j):
    # Other classes 40 below the top: the exact confidence is 1/(j + 3e^−40), within 1e-17 of 1/j, so it
    # rounds to the same float32 as 1/j.
    logits = _tied_logits(j, 7, 1.25, 1.25 - 40.0)
    conf = float(classification.confidence(logits)[0])
    exact = 1 / (fractions.Fraction(j) + 3 * fractions.Fraction(math.exp(-40.0)))
    assert conf == np.float32(float(exact)) == np.float32(1 / j)
