"""Command-line entry point.

  python -m jaxens.train --config=configs/mnist1d_ensemble.py --workdir=runs/demo \
      [--config.ensemble.k=8 --config.train.num_epochs=20 ...]

An invalid config (unknown field, unknown dataset or model, out-of-range value) or a workdir holding a
different run stops with exit code 2 and a message naming the field, before anything is computed or written.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from jaxens import config as config_lib
from jaxens.data.errors import DatasetError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for this run's checkpoints, metrics and summary.")
flags.mark_flags_as_required(["config", "workdir"])


def _parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with config errors reported as one line and exit code 2."""
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
    from jaxens import run  # Deferred: flag errors should not wait for JAX to import.

    try:
        run.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except (config_lib.ConfigError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
