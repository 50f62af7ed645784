"""experiments/webb_lambda.py end to end on a tiny setting (real MNIST-1D runs, a real subprocess)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
from conftest import REPO

ARGS = [
    "--architectures=1x256,4x64",
    "--seeds=0,1",
    "--learning_rates=0.05,0.2",
    "--set=train.num_epochs=2",
    "--set=train.checkpoint_every=1ep",
]


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
    assert "2 runs (2 trained now, 0 finished before)" in first.stdout  # Per architecture: trials × η × λ in one.
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == ("architecture", "modules", "hidden", "seed", "lam", "learning_rate", "metric", "value")
    lams = {float(r["lam"]) for r in rows if r["architecture"] == "4x64"}
    assert lams == {0.0, 0.5, 0.9, 0.95, 0.99, 1.0}  # configs/webb_mnist1d_mlp.py's λ grid, one group each.
    single = [r for r in rows if r["architecture"] == "1x256"]
    assert {r["lam"] for r in single} == {""} and {r["modules"] for r in single} == {"1"}
    metrics = {r["metric"] for r in rows}
    assert metrics == {
        "test_error_at_best_val", "val_error_at_best_val", "ensemble_error", "mean_member_error", "ensemble_nll"
    }  # fmt: skip

    # The selection: per architecture and λ, the learning rate of the lower early-stopped validation error,
    # whose test error at that epoch is the result (worked out here from the runs' own logs).
    with open(out / "selection.csv") as f:
        candidates = list(csv.DictReader(f))
    assert len(candidates) == 2 * 2 * (6 + 1) and sum(c["selected"] == "True" for c in candidates) == 2 * (6 + 1)
    for arch, lam, seed in [
        (a, lam, s) for a, ls in (("4x64", sorted(lams)), ("1x256", [None])) for lam in ls for s in (0, 1)
    ]:
        logged = {}
        records = [json.loads(line) for line in open(out / "runs" / arch / "metrics.jsonl")]
        for lr in ("0.05", "0.2"):
            mine = [
                r for r in records if r["scope"] == "ensemble" and r["lam"] == lam and r["metric"] == "error"
                and r["grid"] == {"seed": seed, "learning_rate": float(lr)}
            ]  # fmt: skip
            val = min((r["value"], r["step"]) for r in mine if r["split"] == "val")
            test = next(r["value"] for r in mine if r["split"] == "test" and r["step"] == val[1])
            logged[float(lr)] = (val[0], test)
        best = min(logged, key=lambda lr: (logged[lr][0], lr))
        row = next(r for r in rows if r["architecture"] == arch and r["lam"] == ("" if lam is None else str(lam))
                   and r["seed"] == str(seed) and r["metric"] == "test_error_at_best_val")  # fmt: skip
        assert (float(row["learning_rate"]), float(row["value"])) == (best, logged[best][1])
    table = (out / "table2.md").read_text()
    assert table.splitlines()[0].startswith("| architecture | λ = 0 | λ = 0.5 |") and "| 4x64 |" in table
    assert "Learning rate selected on each trial's validation split" in table
    assert (out / "lambda.png").read_bytes().startswith(b"\x89PNG")

    before = (out / "results.csv").read_bytes()
    again = _script(f"--out={out}", *ARGS)
    assert again.returncode == 0, again.stderr[-5000:]
    assert "2 runs (0 trained now, 2 finished before)" in again.stdout
    assert (out / "results.csv").read_bytes() == before

    # webb_modules.py on the same runs: Fig. 3, 5, 7 and Table 6 per λ, each from its selected run.
    modules_out = tmp_path / "modules"
    analysed = _script(
        f"--runs={out / 'runs'}", "--architecture=4x64", "--size=2", "--candidates=5", f"--out={modules_out}",
        name="webb_modules.py",
    )  # fmt: skip
    assert analysed.returncode == 0, analysed.stdout[-3000:] + analysed.stderr[-5000:]
    with open(modules_out / "modules.csv") as f:
        module_rows = list(csv.DictReader(f))
    assert tuple(module_rows[0]) == ("architecture", "seed", "lam", "metric", "value")
    assert {r["seed"] for r in module_rows} == {"0", "1"}  # Both trials of the one program.
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
    assert missing.returncode == 2 and "no finished run 9x9" in missing.stderr

    # webb_removal.py (Fig. 4) on the same 4x64 run, through its command line.
    removal_out = tmp_path / "removal"
    removal = _script(
        f"--workdir={out / 'runs' / '4x64'}", "--trial=1", f"--out={removal_out}", "--trials=3", name="webb_removal.py"
    )
    assert removal.returncode == 0, removal.stdout[-3000:] + removal.stderr[-5000:]
    with open(removal_out / "removal.csv") as f:
        curve = list(csv.DictReader(f))
    assert tuple(curve[0]) == ("lam", "removed", "error_mean", "error_std", "trials")
    assert {float(r["lam"]) for r in curve} == {0.0, 0.5, 0.9, 0.95, 0.99, 1.0}
    assert {int(r["removed"]) for r in curve} == {0, 1, 2, 3}  # Of 4 modules.
    assert (removal_out / "removal.png").read_bytes().startswith(b"\x89PNG")

    # webb_training.py (Fig. 8, 9, 10) on the same run.
    training_out = tmp_path / "training"
    workdir = out / "runs" / "4x64"
    unnamed = _script(f"--workdir={workdir}", f"--out={training_out}", name="webb_training.py")
    assert unnamed.returncode == 2 and "name one with --trial" in unnamed.stderr
    shown = _script(
        f"--workdir={workdir}", "--trial=1", "--modules=3", f"--out={training_out}", name="webb_training.py"
    )
    assert shown.returncode == 0, shown.stdout[-3000:] + shown.stderr[-5000:]
    with open(training_out / "training.csv") as f:
        curve = list(csv.DictReader(f))
    summary = json.load(open(workdir / "summary.json"))
    # The run holds both learning rates per λ; the analysis shows the one selection.csv picked.
    picked = {
        float(c["lam"]): float(c["learning_rate"])
        for c in candidates
        if c["selected"] == "True" and c["architecture"] == "4x64" and c["seed"] == "1"
    }
    for lam in (0.0, 1.0):
        mine = [r for r in curve if float(r["lam"]) == lam]
        assert {r["scope"] for r in mine} == {"ensemble", "member"}
        assert {r["member"] for r in mine if r["scope"] == "member"} == {"0", "1", "2", "3"}
        last = max(mine, key=lambda r: float(r["epoch"]))["epoch"]
        final = next(r for r in mine if r["scope"] == "ensemble" and r["epoch"] == last)
        group = next(
            g for g in summary["groups"] if (g["lam"], g["grid"]) == (lam, {"seed": 1, "learning_rate": picked[lam]})
        )
        assert float(final["test_error"]) == group["test"]["ensemble_error"]
    with open(training_out / "modules.csv") as f:
        module_rows = list(csv.DictReader(f))
    assert len(module_rows) == 2 * 4 and all(0 < float(r["top_class_share"]) <= 1 for r in module_rows)
    confusion = json.load(open(training_out / "results.json"))["confusion"]
    assert len(confusion["0"]) == 3 and np.allclose(np.asarray(confusion["1"]).sum(-1), 1.0)
    for name in ("fig8_filters.png", "fig9_training.png", "fig10_confusion.png"):
        assert (training_out / name).read_bytes().startswith(b"\x89PNG")
