"""experiments/fort_diversity.py end to end on a small MNIST-1D run (slow: a few minutes on 2 cores)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, small_config

from jaxens import run


@pytest.mark.slow
def test_fort_diversity_writes_the_plane_and_refuses_to_overwrite(tmp_path):
    workdir = tmp_path / "run"
    config = small_config(**{"trajectory.every": "4it", "data.val_size": 500, "train.num_epochs": 3})
    run.train_and_evaluate(config, str(workdir))
    out = tmp_path / "out"
    cmd = [sys.executable, os.path.join(REPO, "experiments", "fort_diversity.py"), f"--workdir={workdir}",
           f"--out={out}", "--threshold=0.2", "--plane_strengths=3", "--plane_repeats=1", "--samples=2",
           "--window=3", "--rank=2", "--num_shifted=200", "--tsne_examples=100"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "independent optima more diverse" in proc.stdout
    results = json.load(open(out / "results.json"))
    methods = {r["method"] for r in results["plane"]["rows"]}
    assert {"random", "dropout", "diagonal", "low_rank", "weight_average", "independent"} <= methods
    # The base member against itself would be (its accuracy, 0): the independent optima disagree with it.
    assert all(r["disagreement"] > 0 for r in results["plane"]["rows"] if r["method"] == "independent")
    before = {f: (out / f).read_bytes() for f in os.listdir(out)}
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "refusing to overwrite" in again.stderr
    assert {f: (out / f).read_bytes() for f in os.listdir(out)} == before
