"""One run: resolve the config → load data → [parent phase → spawn] → members' phase → summarize.

`train_and_evaluate(config, workdir)` is what `python -m jaxens.train` calls; tests call it directly, and
`restore(workdir)` gives a run's members back for analyses. The pieces live in `jaxens.trainer`:

    spec       the config validated and resolved once (K, groups, steps per epoch, model, optimizer, mesh, ...)
    context    what the phases share (data on the devices, the compiled step and predictor, the logs)
    parents    a spawning condition's parent: restored or trained up to every spawn time, then spawned
    loop       the phase loop (lockstep ticks, chunks of steps) with callbacks at its pauses
    callbacks  training-metric windows, evaluation, snapshots, divergence checks, checkpoints
    evaluation metrics of every group on every evaluation set
    summary    metrics.jsonl records, summary.json and the printed report
    restore    the members of a finished run

Under `no_coupling` and `coupled_order` the K members train from initialization. Under the spawning
conditions (`jaxens.coupling`) a one-member parent trains first, up to the largest spawn time t, saving a
checkpoint at every t; then the children of all spawn times are spawned and train together as one
stacked state. Both phases run the same loop, in lockstep *ticks*: at tick τ member m is at step
min(start_m + τ, end_m), and a member at its end step stops updating.

Reliability (the contract the tests check):
- Every random draw is a function of (member stream, step), so a run resumed from any checkpoint ends
  bitwise equal (on CPU) to an uninterrupted one; the checkpoints also carry the running training-metric
  sums, so even the metrics log agrees.
- Rerunning the command resumes from the newest checkpoint that restores intact (`jaxens.checkpoint`);
  a finished run is left untouched; a workdir of another run is refused (unless --overwrite).
- SIGTERM / SIGINT save a checkpoint after the current chunk of steps and raise `preemption.Preempted`.
- A member whose step turns non-finite is frozen (`jaxens.train_step.member_update`), reported when the
  host next pauses, and marked in the summary; its group's ensemble metrics then cover the other members.
  `config.train.on_divergence='stop'` raises `Diverged` instead, as does a run with no member left.
- DIR/status.json says whether the run is running, finished, preempted, diverged or failed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from jaxens import checkpoint as checkpoint_lib
from jaxens import data as data_lib
from jaxens import ensemble as ensemble_lib
from jaxens import faults, preemption
from jaxens import grid as grid_lib
from jaxens import rng as rng_lib
from jaxens import sharding as sharding_lib
from jaxens import steps as steps_lib
from jaxens import workdir as workdir_lib
from jaxens.config import ConfigError
from jaxens.trainer import callbacks as callbacks_lib
from jaxens.trainer import early_stopping, loop, memory, parents, preflight, validation
from jaxens.trainer import spec as spec_lib
from jaxens.trainer import summary as summary_lib
from jaxens.trainer.callbacks import Diverged
from jaxens.trainer.context import RunContext, say
from jaxens.trainer.restore import Restored, restore

__all__ = ["Diverged", "Restored", "restore", "train_and_evaluate"]


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, overwrite: bool = False, ignore_memory_estimate: bool = False
) -> dict:
    """Trains the configured members (and their parent, under a spawning condition); writes results to `workdir`.

    Rerunning on the same workdir with the same config resumes from the latest intact checkpoint (or, when
    the run has finished, returns its summary without writing anything).

    Args:
      overwrite: replace whatever run `workdir` holds (`jaxens.workdir.claim`), once the config is valid.
      ignore_memory_estimate: start even when the run's estimated memory exceeds what the devices (or, on
        CPU, the host) have (`jaxens.trainer.memory`).

    Returns:
      The summary (also written to `workdir/summary.json`): per group of members (the children of one
      spawn time; a single group without parent) its test and evaluation-set metrics, and which members
      diverged.

    Raises:
      ConfigError: before any compute or any write, for an invalid config, a workdir this user cannot use,
        one holding a different run (without `overwrite`) or one another process is training in, or a run
        estimated not to fit in memory.
      DatasetError: the data cannot be read, or does not have the dataset's registered sizes.
      preemption.Preempted: SIGTERM or SIGINT arrived; a checkpoint was saved.
      Diverged: see config.train.on_divergence.
    """
    validation.validate(config)
    parts = grid_lib.split(config, config.grid.members_per_run)
    if parts:
        raise ConfigError(
            f"config.grid.members_per_run={config.grid.members_per_run}: this population runs as {len(parts)} parts, "
            "each a run of its own: train it with jaxens.sweep.train_population (as python -m jaxens.train does)"
        )
    if config.mesh.distributed:  # Before anything asks JAX for its devices.
        sharding_lib.initialize_distributed()
    spec = spec_lib.resolve(config)  # The ConfigDict is not read below this line.
    parent_source = parents.parent_dir_source(spec)
    # Refuses another run's directory, and one holding a run's files without its config.json.
    primary = sharding_lib.is_primary()  # Only process 0 writes; every process trains its devices' share.
    finished = preflight.inspect_workdir(spec, workdir, overwrite, writes=primary)
    if finished is not None:  # Nothing to do, and nothing is written (but a status the summary corrects).
        logging.info("%s already holds a finished run; nothing to do.", workdir)
        if primary:
            preflight.mark_finished(workdir, finished)
        say(summary_lib.report(finished))
        return finished
    if primary:
        workdir_lib.check_writable(workdir)
    memory.check(spec, ignore=ignore_memory_estimate)
    dataset = data_lib.load(spec.source)
    spec_lib.check_loaded(spec, dataset)
    extra_sets = data_lib.load_eval_sets(spec.source)
    if primary:
        preflight.make_directory(workdir)
    with _workdir_lock(workdir, primary), preemption.stop_on_signals():
        resuming = preflight.claim(workdir, spec.config, overwrite) if primary else True
        _sync("jaxens: workdir claimed")  # The others read the workdir once process 0 has claimed it.
        status = functools.partial(workdir_lib.write_status, workdir) if primary else (lambda *args: None)
        try:
            summary = _train_and_evaluate(RunContext.build(spec, workdir, dataset, extra_sets), parent_source, resuming)
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
    say(summary_lib.report(summary))
    return summary


def _workdir_lock(workdir: str, primary: bool):
    """The workdir's lock, held by the writing process (a no-op context for the others)."""
    return workdir_lib.Lock(workdir) if primary else contextlib.nullcontext()


