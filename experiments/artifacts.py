"""The files an experiment script writes: tidy CSV tables and PNG figures, as bytes for atomic writes
(`jaxens.workdir.write_bytes_atomic`), the line a sweep script reports its runs with, and the members an
analysis reads (`early_stopped`)."""

from __future__ import annotations

import csv
import io
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


def early_stopped(workdir: str):
    """The run's members as Webb et al. analyse them: each λ group at its best validation evaluation
    (`run.restore(best=True)`, kept by config.eval.keep_best), else the latest checkpoint, saying so."""
    import json

    from jaxens import run

    with open(os.path.join(workdir, "config.json")) as f:
        kept = json.load(f).get("eval", {}).get("keep_best", False)
    if kept:
        return run.restore(workdir, best=True)
    print(f"{workdir}: no early-stopped members (config.eval.keep_best=False); analysing the latest checkpoint")
    return run.restore(workdir)
