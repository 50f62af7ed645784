"""A run's directory: its config, metrics log and summary, written so nothing is ever lost.

Layout of DIR:
  config.json    the run's full config; a rerun with the same config resumes, a different one is refused
  metrics.jsonl  one JSON record per (step, split, member, metric), appended as training goes
  summary.json   final results, written once at the end (a run with a summary is finished)
  status.json    {status: running | finished | preempted | diverged | failed, step, message, time}
  checkpoints/   Orbax checkpoints of the members (the children, under a spawning condition)
  parent/        spawning conditions: the parent's checkpoints, one at every spawn time (kept, so later
                 runs can spawn from them: config.coupling.parent_dir) and the latest few
  trajectory/    with config.trajectory.every: the members' weights at every snapshot (jaxens.trajectory)
  tensorboard/   TensorBoard event files, one TensorBoard run per group of members (jaxens.tensorboard_log)
  checkpoints.corrupt/, parent.corrupt/   checkpoints that failed to restore, moved aside (never deleted)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from typing import Any

import ml_collections

from jaxens import faults
from jaxens.config import ConfigError


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Writes `data` to `path` via a temporary file in the same directory, fsync and a rename: readers see
    the old file or the whole new one, never a half-written file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str, obj: Any) -> None:
    """Writes `obj` as JSON to `path` atomically (`write_bytes_atomic`)."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
    """The config as plain JSON types (tuples become lists), for writing and comparing."""
    return json.loads(config.to_json())


def _diff(old: dict, new: dict, prefix: str = "config.") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(_diff(a, b, f"{prefix}{key}."))
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} there, {b!r} now")
    return out


RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "status.json")
RUN_DIRS = ("checkpoints", "parent", "trajectory", "tensorboard", "checkpoints.corrupt", "parent.corrupt")
STATUSES = ("running", "finished", "preempted", "diverged", "failed")


