"""experiments/fort_radial.py and experiments/fort_csgmcmc.py end to end on tiny settings (real MNIST-1D runs
through the CLI, real subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from conftest import REPO

TINY = ["model.widths=(16,)", "train.num_epochs=2", "train.batch_size=500", "trajectory.every=1ep"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=dict(os.environ, CI="true"), capture_output=True, text=True, timeout=600
    )


def test_fort_radial_writes_the_plane_the_tunnel_and_both_figures(tmp_path):
    run = tmp_path / "run"
    trained = _run(
        "-m", "jaxens.train", "--config=configs/mnist1d_ensemble.py", f"--workdir={run}", "--config.ensemble.k=2",
        *[f"--config.{item}" for item in TINY],
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-5000:]
    out = tmp_path / "radial"
    args = ["--grid=5", "--steps=20", "--path_points=5", "--num_test=200", "--num_train_eval=200", "--chunk=25"]
    radial = _run(os.path.join(REPO, "experiments", "fort_radial.py"), f"--workdir={run}", f"--out={out}", *args)
    assert radial.returncode == 0, radial.stdout[-3000:] + radial.stderr[-5000:]
    plane = json.loads((out / "plane.json").read_text())
    assert plane["grid_shape"] == [5, 5] and plane["members"] == [0, 1]
    error = np.asarray(plane["error"])
    assert error.size == 25 and np.all((0 <= error) & (error <= 1))  # The 5 × 5 grid, flattened.
    trajectories = plane["trajectories"]  # Both members' snapshots (ticks 0, 8, 16) projected onto the plane.
    assert {"0", "1"} <= set(trajectories) and trajectories["steps"] == [0, 8, 16]
    tunnel = json.loads((out / "tunnel.json").read_text())
    assert set(tunnel["paths"]) == {"train/linear", "train/tunnel", "test/linear", "test/tunnel"}
    cut = tunnel["radial_cut"]  # Fig. S3: 5 positions along the tunnel × 21 radii from 0 to 1.3, and r = 1.
    assert np.asarray(cut["error"]).shape == (5, 22) and cut["r"][0] == 0 and abs(cut["r"][-1] - 1.3) < 1e-6
    # At r = 1 the cut is the tunnel itself: the same test error as the tunnel's path at every t.
    on_tunnel = np.asarray(cut["error"])[:, cut["r"].index(1.0)]
    np.testing.assert_allclose(on_tunnel, tunnel["paths"]["test/tunnel"]["error"], atol=1e-6)
    for name in ("fig5.png", "figS2.png", "figS3.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG")
    again = _run(os.path.join(REPO, "experiments", "fort_radial.py"), f"--workdir={run}", f"--out={out}", *args)
    assert again.returncode != 0 and "overwrite" in again.stderr + again.stdout  # Results are never replaced.


def test_fort_csgmcmc_compares_chains_with_independent_members(tmp_path):
    out = tmp_path / "csgmcmc"
    tiny = [
        *TINY,
        "train.num_epochs=4",
        "train.checkpoint_every=1ep",
        "optimizer.cycles=2",
        "optimizer.samples_per_cycle=2",
    ]
    sets = [f"--set={item}" for item in tiny]
    first = _run(os.path.join(REPO, "experiments", "fort_csgmcmc.py"), f"--out={out}", *sets)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["summary"]) == {"within_chain", "across_chains", "independent"}
    # 3 chains × 2 cycles of 2 epochs × 2 samples (the ends of both epochs) against 3 independent members.
    assert np.asarray(results["test_error"]["csgmcmc"]).shape == (4, 3)
    assert len(results["test_error"]["independent"]) == 3
    assert results["summary"]["independent"]["disagreement"]["pairs"] == 3
    assert (out / "fig_s5.png").read_bytes().startswith(b"\x89PNG")
    bad = _run(os.path.join(REPO, "experiments", "fort_csgmcmc.py"), f"--out={tmp_path / 'x'}", "--set=ensemble.kk=2")
    assert bad.returncode != 0 and "ensemble.kk" in bad.stderr
