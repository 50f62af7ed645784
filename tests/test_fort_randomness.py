"""experiments/fort_randomness.py (Fort et al. Fig. S4) end to end on tiny MNIST-1D runs (a real subprocess)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

from conftest import REPO

ARGS = ["--learning_rates=0.05", "--seeds=0", "--epochs=1", "--set=model.widths=(16,)", "--set=ensemble.k=2"]


def test_each_source_of_randomness_alone_and_together(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, os.path.join(REPO, "experiments", "fort_randomness.py"), f"--out={out}", *ARGS]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, CI="true"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "randomness.csv") as f:
        rows = list(csv.DictReader(f))
    value = {(r["condition"], r["metric"]): float(r["value"]) for r in rows}
    # Everything shared: the members are the same network, bit for bit (CPU is deterministic).
    assert value["neither", "disagreement"] == 0 and value["neither", "sym_kl"] == 0
    assert abs(value["neither", "weight_cosine"] - 1) < 1e-6
    # Any one source of randomness makes the members differ, in predictions and in weights.
    for condition in ("init_only", "batches_only", "init_and_batches"):
        assert value[condition, "disagreement"] > 0 and value[condition, "weight_cosine"] < 1 - 1e-4, condition
    # The same initialization keeps the weights far more aligned than different ones after one epoch.
    assert value["batches_only", "weight_cosine"] > value["init_only", "weight_cosine"]
    results = json.load(open(out / "results.json"))
    assert results["verdicts"]["identical_without_randomness"] is True
    assert results["verdicts"]["init_dominant"] == {"0.05": "inconclusive"}  # One seed: no spread to judge by.
    assert (out / "randomness.png").read_bytes().startswith(b"\x89PNG")
