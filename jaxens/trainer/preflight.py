"""What is checked of the workdir before anything is loaded or written, and the claim of it.

`python -m jaxens.train` refuses, with exit code 2 and a sentence naming the path, a --workdir it could
never use (empty, a file, under a file, not writable by this user), one holding another run or another
program's files, and one whose config.json is damaged unless its checkpoints prove whose run it is: then
config.json is written again from the config the checkpoints record (`recover_config`). A finished run
is known by its readable summary; a damaged summary makes the run resume from its last checkpoint, which
writes the summary again.
"""

from __future__ import annotations

import os
import time

from absl import logging

from jaxens import checkpoint as checkpoint_lib
from jaxens import workdir as workdir_lib
from jaxens.config import ConfigError
from jaxens.trainer.spec import RunSpec


def inspect_workdir(spec: RunSpec, workdir: str, overwrite: bool, writes: bool = True) -> dict | None:
    """Checks `workdir` for the run of `spec` (reads only, but for a config.json `recover_config` rewrites);
    returns the run's summary when it has finished (None otherwise).

    Args:
      writes: whether this process writes the run's files (False: the other processes of a multi-host run).

    Raises:
      ConfigError: the path can never be a run's directory, or the directory holds another run (without
        `overwrite`) or another program's config.json.
    """
    workdir_lib.check_path(workdir)
    if overwrite:
        workdir_lib.check_overwritable(workdir)
        return None
    try:
        held = workdir_lib.check(workdir, spec.config)
    except workdir_lib.UnreadableFile as e:
        held = recover_config(workdir, spec, e, writes)
    if not held:
        return None
    try:
        return workdir_lib.read_summary(workdir)
    except workdir_lib.UnreadableFile as e:
        logging.warning("%s; the run resumes from its last checkpoint and writes its summary again", e)
        return None


def recover_config(workdir: str, spec: RunSpec, error: workdir_lib.UnreadableFile, writes: bool = True) -> bool:
    """A damaged DIR/config.json, written again from `spec` when the run's checkpoints record that config
    (the damaged file is kept as config.json.damaged-<time>); returns True (the directory holds this run).

    Raises:
      ConfigError: no checkpoint records this config; the message says what they record instead, so the
        command can be corrected, and never deletes anything.
    """
    recorded = {}
    for name in ("checkpoints", "parent"):
        directory = os.path.join(workdir, name)
        if os.path.isdir(directory):
            for step, config in checkpoint_lib.Checkpointer(directory, read_only=True).recorded_configs().items():
                recorded[f"{name}/{step}"] = config
    if not any(workdir_lib.same_run(config, spec.config) for config in recorded.values()):
        if recorded:
            where, config = next(iter(recorded.items()))
            fix = (
                f"checkpoint {where} records a config that differs from this command's: "
                + "; ".join(workdir_lib.differences(config, spec.config))
                + ". Rerun with the recorded values and config.json is written again from the checkpoint"
            )
        else:
            fix = "no checkpoint records the run's config, so jaxens cannot tell whose run the directory holds"
        raise ConfigError(
            f"{error}. {fix}. Nothing was changed: to start afresh instead, choose another --workdir or pass "
            "--overwrite (which deletes the checkpoints)"
        ) from None
    if not writes:
        return True
    kept = f"{error.path}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
    os.replace(error.path, kept)
    workdir_lib.write_json_atomic(error.path, spec.config)
    logging.warning("%s; written again from the config its checkpoints record (the damaged file: %s)", error, kept)
    return True


def mark_finished(workdir: str, summary: dict) -> None:
    """Makes status.json say 'finished' when a kill during the run's last status write left it otherwise
    (the summary is the truth); a finished run's directory is otherwise left as it is."""
    try:
        record = workdir_lib.read_json(os.path.join(workdir, "status.json"))
    except workdir_lib.UnreadableFile:
        record = None
    if isinstance(record, dict) and record.get("status") == "finished":
        return
    try:
        workdir_lib.write_status(workdir, "finished", summary.get("steps"))
    except OSError:
        pass  # A read-only directory: its summary says finished all the same.


def claim(workdir: str, config: dict, overwrite: bool) -> bool:
    """`jaxens.workdir.claim` and status 'running', with an OS error (permissions, a full disk) reported as
    a sentence naming the directory. Returns whether the run is resumed.

    Raises:
      ConfigError: see `jaxens.workdir.claim`, or the directory cannot be written.
    """
    try:
        resuming = workdir_lib.claim(workdir, config, overwrite)
        workdir_lib.write_status(workdir, "running")
    except OSError as e:
        raise ConfigError(f"--workdir={workdir}: cannot write there ({e.strerror}: {e.filename})") from None
    return resuming


def make_directory(workdir: str) -> None:
    """Creates `workdir` (and its parents), an OS error reported as a sentence naming it."""
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--workdir={workdir}: cannot be created ({e.strerror}: {e.filename})") from None
