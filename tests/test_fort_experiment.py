"""experiments/fort_diversity.py end to end on a small MNIST-1D run (about a minute on 2 cores; the shifted and
OOD variant is marked slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, small_config

from jaxens import data as data_lib
from jaxens import run

sys.path.insert(0, os.path.join(REPO, "experiments"))
import fort_diversity  # noqa: E402


@pytest.fixture(scope="module")
def snapshot_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fort") / "run"
    config = small_config(**{"trajectory.every": "4it", "data.val_size": 500, "train.num_epochs": 3})
    run.train_and_evaluate(config, str(workdir))
    return workdir


ARGS = [
    "--threshold=0.2",
    "--plane_strengths=3",
    "--plane_repeats=1",
    "--samples=2",
    "--window=3",
    "--rank=2",
    "--num_shifted=200",
    "--tsne_examples=100",
]


@pytest.mark.slow  # About 30 s; the next test runs the same script on the same run in the default suite.
def test_fort_diversity_writes_the_plane_and_refuses_to_overwrite(snapshot_run, tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        os.path.join(REPO, "experiments", "fort_diversity.py"),
        f"--workdir={snapshot_run}",
        f"--out={out}",
        *ARGS,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "independent optima more diverse" in proc.stdout
    results = json.load(open(out / "results.json"))
    methods = {r["method"] for r in results["plane"]["rows"]}
    assert {"random", "dropout", "diagonal", "low_rank", "weight_average", "independent"} <= methods
    # The base member against itself would be (its accuracy, 0): the independent optima disagree with it.
    assert all(r["disagreement"] > 0 for r in results["plane"]["rows"] if r["method"] == "independent")
    # Fig. S6: an exponent fitted to the subspace samples, pooled and per method.
    fits = results["plane"]["family_fit"]
    assert set(fits) == {"pooled", "random", "dropout", "diagonal", "low_rank"}
    assert all(0 < f["exponent"] <= 10 and f["points"] > 0 for f in fits.values())
    assert "Fig. S6, exponent e" in proc.stdout
    # The tidy tables and the figures of Fig. 2-4, 6, 8 and 9.
    headers = {name: (out / name).read_text().splitlines()[0] for name in ("plane.csv", "comparison.csv", "js.csv")}
    assert headers == {
        "plane.csv": "method,strength,accuracy,disagreement,normalized",
        "comparison.csv": "set,size,variant,method,accuracy,nll,brier",
        "js.csv": "set,method,members,js",
    }
    for name in ("fig2_trajectory.png", "fig6_plane.png", "fig8_ensembles.png", "fig9_shift.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG"), name
    before = {f: (out / f).read_bytes() for f in os.listdir(out)}
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "refusing to overwrite" in again.stderr
    assert {f: (out / f).read_bytes() for f in os.listdir(out)} == before


@pytest.mark.slow
def test_the_runs_shifted_and_ood_sets_join_the_comparison(snapshot_run, tmp_path, monkeypatch):
    """A run's config.eval.shifted sets are scored (accuracy, NLL, Brier) and its OOD sets enter the JS
    divergence only. CIFAR-10-C / SVHN cannot be had here: stand-ins with MNIST-1D's shape and classes."""
    restored = run.restore(str(snapshot_run))
    x, y = np.asarray(restored.dataset.test_x[:300]), np.asarray(restored.dataset.test_y[:300])
    rng = np.random.default_rng(0)
    extra = {
        "shifted_standin": data_lib.EvalSet(x=x + rng.normal(size=x.shape).astype(np.float32), y=y, kind="shifted"),
        "ood_standin": data_lib.EvalSet(x=rng.normal(size=x.shape).astype(np.float32) * 3, y=y, kind="ood"),
    }
    monkeypatch.setattr(data_lib, "load_eval_sets", lambda config: extra)
    fort_diversity.main([f"--workdir={snapshot_run}", f"--out={tmp_path / 'out'}", *ARGS])
    results = json.load(open(tmp_path / "out" / "results.json"))
    scored = {r["set"] for r in results["comparison"]}
    assert "shifted_standin" in scored and "ood_standin" not in scored
    assert {"shifted_standin", "ood_standin"} <= {r["set"] for r in results["js"]}