def _sync(name: str) -> None:
    """A barrier across the processes of a multi-host run (nothing on one host)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _train_and_evaluate(ctx: RunContext, parent_source: str | None, resuming: bool) -> dict:
    """The members' starting state (resumed, spawned or initialized), their phase, and the summary."""
    started = time.time()
    try:
        directory = os.path.join(ctx.workdir, "checkpoints")
        checkpointer = checkpoint_lib.Checkpointer(
            directory, ctx.spec.max_checkpoints, owner=ctx.spec.run_id, config=ctx.spec.config
        )
        state, tick, progress = _starting_state(ctx, checkpointer, parent_source, resuming)
        state, final = _members_phase(ctx, checkpointer, state, tick, progress)
        checkpointer.close()
        diverged = np.asarray(sharding_lib.host(state.diverged))
        mesh = dict(zip(("member", "data"), mesh_shape_of(state)), processes=jax.process_count())
        times = {"wall_time_s": time.time() - started, "train_time_s": ctx.chunk.seconds}
        extra = {**times, "backend": jax.default_backend(), "mesh": mesh}
        trackers = None if state.forgetting is None else sharding_lib.host(state.forgetting)
        summary = summary_lib.build(ctx.spec, final, diverged, ctx.log.read(), trackers, **extra)
        if sharding_lib.is_primary():
            workdir_lib.write_json_atomic(os.path.join(ctx.workdir, "summary.json"), summary)
        return summary
    finally:
        ctx.board.close()


