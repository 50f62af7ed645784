"""Module analyses of Webb et al. (jaxens.modules) against NumPy re-derivations with explicit sub-ensembles."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import np_softmax, random_logits

from jaxens import metrics, modules

# ---------------------------------------------------------------------------------------------------------
# Independent NumPy re-derivations (float64, loops over explicit sub-ensembles).


def _np_combine(sub_logits, method):
    """Probabilities [N, C] of the sub-ensemble whose modules' logits are `sub_logits` [s, N, C]."""
    sub_logits = np.asarray(sub_logits, np.float64)
    if method == "mean_logit":  # Softmax of the mean logits (Webb's normalized geometric mean).
        return np_softmax(np.mean(sub_logits, axis=0))
    return np.mean([np_softmax(z) for z in sub_logits], axis=0)  # Mean of the module probabilities.


def _np_error(probs, labels):
    return float(np.mean(np.argmax(probs, axis=-1) != labels))


def _np_f1(predicted, actual):
    """F1 = 2TP / (2TP + FP + FN), counted example by example; 0 when there is nothing to count."""
    tp = fp = fn = 0
    for p, a in zip(predicted, actual):
        tp += bool(p) and bool(a)
        fp += bool(p) and not bool(a)
        fn += not bool(p) and bool(a)
    return 0.0 if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def _np_subset_f1(member_logits, labels, cls, members, method, decision):
    probs = _np_combine(member_logits[list(members)], method)  # [N, C]
    predicted = np.argmax(probs, -1) == cls if decision == "argmax" else probs[:, cls] >= 0.5
    return _np_f1(predicted, labels == cls)


def _np_entropy(z):
    p = np_softmax(z)  # [N, C]
    return np.array([-sum(pc * np.log(pc) for pc in row if pc > 0) for row in p])  # [N]


removal_jit = jax.jit(modules.removal_curve, static_argnames=("num_trials", "method"))
KEY = jax.random.key(0)

# ---------------------------------------------------------------------------------------------------------
# Fig. 4: module removal.


@pytest.mark.parametrize("method", ["mean_logit", "mean_prob"])
def test_removal_curve_against_numpy(method):
    logits, labels = random_logits(0, (7, 60, 4), scale=2.0)
    num_removed = [0, 1, 3, 6]
    got = modules.removal_curve(logits, labels, num_removed, KEY, num_trials=5, method=method)
    assert got.kept.shape == (4, 5, 7) and got.errors.shape == (4, 5)
    np.testing.assert_array_equal(got.num_removed, num_removed)
    want = np.zeros((4, 5))
    for r, n in enumerate(num_removed):
        for t in range(5):
            kept = np.asarray(got.kept[r, t])
            assert kept.sum() == 7 - n  # exactly n modules dropped
            want[r, t] = _np_error(_np_combine(logits[kept], method), labels)
    np.testing.assert_allclose(got.errors, want, atol=1e-6)
    np.testing.assert_allclose(got.error_mean, want.mean(axis=1), atol=1e-6)
    np.testing.assert_allclose(got.error_std, want.std(axis=1), atol=1e-6)


@pytest.mark.parametrize("method", ["mean_logit", "mean_prob"])
def test_removing_no_module_gives_the_full_ensemble_error(method):
    logits, labels = random_logits(1, (7, 60, 4), scale=2.0)
    got = modules.removal_curve(logits, labels, [0, 1, 3, 6], KEY, num_trials=5, method=method)
    want = _np_error(_np_combine(logits, method), labels)
    np.testing.assert_allclose(got.errors[0], np.full(5, want), atol=1e-6)
    assert bool(np.all(got.kept[0]))
    assert float(got.error_std[0]) == pytest.approx(0.0, abs=1e-6)
    full = metrics.error(metrics.ensemble_log_probs(logits, method), labels)
    assert float(got.error_mean[0]) == pytest.approx(float(full), abs=1e-6)


