"""Command-line entry point.

  python -m jaxens.train --config=configs/mnist1d_ensemble.py --workdir=runs/demo \
      [--config.ensemble.k=8 --config.train.num_epochs=20 ...]

Rerunning the same command resumes an unfinished run from its latest intact checkpoint, and leaves a
finished one untouched. Exit codes:

  0    finished (or already finished)
  2    invalid config (unknown field, unknown dataset or model, out-of-range value), a workdir holding a
       different run (replace it with --overwrite) or in use by another process: the message names the
       field, and nothing is computed or written
  3    stopped on divergence (config.train.on_divergence='stop', or every member diverged)
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
flags.mark_flags_as_required(["config", "workdir"])


def _resolve_config(argv: list[str]) -> list[str]:
    """argv with --config's path resolved by `jaxens.config.resolve_path` (installed configs by name)."""
    out = list(argv)
    for i, a in enumerate(out):
        if a.startswith("--config="):
            path, sep, arg = a[len("--config=") :].partition(":")
            out[i] = "--config=" + config_lib.resolve_path(path) + sep + arg
        elif a == "--config" and i + 1 < len(out):
            path, sep, arg = out[i + 1].partition(":")
            out[i + 1] = config_lib.resolve_path(path) + sep + arg
    return out


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
    from jaxens import preemption, run

    try:
        workdir = _WORKDIR.value
        assert workdir is not None  # A required flag.
        run.train_and_evaluate(_CONFIG.value, workdir, overwrite=_OVERWRITE.value)
    except (config_lib.ConfigError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (preemption.Preempted, run.Diverged) as e:
        print(f"{'stopped' if isinstance(e, preemption.Preempted) else 'error'}: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