def write_status(workdir: str, status: str, step: int | None = None, message: str = "") -> None:
    """Records the run's state in DIR/status.json (atomically)."""
    if status not in STATUSES:
        raise ValueError(f"status={status!r}: allowed: {', '.join(STATUSES)}")
    record = {"status": status, "step": step, "message": message, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json_atomic(os.path.join(workdir, "status.json"), record)


def read_status(workdir: str) -> dict | None:
    """DIR/status.json, with status 'finished' whenever a summary exists; None for no run."""
    summary = os.path.exists(os.path.join(workdir, "summary.json"))
    path = os.path.join(workdir, "status.json")
    record = json.load(open(path)) if os.path.exists(path) else None
    if summary and (record is None or record["status"] != "finished"):
        return {"status": "finished", "step": None, "message": "", "time": None}
    if record is None and os.path.exists(os.path.join(workdir, "config.json")):
        return {"status": "running", "step": None, "message": "no status recorded", "time": None}
    return record


def read_summary(workdir: str) -> dict | None:
    path = os.path.join(workdir, "summary.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


# Config groups that only say where a run executes, not what it computes: a run resumes under other values.
PLACEMENT_GROUPS = ("mesh",)


def _run_fields(config: dict) -> dict:
    return {key: value for key, value in config.items() if key not in PLACEMENT_GROUPS}


def fingerprint(values: dict) -> str:
    """A short digest of JSON values (sorted keys): equal values, equal fingerprint."""
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def run_fingerprint(config: dict) -> str:
    """The fingerprint of what a run computes: its config without the `PLACEMENT_GROUPS`. Its checkpoints
    record it (`jaxens.checkpoint.Checkpointer(owner=...)`), so no other run restores them."""
    return fingerprint(_run_fields(config))


def leftovers(workdir: str) -> list[str]:
    """The run files and directories (`RUN_FILES`, `RUN_DIRS`, non-empty) `workdir` holds besides config.json."""
    found = []
    for name in (*RUN_FILES[1:], *RUN_DIRS):
        path = os.path.join(workdir, name)
        if os.path.isfile(path) or (os.path.isdir(path) and os.listdir(path)):
            found.append(name)
    return found


def check(workdir: str, config: dict) -> bool:
    """Whether `workdir` holds the run of `config` (True) or no run (False); reads only. The
    `PLACEMENT_GROUPS` (config.mesh) may differ: the same run on other devices.

    Args:
      config: the run's config as plain JSON values (`config_to_dict`, or `RunSpec.config`).

    Raises:
      ConfigError: the directory holds a run with a different config, or a run's files (checkpoints,
        metrics, ...) without the config.json that would say whose they are.
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        found = leftovers(workdir)
        if found:
            raise ConfigError(
                f"--workdir={workdir} holds {', '.join(found)} but no config.json: the files of a run this "
                "command cannot tell is its own. Results are never adopted: choose a new --workdir, move them "
                "away, or pass --overwrite to delete them."
            )
        return False
    with open(path) as f:
        old = json.load(f)
    old, new = _run_fields(old), _run_fields(config)
    if old != new:
        raise ConfigError(
            f"--workdir={workdir} holds another run (its config.json differs: "
            + "; ".join(_diff(old, new))
            + "). Results are never overwritten: choose a new --workdir, rerun with that config to resume, "
            "or pass --overwrite to replace that run."
        )
    return True


def claim(workdir: str, config: dict, overwrite: bool = False) -> bool:
    """Makes `workdir` the directory of the run of `config` (plain JSON values), or confirms it already is.

    Args:
      overwrite: first delete the run files and directories (`RUN_FILES`, `RUN_DIRS`) of whatever run the
        directory holds, finished or not, with this config or another (the command-line flag --overwrite).
        Other files are left alone. The summary and status go first and config.json last: an overwrite
        stopped midway leaves an unfinished run whose config.json still names what is left (a rerun of
        another config is refused, one of that config starts afresh; nothing is ever adopted).

    Returns:
      True if the directory already holds this run (resume or finished), False if newly claimed.

    Raises:
      ConfigError: without `overwrite`, the directory holds a run with a different config; nothing is touched.
    """
    if overwrite and os.path.isdir(workdir):
        _remove(workdir, ("summary.json", "status.json"))  # First, so that no step of it looks finished.
        for name in RUN_DIRS:
            shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)
        faults.kill_point("overwrite")  # Tests: SIGKILL with the run's directories gone, its config not yet.
        _remove(workdir, ("metrics.jsonl", "config.json"))  # config.json last.
    if check(workdir, config):
        return True
    os.makedirs(workdir, exist_ok=True)
    write_json_atomic(os.path.join(workdir, "config.json"), config)
    return False


def _remove(workdir: str, names) -> None:
    for name in names:
        if os.path.exists(os.path.join(workdir, name)):
            os.remove(os.path.join(workdir, name))


class MetricsLog:
    """Appends tidy records to DIR/metrics.jsonl; on resume, drops records newer than the checkpoint.

    A record: {phase, step, epoch, t, member, split, scope, metric, value}. `phase` is 'parent' (the
    parent of a spawning condition, before it spawns) or 'members' (the ensemble members, or the children);
    `t` is the spawn step of the member's group (None without a parent); `member` indexes the member in its
    group (None for scope 'ensemble'); `step`/`epoch` are the member's own.

    `writes=False` (the other processes of a multi-host run): the file is read once, here, and from then
    on the records are kept in memory, so the process sees what the writing process writes and touches
    nothing.
    """

    def __init__(self, workdir: str, writes: bool = True):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._memory: list[dict] | None = None if writes else self._read_file()

    def retain(self, keep) -> None:
        """Keeps only the records for which `keep(record)` is true (rewritten atomically).

        A resumed run drops what was logged after the checkpoint it resumes from.
        """
        if self._memory is not None:
            self._memory = [r for r in self._memory if keep(r)]
            return
        if not os.path.exists(self.path):
            return
        kept = [json.dumps(r, sort_keys=True) + "\n" for r in self.read() if keep(r)]
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(self.path)), prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            f.writelines(kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def write(self, records: list[dict]) -> None:
        """Appends the records in one write (a process killed mid-write leaves at most one cut line, which
        `read` skips and the next `retain` drops)."""
        if self._memory is not None:
            self._memory.extend(json.loads(json.dumps(r)) for r in records)  # As a reread would see them.
            return
        with open(self.path, "a") as f:
            f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict]:
        """All complete records (a line cut short by a killed process is skipped)."""
        return self._read_file() if self._memory is None else list(self._memory)

    def _read_file(self) -> list[dict]:
        if not os.path.exists(self.path):
            return []
        records = []
        with open(self.path) as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return records


class Busy(ConfigError):
    """Another process is running in the workdir."""


class Lock:
    """An exclusive lock on DIR/.lock for as long as a run uses the directory (released when the process
    ends, however it ends), so that two processes never train into one workdir."""

    def __init__(self, workdir: str):
        import fcntl

        self._file = open(os.path.join(workdir, ".lock"), "a")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise Busy(f"--workdir={workdir}: another process is running there (it holds {workdir}/.lock)") from None

    def release(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