@pytest.mark.parametrize("method", ["mean_logit", "mean_prob"])
def test_identical_modules_give_a_flat_removal_curve(method):
    one, labels = random_logits(2, (1, 60, 4), scale=2.0)
    logits = np.repeat(one, 7, axis=0)  # [7, N, C], seven copies of one module
    got = modules.removal_curve(logits, labels, [0, 1, 3, 6], KEY, num_trials=5, method=method)
    want = _np_error(np_softmax(one[0]), labels)
    np.testing.assert_allclose(got.errors, np.full((4, 5), want), atol=1e-6)
    np.testing.assert_allclose(got.error_std, 0.0, atol=1e-6)


def test_removal_draws_are_nested_over_n():
    # Common random numbers: within a trial, the modules removed for n are among those removed for n' > n.
    logits, labels = random_logits(0, (7, 60, 4), scale=2.0)
    kept = np.asarray(modules.removal_curve(logits, labels, [0, 1, 3, 6], KEY, num_trials=5).kept)  # [R, T, M]
    for r in range(3):
        assert np.all(kept[r + 1] <= kept[r])


def test_removal_draws_are_reproducible_and_independent_of_the_grid():
    logits, labels = random_logits(0, (7, 60, 4), scale=2.0)
    a = modules.removal_curve(logits, labels, [0, 1, 3, 6], KEY, num_trials=5)
    b = modules.removal_curve(logits, labels, [0, 1, 3, 6], KEY, num_trials=5)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    other = modules.removal_curve(logits, labels, [0, 1, 3, 6], jax.random.key(1), num_trials=5)
    assert not np.array_equal(a.kept, other.kept)
    # The draws depend on (key, num_trials, M) alone: another grid, in another order, has the same masks for n.
    c = modules.removal_curve(logits, labels, [6, 3, 2, 1], KEY, num_trials=5)
    np.testing.assert_array_equal(c.kept[1], a.kept[2])
    np.testing.assert_array_equal(c.kept[3], a.kept[1])
    np.testing.assert_array_equal(c.errors[0], a.errors[3])
    # Eager ≡ jit, and a raw uint32 key works too.
    j = removal_jit(logits, labels, jnp.array([0, 1, 3, 6]), KEY, num_trials=5)
    np.testing.assert_array_equal(j.kept, a.kept)
    np.testing.assert_allclose(j.errors, a.errors)
    raw = modules.removal_curve(logits, labels, [0, 1, 3, 6], jax.random.PRNGKey(0), num_trials=5)
    assert raw.kept.shape == (4, 5, 7)


def test_removal_draws_are_uniform():
    logits, labels = random_logits(3, (6, 5, 2))
    got = modules.removal_curve(logits, labels, [2], KEY, num_trials=3000)
    removed = ~np.asarray(got.kept[0])  # [T, M]
    assert np.all(removed.sum(axis=1) == 2)
    np.testing.assert_allclose(removed.mean(axis=0), 2 / 6, atol=0.04)  # each module: 1/3 of the draws
    pairs = {tuple(np.flatnonzero(row)) for row in removed}
    assert pairs == set(itertools.combinations(range(6), 2))  # all 15 pairs occur
    counts = np.array([np.sum(np.all(removed[:, list(p)], axis=1)) for p in itertools.combinations(range(6), 2)])
    np.testing.assert_allclose(counts / 3000, 1 / 15, atol=0.025)


def test_removal_bad_arguments_are_named():
    logits, labels = random_logits(0, (7, 60, 4))
    with pytest.raises(ValueError, match="member_logits"):
        modules.removal_curve(logits[0], labels, [0], KEY)
    with pytest.raises(ValueError, match="labels"):
        modules.removal_curve(logits, labels[:-1], [0], KEY)
    with pytest.raises(ValueError, match="num_removed"):
        modules.removal_curve(logits, labels, [0, 7], KEY)  # n must be < M
    with pytest.raises(ValueError, match="num_removed"):
        modules.removal_curve(logits, labels, [-1], KEY)
    with pytest.raises(ValueError, match="num_removed"):
        modules.removal_curve(logits, labels, [[0, 1]], KEY)
    with pytest.raises(ValueError, match="num_removed"):
        modules.removal_curve(logits, labels, [0.5], KEY)
    with pytest.raises(ValueError, match="num_trials"):
        modules.removal_curve(logits, labels, [0], KEY, num_trials=0)
    with pytest.raises(ValueError, match="method"):
        modules.removal_curve(logits, labels, [0], KEY, method="median")


