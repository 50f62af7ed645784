"""Early stopping (Webb et al.): each group's members at the group's best validation evaluation, kept.

Webb et al. report "the test error at the epoch where validation error was minimized" and analyse the
modules of that model. `summary.at_best_val` gives the metrics after the fact; with config.eval.keep_best
`BestMembers` also keeps the parameters: after every evaluation, each group (a spawn time's children, a λ's
members) whose ensemble validation error is lower than at any evaluation before (strictly: the first best
is kept) has its k members copied into a host copy of the state, which is saved to DIR/best/ (one Orbax
checkpoint, its progress naming each group's best step and validation error). Groups reach their best at
different ticks, so the saved state mixes ticks; `jaxens.run.restore(workdir, best=True)` returns it.

Resuming: the callback runs before the members' checkpoint of the same tick is saved, so DIR/best/ always
covers every evaluation up to the latest members' checkpoint; evaluations repeated after a resume give the
same values and change nothing.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from jaxens import checkpoint as checkpoint_lib
from jaxens import sharding as sharding_lib
from jaxens.trainer.context import RunContext
from jaxens.trainer.loop import Callback, Pause


class BestMembers(Callback):
    """At the evaluation ticks, keeps every group's members at its lowest ensemble validation error.

    Args:
      ctx: the run's context (spec, workdir).
      evaluation: the `MemberEvaluation` that ran just before at the same ticks (its `latest` results).
      ticks: the evaluation ticks.
    """

    def __init__(self, ctx: RunContext, evaluation, ticks):
        self.ticks = frozenset(ticks)
        self._evaluation, self._spec = evaluation, ctx.spec
        plan = ctx.spec.plan
        self._starts, self._ends = plan.start_steps()[:: plan.k], plan.end_steps()[:: plan.k]  # Per group.
        self.checkpointer = checkpoint_lib.Checkpointer(
            os.path.join(ctx.workdir, "best"), max_to_keep=1, owner=ctx.spec.run_id, config=ctx.spec.config
        )
        restored = self.checkpointer.restore_latest(ctx.template(plan.num_members))
        self.best: dict[str, dict] = {} if restored is None else restored.progress.get("best", {})
        self._state = None if restored is None else jax.device_get(restored.state)  # Host arrays [K, ...].

    def __call__(self, pause: Pause) -> None:
        k = self._spec.plan.k
        improved = []
        for g, evals in enumerate(self._evaluation.latest):
            error = float(evals["val"]["ensemble_error"])
            if str(g) not in self.best or error < self.best[str(g)]["val_error"]:
                step = int(min(self._starts[g] + pause.tick, self._ends[g]))
                self.best[str(g)] = {"step": step, "tick": pause.tick, "val_error": error}
                improved.append(g)
        if not improved:
            return
        now = jax.device_get(sharding_lib.host(pause.state))
        if self._state is None:
            self._state = now
        else:
            rows = np.concatenate([np.arange(g * k, (g + 1) * k) for g in improved])  # The improved members.

            def take(kept, new):
                kept = np.array(kept)  # A writable copy.
                kept[rows] = np.asarray(new)[rows]
                return kept

            self._state = jax.tree.map(take, self._state, now)
        if sharding_lib.is_primary():
            self.checkpointer.save(pause.tick, self._state, {"best": self.best})

    def close(self) -> None:
        self.checkpointer.close()
