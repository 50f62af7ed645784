"""Specialist sub-ensembles on one-vs-all problems (Webb et al. §4.1 "Module Specialization", Fig. 5).

`one_vs_all_f1` scores binary decisions, `subensemble_f1` the one-vs-all decisions of given sub-ensembles, and
`select_specialists` picks the sub-ensemble with the best validation F1 and compares it with random ones.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxens.metrics import checks
from jaxens.modules._common import (
    _check_class,
    _check_count,
    _check_decision,
    _check_members_labels,
    _check_method,
    _combined_log_probs,
    _concrete,
    _map_subsets,
    _member_values,
)

__all__ = ["Specialists", "one_vs_all_f1", "select_specialists", "subensemble_f1"]


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

    A row's modules are the `size` lowest-ranked by 32 random bits each (see `jaxens.modules.removal._keep_masks`).
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
