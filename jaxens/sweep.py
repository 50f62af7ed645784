"""Resumable sweeps: many runs, each in its own workdir under one root, each run's status recorded.

    outcomes = sweep.run_all({"lr0.1": config_a, "lr0.3": config_b}, root="runs/lr_sweep")

- Every config is validated, and every existing workdir checked to hold the same config, before the first
  run starts: a typo in the tenth config costs seconds, not nine runs.
- A finished run is skipped (its files are not touched); an unfinished one resumes from its latest
  checkpoint; a failed one is tried again.
- A run that fails (any exception, e.g. a dataset that is missing, or divergence under
  config.train.on_divergence='stop') is recorded and the sweep goes on with the next run.
- SIGTERM or SIGINT stops the sweep: the current run saves a checkpoint and `Preempted` propagates.
  Rerunning the sweep resumes there.
- A run another process is running (another sweep over the same root) is left to it: 'busy'.
- ROOT/sweep.json holds every run's status, rewritten atomically after each run; each run's own
  DIR/status.json says the same (`jaxens.workdir.read_status`), and where the two could disagree (a run
  another sweep finished meanwhile) the run's own files win: a run with its summary is 'finished'.
- A run whose status.json cannot be read is 'unknown' (the message names the file) and is run again: it
  resumes from its checkpoints, or starts.

`train_population(config, workdir)` is how `python -m jaxens.train` trains: one run, or a population larger than
config.grid.members_per_run as a sweep of its parts (`jaxens.grid.split`) under the workdir.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Callable, Mapping

import ml_collections
from absl import logging

from jaxens import config as config_lib
from jaxens import files, preemption, progress
from jaxens import workdir as workdir_lib
from jaxens.trainer import validation

_NAME = re.compile(r"^[A-Za-z0-9_.=+-]+$")


@dataclasses.dataclass
class Outcome:
    """One run of a sweep: its status ('finished', 'failed', 'diverged', 'preempted' or 'busy': another
    process was running it), its summary when finished, the error message otherwise, and whether this call
    ran it (False: it had finished before, or was busy)."""

    name: str
    workdir: str
    status: str
    summary: dict | None = None
    message: str = ""
    ran: bool = True


def validate_all(runs: Mapping[str, ml_collections.ConfigDict], root: str) -> None:
    """Checks every run's name, config and workdir before anything runs.

    Raises:
      ConfigError: listing every problem, each prefixed with its run's name.
    """
    problems = []
    for name, config in runs.items():
        if not _NAME.match(name):
            problems.append(f"{name!r}: a run name may hold letters, digits and _ . = + - only (it names a directory)")
            continue
        try:
            validation.validate(config)
            workdir_lib.check(os.path.join(root, name), workdir_lib.config_to_dict(config))
        except workdir_lib.UnreadableFile:
            pass  # A damaged config.json: the run itself recovers it from its checkpoints, or says why not.
        except config_lib.ConfigError as e:
            problems.append(f"run {name!r}: " + str(e).replace("\n", "\n  "))
    if problems:
        raise config_lib.ConfigError("invalid sweep:\n" + "\n".join(problems))


def _write_table(root: str, outcomes: dict[str, Outcome]) -> None:
    table = {}
    for name, o in outcomes.items():
        entry = {"status": o.status, "message": o.message, "workdir": o.workdir, "ran": o.ran}
        on_disk = workdir_lib.read_status(o.workdir) if o.status != "finished" else None
        if on_disk is not None and (on_disk["status"] == "finished" or o.status == "busy"):
            entry.update(status=on_disk["status"], message=on_disk["message"])  # The run's own files win.
        table[name] = entry
    workdir_lib.write_json_atomic(os.path.join(root, "sweep.json"), table)


def run_all(
    runs: Mapping[str, ml_collections.ConfigDict],
    root: str,
    train: Callable[[ml_collections.ConfigDict, str], dict] | None = None,
) -> dict[str, Outcome]:
    """Runs every config of `runs` (name → config) in ROOT/name, in order; see the module docstring.

    Args:
      train: `(config, workdir) -> summary`; default `jaxens.run.train_and_evaluate`.

    Returns:
      name → Outcome, for every run.

    Raises:
      ConfigError: before anything runs (`validate_all`).
      preemption.Preempted: a stop signal arrived; the current run saved its checkpoint.
    """
    if train is None:
        from jaxens import run  # Deferred: validating a sweep does not need the trainer.

        train = run.train_and_evaluate
    validate_all(runs, root)
    os.makedirs(root, exist_ok=True)
    files.remove_temporaries(root, older_than_s=600)  # Another sweep may be writing sweep.json right now.
    outcomes = {}
    for name in runs:
        workdir = os.path.join(root, name)
        status = workdir_lib.read_status(workdir)
        if status is not None and status["status"] == "finished":
            outcomes[name] = Outcome(name, workdir, "finished", workdir_lib.read_summary(workdir), ran=False)
    done_before = len(outcomes)
    bar = progress.bar(len(runs), initial=done_before, desc=f"sweep {os.path.basename(root)}", unit="run")
    with preemption.stop_on_signals(), bar:
        for name, config in runs.items():
            if name in outcomes:
                print(f"sweep: {name} finished before; skipped", flush=True)
                continue
            workdir = os.path.join(root, name)
            started = time.time()
            print(f"sweep: {name} ...", flush=True)
            try:
                summary = train(config, workdir)
                outcomes[name] = Outcome(name, workdir, "finished", summary)
            except preemption.Preempted as e:
                outcomes[name] = Outcome(name, workdir, "preempted", message=str(e))
                _write_table(root, outcomes)
                raise
            except workdir_lib.Busy as e:
                outcomes[name] = Outcome(name, workdir, "busy", message=str(e), ran=False)
                print(f"sweep: {name} is being run by another process; left to it", flush=True)
            except Exception as e:  # One failed run does not stop the others.
                failure = str(getattr(e, "status", "failed"))  # run.Diverged says 'diverged'.
                outcomes[name] = Outcome(name, workdir, failure, message=f"{type(e).__name__}: {e}")
                logging.exception("sweep: run %s failed", name)
                print(f"sweep: {name} {failure}: {type(e).__name__}: {e}", flush=True)
            else:
                print(f"sweep: {name} finished in {time.time() - started:.0f} s", flush=True)
            _write_table(root, outcomes)
            bar.update(1)
    _write_table(root, outcomes)
    return outcomes


def statuses(root: str) -> dict[str, dict]:
    """Each run directory under `root` → its status record (`jaxens.workdir.read_status`; 'unknown', with
    the file named, for a status.json that cannot be read)."""
    out = {}
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        if not os.path.isdir(os.path.join(root, name)):
            continue  # sweep.json
        record = workdir_lib.read_status(os.path.join(root, name))
        if record is not None:
            out[name] = record
    return out


def train_population(
    config: ml_collections.ConfigDict, workdir: str, overwrite: bool = False, ignore_memory_estimate: bool = False
) -> dict:
    """`jaxens.run.train_and_evaluate`, or, for a population larger than config.grid.members_per_run, its parts
    (`jaxens.grid.split`): each one run in workdir/<part>, one after another (`run_all`: a rerun skips the finished
    parts). `python -m jaxens.train` trains through here.

    Returns:
      The run's summary; for parts {'parts': {part: its workdir}, 'groups': every part's groups in member order,
      and the first part's other summary fields} (nothing is written beside the parts but sweep.json).

    Raises:
      As `train_and_evaluate`; for parts also ConfigError for --overwrite (remove the directory instead) or a
      part another process runs, Diverged when a part diverged, RuntimeError when a part failed.
    """
    from jaxens import grid as grid_lib
    from jaxens import run  # Deferred, as in `run_all`.

    validation.validate(config)
    parts = grid_lib.split(config, config.grid.members_per_run)
    if not parts:
        return run.train_and_evaluate(config, workdir, overwrite, ignore_memory_estimate)
    if overwrite:
        raise config_lib.ConfigError(
            f"--overwrite with config.grid.members_per_run: {workdir} holds one run per part; remove it to start afresh"
        )
    train = lambda c, w: run.train_and_evaluate(c, w, ignore_memory_estimate=ignore_memory_estimate)  # noqa: E731
    outcomes = run_all(parts, workdir, train=train)
    unfinished = {name: o for name, o in outcomes.items() if o.status != "finished"}
    if unfinished:
        message = "; ".join(f"{name}: {o.status}: {o.message}" for name, o in unfinished.items())
        if all(o.status == "diverged" for o in unfinished.values()):
            raise run.Diverged(message)
        error = config_lib.ConfigError if all(o.status == "busy" for o in unfinished.values()) else RuntimeError
        raise error(f"parts of {workdir} did not finish: {message}")
    summaries = [o.summary or {} for o in outcomes.values()]
    joined = {**summaries[0], "groups": [g for s in summaries for g in s["groups"]]}
    joined["parts"] = {name: o.workdir for name, o in outcomes.items()}
    print(f"{len(parts)} parts of at most config.grid.members_per_run members, each a run under {workdir}", flush=True)
    return joined