# ---------------------------------------------------------------------------------------------------------
# Fig. 5: F1 of sub-ensembles on one-vs-all problems, specialists.


def test_one_vs_all_f1_against_numpy():
    rng = np.random.default_rng(4)
    scores = rng.random((3, 40)).astype(np.float32)
    actual = rng.random(40) < 0.3
    for threshold in (0.5, 0.3):
        got = jax.jit(modules.one_vs_all_f1)(scores, actual, threshold)
        want = [_np_f1(s >= threshold, actual) for s in scores]
        np.testing.assert_allclose(got, want, rtol=1e-6)
    # Integer 0/1 labels and boolean decisions.
    np.testing.assert_allclose(
        modules.one_vs_all_f1(scores[0] >= 0.5, actual.astype(np.int32)), _np_f1(scores[0] >= 0.5, actual), rtol=1e-6
    )


def test_one_vs_all_f1_hand_cases():
    actual = np.array([1, 1, 0, 0, 0], bool)
    f1 = modules.one_vs_all_f1
    assert float(f1(actual, actual)) == 1.0  # perfect classifier
    assert float(f1(np.ones(5, bool), actual)) == pytest.approx(4 / 7)  # constant "yes": 2·2 / (2·2 + 3 + 0)
    assert float(f1(np.zeros(5, bool), actual)) == 0.0  # constant "no": no true positive
    assert float(f1(np.zeros(5, bool), np.zeros(5, bool))) == 0.0  # 0/0 defined as 0
    assert float(f1(np.array([1, 0, 1, 0, 0], bool), actual)) == pytest.approx(0.5)  # TP 1, FP 1, FN 1
    assert float(f1(np.array([0.9, 0.5, 0.49, 0.0, 0.1]), actual)) == 1.0  # scores ≥ 0.5 are positive


