"""One run: validate → load data → [parent phase → spawn] → members phase → evaluate → summarize.

`train_and_evaluate(config, workdir)` is what `python -m jaxens.train` calls; tests call it directly.

Under `no_coupling` and `coupled_order` the K members train from initialization. Under the spawning
conditions (`jaxens.coupling`) a one-member parent trains first, up to the largest spawn time t, saving a
checkpoint at every t; then the children of all spawn times are spawned and train together as one
stacked state. Both phases run the same loop (`_train`), in lockstep *ticks*: at tick τ member m is at step
min(start_m + τ, end_m), and a member at its end step stops updating.

Reliability (the contract the tests check):
- Every random draw is a function of (member stream, step), so a run resumed from any checkpoint ends
  bitwise equal (on CPU) to an uninterrupted one; the checkpoints also carry the running training-metric
  sums, so even the metrics log agrees.
- Rerunning the command resumes from the newest checkpoint that restores intact (`jaxens.checkpoint`);
  a finished run is left untouched; a workdir of another run is refused (unless --overwrite).
- SIGTERM / SIGINT save a checkpoint after the current chunk of steps and raise `preemption.Preempted`.
- A member whose step turns non-finite is frozen (`ensemble.member_update`), reported when the host next
  pauses, and marked in the summary; its group's ensemble metrics then cover the other members.
  `config.train.on_divergence='stop'` raises `Diverged` instead, as does a run with no member left.
- DIR/status.json says whether the run is running, finished, preempted, diverged or failed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import linen as nn
from jax.experimental import multihost_utils

from jaxens import checkpoint as checkpoint_lib
from jaxens import config as config_lib
from jaxens import coupling as coupling_lib
from jaxens import data as data_lib
from jaxens import ensemble as ensemble_lib
from jaxens import faults, metrics, models, optim, preemption, progress, tensorboard_log
from jaxens import reinit as reinit_lib
from jaxens import rng as rng_lib
from jaxens import sharding as sharding_lib
from jaxens import spawn as spawn_lib
from jaxens import trajectory as trajectory_lib
from jaxens import workdir as workdir_lib


class Diverged(Exception):
    """Training stopped on divergence (config.train.on_divergence='stop', or no member left training)."""

    exit_code = 3
    status = "diverged"


def _say(message: str) -> None:
    """Prints a progress message (the primary process only: a multi-host run reports once)."""
    if sharding_lib.is_primary():
        print(message, flush=True)


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
def _labelled_metrics(member_logits: jax.Array, labels: jax.Array, method: str) -> dict:
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
def _ood_metrics(member_logits: jax.Array, method: str) -> dict:
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


def evaluation_sets(dataset: data_lib.Dataset, extra: dict[str, data_lib.EvalSet]) -> dict[str, data_lib.EvalSet]:
    """'test', 'val' (when examples are held out) and the configured shifted and OOD sets, by name."""
    sets = {"test": data_lib.EvalSet(x=dataset.test_x, y=dataset.test_y, kind="test")}
    if dataset.val_x.shape[0]:
        sets["val"] = data_lib.EvalSet(x=dataset.val_x, y=dataset.val_y, kind="val")
    return {**sets, **extra}


def evaluate(
    predictor: ensemble_lib.Predictor,
    state: ensemble_lib.EnsembleState,
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
        logits = predictor(state, eval_set.x, dataset)  # [K, N, C]
        labels = sharding_lib.put_replicated(eval_set.y, ensemble_lib.placement_mesh(state))  # Where the logits are.
        k = logits.shape[0] // num_groups
        for g, group_logits in enumerate(jnp.split(logits, num_groups)):  # [k, N, C] each
            metric_fn = _ood_metrics if eval_set.kind == "ood" else functools.partial(_labelled_metrics, labels=labels)
            values = sharding_lib.host(metric_fn(group_logits, method=method))
            healthy = np.arange(k) if diverged is None else np.flatnonzero(diverged[g * k : (g + 1) * k] < 0)
            if 0 < len(healthy) < k:
                of_healthy = sharding_lib.host(metric_fn(group_logits[healthy], method=method))
                values = {key: of_healthy.get(key) if key.startswith("ensemble_") else v for key, v in values.items()}
                values = {key: v for key, v in values.items() if v is not None}  # Diversity needs 2 members.
            out[g][name] = {key: (v.tolist() if v.ndim else float(v)) for key, v in values.items()}
    return out


def _records(phase: str, step: int, spe: int, group: tuple, train: dict, evals: dict[str, dict]) -> list[dict]:
    """Tidy rows of one group (t, λ) for metrics.jsonl (see `jaxens.workdir.MetricsLog`)."""
    rows = []
    t, lam = group
    base = dict(phase=phase, step=step, epoch=round(step / spe, 4), t=t, lam=lam)

    def add(split, scope, member, metric, value):
        rows.append(dict(base, split=split, scope=scope, member=member, metric=metric, value=float(value)))

    for metric, values in train.items():
        for m, v in enumerate(values):
            add("train", "member", m, metric, v)
    for split, values in evals.items():
        for key, value in values.items():
            scope, metric = key.split("_", 1)
            if scope == "member":
                for m, v in enumerate(value):
                    add(split, "member", m, metric, v)
            else:
                add(split, "ensemble", None, metric, value)
    return rows


def _at_best_val(records: list[dict], group: tuple) -> dict | None:
    """Early stopping after the fact (Webb et al.): the group's ensemble test metrics at the evaluation with
    the lowest ensemble validation error (the first such), or None without a validation split."""
    t, lam = group
    mine = [
        r
        for r in records
        if r["phase"] == "members" and r["t"] == t and r.get("lam") == lam and r["scope"] == "ensemble"
    ]
    val = sorted((r["value"], r["step"]) for r in mine if r["split"] == "val" and r["metric"] == "error")
    if not val:
        return None
    val_error, step = val[0]
    test = {r["metric"]: r["value"] for r in mine if r["split"] == "test" and r["step"] == step}
    epoch = next(r["epoch"] for r in mine if r["step"] == step)
    return {"step": step, "epoch": epoch, "val_error": val_error, "test_error": test["error"], "test_nll": test["nll"]}


def _report(summary: dict) -> str:
    lines = []
    for group in summary["groups"]:
        test = group["test"]
        if group.get("lam") is not None:
            lines.append(
                f"modular loss λ={group['lam']:g}, test error after {group['steps']} steps ({summary['epochs']} epochs):"
            )
        elif group["t"] is None:
            lines.append(f"test error after {group['steps']} steps ({summary['epochs']} epochs):")
        else:
            lines.append(
                f"children spawned at t={group['t_label']} (step {group['t']}), test error at step {group['steps']}:"
            )
        diverged = group.get("diverged") or [None] * len(test["member_error"])
        for m, (e, n, d) in enumerate(zip(test["member_error"], test["member_nll"], diverged)):
            note = "" if d is None else f"  (diverged at step {d}; frozen there)"
            lines.append(f"  member {m}:  error {e:.4f}  nll {n:.4f}{note}")
        lines.append(f"  mean member: error {test['mean_member_error']:.4f}")
        healthy = sum(d is None for d in diverged)
        of = "" if healthy == len(diverged) or not healthy else f", of the {healthy} members that did not diverge"
        lines.append(
            f"  ensemble ({summary['ensemble_method']}{of}): error {test['ensemble_error']:.4f}  nll {test['ensemble_nll']:.4f}"
            f"  MACE {test['ensemble_mace']:.4f}"
        )
        if "ensemble_sym_kl" in test:
            lines.append(
                f"  diversity: symmetric KL {test['ensemble_sym_kl']:.4f}  disagreement {test['ensemble_disagreement']:.4f}"
            )
        best = group.get("at_best_val")
        if best:
            lines.append(
                f"  at the best validation epoch ({best['epoch']:g}): ensemble test error {best['test_error']:.4f}"
                f"  (val {best['val_error']:.4f})"
            )
        for name, values in group.get("eval", {}).items():
            if "ensemble_error" in values:
                mean_member = sum(values["member_error"]) / len(values["member_error"])
                lines.append(
                    f"  {name}: ensemble error {values['ensemble_error']:.4f}  nll {values['ensemble_nll']:.4f}  "
                    f"(mean member error {mean_member:.4f})"
                )
            else:
                lines.append(
                    f"  {name} (out of distribution): ensemble entropy {values['ensemble_entropy']:.4f}  "
                    f"confidence {values['ensemble_confidence']:.4f}"
                )
    return "\n".join(lines)


@dataclasses.dataclass
class _Run:
    """What both phases share."""

    config: ml_collections.ConfigDict
    workdir: str
    plan: coupling_lib.Plan
    dataset: data_lib.Dataset
    eval_sets: dict
    spe: int  # Steps per epoch.
    model: nn.Module
    tx: optax.GradientTransformation
    train_chunk: ensemble_lib.TrainChunk
    predictor: ensemble_lib.Predictor
    log: workdir_lib.MetricsLog
    board: tensorboard_log.Board
    mesh_shape: tuple[int, int]  # The members' mesh (M, D); a phase with fewer members: `phase_mesh`.

    def phase_mesh(self, k: int) -> jax.sharding.Mesh:
        """The ('member', 'data') mesh of a phase with k members (`jaxens.sharding.phase_shape`)."""
        return sharding_lib.make_mesh(sharding_lib.phase_shape(self.mesh_shape, k, self.config.train.batch_size))

    def record(self, rows: list[dict]) -> None:
        """Appends rows to metrics.jsonl and writes them as TensorBoard scalars."""
        self.log.write(rows)
        self.board.write(rows)

    def template(self, k: int) -> ensemble_lib.EnsembleState:
        return _state_template(self.model, self.tx, k, self.dataset.input_shape, self.phase_mesh(k))


def _state_template(model, tx, k: int, input_shape, mesh: jax.sharding.Mesh) -> ensemble_lib.EnsembleState:
    """Shapes, dtypes and shardings (members on `mesh`) of a k-member state, to restore checkpoints into
    (whatever mesh saved them), without compute."""
    abstract = jax.eval_shape(lambda: ensemble_lib.init_ensemble(model, tx, rng_lib.member_streams(0, k), input_shape))
    return sharding_lib.abstract_members(abstract, mesh)


@dataclasses.dataclass
class _Phase:
    """How `_train` runs one phase (the parent's, or the members').

    Attributes:
      name: 'parent' or 'members' (in messages).
      checkpointer: where the phase's checkpoints go.
      pauses: the ticks where the loop stops to call `on_pause` (sorted); the last one ends the phase.
      windows_at: pauses that report the mean training metrics since the previous such pause.
      saves_at: pauses that save a checkpoint (after `on_pause`).
      on_pause: `(state, tick, train)`, with `train` {metric: [K] means} at `windows_at`, else None.
      member_names: how messages name each member.
      lr_scales: [K] learning-rate multipliers, or None.
    """

    name: str
    checkpointer: checkpoint_lib.Checkpointer
    pauses: list[int]
    windows_at: set[int]
    saves_at: set[int]
    on_pause: Callable
    member_names: list[str]
    lr_scales: np.ndarray | None = None


def _window_progress(sums: dict | None) -> dict:
    """The training-metric sums of the current window, as checkpoint metadata (float32 values are exact
    as JSON numbers)."""
    if sums is None:
        return {}
    return {"train_sums": {m: np.asarray(v).tolist() for m, v in sharding_lib.host(sums).items()}}


def _window_sums(progress: dict) -> dict | None:
    sums = progress.get("train_sums")
    return None if not sums else {m: jnp.asarray(np.asarray(v, np.float32)) for m, v in sums.items()}


def _check_divergence(run: _Run, state: ensemble_lib.EnsembleState, phase: _Phase, known: set[int]) -> None:
    """Reports members that diverged since the last check; raises `Diverged` under on_divergence='stop'
    or when no member is left training."""
    diverged = np.asarray(sharding_lib.host(state.diverged))
    new = [m for m in np.flatnonzero(diverged >= 0) if m not in known]
    for m in new:
        message = (
            f"{phase.member_names[m]} diverged at step {diverged[m]}: its loss or gradients were not finite; "
            f"it stays frozen at step {diverged[m]}"
        )
        logging.warning(message)
        known.add(int(m))
    if new and run.config.train.on_divergence == "stop":
        raise Diverged(
            f"{len(new)} member(s) of the {phase.name} diverged (config.train.on_divergence='stop'); the last "
            f"checkpoint before it is kept in {phase.checkpointer.directory}"
        )
    if len(known) == state.k:
        raise Diverged(f"every member of the {phase.name} diverged: nothing is left to train")


def _train(
    run: _Run,
    state: ensemble_lib.EnsembleState,
    starts: np.ndarray,
    ends: np.ndarray,
    tick: int,
    phase: _Phase,
    resume_progress: dict | None = None,
) -> ensemble_lib.EnsembleState:
    """Trains K members in lockstep from `tick` to the last of `phase.pauses`.

    At tick τ member m is at step min(starts[m] + τ, ends[m]). Chunks end at every member's epoch end
    (where its permutation changes) and at every pause. At a pause: `phase.on_pause`, then the divergence
    check, then the checkpoint (with the current window's training sums as its progress, which a resumed
    run passes back as `resume_progress`). A stop request (`jaxens.preemption`) saves a checkpoint after
    the current chunk and raises `Preempted`.
    """
    k = state.k
    mesh = ensemble_lib.placement_mesh(state)  # The phase runs where its state lives.
    masked = len(set((ends - starts).tolist())) > 1  # Members finish at different ticks.
    ends_dev = sharding_lib.put_members(ends.astype(np.int32), mesh) if masked else None
    lr_scales = None
    if phase.lr_scales is not None:
        lr_scales = sharding_lib.put_members(np.asarray(phase.lr_scales, np.float32), mesh)
    known = set(np.flatnonzero(np.asarray(sharding_lib.host(state.diverged)) >= 0).tolist())
    last = phase.pauses[-1]
    bar = progress.bar(last, initial=tick, desc=f"{phase.name} K={k}")
    orders, order_epochs = None, None
    sums = _window_sums(resume_progress or {})
    num_train = run.dataset.num_train
    rate_from = (tick, time.perf_counter())  # Step rate over each window (device work done by its end).
    while tick < last:
        steps = np.minimum(starts + tick, ends)
        active = steps < ends
        epochs = steps // run.spe
        if order_epochs is None or not np.array_equal(epochs, order_epochs):
            epochs_dev = sharding_lib.put_members(epochs.astype(np.int32), mesh)
            orders = data_lib.epoch_orders(state.rngs.order, epochs_dev, num_train)  # [K, N] on 'member'.
            order_epochs = epochs
        to_epoch_end = np.where(active, (epochs + 1) * run.spe - steps, np.iinfo(np.int64).max)
        next_pause = next(p for p in phase.pauses if p > tick)
        n = int(min(to_epoch_end.min(), next_pause - tick, run.config.train.steps_per_call))
        state, chunk_sums = run.train_chunk(state, orders, run.dataset, n, ends_dev, lr_scales)
        sums = chunk_sums if sums is None else jax.tree.map(jnp.add, sums, chunk_sums)
        tick += n
        bar.update(n)
        saved = False
        if tick == next_pause:
            train = None
            if tick in phase.windows_at:
                window = sharding_lib.host(sums)
                taken = np.maximum(window.pop("steps"), 1)  # Steps each member took (not frozen, not done).
                train = {m: (v / taken).tolist() for m, v in window.items()}
                sums = None
                steps_per_s = (tick - rate_from[0]) / max(time.perf_counter() - rate_from[1], 1e-9)
                examples_per_s = steps_per_s * k * run.config.train.batch_size
                run.board.scalars(
                    phase.name, tick, {"perf/steps_per_s": steps_per_s, "perf/examples_per_s": examples_per_s}
                )
            phase.on_pause(state, tick, train)
            _check_divergence(run, state, phase, known)
            if tick in phase.saves_at:
                phase.checkpointer.save(tick, state, _window_progress(sums))
                saved = True
            rate_from = (tick, time.perf_counter())
        signum = preemption.requested()
        if signum is not None and tick < last:
            if not saved:
                phase.checkpointer.save(tick, state, _window_progress(sums))
            bar.close()
            raise preemption.Preempted(signum, tick, f"{phase.name} phase")
    bar.close()
    return state


def _ticks_every(every: str | int, spe: int, last: int) -> list[int]:
    """Ticks at every multiple of the step string `every` (`jaxens.spawn.parse_steps`) and the last one,
    sorted, within (0, last]."""
    n = spawn_lib.parse_steps(every, spe)
    return sorted(set(range(n, last + 1, n)) | {last})


def _cadence(every_epochs: int, spe: int, last: int) -> list[int]:
    """Ticks at every `every_epochs` epochs and the last one, sorted, within (0, last]."""
    return _ticks_every(every_epochs * spe, spe, last)


def _parent_dir_source(config: ml_collections.ConfigDict) -> str | None:
    """Checks `config.coupling.parent_dir` names a run with the same parent; returns its checkpoint dir.

    Raises:
      ConfigError: the directory holds no run, a run with a different parent, or no parent checkpoints.
    """
    parent_dir = config.coupling.parent_dir
    if not parent_dir:
        return None
    field = f"config.coupling.parent_dir={parent_dir!r}"
    path = os.path.join(parent_dir, "config.json")
    if not os.path.exists(path):
        raise config_lib.ConfigError(f"{field}: no run there (no config.json)")
    with open(path) as f:
        theirs = coupling_lib.parent_fields(json.load(f))
    ours = coupling_lib.parent_fields(workdir_lib.config_to_dict(config))
    differ = [f"config.{k}: {theirs[k]!r} there, {ours[k]!r} here" for k in ours if theirs[k] != ours[k]]
    if differ:
        raise config_lib.ConfigError(f"{field}: that run trained a different parent ({'; '.join(differ)})")
    directory = os.path.join(parent_dir, "parent")
    if not os.path.isdir(directory):
        raise config_lib.ConfigError(f"{field}: that run saved no parent checkpoints ({directory} is missing)")
    return directory


def _restore_parents(sources: list, spawn_steps: tuple[int, ...], template):
    """The parent checkpoint to resume from, and those of the spawn steps before it, all restored intact.

    Sources are searched in order (this run's own first). Resumes from the latest checkpoint at or before
    the first spawn step that no source holds. A checkpoint that fails to restore is passed over (the
    choice is made again without it) and, once another one restored, set aside.

    Returns:
      (start step or None for none, {step: checkpoint_lib.Restored} for the start and the spawn steps ≤ it).

    Raises:
      CorruptCheckpoint: checkpoints exist but none restores (nothing is moved).
    """
    bad = {}  # (source index, step) → why it failed.
    while True:
        available = {}  # step → index of the first source holding it.
        for i in reversed(range(len(sources))):
            available.update({s: i for s in sources[i].all_steps() if (i, s) not in bad})
        missing = [t for t in spawn_steps if t not in available]
        start = max((s for s in available if not missing or s <= missing[0]), default=None)
        if start is None:
            break
        restored = {}
        try:
            for s in sorted({start} | {t for t in spawn_steps if t <= start}):
                restored[s] = sources[available[s]].restore_progress(s, template)
            break
        except checkpoint_lib.CorruptCheckpoint as e:
            failing = next(s for s in sorted({start} | {t for t in spawn_steps if t <= start}) if s not in restored)
            bad[(available[failing], failing)] = str(e)
    if bad and start is None:
        (i, step), reason = next(iter(bad.items()))
        raise checkpoint_lib.CorruptCheckpoint(
            f"no parent checkpoint restores (checkpoint {step} in {sources[i].directory} {reason}); nothing was moved"
        )
    for (i, step), reason in bad.items():
        sources[i].set_aside(step, reason)
    return start, restored if start is not None else {}


def _parents(run: _Run, parent_source: str | None) -> dict[int, ensemble_lib.EnsembleState]:
    """The one-member parent's state at every spawn step {t: state}, trained, restored or both.

    Training starts from the latest intact checkpoint (this run's, or `config.coupling.parent_dir`'s) at
    or before the first spawn step that no checkpoint holds, or from initialization; every spawn step is
    saved.
    """
    config, plan = run.config, run.plan
    own = checkpoint_lib.Checkpointer(
        os.path.join(run.workdir, "parent"), config.train.max_checkpoints, keep_steps=plan.spawn_steps
    )
    sources = [own]
    if parent_source is not None:
        sources.append(checkpoint_lib.Checkpointer(parent_source, read_only=True))
    start, restored = _restore_parents(sources, plan.spawn_steps, run.template(1))
    progress = {}
    if start is None:
        state = ensemble_lib.init_ensemble(
            run.model, run.tx, rng_lib.member_streams(config.seed, 1), run.dataset.input_shape
        )
        state = sharding_lib.put_members(state, run.phase_mesh(1))
        start = 0
    else:
        state, progress = restored[start].state, restored[start].progress
        _say(f"parent: restored the checkpoint at step {start}")
    run.log.retain(lambda r: r["phase"] == "parent" and r["step"] <= start)  # Children restart from spawn.
    logged = {r["step"] for r in run.log.read()}
    parents = {}

    def log(step, parent, train):
        if step not in logged:
            evals = evaluate(run.predictor, parent, run.dataset, run.eval_sets, config.ensemble.method)[0]
            run.record(_records("parent", step, run.spe, (None, None), train or {}, evals))
            logged.add(step)

    for t in plan.spawn_steps:
        if t <= start:  # Restored, or (t = 0) the initialization.
            parent, saved = (restored[t].state, restored[t].progress) if t in restored else (state, {})
            parents[t] = jax.tree.map(jnp.copy, parent)  # Training donates `state`.
            if t not in own.all_steps():  # The initialization, or from parent_dir: kept with this run.
                own.save(t, parent, saved)
            log(t, parents[t], {})
    last = plan.spawn_steps[-1]
    if last > start:
        evals_at = _cadence(config.eval.every_epochs, run.spe, last)

        def on_pause(state, tick, train):
            if tick in plan.spawn_steps:
                parents[tick] = jax.tree.map(jnp.copy, state)  # Training donates its state.
            if tick in evals_at or tick in plan.spawn_steps:
                log(tick, state, train)

        later_spawns = {t for t in plan.spawn_steps if t > start}
        saves_at = set(_ticks_every(config.train.checkpoint_every, run.spe, last)) | later_spawns
        phase = _Phase(
            name="parent",
            checkpointer=own,
            pauses=sorted(set(evals_at) | saves_at),
            windows_at=set(evals_at) | later_spawns,
            saves_at=saves_at,
            on_pause=on_pause,
            member_names=["the parent"],
        )
        _train(run, state, np.zeros(1, np.int64), np.full(1, last), start, phase, progress)
    for source in sources:
        source.close()
    return parents


def _children(run: _Run, parents: dict[int, ensemble_lib.EnsembleState]) -> ensemble_lib.EnsembleState:
    """The k children of every spawn time, stacked in spawn-step order, re-initialized as configured, and
    sharded over the members' mesh."""
    config = run.config
    # Spawned on the host from the parents' values (one member each): the same on every process, then
    # sharded over the members' mesh wherever the parent's mesh put them.
    parents = {t: sharding_lib.host(parent) for t, parent in parents.items()}
    reinit = None
    if config.coupling.reinit_fraction > 0:
        shape = (1, *run.dataset.input_shape)
        init_params = lambda key: run.model.init({"params": key}, jnp.zeros(shape), train=False)["params"]
        one = jax.tree.map(lambda x: x[0], next(iter(parents.values())).params)
        order = models.forward_order(run.model, run.dataset.input_shape)
        mask = reinit_lib.mask(one, order, config.coupling.reinit_fraction, config.coupling.reinit_side)
        reinit = spawn_lib.Reinit(mask=mask, init_params=init_params)
    children = coupling_lib.spawn_groups(parents, run.plan, config.seed, run.tx, reinit)
    return sharding_lib.put_members(children, run.phase_mesh(run.plan.num_members))


def resolved_strategy(config: ml_collections.ConfigDict, member_rows: int | None = None) -> str:
    """config.ensemble.strategy with 'auto' resolved for the model on this backend and a members' mesh
    with `member_rows` device rows (default: this run's, `members_mesh_shape`)."""
    if member_rows is None:
        member_rows = members_mesh_shape(config)[0]
    convolutional = models.MODELS[config.model.name].convolutional
    return ensemble_lib.resolve_strategy(config.ensemble.strategy, convolutional, num_devices=member_rows)


def members_mesh_shape(config: ml_collections.ConfigDict, use_config: bool = True) -> tuple[int, int]:
    """The members' mesh (M, D) of a validated config on this machine's devices (config.mesh, or the
    automatic shape when `use_config` is False).

    Raises:
      MeshError (a ConfigError): config.mesh does not fit the devices.
    """
    num_members = coupling_lib.plan(config, 1).num_members  # K does not depend on the steps per epoch.
    member, data = (config.mesh.member, config.mesh.data) if use_config else (0, 0)
    return sharding_lib.mesh_shape(num_members, config.train.batch_size, member, data)


def make_train_chunk(config: ml_collections.ConfigDict, plan: coupling_lib.Plan, model, tx, **overrides):
    """The members' `TrainChunk` as the trainer builds it for `config` (strategy and step loop resolved for
    this backend, augmentation, λ groups, shared batch); `overrides` replace its arguments (benchmarks)."""
    augment = data_lib.resolve_augment(config)
    kwargs = dict(
        batch_size=config.train.batch_size,
        strategy=resolved_strategy(config),
        step_loop=ensemble_lib.resolve_step_loop(
            config.train.step_loop, models.MODELS[config.model.name].convolutional
        ),
        augment=augment,
        padding=config.data.crop_padding,
        lams=plan.lams,
        shared_batch=ensemble_lib.shared_batch_of(plan.shared_streams, augment, plan.spawning),
    )
    return ensemble_lib.TrainChunk(model, tx, **{**kwargs, **overrides})


def _build(config: ml_collections.ConfigDict, dataset: data_lib.Dataset):
    """(steps per epoch, plan, model, optimizer) of a validated config on its dataset."""
    spe = data_lib.steps_per_epoch(dataset.num_train, config.train.batch_size)
    plan = coupling_lib.plan(config, spe)
    model = models.build(config.model, dataset.num_classes, dataset.input_shape)
    return spe, plan, model, optim.make_optimizer(config.optimizer, plan.total_steps, num_train=dataset.num_train)


class Restored(NamedTuple):
    """A run's members as its latest checkpoint holds them (see `restore`)."""

    config: ml_collections.ConfigDict
    plan: coupling_lib.Plan
    dataset: data_lib.Dataset  # On the device.
    model: nn.Module
    state: ensemble_lib.EnsembleState
    step: int  # The checkpoint's tick of the members' phase.

    @property
    def strategy(self) -> str:
        """The member strategy for the restored state ('auto' resolved on this backend and its mesh)."""
        return resolved_strategy(self.config, member_rows=mesh_shape_of(self.state)[0])


def restore(workdir: str) -> Restored:
    """The members of the run in `workdir` at its latest intact checkpoint, with its config, data and model.

    For analyses after training (e.g. `experiments/webb_removal.py`): predict with
    `ensemble.Predictor(r.model, ...)(r.state, x, r.dataset)`; the groups of `r.plan` are consecutive
    blocks of `r.plan.k` members. Nothing in `workdir` is written.

    Raises:
      ConfigError: `workdir` holds no run or no intact members' checkpoint.
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise config_lib.ConfigError(f"{workdir}: no run there (no config.json)")
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    shape = members_mesh_shape(config, use_config=False)  # This machine's devices, whatever trained it.
    mesh = sharding_lib.make_mesh(shape)
    dataset = sharding_lib.put_replicated(data_lib.load(config), mesh)
    _, plan, model, tx = _build(config, dataset)
    checkpointer = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    restored = checkpointer.restore_latest(_state_template(model, tx, plan.num_members, dataset.input_shape, mesh))
    checkpointer.close()
    if restored is None:
        raise config_lib.ConfigError(f"{workdir}: no intact checkpoint of the members yet")
    return Restored(config, plan, dataset, model, restored.state, restored.step)


def _member_names(plan: coupling_lib.Plan) -> list[str]:
    """'member m', with its group when there are several (spawn time or λ), for messages."""
    names = []
    for g, (t, lam) in enumerate(zip(plan.group_spawn_steps(), plan.group_lams())):
        for m in range(plan.k):
            if lam is not None and plan.num_groups > 1:
                names.append(f"member {m} of the λ={lam:g} group")
            elif t is not None and plan.num_groups > 1:
                names.append(f"member {m} of the children spawned at t={plan.spawn_labels[g]}")
            else:
                names.append(f"member {m}")
    return names


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, overwrite: bool = False) -> dict:
    """Trains the configured members (and their parent, under a spawning condition); writes results to `workdir`.

    Rerunning on the same workdir with the same config resumes from the latest intact checkpoint (or, when
    the run has finished, returns its summary without writing anything).

    Args:
      overwrite: replace whatever run `workdir` holds (`jaxens.workdir.claim`), once the config is valid.

    Returns:
      The summary (also written to `workdir/summary.json`): per group of members (the children of one
      spawn time; a single group without parent) its test and evaluation-set metrics, and which members
      diverged.

    Raises:
      ConfigError: before any compute or any write, for an invalid config, a workdir holding a different
        run (without `overwrite`) or one another process is training in.
      preemption.Preempted: SIGTERM or SIGINT arrived; a checkpoint was saved.
      Diverged: see config.train.on_divergence.
    """
    config_lib.validate(config)
    if config.mesh.distributed:
        sharding_lib.initialize_distributed()
    mesh_shape = members_mesh_shape(config)  # Before any data is loaded: the devices fit config.mesh.
    if config.mesh.shard_train:
        _check_split_train(config, mesh_shape)
    dataset = data_lib.load(config)
    extra_sets = data_lib.load_eval_sets(config)
    parent_source = _parent_dir_source(config)
    primary = sharding_lib.is_primary()  # Only process 0 writes; every process trains its devices' share.
    if not overwrite and workdir_lib.check(workdir, config):  # Refuses another run's directory.
        finished = workdir_lib.read_summary(workdir)
        if finished is not None:  # Nothing to do, and nothing is written.
            logging.info("%s already holds a finished run; nothing to do.", workdir)
            _say(_report(finished))
            return finished
    if primary:
        os.makedirs(workdir, exist_ok=True)
    with _workdir_lock(workdir, primary), preemption.stop_on_signals():
        resuming = workdir_lib.claim(workdir, config, overwrite) if primary else True
        if primary:
            workdir_lib.write_status(workdir, "running")
        _sync("jaxens: workdir claimed")  # The others read the workdir once process 0 has claimed it.
        status = functools.partial(workdir_lib.write_status, workdir) if primary else (lambda *args: None)
        try:
            summary = _train_and_evaluate(config, workdir, dataset, extra_sets, parent_source, resuming, mesh_shape)
        except preemption.Preempted as e:
            status("preempted", e.step, str(e))
            raise
        except Diverged as e:
            status("diverged", None, str(e))
            raise
        except BaseException as e:
            status("failed", None, f"{type(e).__name__}: {e}")
            raise
        status("finished", summary["steps"])
    _say(_report(summary))
    return summary


def _check_split_train(config: ml_collections.ConfigDict, mesh_shape: tuple[int, int]) -> None:
    """config.mesh.shard_train needs the training examples to divide evenly over the mesh's devices."""
    info = data_lib.dataset_info(config.dataset, config.data)
    assert info is not None  # A validated config names a registered dataset.
    num_train, devices = info.num_train - config.data.val_size, mesh_shape[0] * mesh_shape[1]
    if num_train % devices:
        raise config_lib.ConfigError(
            f"config.mesh.shard_train=True: the {num_train} training examples do not divide over the mesh's "
            f"{devices} devices (member={mesh_shape[0]} × data={mesh_shape[1]}); hold out "
            f"config.data.val_size={config.data.val_size + num_train % devices} (or another mesh), or set "
            "config.mesh.shard_train=False"
        )


def _workdir_lock(workdir: str, primary: bool):
    """The workdir's lock, held by the writing process (a no-op context for the others)."""
    return workdir_lib.Lock(workdir) if primary else contextlib.nullcontext()


def _sync(name: str) -> None:
    """A barrier across the processes of a multi-host run (nothing on one host)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _train_and_evaluate(config, workdir, dataset, extra_sets, parent_source, resuming, mesh_shape) -> dict:
    started = time.time()
    members_mesh = sharding_lib.make_mesh(mesh_shape)
    # Replicated on every device (or the training split divided over them); each process transfers only to
    # its own devices.
    dataset = sharding_lib.put_dataset(dataset, members_mesh, split_train=config.mesh.shard_train)
    spe, plan, model, tx = _build(config, dataset)
    strategy = resolved_strategy(config, member_rows=mesh_shape[0])
    run = _Run(
        config=config,
        workdir=workdir,
        plan=plan,
        dataset=dataset,
        eval_sets=sharding_lib.put_replicated(evaluation_sets(dataset, extra_sets), members_mesh),
        spe=spe,
        model=model,
        tx=tx,
        train_chunk=make_train_chunk(config, plan, model, tx, strategy=strategy),
        predictor=ensemble_lib.Predictor(model, config.eval.batch_size, strategy),
        log=workdir_lib.MetricsLog(workdir, writes=sharding_lib.is_primary()),
        board=tensorboard_log.Board(workdir, workdir_lib.config_to_dict(config)),
        mesh_shape=mesh_shape,
    )
    try:
        return _run_phases(run, parent_source, resuming, started)
    finally:
        run.board.close()


def _run_phases(run: _Run, parent_source: str | None, resuming: bool, started: float) -> dict:
    """The parent's phase (spawning conditions), the spawn, the members' phase and the summary."""
    config, workdir, dataset, plan = run.config, run.workdir, run.dataset, run.plan
    model, tx, spe = run.model, run.tx, run.spe
    checkpointer = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), config.train.max_checkpoints)
    latest = checkpointer.restore_latest(run.template(plan.num_members)) if resuming else None
    tick, resume_progress = 0, {}
    if latest is not None:
        state, tick, resume_progress = latest.state, latest.step, latest.progress
        run.log.retain(lambda r: r["phase"] == "parent" or r["step"] - (r["t"] or 0) <= tick)
        logging.info("Resuming from the checkpoint at tick %d.", tick)
        _say(f"resuming {workdir} from step {tick} of the members' phase")
    elif plan.spawning:
        state = _children(run, _parents(run, parent_source))
        faults.kill_point("spawn")  # Tests: SIGKILL right after the spawn.
    else:
        state = ensemble_lib.init_ensemble(model, tx, plan.member_streams(config.seed), dataset.input_shape)
        state = sharding_lib.put_members(state, run.phase_mesh(plan.num_members))
        run.log.retain(lambda r: False)

    groups = list(zip(plan.group_spawn_steps(), plan.group_lams()))  # (t, λ) of each group.
    starts, ends = plan.start_steps(), plan.end_steps()
    last = plan.ticks()
    # Group → the last step it was logged at (a group that has finished is not logged again).
    logged: dict[tuple, int] = {}
    for r in run.log.read():
        if r["phase"] == "members":
            key = (r["t"], r.get("lam"))
            logged[key] = max(logged.get(key, -1), r["step"])
    evals_at = _cadence(config.eval.every_epochs, spe, last)
    saves_at = _ticks_every(config.train.checkpoint_every, spe, last)
    snapshots_at = []
    if config.trajectory.every:
        snapshots_at = trajectory_lib.snapshot_steps(spawn_lib.parse_steps(config.trajectory.every, spe), last)
    final = {}

    def evaluate_groups(state):
        diverged = np.asarray(sharding_lib.host(state.diverged))
        return evaluate(run.predictor, state, dataset, run.eval_sets, config.ensemble.method, len(groups), diverged)

    def on_pause(state, tick, train):
        if tick in evals_at:
            evals = evaluate_groups(state)
            for g, (group, group_evals) in enumerate(zip(groups, evals)):
                step = int(min(starts[g * plan.k] + tick, ends[g * plan.k]))
                if step > logged.get(group, -1):
                    group_train = {m: v[g * plan.k : (g + 1) * plan.k] for m, v in (train or {}).items()}
                    run.record(_records("members", step, spe, group, group_train, group_evals))
                    logged[group] = step
                if tick == last:
                    final[g] = group_evals
            test = evals[0]["test"]
            logging.info("tick %d: first group's ensemble test error %.4f", tick, test["ensemble_error"])
        if tick in snapshots_at:
            _snapshot(workdir, tick, state, config.trajectory.keep_last)

    if snapshots_at and tick == 0:  # The trajectory starts at initialization (or at the spawn).
        _snapshot(workdir, 0, state, config.trajectory.keep_last)
    lr_scales = None
    if config.optimizer.member_lr_scale:
        lr_scales = np.tile(np.asarray(config.optimizer.member_lr_scale, np.float32), plan.num_groups)
    phase = _Phase(
        name="members",
        checkpointer=checkpointer,
        pauses=sorted(set(evals_at) | set(saves_at) | set(snapshots_at)),
        windows_at=set(evals_at),
        saves_at=set(saves_at),
        on_pause=on_pause,
        member_names=_member_names(plan),
        lr_scales=lr_scales,
    )
    state = _train(run, state, starts, ends, tick, phase, resume_progress)
    checkpointer.close()
    if not final:  # Resumed from the final checkpoint of a run killed before its summary.
        final = dict(enumerate(evaluate_groups(state)))

    diverged = np.asarray(sharding_lib.host(state.diverged))
    summary_groups = []
    records = run.log.read()
    for g, (t, lam) in enumerate(groups):
        evals = dict(final[g])
        test = evals.pop("test")
        test["mean_member_error"] = sum(test["member_error"]) / plan.k
        group_diverged = [int(d) if d >= 0 else None for d in diverged[g * plan.k : (g + 1) * plan.k]]
        summary_groups.append(
            {
                "t": t,
                "lam": lam,
                "t_label": plan.spawn_labels[g] if plan.spawning else None,
                "steps": int(ends[g * plan.k]),
                "test": test,
                "eval": evals,  # 'val' and the shifted / OOD sets, when configured.
                "at_best_val": _at_best_val(records, (t, lam)),
                # Per member: the step it diverged at (it is frozen since; the ensemble metrics leave it
                # out), or None.
                "diverged": group_diverged,
            }
        )
    summary = {
        "dataset": config.dataset,
        "model": config.model.name,
        "condition": plan.condition,
        "k": plan.k,
        "ensemble_method": config.ensemble.method,
        "steps": plan.total_steps,
        "epochs": config.train.num_epochs,
        "groups": summary_groups,
        "wall_time_s": time.time() - started,
        "backend": jax.default_backend(),
        "mesh": dict(zip(("member", "data"), mesh_shape_of(state)), processes=jax.process_count()),
    }
    if len(summary_groups) == 1:  # The common case, at the top level too.
        summary["test"], summary["eval"] = summary_groups[0]["test"], summary_groups[0]["eval"]
        summary["diverged"] = summary_groups[0]["diverged"]
    if sharding_lib.is_primary():
        workdir_lib.write_json_atomic(os.path.join(workdir, "summary.json"), summary)
    return summary


def _snapshot(workdir: str, tick: int, state: ensemble_lib.EnsembleState, keep_last: int) -> None:
    """A trajectory snapshot of the members' weights (gathered from every process, written by process 0)."""
    params, batch_stats = sharding_lib.host((state.params, state.batch_stats))
    if sharding_lib.is_primary():
        trajectory_lib.save(workdir, tick, params, batch_stats, keep_last)


def mesh_shape_of(state: ensemble_lib.EnsembleState) -> tuple[int, int]:
    """(M, D) of the mesh the members' state lives on."""
    shape = ensemble_lib.placement_mesh(state).shape
    return shape[sharding_lib.MEMBER], shape[sharding_lib.DATA]
