"""Analyses of an ensemble's modules, after Webb et al., "Joint Training of Neural Network Ensembles", §4.

Webb et al. call ensemble members *modules*. Every function here is a pure function of the M modules'
outputs on a fixed set of examples, logits `member_logits` [M, N, C] of a classification ensemble, and
integer labels [N]:

  removal_curve        Fig. 4 (§4.1 "Robustness"): ensemble test error with n randomly chosen modules dropped.
  one_vs_all_f1,       Fig. 5 (§4.1 "Module Specialization"): F1 of sub-ensembles on one-vs-all problems, and
  subensemble_f1,      specialist sub-ensembles chosen on a validation set, compared with random ones.
  select_specialists
  entropy_statistics   Table 6 (§4.3): entropy of each module's predicted class distribution.
  dominance            Fig. 7 (§4.2 "Module Dominance"): module errors against the ensemble's.

Combining a subset of modules. A sub-ensemble (or the ensemble left after removing modules) predicts like the
full ensemble does (`jaxens.metrics.ensemble_log_probs`, DESIGN §4), over its own modules only. The default
`method='mean_logit'` is Webb's combination: the softmax of the mean logits, i.e. the prediction of the mean
natural parameter (a normalized geometric mean of the module distributions); `method='mean_prob'` averages the
module probabilities instead. For speed, a subset's mean is a weighted sum over all M modules with weight 1/s
on each of its s modules and 0 elsewhere (one matrix product for a batch of subsets, [S, M] × [M, N·C], rather
than gathering [S, s, N, C]); under 'mean_prob' the mean is formed in probability space, so a mean probability
below the smallest float32 normal has log-probability −inf, which no argmax or thresholded decision notices.

Errors are 1 − accuracy of the argmax, means over examples (DESIGN §4); argmax ties go to the lowest class.
Shapes are checked when traced and values (labels, indices, classes) when they are concrete (an eager call);
a bad argument raises a ValueError naming it. Standard deviations are population ones (ddof = 0).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxens.metrics import checks, classification, diversity

__all__ = [
    "Dominance",
    "EntropyStatistics",
    "RemovalCurve",
    "Specialists",
    "Summary",
    "dominance",
    "entropy_statistics",
    "one_vs_all_f1",
    "removal_curve",
    "select_specialists",
    "subensemble_f1",
]

_METHODS = ("mean_prob", "mean_logit")
_DECISIONS = ("argmax", "threshold")
# Subsets combined per step of `lax.map`: one batched matrix product [B, M] × [M, N·C] each, so memory stays
# O(B·N·C) however many subsets there are. B is at most 64, and smaller when B·N·C would pass 2²³ values.
_MAX_SUBSETS_PER_STEP = 64
_MAX_VALUES_PER_STEP = 2**23


# ---------------------------------------------------------------------------------------------------------
# Argument checks and the shared combination of a weighted subset of modules.


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_method(method: str) -> None:
    if method not in _METHODS:
        raise ValueError(f"method={method!r}: allowed: 'mean_prob', 'mean_logit'")


def _check_decision(decision: str) -> None:
    if decision not in _DECISIONS:
        raise ValueError(f"decision={decision!r}: allowed: 'argmax', 'threshold'")


def _check_count(value, name: str, low: int = 1, high: int | None = None) -> None:
    """A Python int (static under jit) in [low, high]."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name}: expected an int ≥ {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{name}: expected an int in [{low}, {high}], got {value!r}")


def _check_members_labels(member_logits, labels, logits_name: str = "member_logits", labels_name: str = "labels"):
    checks.members(member_logits, logits_name)
    checks.logits_labels(member_logits, labels, logits_name, labels_name)


def _check_class(cls, num_classes: int, name: str = "cls") -> None:
    cls_arr = jnp.asarray(cls)
    if cls_arr.ndim != 0 or not np.issubdtype(cls_arr.dtype, np.integer):
        raise ValueError(f"{name}: expected one integer class index, got {cls!r}")
    if _concrete(cls) and not 0 <= int(cls_arr) < num_classes:
        raise ValueError(f"{name}={int(cls_arr)}: outside [0, {num_classes}) (C = member_logits.shape[-1])")