def test_one_vs_all_f1_bad_arguments_are_named():
    with pytest.raises(ValueError, match="scores.*labels_binary"):
        modules.one_vs_all_f1(np.zeros(4), np.zeros(5, bool))
    with pytest.raises(ValueError, match="labels_binary"):
        modules.one_vs_all_f1(np.zeros(4), np.zeros((4, 1), bool))
    with pytest.raises(ValueError, match="labels_binary"):
        modules.one_vs_all_f1(np.zeros(4), np.array([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="labels_binary"):
        modules.one_vs_all_f1(np.zeros(4), np.zeros(4, np.float32))


@pytest.mark.parametrize("method", ["mean_logit", "mean_prob"])
@pytest.mark.parametrize("decision", ["argmax", "threshold"])
def test_subensemble_f1_against_numpy(method, decision):
    logits, labels = random_logits(5, (6, 80, 3), scale=2.0)
    members_idx = np.array([[0, 1, 2], [3, 4, 5], [1, 3, 5], [0, 2, 4], [5, 0, 3]], np.int32)
    fn = jax.jit(modules.subensemble_f1, static_argnames=("method", "decision"))
    for cls in range(3):
        got = fn(logits, labels, cls, members_idx, method=method, decision=decision)
        want = [_np_subset_f1(logits, labels, cls, row, method, decision) for row in members_idx]
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_subensemble_f1_of_single_modules():
    logits, labels = random_logits(5, (6, 80, 3), scale=2.0)
    got = modules.subensemble_f1(logits, labels, 1, np.arange(6)[:, None])  # each module alone
    want = [_np_f1(np.argmax(z, -1) == 1, labels == 1) for z in logits]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_subensemble_decisions_differ_as_documented():
    # One module, one example of class 0, predicted probabilities (0.4, 0.3, 0.3): the argmax is class 0
    # (positive under 'argmax') but p_0 < 0.5 (negative under 'threshold').
    logits = np.log(np.array([[[0.4, 0.3, 0.3]]], np.float32))  # [1, 1, 3]
    labels = np.array([0], np.int32)
    assert float(modules.subensemble_f1(logits, labels, 0, np.array([[0]]), decision="argmax")[0]) == 1.0
    assert float(modules.subensemble_f1(logits, labels, 0, np.array([[0]]), decision="threshold")[0]) == 0.0


def test_subensemble_f1_bad_arguments_are_named():
    logits, labels = random_logits(5, (6, 80, 3))
    good = np.array([[0, 1]], np.int32)
    with pytest.raises(ValueError, match="members_idx"):
        modules.subensemble_f1(logits, labels, 0, np.array([[0, 6]]))  # module 6 of M = 6
    with pytest.raises(ValueError, match="members_idx"):
        modules.subensemble_f1(logits, labels, 0, np.array([[2, 2]]))  # a module twice
    with pytest.raises(ValueError, match="members_idx"):
        modules.subensemble_f1(logits, labels, 0, np.array([0, 1]))  # not [S, s]
    with pytest.raises(ValueError, match="cls"):
        modules.subensemble_f1(logits, labels, 3, good)
    with pytest.raises(ValueError, match="cls"):
        modules.subensemble_f1(logits, labels, np.array([0, 1]), good)
    with pytest.raises(ValueError, match="member_logits"):
        modules.subensemble_f1(logits[0], labels, 0, good)
    with pytest.raises(ValueError, match="labels"):
        modules.subensemble_f1(logits, labels[:5], 0, good)
    with pytest.raises(ValueError, match="decision"):
        modules.subensemble_f1(logits, labels, 0, good, decision="vote")
    with pytest.raises(ValueError, match="method"):
        modules.subensemble_f1(logits, labels, 0, good, method="vote")


def _val_test(seed, m=8, c=3):
    val_logits, val_labels = random_logits(seed, (m, 60, c), scale=2.0)
    test_logits, test_labels = random_logits(seed + 100, (m, 70, c), scale=2.0)
    return val_logits, val_labels, test_logits, test_labels


@pytest.mark.parametrize("method", ["mean_logit", "mean_prob"])
def test_select_specialists_against_numpy(method):
    val_logits, val_labels, test_logits, test_labels = _val_test(6)
    got = modules.select_specialists(val_logits, val_labels, test_logits, test_labels, 2, 3, 10, KEY, method=method)
    candidates = np.asarray(got.candidates)
    assert candidates.shape == (10, 3)
    for row in candidates:  # sorted, distinct, in range
        assert list(row) == sorted(set(row)) and 0 <= row.min() and row.max() < 8
    val_f1 = np.array([_np_subset_f1(val_logits, val_labels, 2, row, method, "argmax") for row in candidates])
    test_f1 = np.array([_np_subset_f1(test_logits, test_labels, 2, row, method, "argmax") for row in candidates])
    np.testing.assert_allclose(got.val_f1, val_f1, rtol=1e-6)
    np.testing.assert_allclose(got.candidate_test_f1, test_f1, rtol=1e-6)
    best = int(np.argmax(val_f1))  # the first candidate with the best validation F1
    np.testing.assert_array_equal(got.members, candidates[best])
    assert float(got.test_f1) == pytest.approx(test_f1[best], rel=1e-6)
    assert float(got.random_test_f1) == pytest.approx(test_f1.mean(), rel=1e-6)


def test_select_specialists_size_one_finds_the_specialist_module():
    val_logits, val_labels, test_logits, test_labels = _val_test(7, m=4)
    cls = 1
    # Module 2 is a perfect one-vs-all classifier for class 1 on both sets; the others are noise.
    for logits, labels in ((val_logits, val_labels), (test_logits, test_labels)):
        logits *= 0.1
        logits[2] = 10.0 * np.eye(3, dtype=np.float32)[labels]
    got = modules.select_specialists(val_logits, val_labels, test_logits, test_labels, cls, 1, 3, KEY)
    np.testing.assert_array_equal(got.candidates, np.arange(4)[:, None])  # every module; num_candidates unused
    np.testing.assert_array_equal(got.members, [2])
    assert float(got.test_f1) == 1.0
    want = np.mean([_np_subset_f1(test_logits, test_labels, cls, [m], "mean_logit", "argmax") for m in range(4)])
    assert float(got.random_test_f1) == pytest.approx(want, rel=1e-6)
    assert float(got.random_test_f1) < 1.0


def test_select_specialists_is_reproducible():
    data = _val_test(6)
    a = modules.select_specialists(*data, 0, 3, 10, KEY)
    b = modules.select_specialists(*data, 0, 3, 10, KEY)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    c = modules.select_specialists(*data, 0, 3, 10, jax.random.key(1))
    assert not np.array_equal(a.candidates, c.candidates)
    # Under jit (cls traced, the rest static) ≡ eager.
    fn = jax.jit(modules.select_specialists, static_argnames=("size", "num_candidates", "method", "decision"))
    j = fn(*data, 0, 3, 10, KEY)
    np.testing.assert_array_equal(j.candidates, a.candidates)
    np.testing.assert_allclose(j.val_f1, a.val_f1)
    np.testing.assert_allclose(j.candidate_test_f1, a.candidate_test_f1)


def test_select_specialists_bad_arguments_are_named():
    val_logits, val_labels, test_logits, test_labels = _val_test(6)
    with pytest.raises(ValueError, match="val_logits.*test_logits"):
        modules.select_specialists(val_logits, val_labels, test_logits[:7], test_labels, 0, 2, 5, KEY)
    with pytest.raises(ValueError, match="val_logits.*test_logits"):
        modules.select_specialists(val_logits, val_labels, test_logits[..., :2], test_labels, 0, 2, 5, KEY)
    with pytest.raises(ValueError, match="test_labels"):
        modules.select_specialists(val_logits, val_labels, test_logits, val_labels, 0, 2, 5, KEY)
    with pytest.raises(ValueError, match="val_labels"):
        modules.select_specialists(val_logits, test_labels, test_logits, test_labels, 0, 2, 5, KEY)
    with pytest.raises(ValueError, match="size"):
        modules.select_specialists(val_logits, val_labels, test_logits, test_labels, 0, 9, 5, KEY)
    with pytest.raises(ValueError, match="size"):
        modules.select_specialists(val_logits, val_labels, test_logits, test_labels, 0, 0, 5, KEY)
    with pytest.raises(ValueError, match="num_candidates"):
        modules.select_specialists(val_logits, val_labels, test_logits, test_labels, 0, 2, 0, KEY)
    with pytest.raises(ValueError, match="cls"):
        modules.select_specialists(val_logits, val_labels, test_logits, test_labels, -1, 2, 5, KEY)


# ---------------------------------------------------------------------------------------------------------
# Table 6 and Fig. 7: entropy statistics and module dominance.


def test_entropy_statistics_against_numpy():
    logits, _ = random_logits(8, (5, 30, 6), scale=2.0)
    got = jax.jit(modules.entropy_statistics)(logits)
    per_example = [_np_entropy(z) for z in logits]  # M × [N]
    np.testing.assert_allclose(got.per_module.min, [h.min() for h in per_example], rtol=1e-5)
    np.testing.assert_allclose(got.per_module.max, [h.max() for h in per_example], rtol=1e-5)
    np.testing.assert_allclose(got.per_module.mean, [h.mean() for h in per_example], rtol=1e-5)
    np.testing.assert_allclose(got.per_module.std, [h.std() for h in per_example], rtol=1e-4, atol=1e-6)
    means = np.array([h.mean() for h in per_example])  # H[q_i] of Table 6
    np.testing.assert_allclose(got.over_modules.min, means.min(), rtol=1e-5)
    np.testing.assert_allclose(got.over_modules.max, means.max(), rtol=1e-5)
    np.testing.assert_allclose(got.over_modules.mean, means.mean(), rtol=1e-5)
    np.testing.assert_allclose(got.over_modules.std, means.std(), rtol=1e-4, atol=1e-6)


def test_entropy_statistics_hand_case():
    # Module 0 is uniform (entropy log C on every example), module 1 is certain (entropy ≈ 0).
    c = 4
    labels = np.array([0, 1, 2, 3, 1])
    logits = np.stack([np.zeros((5, c)), 100.0 * np.eye(c)[labels]]).astype(np.float32)
    got = modules.entropy_statistics(logits)
    np.testing.assert_allclose(got.per_module.mean, [np.log(c), 0.0], atol=1e-5)
    np.testing.assert_allclose(got.per_module.std, [0.0, 0.0], atol=1e-5)
    assert float(got.over_modules.min) == pytest.approx(0.0, abs=1e-5)
    assert float(got.over_modules.max) == pytest.approx(np.log(c), rel=1e-6)
    assert float(got.over_modules.mean) == pytest.approx(np.log(c) / 2, rel=1e-5)
    assert float(got.over_modules.std) == pytest.approx(np.log(c) / 2, rel=1e-5)
    with pytest.raises(ValueError, match="member_logits"):
        modules.entropy_statistics(logits[0])


@pytest.mark.parametrize("method", ["mean_logit", "mean_prob"])
def test_dominance_against_numpy(method):
    logits, labels = random_logits(9, (5, 60, 4), scale=2.0)
    got = jax.jit(modules.dominance, static_argnames="method")(logits, labels, method=method)
    module_error = np.array([_np_error(np_softmax(z), labels) for z in logits])
    ensemble_probs = _np_combine(logits, method)
    ensemble_error = _np_error(ensemble_probs, labels)
    best = int(np.argmin(module_error))
    np.testing.assert_allclose(got.module_error, module_error, atol=1e-6)
    assert int(got.best_module) == best
    assert float(got.best_module_error) == pytest.approx(module_error[best], abs=1e-6)
    assert float(got.ensemble_error) == pytest.approx(ensemble_error, abs=1e-6)
    assert float(got.gap) == pytest.approx(module_error[best] - ensemble_error, abs=1e-6)
    assert float(got.runner_up_gap) == pytest.approx(np.sort(module_error)[1] - module_error[best], abs=1e-6)
    agree = np.mean(np.argmax(ensemble_probs, -1) == np.argmax(logits[best], -1))
    assert float(got.best_module_agreement) == pytest.approx(agree, abs=1e-6)


def test_dominance_when_one_module_carries_the_ensemble():
    # Module 3 is confident and right; the other modules are near-uniform noise. Under the geometric mean
    # the confident module vetoes the rest: the ensemble is exactly as good as module 3 and predicts as it does.
    rng = np.random.default_rng(10)
    m, n, c = 6, 200, 5
    labels = rng.integers(0, c, n).astype(np.int32)
    logits = (0.01 * rng.normal(size=(m, n, c))).astype(np.float32)
    logits[3] = 20.0 * np.eye(c, dtype=np.float32)[labels]
    got = modules.dominance(logits, labels)
    others = np.array([_np_error(np_softmax(z), labels) for z in np.delete(logits, 3, axis=0)])
    assert int(got.best_module) == 3
    assert float(got.best_module_error) == 0.0 and float(got.ensemble_error) == 0.0
    assert float(got.gap) == 0.0  # the ensemble gains nothing over its best module
    assert float(got.best_module_agreement) == 1.0
    assert float(got.runner_up_gap) == pytest.approx(others.min(), abs=1e-6)  # > 0.5: far ahead of the rest
    assert float(got.runner_up_gap) > 0.5


def test_dominance_single_module_and_bad_arguments():
    logits, labels = random_logits(11, (1, 30, 3))
    got = modules.dominance(logits, labels)
    assert int(got.best_module) == 0 and float(got.gap) == pytest.approx(0.0, abs=1e-7)
    assert float(got.best_module_agreement) == 1.0 and np.isnan(float(got.runner_up_gap))
    with pytest.raises(ValueError, match="member_logits"):
        modules.dominance(logits[0], labels)
    with pytest.raises(ValueError, match="labels"):
        modules.dominance(logits, labels[:4])
    with pytest.raises(ValueError, match="labels"):
        modules.dominance(logits, np.full(30, 3, np.int32))  # label outside [0, C)
    with pytest.raises(ValueError, match="method"):
        modules.dominance(logits, labels, method="vote")
