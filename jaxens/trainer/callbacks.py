"""What the phase loop does when it pauses: each a `jaxens.trainer.loop.Callback`, run in the order given.

The members' phase runs, in order: `TrainWindow` (the window's mean training metrics, the step rate),
`MemberEvaluation` (evaluate every group, record it), `Snapshot` (trajectory), `DivergenceCheck` (report
members that diverged; stop when asked to) and `Checkpoint` (save, also on a stop request). The parent's
phase runs its own recording (`jaxens.trainer.parents`) in place of the last two of the first three.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxens import checkpoint as checkpoint_lib
from jaxens import sharding as sharding_lib
from jaxens import tensorboard_log
from jaxens import trajectory as trajectory_lib
from jaxens.ensemble import EnsembleState
from jaxens.metrics import forgetting as forgetting_lib
from jaxens.trainer import evaluation, summary
from jaxens.trainer.context import RunContext
from jaxens.trainer.loop import Callback, Pause


class Diverged(Exception):
    """Training stopped on divergence (config.train.on_divergence='stop', or no member left training)."""

    exit_code = 3
    status = "diverged"


class TrainWindow(Callback):
    """At `ticks`, ends the training-metric window: its means per member (`Pause.train`) and the phase's
    step rate on TensorBoard."""

    def __init__(self, ticks, board: tensorboard_log.Board, phase: str, examples_per_step: int):
        self.ticks = frozenset(ticks)
        self._board, self._phase, self._examples_per_step = board, phase, examples_per_step

    def __call__(self, pause: Pause) -> None:
        window = sharding_lib.host(pause.sums)
        taken = np.maximum(window.pop("steps"), 1)  # Steps each member took (not frozen, not done).
        pause.train = {m: (v / taken).tolist() for m, v in window.items()}
        pause.sums = None
        rates = {
            "perf/steps_per_s": pause.steps_per_s,
            "perf/examples_per_s": pause.steps_per_s * self._examples_per_step,
        }
        self._board.scalars(self._phase, pause.tick, rates)


class Checkpoint(Callback):
    """Saves the state at `ticks` and on a stop request, with the current window's training sums as the
    checkpoint's progress (a resumed run passes them back to `loop.train`)."""

    def __init__(self, checkpointer: checkpoint_lib.Checkpointer, ticks):
        self.ticks = frozenset(ticks)
        self.checkpointer = checkpointer

    def __call__(self, pause: Pause) -> None:
        self.checkpointer.save(pause.tick, pause.state, window_progress(pause.sums))
        pause.saved = True

    def on_stop(self, pause: Pause) -> None:
        if not pause.saved:
            self.checkpointer.save(pause.tick, pause.state, window_progress(pause.sums))


def window_progress(sums: dict | None) -> dict:
    """The training-metric sums of the current window, as checkpoint metadata (float32 values are exact as
    JSON numbers)."""
    if sums is None:
        return {}
    return {"train_sums": {m: np.asarray(v).tolist() for m, v in sharding_lib.host(sums).items()}}


def window_sums(progress: dict) -> dict | None:
    """The sums `window_progress` recorded, back on the device (None when the window had just ended)."""
    sums = progress.get("train_sums")
    return None if not sums else {m: jnp.asarray(np.asarray(v, np.float32)) for m, v in sums.items()}


class DivergenceCheck(Callback):
    """At every pause, reports members that diverged since the last check; raises `Diverged` under
    on_divergence='stop' or when no member is left training."""

    def __init__(self, state: EnsembleState, phase: str, member_names: list[str], stop: bool, kept_in: str):
        self._known = set(np.flatnonzero(np.asarray(sharding_lib.host(state.diverged)) >= 0).tolist())
        self._phase, self._names, self._stop, self._kept_in = phase, member_names, stop, kept_in

    def __call__(self, pause: Pause) -> None:
        diverged = np.asarray(sharding_lib.host(pause.state.diverged))
        new = [int(m) for m in np.flatnonzero(diverged >= 0) if m not in self._known]
        for m in new:
            logging.warning(
                f"{self._names[m]} diverged at step {diverged[m]}: its loss or gradients were not finite; "
                f"it stays frozen at step {diverged[m]}"
            )
            self._known.add(m)
        if new and self._stop:
            raise Diverged(
                f"{len(new)} member(s) of the {self._phase} diverged (config.train.on_divergence='stop'); the last "
                f"checkpoint before it is kept in {self._kept_in}"
            )
        if len(self._known) == pause.state.k:
            raise Diverged(f"every member of the {self._phase} diverged: nothing is left to train")


