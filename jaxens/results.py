"""Results of runs as one tidy pandas DataFrame: a workdir, or every run under a sweep directory.

    from jaxens import results
    df = results.load("runs/lr_sweep")          # every run under the directory
    df.query("split == 'test' and scope == 'ensemble' and metric == 'error'")

One row per run × step × split × member × metric: the records of each run's metrics.jsonl (see
`jaxens.workdir.MetricsLog`), with the run's name and its config fields (flattened, e.g. 'ensemble.k',
'optimizer.learning_rate'; list values as tuples) as columns. A grid run's rows (config.grid, `jaxens.grid`)
carry each group's own values in those columns ('seed', 'optimizer.learning_rate', ...) and its label in
'group', so that a group of a grid and the run it replaces read alike. experiments/ and notebooks read results
through `load`.
"""

from __future__ import annotations

import json
import os

import pandas as pd

from jaxens import grid as grid_lib
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
      record columns `RECORD_COLUMNS` (with 'group' after 'lam' when some run has a grid) ('member' and 't' as nullable integers: missing for ensemble rows and
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
        grids = [r.pop("grid", None) or {} for r in records]
        frame = pd.DataFrame.from_records(records).reindex(columns=list(RECORD_COLUMNS))
        name = os.path.relpath(directory, path)
        frame.insert(0, "run", os.path.basename(os.path.abspath(directory)) if name == "." else name)
        for key, value in config.items():
            frame[key] = [value] * len(frame)
        if any(grids):  # Each group's own values in its twins' columns, and its label ('group', after 'lam').
            frame.insert(frame.columns.get_loc("lam") + 1, "group", [grid_lib.label(g) or None for g in grids])
            for field in grid_lib.ordered({f for g in grids for f in g}):
                column = grid_lib.FIELDS[field]
                if column in config:  # Every twin, unless `config_fields` leaves it out.
                    frame[column] = [g.get(field, config[column]) for g in grids]
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["run", *RECORD_COLUMNS])
    df = pd.concat(frames, ignore_index=True)
    if "group" in df.columns:  # Some run is a grid: its column right after 'lam' (concat put it first-seen).
        columns = [c for c in df.columns if c != "group"]
        columns.insert(columns.index("lam") + 1, "group")
        df = df[columns]
    for column in ("member", "t"):
        df[column] = df[column].astype("Int64")
    df["lam"] = df["lam"].astype("float64")
    return df


def candidates(
    df: pd.DataFrame,
    by,
    metric: str = "error",
    split: str = "val",
    report: str = "test",
    early_stopping: bool = True,
    within=None,
) -> pd.DataFrame:
    """Every setting of the tuned field(s) `by` scored on a validation split, with the one `select` picks.

    A candidate is one group (t, λ) of one run. Its score is the ensemble's `metric` on `split` at its best
    evaluation (the first of the lowest; `early_stopping`) or at its last; its reported results are the
    ensemble's metrics on `report` at that same step. Candidates compete within a *group of the remaining
    fields*: equal values of every config field that varies across the runs (other than `by`), and of t and λ.

    Args:
      df: `load`'s frame (runs that differ in `by` and possibly other fields).
      by: the tuned config field, or a list of them (e.g. 'optimizer.learning_rate').
      metric, split: the criterion, lowest first (e.g. the ensemble's validation error).
      report: the split whose metrics are returned (columns '<report>_<metric>').
      early_stopping: score (and report) each candidate at its best `split` evaluation, as Webb et al. do.
      within: the fields whose values form the groups instead (t and λ are always added), e.g. ['seed'] to
        select per seed even where only one seed was run.

    A grid run's groups (`load`'s 'group') are candidates of their own, with their values in the config columns.

    Returns:
      One row per candidate: the group's fields, `by`, 'run', 'step', 'epoch', '<split>_<metric>' (the
      score), the '<report>_*' metrics, and 'selected' (True for each group's lowest score; ties go to the
      smallest `by` values).

    Raises:
      KeyError: a field of `by` is not a column of `df`.
      ValueError: `df` has no ensemble `metric` on `split` (no validation split held out?).
    """
    by = [by] if isinstance(by, str) else list(by)
    missing = [field for field in by if field not in df.columns]
    if missing:
        raise KeyError(f"by={missing}: not columns of the results (config fields are, e.g. 'optimizer.learning_rate')")
    ensemble = df[(df["scope"] == "ensemble") & (df["phase"] == "members")].copy()
    text = lambda column: ensemble[column].astype(object).map(str)  # noqa: E731  # Missing values included.
    ensemble["_candidate"] = text("run") + "|" + text("t") + "|" + text("lam")
    if "group" in ensemble.columns:  # A grid's groups are candidates of their own.
        ensemble["_candidate"] += "|" + text("group")
    scored = ensemble[(ensemble["split"] == split) & (ensemble["metric"] == metric)]
    if scored.empty:
        raise ValueError(
            f"no ensemble {metric!r} on split {split!r} to select on (hold out a validation split: config.data.val_size)"
        )
    config_columns = [c for c in df.columns if c not in ("run", "group", *RECORD_COLUMNS)]
    if within is None:
        within = [c for c in config_columns if c not in by and df[c].nunique(dropna=False) > 1]
    groups = [c for c in within if c not in ("t", "lam")] + ["t", "lam"]
    score = f"{split}_{metric}"
    # The `report` metrics of every candidate and step, indexed once (not filtered again per candidate).
    reported: dict = {}
    for (key, step), metrics_at in ensemble[ensemble["split"] == report].groupby(["_candidate", "step"]):
        reported[key, step] = {f"{report}_{m}": float(v) for m, v in zip(metrics_at["metric"], metrics_at["value"])}
    rows = []
    for key, rows_of in scored.groupby("_candidate", sort=True):
        rows_of = rows_of.sort_values("step", kind="stable")
        pick = rows_of.loc[rows_of["value"].idxmin()] if early_stopping else rows_of.iloc[-1]
        row = {c: pick[c] for c in groups + by}
        row.update(run=pick["run"], step=int(pick["step"]), epoch=float(pick["epoch"]), **{score: float(pick["value"])})
        row.update(reported.get((key, pick["step"]), {}))
        rows.append(row)
    out = pd.DataFrame(rows)
    try:
        out = out.sort_values(by, kind="stable", ignore_index=True)  # Ties go to the smallest setting.
    except TypeError:  # Values that do not order (mixed types): keep the runs' order.
        pass
    best = out.groupby(groups, dropna=False, sort=False)[score].idxmin()
    out["selected"] = out.index.isin(best.to_numpy())
    return out


def select(
    df: pd.DataFrame,
    by,
    metric: str = "error",
    split: str = "val",
    report: str = "test",
    early_stopping=True,
    within=None,
):
    """Hyperparameter selection on validation: per group of the remaining fields, the setting of `by` whose
    ensemble has the lowest `metric` on `split`, with its `report` results (Webb et al.'s per-configuration,
    per-λ learning-rate tuning is `select(results.load(sweep), by='optimizer.learning_rate')`).

    Same arguments as `candidates`; returns its selected rows (without the 'selected' column).
    """
    chosen = candidates(df, by, metric, split, report, early_stopping, within)
    return chosen[chosen["selected"]].drop(columns="selected").reset_index(drop=True)
