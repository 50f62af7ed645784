"""experiments/webb_lambda.py end to end on a tiny setting (real MNIST-1D runs, a real subprocess)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import numpy as np
from conftest import REPO

ARGS = ["--architectures=1x256,4x64", "--seeds=0", "--set=train.num_epochs=2", "--set=train.checkpoint_every=1ep"]


def _script(*args: str, name: str = "webb_lambda.py") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "experiments", name), *args],
        cwd=REPO,
        env=dict(os.environ, CI="true"),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_lambda_sweep_writes_table2_and_figure_and_a_rerun_trains_nothing(tmp_path):
    out = tmp_path / "webb"
    first = _script(f"--out={out}", *ARGS)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
    assert "2 runs (2 trained now, 0 finished before)" in first.stdout
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == ("architecture", "modules", "hidden", "seed", "lam", "metric", "value")
    lams = {float(r["lam"]) for r in rows if r["architecture"] == "4x64"}
    assert lams == {0.0, 0.5, 0.9, 0.95, 0.99, 1.0}  # configs/webb_mnist1d_mlp.py's λ grid, one group each.
    single = [r for r in rows if r["architecture"] == "1x256"]
    assert {r["lam"] for r in single} == {""} and {r["modules"] for r in single} == {"1"}
    metrics = {r["metric"] for r in rows}
    assert metrics == {"test_error_at_best_val", "ensemble_error", "mean_member_error", "ensemble_nll"}
    table = (out / "table2.md").read_text()
    assert table.splitlines()[0].startswith("| architecture | λ = 0 | λ = 0.5 |") and "| 4x64 |" in table
    assert (out / "lambda.png").read_bytes().startswith(b"\x89PNG")

    before = (out / "results.csv").read_bytes()
    again = _script(f"--out={out}", *ARGS)
    assert again.returncode == 0, again.stderr[-5000:]
    assert "2 runs (0 trained now, 2 finished before)" in again.stdout
    assert (out / "results.csv").read_bytes() == before

    # webb_modules.py on the same runs: Fig. 3, 5, 7 and Table 6 per λ of the 4x64 run.
    modules_out = tmp_path / "modules"
    analysed = _script(
        f"--runs={out / 'runs'}", "--architecture=4x64", "--size=2", "--candidates=5", f"--out={modules_out}",
        name="webb_modules.py",
    )  # fmt: skip
    assert analysed.returncode == 0, analysed.stdout[-3000:] + analysed.stderr[-5000:]
    with open(modules_out / "modules.csv") as f:
        module_rows = list(csv.DictReader(f))
    assert tuple(module_rows[0]) == ("architecture", "seed", "lam", "metric", "value")
    assert {float(r["lam"]) for r in module_rows} == {0.0, 0.5, 0.9, 0.95, 0.99, 1.0}
    by = {(float(r["lam"]), r["metric"]): float(r["value"]) for r in module_rows}
    for lam in (0.0, 1.0):
        # The gap is the best module's error minus the ensemble's; F1 and entropies in range.
        assert abs(by[lam, "dominance_gap"] - (by[lam, "best_module_error"] - by[lam, "ensemble_error"])) < 1e-6
        assert 0 <= by[lam, "random_f1_single"] <= 1 and 0 <= by[lam, "specialist_f1_subensemble"] <= 1
        assert 0 <= by[lam, "entropy_min"] <= by[lam, "entropy_mean"] <= by[lam, "entropy_max"] <= np.log(10) + 1e-6
    assert (modules_out / "table6.md").read_text().startswith("| entropy (nats) | λ = 0 |")
    assert (modules_out / "modules.png").read_bytes().startswith(b"\x89PNG")
    missing = _script(f"--runs={out / 'runs'}", "--architecture=9x9", f"--out={modules_out}", name="webb_modules.py")
    assert missing.returncode == 2 and "no finished run 9x9_s<seed>" in missing.stderr

    # webb_removal.py (Fig. 4) on the same 4x64 run, through its command line.
    removal_out = tmp_path / "removal"
    removal = _script(
        f"--workdir={out / 'runs' / '4x64_s0'}", f"--out={removal_out}", "--trials=3", name="webb_removal.py"
    )
    assert removal.returncode == 0, removal.stdout[-3000:] + removal.stderr[-5000:]
    with open(removal_out / "removal.csv") as f:
        curve = list(csv.DictReader(f))
    assert tuple(curve[0]) == ("lam", "removed", "error_mean", "error_std", "trials")
    assert {float(r["lam"]) for r in curve} == {0.0, 0.5, 0.9, 0.95, 0.99, 1.0}
    assert {int(r["removed"]) for r in curve} == {0, 1, 2, 3}  # Of 4 modules.
    assert (removal_out / "removal.png").read_bytes().startswith(b"\x89PNG")
