"""Command-line entry point.

  python -m jaxens.train --config=configs/mnist1d_ensemble.py --workdir=runs/demo \
      [--config.ensemble.k=8 --config.train.num_epochs=20 ...]

Rerunning the same command resumes an unfinished run from its latest intact checkpoint, and leaves a
finished one untouched. Exit codes:

  0    finished (or already finished)
  2    invalid input, before any compute and with nothing written: a config field (unknown, out of range, not
       finite), a config file that does not load, dataset files that do not hold the dataset, a --workdir
       this user cannot use, one holding a different run (replace it with --overwrite) or another
       program's files, or in use by another process, or a run estimated not to fit in memory (see
       --ignore_memory_estimate). The message names the field or the path
  3    stopped on divergence (config.train.on_divergence='stop', or every member diverged)
  4    no checkpoint of the run restores: the message lists them, why each failed and what to do
  130, 143  stopped by SIGINT / SIGTERM after saving a checkpoint: rerun the same command to resume
  1    anything else (a traceback)
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jaxens import config as config_lib
from jaxens.data.errors import DatasetError

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "An experiment config file, path[:arg] (a path, or the name of a config installed with jaxens).",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for this run's checkpoints, metrics and summary.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Delete the run --workdir holds (finished or not, any config) and start this one afresh."
)
_IGNORE_MEMORY = flags.DEFINE_bool(
    "ignore_memory_estimate",
    False,
    "Start even when the run's estimated memory exceeds the devices' (on CPU: the host's available) memory.",
)
flags.mark_flags_as_required(["config", "workdir"])


def _resolve_config(argv: list[str]) -> list[str]:
    """argv with --config's path resolved by `jaxens.config.resolve_path` (installed configs by name), and
    the file loaded once, so that a broken one is reported as a sentence (`jaxens.config.load_file`)."""
    out = list(argv)
    for i, a in enumerate(out):
        if a.startswith("--config="):
            out[i] = "--config=" + _checked_config(a[len("--config=") :])
        elif a == "--config" and i + 1 < len(out):
            out[i + 1] = _checked_config(out[i + 1])
    return out


def _checked_config(value: str) -> str:
    path, sep, arg = value.partition(":")
    path = config_lib.resolve_path(path)
    config_lib.load_file(path, arg if sep else None)
    return path + sep + arg


def _parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with config errors reported as one line and exit code 2."""
    try:
        argv = _resolve_config(argv)
    except config_lib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError, flags.Error) as e:
        overrides = [a[2:].split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
        problems = config_lib.unknown_fields(overrides) or [str(e)]
        print("error: " + "\n  ".join(problems), file=sys.stderr)
        sys.exit(2)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint step at INFO.
    # Deferred: flag errors should not wait for JAX to import.
    from jaxens import checkpoint, preemption, run, sweep

    try:
        workdir = _WORKDIR.value
        assert workdir is not None  # A required flag.
        sweep.train_population(
            _CONFIG.value, workdir, overwrite=_OVERWRITE.value, ignore_memory_estimate=_IGNORE_MEMORY.value
        )
    except (config_lib.ConfigError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except checkpoint.CorruptCheckpoint as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(4)
    except (preemption.Preempted, run.Diverged) as e:
        print(f"{'stopped' if isinstance(e, preemption.Preempted) else 'error'}: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
