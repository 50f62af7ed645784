"""A run's directory: its config, metrics log and summary, written so nothing is ever lost.

Layout of DIR:
  config.json    the run's full config; a rerun with the same config resumes, a different one is refused
  metrics.jsonl  one JSON record per (step, split, member, metric), appended as training goes
  summary.json   final results, written once at the end (a run with a summary is finished)
  status.json    {status: running | finished | preempted | diverged | failed, step, message, time}
  checkpoints/   Orbax checkpoints of the members (the children, under a spawning condition)
  parent/        spawning conditions: the parent's checkpoints, one at every spawn time (kept, so later
                 runs can spawn from them: config.coupling.parent_dir) and the latest few
  best/          with config.eval.keep_best: each group's members at its best validation evaluation
  trajectory/    with config.trajectory.every: the members' weights at every snapshot (jaxens.trajectory)
  tensorboard/   TensorBoard event files, one TensorBoard run per group of members (jaxens.tensorboard_log)
  checkpoints.corrupt/, parent.corrupt/   checkpoints that failed to restore, moved aside (never deleted)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from typing import Any

import ml_collections

from jaxens import faults, files
from jaxens.config import ConfigError
from jaxens.files import write_bytes_atomic, write_json_atomic

__all__ = ["write_bytes_atomic", "write_json_atomic"]  # Re-exported: the run's files are written with them.


class UnreadableFile(ConfigError):
    """A run file (config.json, status.json, summary.json) that exists but does not hold JSON."""

    def __init__(self, path: str, error: Exception):
        super().__init__(f"{path} cannot be read ({type(error).__name__}: {error})")
        self.path = path


def read_json(path: str) -> Any:
    """The JSON value `path` holds; None when there is no such file.

    Raises:
      UnreadableFile: naming the file, when it is empty, cut short or not JSON.
    """
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (ValueError, UnicodeDecodeError, IsADirectoryError) as e:
        raise UnreadableFile(path, e) from None


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
RUN_DIRS = (
    "checkpoints", "parent", "best", "trajectory", "tensorboard", "checkpoints.corrupt", "parent.corrupt", "best.corrupt"
)  # fmt: skip
STATUSES = ("running", "finished", "preempted", "diverged", "failed")
# The top-level fields every jaxens config has: a config.json without them is not a jaxens run's.
RUN_CONFIG_KEYS = ("seed", "dataset", "model", "ensemble", "optimizer", "train")


def write_status(workdir: str, status: str, step: int | None = None, message: str = "") -> None:
    """Records the run's state in DIR/status.json (atomically)."""
    if status not in STATUSES:
        raise ValueError(f"status={status!r}: allowed: {', '.join(STATUSES)}")
    record = {"status": status, "step": step, "message": message, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json_atomic(os.path.join(workdir, "status.json"), record)


def read_status(workdir: str) -> dict | None:
    """DIR/status.json, with status 'finished' whenever a readable summary exists (the summary is the
    truth: a kill during the last status write leaves 'running'); None for no run.

    A status.json that cannot be read gives status 'unknown' with a message naming it: such a run is
    resumed or retried, never taken for finished.
    """
    try:
        finished = read_summary(workdir) is not None
    except UnreadableFile as e:
        return _unknown(f"{e}; the run is not finished: rerunning it writes the summary again")
    try:
        record = read_json(os.path.join(workdir, "status.json"))
    except UnreadableFile as e:
        record = _unknown(str(e))
    if record is not None and (not isinstance(record, dict) or record.get("status") not in (*STATUSES, "unknown")):
        record = _unknown(f"{os.path.join(workdir, 'status.json')} holds no jaxens status: {record!r:.100}")
    if finished and (record is None or record["status"] != "finished"):
        return {"status": "finished", "step": None, "message": "", "time": None}
    if record is None and os.path.exists(os.path.join(workdir, "config.json")):
        return {"status": "running", "step": None, "message": "no status recorded", "time": None}
    return record


def _unknown(message: str) -> dict:
    return {"status": "unknown", "step": None, "message": message, "time": None}


def read_summary(workdir: str) -> dict | None:
    """DIR/summary.json; None when the run has none (it has not finished).

    Raises:
      UnreadableFile: the file exists but does not hold a summary.
    """
    path = os.path.join(workdir, "summary.json")
    summary = read_json(path)
    if summary is not None and not isinstance(summary, dict):
        raise UnreadableFile(path, ValueError(f"not a summary: {summary!r:.100}"))
    return summary


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
      ConfigError: the directory holds a run with a different config, a run's files (checkpoints,
        metrics, ...) without the config.json that would say whose they are, or a sweep of runs.
    """
    if os.path.exists(os.path.join(workdir, "sweep.json")):
        raise ConfigError(
            f"--workdir={workdir} holds a sweep of runs (sweep.json: e.g. the parts of config.grid.members_per_run), "
            "not one run: choose a new --workdir, or rerun that sweep's own command"
        )
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
    old = read_json(path)  # UnreadableFile: the caller may recover it (`jaxens.trainer.preflight.recover_config`).
    if not is_run_config(old):
        raise ConfigError(
            f"--workdir={workdir}: its config.json is not a jaxens run's config (found {_describe(old)}). jaxens "
            "never writes into or deletes another program's files, even with --overwrite: choose another --workdir"
        )
    if not same_run(old, config):
        raise ConfigError(
            f"--workdir={workdir} holds another run (its config.json differs: "
            + "; ".join(differences(old, config))
            + "). Results are never overwritten: choose a new --workdir, rerun with that config to resume, "
            "or pass --overwrite to replace that run."
        )
    return True


def is_run_config(value: Any) -> bool:
    """Whether `value` (a config.json's content) is a jaxens run's config."""
    return isinstance(value, dict) and all(key in value for key in RUN_CONFIG_KEYS)


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return f"a JSON object with the fields {', '.join(sorted(map(str, value))[:8]) or 'none'}"
    return f"the JSON value {value!r:.60}"


def check_overwritable(workdir: str) -> None:
    """Refuses --overwrite of a directory whose config.json is not a jaxens config; reads only.

    A config.json that does not parse is taken for a damaged jaxens one only when the run's status.json
    says so; anything else may be another program's and is never deleted.

    Raises:
      ConfigError: naming the file and what it holds.
    """
    path = os.path.join(workdir, "config.json")
    try:
        found = read_json(path)
    except UnreadableFile as e:
        try:
            status = read_json(os.path.join(workdir, "status.json"))
        except UnreadableFile:
            status = None
        if not isinstance(status, dict) or status.get("status") not in STATUSES:
            raise ConfigError(
                f"--overwrite: {e}, and no readable status.json shows it is a jaxens run's: nothing was deleted. "
                "Remove the directory's files yourself if they are yours to lose, or choose another --workdir"
            ) from None
        return
    if found is not None and not is_run_config(found):
        raise ConfigError(
            f"--overwrite: --workdir={workdir} holds a config.json that is not a jaxens run's config (found "
            f"{_describe(found)}): nothing was deleted. Choose another --workdir"
        )


def check_path(workdir: str) -> None:
    """Refuses a --workdir that can never be a directory: empty, a file, or a path under a file.

    Raises:
      ConfigError: naming the path.
    """
    if not workdir:
        raise ConfigError("--workdir='': give the directory the run writes into (created when missing)")
    existing = files.nearest_existing(workdir)
    if existing == os.path.abspath(workdir) and not os.path.isdir(existing):
        raise ConfigError(f"--workdir={workdir}: is a file, not a directory; give a directory")
    if not os.path.isdir(existing):
        raise ConfigError(f"--workdir={workdir}: cannot be created, as {existing} is a file, not a directory")


def check_writable(workdir: str) -> None:
    """Refuses a --workdir this user cannot create or write into (`check_path` passed), before anything is
    loaded or written.

    Raises:
      ConfigError: naming the directory that is not writable.
    """
    existing = files.nearest_existing(workdir)
    if not os.access(existing, os.W_OK | os.X_OK):
        what = (
            "is not writable"
            if existing == os.path.abspath(workdir)
            else f"cannot be created: {existing} is not writable"
        )
        raise ConfigError(f"--workdir={workdir}: {what} by this user; give a directory you can write to")


def same_run(a: dict, b: dict) -> bool:
    """Whether two configs (plain JSON values) describe the same run (`PLACEMENT_GROUPS` aside)."""
    return _run_fields(a) == _run_fields(b)


def differences(old: dict, new: dict) -> list[str]:
    """'config.x: A there, B now' for every field where two configs differ (`PLACEMENT_GROUPS` aside)."""
    return _diff(_run_fields(old), _run_fields(new))


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
      ConfigError: without `overwrite`, the directory holds a run with a different config; with it, the
        directory's config.json is not a jaxens config (`check_overwritable`). Nothing is touched.
    """
    if overwrite and os.path.isdir(workdir):
        check_overwritable(workdir)
        _remove(workdir, ("summary.json", "status.json"))  # First, so that no step of it looks finished.
        for name in RUN_DIRS:
            shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)
        faults.kill_point("overwrite")  # Tests: SIGKILL with the run's directories gone, its config not yet.
        _remove(workdir, ("metrics.jsonl", "config.json"))  # config.json last.
    files.remove_temporaries(workdir)  # Left by writes killed midway (the caller holds the workdir's lock).
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
        write_bytes_atomic(self.path, "".join(kept).encode())

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

        try:
            self._file = open(os.path.join(workdir, ".lock"), "a")
        except OSError as e:
            raise ConfigError(
                f"--workdir={workdir}: cannot take its lock file .lock ({e.strerror}); the directory must be "
                "writable by this user"
            ) from None
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