class Snapshot(Callback):
    """A trajectory snapshot of the members' weights at `ticks` (gathered from every process, written by
    process 0; `jaxens.trajectory`)."""

    def __init__(self, workdir: str, ticks, keep_last: int):
        self.ticks = frozenset(ticks)
        self._workdir, self._keep_last = workdir, keep_last

    def __call__(self, pause: Pause) -> None:
        save_snapshot(self._workdir, pause.tick, pause.state, self._keep_last)


def save_snapshot(workdir: str, tick: int, state: EnsembleState, keep_last: int) -> None:
    """Writes the members' params and BatchNorm statistics at `tick` to workdir/trajectory/."""
    params, batch_stats = sharding_lib.host((state.params, state.batch_stats))
    if sharding_lib.is_primary():
        trajectory_lib.save(workdir, tick, params, batch_stats, keep_last)


class MemberEvaluation(Callback):
    """At `ticks`, evaluates every group of members on every evaluation set and records it (once per group
    and step: a group that has finished is not recorded again); keeps the last tick's results in `final`."""

    def __init__(self, ctx: RunContext, ticks, last: int):
        self.ticks = frozenset(ticks)
        self.final: dict[int, dict] = {}  # Group → its evaluation at the last tick.
        self.latest: list[dict] = []  # Every group's evaluation at the latest tick.
        self._ctx, self._last = ctx, last
        plan = ctx.spec.plan
        self._groups = plan.group_keys()  # (t, λ, grid values) of each group.
        self._starts, self._ends = plan.start_steps()[:: plan.k], plan.end_steps()[:: plan.k]  # Per group.
        self._logged: dict[tuple, int] = {}  # Group (`summary.record_key`) → the last step it was recorded at.
        for r in ctx.log.read():
            if r["phase"] == "members":
                key = summary.record_key(r)
                self._logged[key] = max(self._logged.get(key, -1), r["step"])

    def __call__(self, pause: Pause) -> None:
        evals = self.latest = evaluate_groups(self._ctx, pause.state)
        k = self._ctx.spec.plan.k
        window = dict(pause.train or {})
        if pause.state.forgetting is not None:  # Cumulative train-side forgetting events of each member.
            window["forgetting_events"] = np.asarray(sharding_lib.host(_forgetting_total(pause.state.forgetting)))
        rows: list[dict] = []  # Recorded together: one write to metrics.jsonl and TensorBoard per evaluation.
        for g, (group, group_evals) in enumerate(zip(self._groups, evals)):
            step = int(min(self._starts[g] + pause.tick, self._ends[g]))
            key = summary.group_key(group)
            if step > self._logged.get(key, -1):
                train = {m: v[g * k : (g + 1) * k] for m, v in window.items()}
                rows += summary.records("members", step, self._ctx.spec.steps_per_epoch, group, train, group_evals)
                self._logged[key] = step
            if pause.tick == self._last:
                self.final[g] = group_evals
        if rows:
            self._ctx.record(rows)
        logging.info("tick %d: first group's ensemble test error %.4f", pause.tick, evals[0]["test"]["ensemble_error"])


def evaluate_groups(ctx: RunContext, state: EnsembleState) -> list[dict[str, dict]]:
    """Every group's metrics on every evaluation set (a group's ensemble leaves its diverged members out)."""
    diverged = np.asarray(sharding_lib.host(state.diverged))
    spec = ctx.spec
    return evaluation.evaluate(
        ctx.predictor, state, ctx.dataset, ctx.eval_sets, spec.method, spec.plan.num_groups, diverged
    )


_forgetting_total = jax.jit(forgetting_lib.total)