def _starting_state(ctx: RunContext, checkpointer, parent_source: str | None, resuming: bool):
    """(state, tick, progress) the members' phase starts from: its latest intact checkpoint, else the
    children of the parent (spawning conditions), else K fresh members."""
    spec, plan = ctx.spec, ctx.spec.plan
    latest = checkpointer.restore_latest(ctx.template(plan.num_members)) if resuming else None
    if latest is not None:
        tick = latest.step
        ctx.log.retain(lambda r: r["phase"] == "parent" or r["step"] - (r["t"] or 0) <= tick)
        logging.info("Resuming from the checkpoint at tick %d.", tick)
        ctx.say(f"resuming {ctx.workdir} from step {tick} of the members' phase")
        return latest.state, tick, latest.progress
    if plan.spawning:
        children = parents.children(ctx, parents.parents(ctx, parent_source))
        fresh = tuple(g for g in plan.groups if not g.spawning)  # A grid's groups without a parent.
        if fresh:
            ctx.log.retain(lambda r: r["phase"] == "parent")
            state = _in_group_order(plan, children, sharding_lib.host(spec.groups_state(fresh)))
        else:
            state = children
        faults.kill_point("spawn")  # Tests: SIGKILL right after the spawn.
        return sharding_lib.put_members(state, ctx.mesh(plan.num_members)), 0, {}
    state = spec.groups_state()
    ctx.log.retain(lambda r: False)
    return sharding_lib.put_members(state, ctx.mesh(plan.num_members)), 0, {}


def _in_group_order(plan, children, fresh):
    """The members of every group in order, from the spawning groups' `children` and the others' `fresh`."""
    rows, taken = [], {True: 0, False: 0}
    for g in plan.groups:
        start = taken[g.spawning]
        rows.append((g.spawning, np.arange(start, start + plan.k)))
        taken[g.spawning] += plan.k
    pick = lambda c, f: np.concatenate([(c if s else f)[r] for s, r in rows])  # noqa: E731
    return jax.tree.map(lambda c, f: pick(np.asarray(c), np.asarray(f)), children, fresh)


def _members_phase(ctx: RunContext, checkpointer, state, tick: int, progress: dict):
    """Trains the members from `tick` to the end; returns (state, {group: its final evaluation})."""
    spec, plan = ctx.spec, ctx.spec.plan
    last = plan.ticks()
    evals_at = steps_lib.every(spec.eval_every, last)
    snapshots_at = steps_lib.every(spec.snapshot_every, last)
    if snapshots_at and tick == 0:  # The trajectory starts at initialization (or at the spawn).
        callbacks_lib.save_snapshot(ctx.workdir, 0, state, spec.keep_snapshots)
    evaluation = callbacks_lib.MemberEvaluation(ctx, evals_at, last)
    best = early_stopping.BestMembers(ctx, evaluation, evals_at) if spec.keep_best else None
    stop = spec.on_divergence == "stop"
    callbacks = [
        callbacks_lib.TrainWindow(evals_at, ctx.board, "members", plan.num_members * spec.batch_size),
        evaluation,
        *([best] if best else []),  # Before the checkpoint of its tick (see jaxens.trainer.early_stopping).
        callbacks_lib.Snapshot(ctx.workdir, snapshots_at, spec.keep_snapshots),
        callbacks_lib.DivergenceCheck(state, "members", plan.member_names(), stop, checkpointer.directory),
        callbacks_lib.Checkpoint(checkpointer, steps_lib.every(spec.checkpoint_every, last)),
    ]
    spawned = None
    if plan.spawning:  # Children spawned mid-epoch draw their parent's remaining examples first.
        parent_keys = np.concatenate([np.asarray(rng_lib.member_streams(g.seed, 1).order) for g in plan.groups])
        spawned = (spec.batch_size, np.repeat(parent_keys, plan.k, axis=0))  # [K, 2]
    phase = loop.Phase(
        "members", plan.start_steps(), plan.end_steps(), spec.steps_per_epoch, spec.steps_per_call,
        spec.member_lr_scales(), spawned,
    )  # fmt: skip
    try:
        state = loop.train(ctx.chunk, ctx.dataset, state, phase, callbacks, tick, callbacks_lib.window_sums(progress))
    finally:
        if best:
            best.close()
    final = evaluation.final or dict(enumerate(callbacks_lib.evaluate_groups(ctx, state)))  # Resumed at the end.
    return state, final


def mesh_shape_of(state: ensemble_lib.EnsembleState) -> tuple[int, int]:
    """(M, D) of the mesh the members' state lives on."""
    shape = ensemble_lib.placement_mesh(state).shape
    return shape[sharding_lib.MEMBER], shape[sharding_lib.DATA]