def _member_values(member_logits: jax.Array, method: str) -> jax.Array:
    """What a subset's weighted mean is taken of: logits ('mean_logit') or probabilities ('mean_prob')."""
    z = member_logits.astype(jnp.promote_types(member_logits.dtype, jnp.float32))  # [M, N, C]
    return z if method == "mean_logit" else jax.nn.softmax(z, axis=-1)


def _combined_log_probs(weights: jax.Array, values: jax.Array, method: str) -> jax.Array:
    """Log-probabilities [..., N, C] of the weighted subsets `weights` [..., M] (rows sum to 1)."""
    mixed = jnp.einsum("...m,mnc->...nc", weights, values, precision=jax.lax.Precision.HIGHEST)
    if method == "mean_logit":
        return jax.nn.log_softmax(mixed, axis=-1)
    return jnp.log(mixed)  # A convex combination of probability vectors is normalized already.


def _map_subsets(fn, weights: jax.Array, values: jax.Array) -> jax.Array:
    """`fn` of each row of `weights` [S, M] (subsets of the modules of `values` [M, N, C]), a batch at a time."""
    per_subset = values.shape[1] * values.shape[2]
    batch = max(1, min(weights.shape[0], _MAX_SUBSETS_PER_STEP, _MAX_VALUES_PER_STEP // max(per_subset, 1)))
    return jax.lax.map(fn, weights, batch_size=batch)


# ---------------------------------------------------------------------------------------------------------
# Fig. 4: robustness to module removal.


class RemovalCurve(NamedTuple):
    """Ensemble error after dropping modules at random (`removal_curve`); R = len(num_removed), T trials.

    Attributes:
      num_removed: [R] int32, how many modules were dropped.
      error_mean: [R] ensemble error of the remaining M − n modules, mean over the T random draws.
      error_std: [R] population standard deviation (ddof = 0) of that error over the T draws.
      errors: [R, T] the error of every draw.
      kept: [R, T, M] bool, which modules each draw kept (exactly M − n per row; nested over n, see
        `removal_curve`).
    """

    num_removed: jax.Array
    error_mean: jax.Array
    error_std: jax.Array
    errors: jax.Array
    kept: jax.Array


@functools.partial(jax.jit, static_argnames=("num_trials", "num_modules"))
def _keep_masks(key: jax.Array, num_removed: jax.Array, num_trials: int, num_modules: int) -> jax.Array:
    """[R, T, M] masks: draw t keeps all but the first n modules of the t-th random order of the modules.

    Each of the T orders ranks the modules by 32 random bits each (a tie, probability about M²/2³³ per order,
    is broken by module index), so the n removed modules are a uniformly random n-subset for every n. One
    random-bits call: `jax.random.permutation` sorts several rounds of bits and compiles slowly on CPU.
    Jitted apart from the errors, so that one compilation serves every method and set of logits.
    """
    bits = jax.random.bits(key, (num_trials, num_modules), jnp.uint32)  # [T, M]
    rank = jnp.argsort(jnp.argsort(bits, axis=-1), axis=-1)  # [T, M] position of each module in order t
    return rank[None, :, :] >= num_removed[:, None, None]  # [R, T, M]


@functools.partial(jax.jit, static_argnames=("method",))
def _removal_curve(member_logits, labels, num_removed, kept, method) -> RemovalCurve:
    num_modules = member_logits.shape[0]
    weights = kept / jnp.sum(kept, axis=-1, keepdims=True)  # [R, T, M], each row sums to 1
    values = _member_values(member_logits, method)  # [M, N, C]

    def subset_error(w):  # [M] → []
        return classification.error(_combined_log_probs(w, values, method), labels)

    errors = _map_subsets(subset_error, weights.reshape(-1, num_modules), values)  # [R·T]
    errors = errors.reshape(kept.shape[:2])  # [R, T]
    return RemovalCurve(
        num_removed=num_removed,
        error_mean=jnp.mean(errors, axis=1),
        error_std=jnp.std(errors, axis=1),
        errors=errors,
        kept=kept,
    )


def removal_curve(
    member_logits: jax.Array,
    labels: jax.Array,
    num_removed,
    key: jax.Array,
    num_trials: int = 20,
    method: str = "mean_logit",
) -> RemovalCurve:
    """Ensemble ERROR with n randomly chosen modules removed, for each n (Webb et al. §4.1, Fig. 4).

    For each n in `num_removed` and each of `num_trials` draws, n of the M modules are chosen uniformly at
    random without replacement and dropped; the remaining M − n modules are combined with `method` (Webb:
    'mean_logit', softmax of their mean logits) and the error 1 − accuracy of the argmax is measured. Fig. 4
    plots this test error against the number of modules dropped, averaged over 20 random removals (the
    default `num_trials`). n = 0 gives the full ensemble's error in every trial.

    The draws use common random numbers: trial t draws one uniformly random order of the M modules from
    `key`, and for every n removes the first n modules of that order. Each point of the curve is thus an
    average over uniformly random n-subsets (the same expected curve as independent draws for each n, which
    is what Webb et al.'s own script does), while a trial's errors over n are those of removing modules one
    by one, as in anytime prediction, so differences between points vary less than with independent draws.
    The draws depend on (key, num_trials, M) only, not on which n are requested nor on their order. They are
    vectorized: each draw is a keep mask [M], and the remaining modules' mean is a masked mean over all M
    (see the module docstring). error_std is the spread over these draws for one set of logits; Fig. 4's
    error bars are over training runs, which needs one call per run.

    Args:
      member_logits: [M, N, C] logits of the M modules.
      labels: [N] int true labels.
      num_removed: [R] ints (sequence or array) with 0 ≤ n < M, how many modules to drop.
      key: PRNG key (typed or raw).
      num_trials: T ≥ 1 random draws per n (static under jit).
      method: 'mean_logit' (default, Webb) or 'mean_prob', how the remaining modules are combined.

    Returns:
      `RemovalCurve` with error_mean and error_std [R], errors [R, T] and the keep masks kept [R, T, M].

    Raises:
      ValueError: if member_logits is not [M, N, C], labels not [N], num_removed not a 1-D integer sequence
        (or, when concrete, has a value outside [0, M)), num_trials not a positive int, or method unknown.
    """
    _check_members_labels(member_logits, labels)
    _check_method(method)
    _check_count(num_trials, "num_trials")
    num_modules = member_logits.shape[0]
    num_removed = jnp.asarray(num_removed)
    if num_removed.ndim != 1 or num_removed.shape[0] < 1 or not np.issubdtype(num_removed.dtype, np.integer):
        raise ValueError(
            f"num_removed: expected a non-empty 1-D sequence of ints, got shape {tuple(num_removed.shape)} "
            f"and dtype {num_removed.dtype}"
        )
    if _concrete(num_removed):
        low, high = int(np.min(num_removed)), int(np.max(num_removed))
        if low < 0 or high >= num_modules:
            bad = low if low < 0 else high
            raise ValueError(f"num_removed: {bad} outside [0, {num_modules}) (M = member_logits.shape[0])")
    num_removed = num_removed.astype(jnp.int32)
    kept = _keep_masks(key, num_removed, num_trials, num_modules)  # [R, T, M]
    return _removal_curve(member_logits, labels, num_removed, kept, method)


# ---------------------------------------------------------------------------------------------------------
# Fig. 5: specialist sub-ensembles on one-vs-all problems.


def one_vs_all_f1(scores: jax.Array, labels_binary: jax.Array, threshold: float = 0.5) -> jax.Array:
    """F1 score of the binary decision `scores ≥ threshold` against `labels_binary` (Webb et al. Fig. 5).

    F1 = 2·TP / (2·TP + FP + FN), the harmonic mean of precision and recall of the positive class. When it is
    0/0 (no positive example and none predicted) the F1 is defined as 0, as scikit-learn's `f1_score` does by
    default. Boolean `scores` are decisions already (True ≥ 0.5 with the default threshold).

    Args:
      scores: [..., N] per-example scores (probabilities of the positive class, or bool decisions).
      labels_binary: [N] bool (or ints in {0, 1}), True for the positive class.
      threshold: an example is predicted positive iff its score ≥ threshold.

    Returns:
      [...] F1 in [0, 1].

    Raises:
      ValueError: if scores is not [..., N] with labels_binary's N, labels_binary is not 1-D bool or integer,
        or (when concrete) an integer label is not 0 or 1.
    """
    scores, labels_binary = jnp.asarray(scores), jnp.asarray(labels_binary)
    if labels_binary.ndim != 1:
        raise ValueError(f"labels_binary: expected [N], got shape {tuple(labels_binary.shape)}")
    if scores.ndim < 1 or scores.shape[-1] != labels_binary.shape[0]:
        raise ValueError(
            f"scores of shape {tuple(scores.shape)} does not match labels_binary of shape "
            f"{tuple(labels_binary.shape)}: expected [..., N] with N = {labels_binary.shape[0]}"
        )
    if labels_binary.dtype != bool:
        if not np.issubdtype(labels_binary.dtype, np.integer):
            raise ValueError(f"labels_binary: expected bool or integer 0/1 labels, got dtype {labels_binary.dtype}")
        if _concrete(labels_binary) and not np.all(np.isin(np.asarray(labels_binary), (0, 1))):
            raise ValueError("labels_binary: integer labels must be 0 or 1")
    predicted = scores >= threshold  # [..., N]
    actual = labels_binary.astype(bool)  # [N]
    tp = jnp.sum(predicted & actual, axis=-1)  # [...]
    fp = jnp.sum(predicted & ~actual, axis=-1)
    fn = jnp.sum(~predicted & actual, axis=-1)
    denominator = 2 * tp + fp + fn
    return jnp.where(denominator > 0, 2 * tp / jnp.maximum(denominator, 1), 0.0).astype(jnp.float32)


def _check_members_idx(members_idx, num_modules: int) -> jax.Array:
    members_idx = jnp.asarray(members_idx)
    if members_idx.ndim != 2 or 0 in members_idx.shape or not np.issubdtype(members_idx.dtype, np.integer):
        raise ValueError(
            f"members_idx: expected [S, s] integer module indices (S ≥ 1 sub-ensembles of s ≥ 1 modules), got "
            f"shape {tuple(members_idx.shape)} and dtype {members_idx.dtype}"
        )
    if _concrete(members_idx):
        idx = np.asarray(members_idx)
        if idx.min() < 0 or idx.max() >= num_modules:
            bad = idx.min() if idx.min() < 0 else idx.max()
            raise ValueError(f"members_idx: module {int(bad)} outside [0, {num_modules}) (M = member_logits.shape[0])")
        repeated = np.any(np.diff(np.sort(idx, axis=1), axis=1) == 0, axis=1)
        if np.any(repeated):
            raise ValueError(f"members_idx: row {int(np.argmax(repeated))} lists a module twice")
    return members_idx


@functools.partial(jax.jit, static_argnames=("method", "decision"))
def _subset_f1(values, labels, cls, members_idx, method, decision) -> jax.Array:
    """[S] F1 on the one-vs-all problem for `cls` of the subsets `members_idx` [S, s] (arguments checked)."""
    num_modules, size = values.shape[0], members_idx.shape[1]
    weights = jnp.sum(jax.nn.one_hot(members_idx, num_modules, dtype=values.dtype), axis=1) / size  # [S, M]
    positive = labels == cls  # [N]

    def subset_f1(w):  # [M] → []
        log_p = _combined_log_probs(w, values, method)  # [N, C]
        if decision == "argmax":
            return one_vs_all_f1(jnp.argmax(log_p, axis=-1) == cls, positive)
        return one_vs_all_f1(jnp.exp(log_p[:, cls]), positive, threshold=0.5)

    return _map_subsets(subset_f1, weights, values)


def subensemble_f1(
    member_logits: jax.Array,
    labels: jax.Array,
    cls,
    members_idx: jax.Array,
    method: str = "mean_logit",
    decision: str = "argmax",
) -> jax.Array:
    """F1 of sub-ensembles on the one-vs-all problem "class `cls` or not" (Webb et al. §4.1, Fig. 5).

    Webb et al. take modules trained on the C-class problem, and replace that problem by C binary
    one-vs-all problems without retraining. A sub-ensemble of s modules combines its modules' outputs as the
    ensemble does (`method`, Webb: softmax of the mean logits of the s modules) and its binary decision for
    an example is, with `decision`:

      'argmax' (default): positive iff the sub-ensemble's predicted class (argmax, ties to the lowest index)
        is `cls`, i.e. the C-class classifier used as it is, read as "is it class cls?";
      'threshold': positive iff the sub-ensemble's probability of class `cls` is ≥ 0.5.

    The paper does not spell out the decision; 'argmax' is the one that needs no extra choice. For C = 2 the
    two agree except on exact ties. Positive examples are those with labels == cls.

    Args:
      member_logits: [M, N, C] logits of the M modules.
      labels: [N] int true labels (C-class).
      cls: the class in [0, C) that is the positive class.
      members_idx: [S, s] int, each row the indices of one sub-ensemble's s distinct modules.
      method: 'mean_logit' (default, Webb) or 'mean_prob'.
      decision: 'argmax' (default) or 'threshold', as above.

    Returns:
      [S] F1 of each sub-ensemble, in [0, 1] (0 when the problem has no positive and none is predicted).

    Raises:
      ValueError: if member_logits is not [M, N, C], labels not [N], cls not a class, members_idx not [S, s]
        integer (or, when concrete, lists a module outside [0, M) or a module twice in a row), or method or
        decision is unknown.
    """
    _check_members_labels(member_logits, labels)
    _check_method(method)
    _check_decision(decision)
    _check_class(cls, member_logits.shape[-1])
    members_idx = _check_members_idx(members_idx, member_logits.shape[0])
    return _subset_f1(_member_values(member_logits, method), labels, cls, members_idx, method, decision)


@functools.partial(jax.jit, static_argnames=("num_modules", "size", "num_subsets"))
def _draw_subsets(key, num_modules: int, size: int, num_subsets: int) -> jax.Array:
    """[S, size] int32: each row `size` distinct modules drawn uniformly at random (sorted), rows independent.

    A row's modules are the `size` lowest-ranked by 32 random bits each (see `_keep_masks`).
    """
    bits = jax.random.bits(key, (num_subsets, num_modules), jnp.uint32)  # [S, M]
    return jnp.sort(jnp.argsort(bits, axis=-1)[:, :size], axis=-1).astype(jnp.int32)


class Specialists(NamedTuple):
    """Specialist sub-ensemble chosen on validation data (`select_specialists`); S candidates of `size` modules.

    Attributes:
      test_f1: [] test F1 of the specialist, the candidate with the best validation F1.
      random_test_f1: [] mean test F1 over all S candidates: the expected F1 of a random sub-ensemble.
      members: [size] int32 module indices of the specialist (sorted).
      candidates: [S, size] int32 module indices of every candidate (each row sorted).
      val_f1: [S] validation F1 of every candidate.
      candidate_test_f1: [S] test F1 of every candidate.
    """

    test_f1: jax.Array
    random_test_f1: jax.Array
    members: jax.Array
    candidates: jax.Array
    val_f1: jax.Array
    candidate_test_f1: jax.Array


def select_specialists(
    val_logits: jax.Array,
    val_labels: jax.Array,
    test_logits: jax.Array,
    test_labels: jax.Array,
    cls,
    size: int,
    num_candidates: int,
    key: jax.Array,
    method: str = "mean_logit",
    decision: str = "argmax",
) -> Specialists:
    """Specialist sub-ensemble for class `cls` chosen on validation data vs random ones (Webb et al. Fig. 5).

    Webb et al. §4.1: for each one-vs-all problem, choose the single module / sub-ensemble of 20 modules with
    the best validation F1 and report its test F1, against the expected test F1 of a randomly chosen module /
    sub-ensemble of that size; since the C(256, 20) sub-ensembles cannot all be evaluated, 200 random ones are
    the candidates. Here:

      size == 1: the candidates are all M single modules (`num_candidates` and `key` are not used), and
        random_test_f1 is the exact mean over modules;
      size > 1: `num_candidates` sub-ensembles of `size` distinct modules, each drawn uniformly at random
        (independently of the others, so two candidates may coincide); random_test_f1 is the mean test F1 of
        these same random draws.

    The specialist is the candidate with the highest validation F1 (the first one on ties). F1 and the binary
    decision are those of `subensemble_f1` (`method`, `decision`).

    Args:
      val_logits: [M, Nv, C] logits of the M modules on validation data.
      val_labels: [Nv] int labels.
      test_logits: [M, Nt, C] logits of the same modules on test data.
      test_labels: [Nt] int labels.
      cls: the positive class in [0, C).
      size: modules per sub-ensemble, 1 ≤ size ≤ M (static under jit).
      num_candidates: random sub-ensembles drawn when size > 1, ≥ 1 (static under jit).
      key: PRNG key (typed or raw) for the draws.
      method: 'mean_logit' (default, Webb) or 'mean_prob'.
      decision: 'argmax' (default) or 'threshold', see `subensemble_f1`.

    Returns:
      `Specialists` (test_f1 and random_test_f1 [], members [size], candidates [S, size], val_f1 and
      candidate_test_f1 [S]; S = M when size == 1, else num_candidates).

    Raises:
      ValueError: if the logits are not [M, N, C] with the same M and C, the labels do not match them, cls is
        not a class, size or num_candidates is out of range, or method or decision is unknown.
    """
    checks.members(val_logits, "val_logits")
    checks.members(test_logits, "test_logits")
    if val_logits.shape[0] != test_logits.shape[0] or val_logits.shape[-1] != test_logits.shape[-1]:
        raise ValueError(
            f"val_logits of shape {tuple(val_logits.shape)} and test_logits of shape {tuple(test_logits.shape)}: "
            "expected [M, N, C] of the same M modules and C classes"
        )
    checks.logits_labels(val_logits, val_labels, "val_logits", "val_labels")
    checks.logits_labels(test_logits, test_labels, "test_logits", "test_labels")
    _check_method(method)
    _check_decision(decision)
    _check_class(cls, val_logits.shape[-1])
    num_modules = val_logits.shape[0]
    _check_count(size, "size", 1, num_modules)
    _check_count(num_candidates, "num_candidates")

    if size == 1:
        candidates = jnp.arange(num_modules, dtype=jnp.int32)[:, None]  # [M, 1]
    else:
        candidates = _draw_subsets(key, num_modules, size, num_candidates)  # [S, size]
    val_f1 = _subset_f1(_member_values(val_logits, method), val_labels, cls, candidates, method, decision)  # [S]
    test_f1 = _subset_f1(_member_values(test_logits, method), test_labels, cls, candidates, method, decision)
    best = jnp.argmax(val_f1)
    return Specialists(
        test_f1=test_f1[best],
        random_test_f1=jnp.mean(test_f1),
        members=candidates[best],
        candidates=candidates,
        val_f1=val_f1,
        candidate_test_f1=test_f1,
    )


# ---------------------------------------------------------------------------------------------------------
# Table 6 and Fig. 7: module dominance.


class Summary(NamedTuple):
    """min, max, mean and population std (ddof = 0) of a set of values, each of the same shape."""

    min: jax.Array
    max: jax.Array
    mean: jax.Array
    std: jax.Array


def _summary(x: jax.Array, axis: int) -> Summary:
    return Summary(jnp.min(x, axis=axis), jnp.max(x, axis=axis), jnp.mean(x, axis=axis), jnp.std(x, axis=axis))


class EntropyStatistics(NamedTuple):
    """Entropy of each module's predicted class distribution (`entropy_statistics`), in nats.

    Attributes:
      per_module: `Summary` with fields [M]: min, max, mean and std over the N examples of each module's
        per-example entropy H[q_i(·|x_n)].
      over_modules: `Summary` with fields []: min, max, mean and std over the M modules of the per-module mean
        entropy H[q_i] = per_module.mean — the four rows of Webb et al.'s Table 6.
    """

    per_module: Summary
    over_modules: Summary


def entropy_statistics(member_logits: jax.Array) -> EntropyStatistics:
    """Entropy statistics of the modules' predicted class distributions (Webb et al. §4.3, Table 6).

    H[q_i](x) = −Σ_c q_i(c|x) log q_i(c|x) in nats (`jaxens.metrics.entropy`), q_i = softmax of module i's
    logits. Table 6 summarizes, over the modules, the entropy "per module, averaged over the test set":
    H[q_i] = mean_n H[q_i](x_n), and min_i, max_i, mean_i, std_i of it. Very low and very high per-module
    entropies side by side (over- and under-confident modules) go with module dominance (λ = 1).

    Args:
      member_logits: [M, N, C] logits of the M modules.

    Returns:
      `EntropyStatistics`: per_module (fields [M], over examples) and over_modules (fields [], Table 6).

    Raises:
      ValueError: if member_logits is not [M, N, C].
    """
    checks.members(member_logits)
    h = classification.entropy(member_logits)  # [M, N]
    per_module = _summary(h, axis=1)  # fields [M]
    return EntropyStatistics(per_module=per_module, over_modules=_summary(per_module.mean, axis=0))


class Dominance(NamedTuple):
    """Module errors against the ensemble's (`dominance`).

    Attributes:
      module_error: [M] each module's own error.
      best_module: [] int32 index of the module with the lowest error (the first on ties).
      best_module_error: [] its error, min_i module_error.
      ensemble_error: [] the whole ensemble's error.
      gap: [] best_module_error − ensemble_error, THE dominance indicator: about 0 (or negative) when one
        module carries the ensemble; positive by how much combining beats the best module alone.
      runner_up_gap: [] second-lowest module error − best_module_error: large when a single module is much
        better than all others (Fig. 7); NaN when M = 1.
      best_module_agreement: [] fraction of examples on which the ensemble predicts the best module's class.
    """

    module_error: jax.Array
    best_module: jax.Array
    best_module_error: jax.Array
    ensemble_error: jax.Array
    gap: jax.Array
    runner_up_gap: jax.Array
    best_module_agreement: jax.Array


def dominance(member_logits: jax.Array, labels: jax.Array, method: str = "mean_logit") -> Dominance:
    """Module dominance: is the ensemble carried by one module? (Webb et al. §4.2, Fig. 7; §4.3.)

    Under joint training (λ = 1) Webb et al. find "a single module achieves a relatively low error rate on
    its own and the remainder of the modules make only small contributions to the ensemble predictions": the
    geometric-mean combination lets one confident module veto the others. The indicator chosen here is

      gap = min_i err(module i) − err(ensemble),

    the error the ensemble gains over its best module. gap ≈ 0 (or < 0) says the ensemble does no better
    than one module (dominance); a clearly positive gap says the modules' combination matters. Read it with
    runner_up_gap = (second-lowest module error) − (lowest module error), large when one module is much
    better than all the rest (the single low curve of Fig. 7), and best_module_agreement = fraction of
    examples where the ensemble's argmax equals the best module's (1 − `jaxens.metrics.disagreement`).

    Args:
      member_logits: [M, N, C] logits of the M modules.
      labels: [N] int true labels.
      method: 'mean_logit' (default, Webb) or 'mean_prob', the ensemble's combination.

    Returns:
      `Dominance` (module_error [M], the rest []).

    Raises:
      ValueError: if member_logits is not [M, N, C], labels not [N], or method unknown.
    """
    _check_members_labels(member_logits, labels)
    _check_method(method)
    ensemble = classification.ensemble_log_probs(member_logits, method)  # [N, C]
    module_error = classification.error(member_logits, labels)  # [M]
    ensemble_error = classification.error(ensemble, labels)  # []
    best = jnp.argmin(module_error).astype(jnp.int32)
    best_error = module_error[best]
    if member_logits.shape[0] > 1:
        lowest_two = jnp.sort(module_error)[:2]
        runner_up_gap = lowest_two[1] - lowest_two[0]
    else:
        runner_up_gap = jnp.full((), jnp.nan, module_error.dtype)
    agreement = 1.0 - diversity.disagreement(ensemble, member_logits[best])
    return Dominance(
        module_error=module_error,
        best_module=best,
        best_module_error=best_error,
        ensemble_error=ensemble_error,
        gap=best_error - ensemble_error,
        runner_up_gap=runner_up_gap,
        best_module_agreement=agreement,
    )
