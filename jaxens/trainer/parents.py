"""The parents of a spawning condition: found, restored or trained up to every spawn time, then spawned.

Under coupled_to_t and coupled_to_t_reset a one-member parent trains first, up to the largest spawn time
t, saving a checkpoint at every t in DIR/parent/ (kept: later runs may spawn from them with
config.coupling.parent_dir). A grid (`jaxens.grid`) has one parent per seed and optimizer hyperparameters:
they train together, stacked (P members), and each spawns its own groups' children. Training starts from the latest intact checkpoint (this run's, or the
parent_dir run's) at or before the first spawn step that no checkpoint holds, or from initialization.
`children` then spawns the k children of every spawning group (`jaxens.spawn.spawn`).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxens import checkpoint as checkpoint_lib
from jaxens import coupling as coupling_lib
from jaxens import ensemble as ensemble_lib
from jaxens import grid as grid_lib
from jaxens import members as members_lib
from jaxens import sharding as sharding_lib
from jaxens import spawn as spawn_lib
from jaxens import steps as steps_lib
from jaxens.config import ConfigError
from jaxens.trainer import callbacks as callbacks_lib
from jaxens.trainer import evaluation, loop, summary
from jaxens.trainer.context import RunContext
from jaxens.trainer.spec import RunSpec


def parent_dir_source(spec: RunSpec) -> str | None:
    """Checks `config.coupling.parent_dir` names a run with the same parent; returns its checkpoint dir.

    Raises:
      ConfigError: the directory holds no run, a run with a different parent, or no parent checkpoints.
    """
    parent_dir = spec.parent_dir
    if not parent_dir:
        return None
    field = f"config.coupling.parent_dir={parent_dir!r}"
    path = os.path.join(parent_dir, "config.json")
    if not os.path.exists(path):
        raise ConfigError(f"{field}: no run there (no config.json)")
    with open(path) as f:
        theirs = coupling_lib.parent_fields(json.load(f))
    ours = coupling_lib.parent_fields(spec.config)
    differ = [f"config.{k}: {theirs[k]!r} there, {ours[k]!r} here" for k in ours if theirs[k] != ours[k]]
    if differ:
        raise ConfigError(f"{field}: that run trained a different parent ({'; '.join(differ)})")
    directory = os.path.join(parent_dir, "parent")
    if not os.path.isdir(directory):
        raise ConfigError(f"{field}: that run saved no parent checkpoints ({directory} is missing)")
    return directory


def _restore_parents(sources: list, spawn_steps: tuple[int, ...], template):
    """The parent checkpoint to resume from, and those of the spawn steps before it, all restored intact.

    Sources are searched in order (this run's own first). Resumes from the latest checkpoint at or before
    the first spawn step that no source holds. A checkpoint that fails to restore is passed over (the
    choice is made again without it) and set aside (`Checkpointer.set_aside`; a read-only source's is only
    skipped). When none restores, the parent trains from initialization (start None), which rebuilds them.

    Returns:
      (start step or None for none, {step: checkpoint_lib.Restored} for the start and the spawn steps ≤ it,
      {(source index, step): why it failed} for the checkpoints set aside).

    Raises:
      ForeignCheckpoint: a checkpoint belongs to another parent.
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
        needed = sorted({start} | {t for t in spawn_steps if t <= start})
        restored = {}
        try:
            for s in needed:
                restored[s] = sources[available[s]].restore_progress(s, template)
            break
        except checkpoint_lib.CorruptCheckpoint as e:
            failing = next(s for s in needed if s not in restored)
            bad[(available[failing], failing)] = str(e)
    for (i, step), reason in bad.items():
        sources[i].set_aside(step, reason)
    return start, restored if start is not None else {}, bad


class _ParentRecord(loop.Callback):
    """The parents' evaluations (at the evaluation ticks and every spawn time, once per step), and a copy
    of their state at every spawn time."""

    def __init__(self, ctx: RunContext, ticks, parents: dict, logged: set[int]):
        self.ticks = frozenset(ticks)
        self._ctx, self._parents, self._logged = ctx, parents, logged

    def __call__(self, pause: loop.Pause) -> None:
        if pause.tick in self._ctx.spec.plan.spawn_steps:
            self._parents[pause.tick] = jax.tree.map(jnp.copy, pause.state)  # Training donates its state.
        record(self._ctx, pause.tick, pause.state, pause.train, self._logged)


def record(ctx: RunContext, step: int, parent, train: dict | None, logged: set[int]) -> None:
    """Evaluates the parents at `step` and records them, unless that step is recorded already."""
    if step in logged:
        return
    spec, parents_ = ctx.spec, ctx.spec.plan.parents
    evals = evaluation.evaluate(ctx.predictor, parent, ctx.dataset, ctx.eval_sets, spec.method, len(parents_))
    rows = []
    for p, (group, evals_p) in enumerate(zip(parents_, evals)):
        key = (None, None, dict(group.parent_values()) or None)
        train_p = {m: v[p : p + 1] for m, v in (train or {}).items()}
        rows += summary.records("parent", step, spec.steps_per_epoch, key, train_p, evals_p)
    ctx.record(rows)
    logged.add(step)


def parents(ctx: RunContext, parent_source: str | None) -> dict[int, ensemble_lib.EnsembleState]:
    """The parents' state (P members, `Plan.parents`) at every spawn step {t: state}, trained, restored or
    both; every spawn step is saved in this run's DIR/parent/ (see the module docstring)."""
    spec, plan = ctx.spec, ctx.spec.plan
    directory = os.path.join(ctx.workdir, "parent")
    own = checkpoint_lib.Checkpointer(
        directory, spec.max_checkpoints, keep_steps=plan.spawn_steps, owner=spec.parent_id, config=spec.config
    )
    sources = [own]
    if parent_source is not None:
        sources.append(checkpoint_lib.Checkpointer(parent_source, read_only=True, owner=spec.parent_id))
    num_parents = len(plan.parents)
    start, restored, bad = _restore_parents(sources, plan.spawn_steps, ctx.template(num_parents))
    progress = {}
    if start is None:
        if bad:
            ctx.say(f"parent: none of its {len(bad)} checkpoint(s) restores; training it from initialization")
        state = spec.fresh_state(plan.parent_streams(), plan.member_hyper(plan.parents, k=1))
        state = sharding_lib.put_members(state, ctx.mesh(num_parents))
        start = 0
    else:
        state, progress = restored[start].state, restored[start].progress
        ctx.say(f"parent: restored the checkpoint at step {start}")
    ctx.log.retain(lambda r: r["phase"] == "parent" and r["step"] <= start)  # Children restart from spawn.
    logged = {r["step"] for r in ctx.log.read()}
    found = {}
    for t in plan.spawn_steps:
        if t <= start:  # Restored, or (t = 0) the initialization.
            parent, saved = (restored[t].state, restored[t].progress) if t in restored else (state, {})
            found[t] = jax.tree.map(jnp.copy, parent)  # Training donates `state`.
            if t not in own.all_steps():  # The initialization, or from parent_dir: kept with this run.
                own.save(t, parent, saved)
            record(ctx, t, found[t], {}, logged)
    if plan.spawn_steps[-1] > start:
        _train(ctx, state, start, progress, own, found, logged)
    kept = set(own.all_steps())
    for source in sources:
        source.close()
    if not set(plan.spawn_steps) <= kept:  # parent/ holds every spawn time (docs/coupling.md's promise).
        missing = sorted(set(plan.spawn_steps) - kept)
        raise checkpoint_lib.CheckpointError(f"parent checkpoints {missing} are missing from {directory}")
    return found


def _train(ctx: RunContext, state, start: int, progress: dict, own, found: dict, logged: set[int]) -> None:
    """Trains the parent from `start` to the last spawn step, adding its state at each spawn step to `found`."""
    spec, plan = ctx.spec, ctx.spec.plan
    last = plan.spawn_steps[-1]
    evals_at = steps_lib.every(spec.eval_every, last)
    later_spawns = {t for t in plan.spawn_steps if t > start}
    p = len(plan.parents)
    phase = loop.Phase("parent", np.zeros(p, np.int64), np.full(p, last), spec.steps_per_epoch, spec.steps_per_call)
    names = [f"the parent {grid_lib.label(g.parent_values())}".rstrip() for g in plan.parents]
    callbacks = [
        callbacks_lib.TrainWindow(set(evals_at) | later_spawns, ctx.board, "parent", p * spec.batch_size),
        _ParentRecord(ctx, set(evals_at) | set(plan.spawn_steps), found, logged),
        callbacks_lib.DivergenceCheck(state, "parent", names, spec.on_divergence == "stop", own.directory),
        callbacks_lib.Checkpoint(own, set(steps_lib.every(spec.checkpoint_every, last)) | later_spawns),
    ]
    loop.train(ctx.chunk, ctx.dataset, state, phase, callbacks, start, callbacks_lib.window_sums(progress))


def children(ctx: RunContext, parents: dict[int, ensemble_lib.EnsembleState]) -> ensemble_lib.EnsembleState:
    """The k children of every spawning group, stacked in group order, re-initialized as its group says, on
    the host (`jaxens.run` places them with the other groups' members)."""
    spec, plan = ctx.spec, ctx.spec.plan
    # Spawned on the host from the parents' values: the same on every process.
    parents = {t: sharding_lib.host(parent) for t, parent in parents.items()}
    one = jax.tree.map(lambda x: x[0], next(iter(parents.values())).params)
    reinits: dict[tuple, spawn_lib.Reinit | None] = {}
    groups = []
    for g in plan.groups:
        if not g.spawning:
            continue
        if (g.reinit_fraction, g.reinit_side) not in reinits:
            reinit = spawn_lib.reinit_for(
                spec.model, spec.input_shape, one, g.reinit_fraction, g.reinit_side, spec.reinit_unit
            )
            if reinit is not None:  # The share actually re-drawn: whole layers cover at least the fraction asked.
                ctx.say(f"spawn: {reinit.describe()}")
            reinits[g.reinit_fraction, g.reinit_side] = reinit
        assert g.t is not None  # A spawning group.
        p = plan.parent_index(g)
        parent = jax.tree.map(lambda x, p=p: x[p : p + 1], parents[g.t])
        key = spawn_lib.spawn_key(g.seed, g.t)
        streams = spawn_lib.child_streams(key, plan.k, g.shared_streams)
        reinit = reinits[g.reinit_fraction, g.reinit_side]
        groups.append(
            spawn_lib.spawn(parent, plan.k, key, reset_optimizer=g.reset, tx=spec.tx, reinit=reinit, streams=streams)
        )
    return members_lib.concatenate(groups)
