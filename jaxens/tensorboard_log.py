"""TensorBoard event files of a run, next to metrics.jsonl: DIR/tensorboard/<run>/.

Written with tensorboardX, a pure-Python event writer: CLU's `metric_writers` write TensorBoard files through
TensorFlow, which jaxens otherwise never needs (about 2 GB, and no wheel on some Python versions).
`tensorboard --logdir DIR/tensorboard` (or a sweep's root) shows them. metrics.jsonl stays the
machine-readable record (`jaxens.results`); every scalar here is one of its records, plus the step rate.

One TensorBoard run per group of members, so that groups overlay in one chart:

  parent          the parent's phase (spawning conditions)
  members         the members of a run without spawning or λ groups; the members' phase's step rate
  t=<t>           the children of spawn step t (a spawn sweep)
  lam=<λ>         the members trained with modular loss weight λ (Webb et al.; with t=<t>,lam=<λ> when both)
  seed=1,lr=0.05,t=80   a grid's group (`jaxens.grid.label`), and parent,seed=1,lr=0.05 its parent

Tags, at each group's own step (a child's step counts from its parent's initialization):

  <split>/ensemble/<metric>     split: train, test, val or an extra evaluation set; metric: error, nll,
                                brier, ece, mace, sym_kl, disagreement (OOD sets: entropy, confidence)
  <split>/member_<m>/<metric>   each member's, e.g. train/member_0/loss, test/member_3/error
  perf/steps_per_s, perf/examples_per_s   training throughput of the phase since the previous evaluation
  config                        the run's config as JSON text

A resumed run drops the records after its checkpoint from metrics.jsonl; each of its event files starts
with a SessionLog.START at the first step it writes, from which TensorBoard drops the interrupted run's
events at and after that step (its "purge" of orphaned data), so every step shows once.
"""

from __future__ import annotations

import json
import os
import time

import jax

from jaxens import grid as grid_lib

SUBDIR = "tensorboard"


def run_name(phase: str, t: int | None, lam: float | None, values: dict | None = None) -> str:
    """The TensorBoard run of a group of records (see the module docstring); `values`: a grid group's."""
    grid = grid_lib.label(values or {})
    if phase == "parent":
        return ",".join(["parent", grid]) if grid else "parent"
    parts = ([grid] if grid else []) + ([] if t is None else [f"t={t}"]) + ([] if lam is None else [f"lam={lam:g}"])
    return ",".join(parts) or "members"


def tag(split: str, scope: str, member: int | None, metric: str) -> str:
    """The scalar's tag of a metrics.jsonl record: '<split>/ensemble/<metric>' or '<split>/member_<m>/<metric>'."""
    return f"{split}/{'ensemble' if scope == 'ensemble' else f'member_{member}'}/{metric}"


class Board:
    """Writes a run's records as TensorBoard scalars, one event-file directory per TensorBoard run.

    Events go to the file synchronously (tensorboardX's `EventsWriter`, flushed after every `write`), so a
    killed run loses none that metrics.jsonl kept: `SummaryWriter` queues events for a background thread,
    which a SIGKILL would drop. Only process 0 writes (a multi-host run logs once).
    """

    def __init__(self, workdir: str, config_dict: dict):
        self.root = os.path.join(workdir, SUBDIR)
        self.config_json = json.dumps(config_dict, indent=2, sort_keys=True)
        self.enabled = jax.process_index() == 0
        self._writers: dict = {}
        self._tags: dict[str, str] = {}  # Tag → tensorboardX's cleaned form.

    def _writer(self, name: str, first_step: int):
        """The event file of TensorBoard run `name`, opened (with its purge step and the config) at need."""
        if name not in self._writers:
            from tensorboardX import summary
            from tensorboardX.event_file_writer import EventsWriter
            from tensorboardX.proto import event_pb2

            directory = os.path.join(self.root, name)
            os.makedirs(directory, exist_ok=True)
            # tensorboardX names the file by the second it opens it: a sequence number after that keeps a
            # resumed run (even one resumed within the same second, in the same process) from overwriting
            # the file of the run it resumes, and sorts its file after that one, as TensorBoard reads them.
            sequence = sum("tfevents" in f for f in os.listdir(directory))
            writer = EventsWriter(os.path.join(directory, "events"), filename_suffix=f".{sequence:04d}")
            start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
            writer.write_event(event_pb2.Event(wall_time=time.time(), step=first_step, session_log=start))
            text = summary.text("config", "```\n" + self.config_json + "\n```")
            writer.write_event(event_pb2.Event(wall_time=time.time(), step=first_step, summary=text))
            self._writers[name] = writer
        return self._writers[name]

    def _events(self, name: str, step: int, scalars: list[tuple[str, float]]) -> None:
        """Writes `scalars` ([(tag, value)]) of TensorBoard run `name` at `step` as ONE event: a population's
        hundreds of member scalars per evaluation cost one event each otherwise (4x the time)."""
        from tensorboardX import summary
        from tensorboardX.proto import event_pb2, summary_pb2

        values = []
        for tag_, value in scalars:
            if tag_ not in self._tags:  # tensorboardX's tag rules, applied once per tag.
                self._tags[tag_] = summary.scalar(tag_, 0.0).value[0].tag
            values.append(summary_pb2.Summary.Value(tag=self._tags[tag_], simple_value=float(value)))
        event = event_pb2.Event(wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=values))
        self._writer(name, step).write_event(event)

    def write(self, records: list[dict]) -> None:
        """Scalars of metrics.jsonl records ({phase, step, t, lam, split, scope, member, metric, value})."""
        if not self.enabled:
            return
        by_event: dict[tuple[str, int], list] = {}  # (run, step) → its scalars, in the records' order.
        for r in records:
            name = run_name(r["phase"], r["t"], r.get("lam"), r.get("grid"))
            scalar = (tag(r["split"], r["scope"], r["member"], r["metric"]), r["value"])
            by_event.setdefault((name, r["step"]), []).append(scalar)
        for (name, step), scalars in by_event.items():
            self._events(name, step, scalars)
        for name in {name for name, _ in by_event}:
            self._writers[name].flush()

    def scalars(self, name: str, step: int, values: dict[str, float]) -> None:
        """Other scalars (the step rate) of TensorBoard run `name` at `step`."""
        if not self.enabled:
            return
        self._events(name, step, list(values.items()))
        self._writers[name].flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
