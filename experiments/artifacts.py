"""The files an experiment script writes: tidy CSV tables and PNG figures, as bytes for atomic writes
(`jaxens.workdir.write_bytes_atomic`), the line a sweep script reports its runs with, and the members an
analysis reads (`early_stopped`, `lambda_groups`)."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence


def csv_bytes(rows: list[dict], columns: Sequence[str]) -> bytes:
    """A CSV table with the header `columns` and one line per row."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(columns))
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode()


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig, dpi: int = 100) -> bytes:
    """`fig` as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    pyplot().close(fig)
    return buffer.getvalue()


def beyond_spread(mean_a: float, std_a: float, mean_b: float, std_b: float) -> bool:
    """The rule every verdict of the experiments uses: two means differ when they are further apart than the
    sum of their standard deviations over seeds."""
    return abs(mean_b - mean_a) > std_a + std_b


def runs_line(outcomes: dict, seconds: float) -> str:
    """'N runs (T trained now, F finished before) in S s' for a `jaxens.sweep.run_all` result."""
    trained = sum(o.ran for o in outcomes.values())
    return f"{len(outcomes)} runs ({trained} trained now, {len(outcomes) - trained} finished before) in {seconds:.0f} s"


def failed(outcomes: dict) -> dict[str, str]:
    """Run name → message of every run of a sweep that did not finish."""
    return {name: o.message for name, o in outcomes.items() if o.status != "finished"}


def run_config(workdir: str) -> dict:
    """The config.json of the run in `workdir`, as plain JSON values."""
    with open(os.path.join(workdir, "config.json")) as f:
        return json.load(f)


def _grid_seeds(config: dict) -> tuple[int, ...]:
    """config.grid.seed of a run's config.json (() when its seed is not on the grid)."""
    return tuple(config.get("grid", {}).get("seed") or ())


def trials(workdir: str) -> tuple[int, ...]:
    """The trials (seeds) of the run in `workdir`: its config.grid.seed, else its one config.seed."""
    config = run_config(workdir)
    return _grid_seeds(config) or (config["seed"],)


def trial_of(workdir: str, trial: int | None) -> int | None:
    """The seed of `trial` to restore from a run over several (`run.restore(seed=...)`), or None for a run of
    one seed. Raises ValueError for a trial the run does not hold, or none named where it holds several."""
    config = run_config(workdir)
    on_grid = _grid_seeds(config)
    seeds = on_grid or (config["seed"],)
    if trial is not None and trial not in seeds:
        raise ValueError(f"--trial={trial}: {workdir} trained the trials (seeds) {list(seeds)}")
    if trial is None and len(seeds) > 1:
        raise ValueError(f"{workdir} trained the trials (seeds) {list(seeds)} side by side: name one with --trial")
    return (seeds[0] if trial is None else trial) if on_grid else None


def early_stopped(workdir: str, trial: int | None = None):
    """The run's members as Webb et al. analyse them: each λ group at its best validation evaluation
    (`run.restore(best=True)`, kept by config.eval.keep_best), else the latest checkpoint, saying so. Of a run
    over several trials (config.grid.seed), the groups of seed `trial` alone, with that trial's data."""
    from jaxens import run

    if run_config(workdir).get("eval", {}).get("keep_best", False):
        return run.restore(workdir, best=True, seed=trial)
    print(f"{workdir}: no early-stopped members (config.eval.keep_best=False); analysing the latest checkpoint")
    return run.restore(workdir, seed=trial)


def lambda_groups(workdir: str, plan, learning_rate: float | None = None, trial: int | None = None) -> dict[float, int]:
    """λ → the index of its group in the modular-loss run `workdir` (its `jaxens.coupling.Plan`; of a run over
    several trials, the plan of trial `trial`'s groups alone: `early_stopped`).

    A run of webb_lambda.py holds every learning rate of its grid for each λ (config.grid.learning_rate): then the
    group of `learning_rate`, or by default the one the sweep's selection picked for the trial (OUT/selection.json,
    beside OUT/runs/). Raises ValueError when neither names one.
    """
    rates = [dict(g.hyper).get("learning_rate") for g in plan.groups]
    if rates[0] is None:  # One learning rate: one group per λ.
        return {g.lam: i for i, g in enumerate(plan.groups)}
    picked: dict = {}
    if learning_rate is not None:
        picked = {g.lam: float(learning_rate) for g in plan.groups}
    else:
        chosen = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(workdir))), "selection.json")
        if os.path.exists(chosen):
            with open(chosen) as f:
                candidates = json.load(f)["candidates"]
            name = os.path.basename(os.path.abspath(workdir))
            picked = {
                c["lam"]: c["learning_rate"]
                for c in candidates
                if c["selected"] and c["run"] == name and trial in (None, c["seed"])
            }
    groups = {g.lam: i for i, g in enumerate(plan.groups) if g.lam in picked and rates[i] == picked[g.lam]}
    if not groups:
        raise ValueError(
            f"{workdir}: each λ was trained at the learning rates {sorted(set(rates))} (config.grid.learning_rate) "
            "and no selection.json of webb_lambda.py picks one: pass --learning_rate"
        )
    return groups
