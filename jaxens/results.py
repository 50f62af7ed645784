"""Results of runs as one tidy pandas DataFrame: a workdir, or every run under a sweep directory.

    from jaxens import results
    df = results.load("runs/lr_sweep")          # every run under the directory
    df.query("split == 'test' and scope == 'ensemble' and metric == 'error'")

One row per run × step × split × member × metric: the records of each run's metrics.jsonl (see
`jaxens.workdir.MetricsLog`), with the run's name and its config fields (flattened, e.g. 'ensemble.k',
'optimizer.learning_rate'; list values as tuples) as columns. experiments/ and notebooks read results
through `load`.
"""

from __future__ import annotations

import json
import os

import pandas as pd

from jaxens import workdir as workdir_lib

# The columns of a metrics.jsonl record, in the order `load` puts them after 'run'.
RECORD_COLUMNS = ("phase", "step", "epoch", "t", "lam", "split", "scope", "member", "metric", "value")


def run_dirs(path: str) -> list[str]:
    """The run directories (those holding a config.json) at or under `path`, sorted; a run's own
    subdirectories (checkpoints, trajectory, ...) are not searched.

    Raises:
      FileNotFoundError: `path` does not exist, or holds no run.
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such directory")
    found = []
    for root, dirs, files in os.walk(path):
        if "config.json" in files:
            found.append(root)
            dirs.clear()  # A run's own directories hold no runs.
        else:
            dirs.sort()
    if not found:
        raise FileNotFoundError(f"{path}: no run (a directory with config.json) at or under it")
    return sorted(found)


def flatten_config(config: dict, prefix: str = "") -> dict:
    """{'model': {'name': 'mlp'}} → {'model.name': 'mlp'}; lists become tuples (hashable, for groupby)."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return flat


def load(path: str, config_fields: list[str] | None = None) -> pd.DataFrame:
    """The records of every run at or under `path` as one tidy DataFrame.

    Args:
      path: a run's workdir, or a directory with runs under it (a sweep's root, or several sweeps).
      config_fields: the flattened config fields to add as columns (default: all of them).

    Returns:
      Columns 'run' (the run directory relative to `path`; its base name when `path` is the run), the
      record columns `RECORD_COLUMNS` ('member' and 't' as nullable integers: missing for ensemble rows and
      runs without a parent), then the config fields. Runs that have not logged anything yet contribute no
      rows.

    Raises:
      FileNotFoundError: no run at or under `path`.
      KeyError: a name in `config_fields` that no run's config has.
    """
    frames = []
    for directory in run_dirs(path):
        records = workdir_lib.MetricsLog(directory).read()
        if not records:
            continue
        with open(os.path.join(directory, "config.json")) as f:
            config = flatten_config(json.load(f))
        if config_fields is not None:
            missing = [name for name in config_fields if name not in config]
            if missing:
                raise KeyError(f"config field(s) {missing} not in {directory}/config.json")
            config = {name: config[name] for name in config_fields}
        frame = pd.DataFrame.from_records(records).reindex(columns=list(RECORD_COLUMNS))
        name = os.path.relpath(directory, path)
        frame.insert(0, "run", os.path.basename(os.path.abspath(directory)) if name == "." else name)
        for key, value in config.items():
            frame[key] = [value] * len(frame)
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["run", *RECORD_COLUMNS])
    df = pd.concat(frames, ignore_index=True)
    for column in ("member", "t"):
        df[column] = df[column].astype("Int64")
    df["lam"] = df["lam"].astype("float64")
    return df
