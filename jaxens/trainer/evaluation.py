"""Evaluation of the members: every group's per-member and ensemble metrics on every evaluation set.

The metric kernels are `jaxens.metrics` (definitions in docs/definitions.md); here they are combined into
one jitted call per set for all groups: error, NLL, Brier, ECE and MACE of each member and of the ensemble, and
the members' diversity (mean pairwise symmetric KL and disagreement) on labelled sets; predictive entropy
and confidence on out-of-distribution sets.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxens import data as data_lib
from jaxens import metrics
from jaxens import sharding as sharding_lib
from jaxens.ensemble import EnsembleState, Predictor, placement_mesh


def _mean_over_pairs(matrix: jax.Array) -> jax.Array:
    """Mean of a [k, k] pairwise matrix over the pairs i < j."""
    i, j = jnp.triu_indices(matrix.shape[0], k=1)
    return matrix[i, j].mean()


def _diversity(member_logits: jax.Array) -> dict:
    """Between-member diversity of one group (k ≥ 2): mean pairwise symmetric KL and disagreement."""
    if member_logits.shape[0] < 2:
        return {}
    return {
        "ensemble_sym_kl": metrics.member_diversity(member_logits),
        "ensemble_disagreement": _mean_over_pairs(metrics.pairwise_disagreement(member_logits)),
    }


@functools.partial(jax.jit, static_argnames="method")
def labelled_metrics(member_logits: jax.Array, labels: jax.Array, method: str) -> dict:
    """One group's metrics on a labelled set, logits [k, N, C] and labels [N]: per member ([k]) and of
    the ensemble, error, NLL, Brier, ECE and MACE (15 bins); and the members' diversity."""
    ens = metrics.ensemble_log_probs(member_logits, method)  # [N, C]
    out = {}
    for name, fn in (
        ("error", metrics.error),
        ("nll", metrics.nll),
        ("brier", metrics.brier),
        ("ece", metrics.ece),
        ("mace", metrics.mace),
    ):
        out[f"member_{name}"] = fn(member_logits, labels)  # [k]
        out[f"ensemble_{name}"] = fn(ens, labels)
    return {**out, **_diversity(member_logits)}


@functools.partial(jax.jit, static_argnames="method")
def ood_metrics(member_logits: jax.Array, method: str) -> dict:
    """One group's mean predictive entropy and confidence on out-of-distribution inputs, logits [k, N, C],
    and the members' diversity there."""
    ens = metrics.ensemble_log_probs(member_logits, method)
    return {
        "member_entropy": metrics.entropy(member_logits).mean(-1),  # [k]
        "member_confidence": metrics.confidence(member_logits).mean(-1),  # [k]
        "ensemble_entropy": metrics.entropy(ens).mean(-1),
        "ensemble_confidence": metrics.confidence(ens).mean(-1),
        **_diversity(member_logits),
    }


def evaluate(
    predictor: Predictor,
    state: EnsembleState,
    dataset: data_lib.Dataset,
    sets: dict[str, data_lib.EvalSet],
    method: str,
    num_groups: int = 1,
    diverged: np.ndarray | None = None,
) -> list[dict[str, dict]]:
    """Metrics of every evaluation set for each group of members, as Python numbers.

    The K members form `num_groups` consecutive groups of K / num_groups (the children of one spawn
    time); each group is an ensemble of its own. Inputs are normalized with the training set's
    statistics; each set is predicted in fixed-size batches. With `diverged` ([K], -1 for a healthy
    member), a group's ensemble and diversity metrics cover its healthy members only (all of them if
    none is healthy); member metrics are always every member's.

    Returns:
      Per group, {set: {member_<metric>: [k floats], ensemble_<metric>: float}}.
    """
    out: list[dict[str, dict]] = [{} for _ in range(num_groups)]
    for name, eval_set in sets.items():
        logits = predictor(state, eval_set.x, dataset, per_view=eval_set.per_view)  # [K, N, C]
        labels = sharding_lib.put_replicated(eval_set.y, placement_mesh(state))  # Where the logits are.
        k = logits.shape[0] // num_groups
        # Group g's labels: per view ([V, N]) the groups form V consecutive blocks, one per view.
        rows = np.arange(num_groups) * labels.shape[0] // num_groups if eval_set.per_view else None
        every = sharding_lib.host(_of_groups(logits, labels, rows, num_groups, eval_set.kind, method))  # [G, ...]
        for g in range(num_groups):
            values = {key: v[g] for key, v in every.items()}
            healthy = np.arange(k) if diverged is None else np.flatnonzero(diverged[g * k : (g + 1) * k] < 0)
            if 0 < len(healthy) < k:
                members = g * k + healthy
                group_labels = None if rows is None else rows[g : g + 1]
                of_healthy = sharding_lib.host(
                    _of_groups(logits[members], labels, group_labels, 1, eval_set.kind, method)
                )
                of_healthy = {key: v[0] for key, v in of_healthy.items()}
                values = {key: of_healthy.get(key) if key.startswith("ensemble_") else v for key, v in values.items()}
                values = {key: v for key, v in values.items() if v is not None}  # Diversity needs 2 members.
            out[g][name] = {key: (v.tolist() if v.ndim else float(v)) for key, v in values.items()}
    return out


@functools.partial(jax.jit, static_argnames=("num_groups", "kind", "method"))
def _of_groups(
    logits: jax.Array, labels: jax.Array, rows: jax.Array | None, num_groups: int, kind: str, method: str
) -> dict:
    """Every group's metrics in one call (a grid's many groups cost one dispatch and one transfer, not one
    each): logits [K, N, C], the K members forming `num_groups` consecutive groups; labels [N], or [V, N] with
    `rows` [G] the row of each group. Returns `labelled_metrics` / `ood_metrics` with a leading [G] axis.

    The groups go one after another (`lax.map`), each through the computation a run of that group alone does,
    so a grid's metrics equal its groups' standalone runs bit for bit (vmapped, the reductions round
    differently)."""
    grouped = logits.reshape(num_groups, -1, *logits.shape[1:])  # [G, k, N, C]
    if kind == "ood":
        return jax.lax.map(lambda member_logits: ood_metrics(member_logits, method), grouped)
    group_labels = labels[rows] if rows is not None else jnp.broadcast_to(labels, (num_groups, *labels.shape))
    return jax.lax.map(lambda xs: labelled_metrics(*xs, method), (grouped, group_labels))
