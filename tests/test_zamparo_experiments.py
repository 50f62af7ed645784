"""The Zamparo et al. figure scripts end to end on a tiny setting (real MNIST-1D runs, real subprocesses)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

TINY = [
    "--times=0ep,1ep",
    "--seeds=0",
    "--set=model.widths=(16,)",
    "--set=ensemble.k=2",
    "--set=train.num_epochs=2",
    "--set=train.batch_size=500",
    "--set=eval.every_epochs=1",
    "--set=train.checkpoint_every=1ep",
]


def _script(name: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, CI="true")
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "experiments", name), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_coupling_sweep_writes_table_and_figure_and_a_rerun_trains_nothing(tmp_path):
    out = tmp_path / "coupling"
    args = [f"--out={out}", *TINY, "--seeds=0,1"]  # Two parents: Fig. 1f compares their ensembles.
    first = _script("zamparo_coupling.py", *args)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
    assert "1 runs (1 trained now, 0 finished before)" in first.stdout  # The whole figure: one grid program.
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == ("seed", "condition", "t", "t_epochs", "t_label", "metric", "value")
    # Two spawn times under both spawning conditions, one group without coupling; six metrics and the gain.
    groups = {(r["condition"], r["t_label"]) for r in rows}
    assert groups == {
        ("coupled_to_t", "0ep"),
        ("coupled_to_t", "1ep"),
        ("coupled_to_t_reset", "0ep"),
        ("coupled_to_t_reset", "1ep"),
        ("no_coupling", ""),
        ("coupled_order", ""),
    }
    assert len(rows) == 2 * 6 * 7
    assert all(0 <= float(r["value"]) for r in rows if r["metric"] != "accuracy_gain")
    by = {(r["seed"], r["condition"], r["t_label"], r["metric"]): float(r["value"]) for r in rows}
    for (seed, condition, t, metric), value in by.items():  # Accuracy gain = member error − ensemble error.
        if metric == "accuracy_gain":
            members, ensemble = (
                by[(seed, condition, t, "mean_member_error")],
                by[(seed, condition, t, "ensemble_error")],
            )
            assert value == pytest.approx(members - ensemble, abs=1e-12)
    verdicts = json.loads((out / "results.json").read_text())["verdicts"]
    assert set(verdicts) == {"coupled_to_t", "coupled_to_t_reset", "coupled_order"}
    spawning = [verdicts[c] for c in ("coupled_to_t", "coupled_to_t_reset")]
    assert all(v["calibration"] == v["mace"] or v["calibration"].startswith("no conclusion") for v in spawning)
    # Zamparo §2: coupled_order against no_coupling, a verdict per metric with both means.
    assert set(verdicts["coupled_order"]) == {"ensemble_error", "ensemble_mace", "ensemble_ece", "accuracy_gain"}
    assert all(v.split(" ")[0] in ("indistinguishable", "differs") for v in verdicts["coupled_order"].values())
    # t = 0: a child of the untrained parent under coupled_to_t is the same as under the reset condition.
    at0 = {r["condition"]: float(r["value"]) for r in rows if r["t_label"] == "0ep" and r["metric"] == "ensemble_error"}
    assert at0["coupled_to_t"] == at0["coupled_to_t_reset"]
    png = (out / "coupling.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    grid_config = json.loads((out / "runs" / "grid" / "config.json").read_text())
    assert grid_config["grid"]["seed"] == [0, 1] and grid_config["coupling"]["t"] == ["0ep", "1ep"]
    boards = set(os.listdir(out / "runs" / "grid" / "tensorboard"))  # One TensorBoard run per group and parent.
    assert {"parent,seed=0", "parent,seed=1", "seed=1,condition=coupled_to_t_reset,t=8"} <= boards

    with open(out / "members.csv") as f:
        members = list(csv.DictReader(f))
    assert len(members) == 2 * 6 * 2  # Seeds × groups × k.
    with open(out / "ensemble_kl.csv") as f:
        kls = list(csv.DictReader(f))
    assert tuple(kls[0]) == ("condition", "t", "t_epochs", "t_label", "seed_a", "seed_b", "sym_kl")
    assert {(r["condition"], r["t_label"], r["seed_a"], r["seed_b"]) for r in kls} == {
        (c, t, "0", "1") for c in ("coupled_to_t", "coupled_to_t_reset") for t in ("0ep", "1ep")
    }
    assert all(float(r["sym_kl"]) > 0 for r in kls)  # Different parents: different ensembles.
    assert (out / "diversity.png").read_bytes().startswith(b"\x89PNG")

    tables = {name: (out / name).read_bytes() for name in ("results.csv", "members.csv", "ensemble_kl.csv")}
    os.unlink(out / "coupling.png")
    again = _script("zamparo_coupling.py", *args)
    assert again.returncode == 0, again.stderr[-5000:]
    assert "1 runs (0 trained now, 1 finished before)" in again.stdout
    for name, table in tables.items():
        assert (out / name).read_bytes() == table, name  # Rebuilt from the stored summaries.
    assert (out / "coupling.png").read_bytes().startswith(b"\x89PNG")
    assert json.loads((out / "results.json").read_text())["settings"]["seeds"] == [0, 1]


def test_coupling_sweep_refuses_a_bad_override_before_any_run(tmp_path):
    bad = _script("zamparo_coupling.py", f"--out={tmp_path / 'x'}", "--set=ensemble.kk=2")
    assert bad.returncode == 2 and "ensemble.kk" in bad.stderr
    assert not (tmp_path / "x").exists()


def test_reinit_sweep_writes_table_barriers_and_figure(tmp_path):
    out = tmp_path / "reinit"
    args = [
        f"--out={out}", "--config=configs/mnist1d_spawn.py", "--time=1ep", "--fractions=0,0.2",
        *[a for a in TINY if not a.startswith("--times")],
    ]  # fmt: skip
    first = _script("zamparo_reinit.py", *args)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
    assert "4 runs (4 trained now, 0 finished before)" in first.stdout
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == ("seed", "side", "fraction", "metric", "value")
    points = {(r["side"], float(r["fraction"])) for r in rows}
    assert points == {("none", 0.0), ("low", 0.2), ("high", 0.2), ("no_coupling", 0.0)}
    barriers = {r["side"]: float(r["value"]) for r in rows if r["metric"] == "error_barrier"}
    assert set(barriers) == {"none", "low", "high"} and all(b >= 0 for b in barriers.values())
    # Whole layers of the 40-16-10 MLP (826 parameters) until 20% (165.2) are covered: from the input side
    # the first layer (640 + 16); from the output side the head (160 + 10).
    share = {r["side"]: float(r["value"]) for r in rows if r["metric"] == "reinitialized"}
    assert share["none"] == 0 and abs(share["low"] - 656 / 826) < 1e-6 and abs(share["high"] - 170 / 826) < 1e-6
    # The re-initialized runs spawned from the f = 0 run's parent; each child re-drew 30% of the parameters.
    low = json.loads((out / "runs" / "s0_low0.2" / "config.json").read_text())["coupling"]
    assert low["parent_dir"] == str(out / "runs" / "s0_f0") and low["reinit_side"] == "low"
    assert (out / "reinit.png").read_bytes().startswith(b"\x89PNG")

    table = (out / "results.csv").read_bytes()
    again = _script("zamparo_reinit.py", *args)
    assert again.returncode == 0, again.stderr[-5000:]
    assert "4 runs (0 trained now, 4 finished before)" in again.stdout
    assert (out / "results.csv").read_bytes() == table


def test_forgetting_sweep_counts_test_events_per_epoch(tmp_path):
    out = tmp_path / "forgetting"
    args = [f"--out={out}", "--window=2", *[a for a in TINY if "num_epochs" not in a], "--set=train.num_epochs=3"]
    first = _script("zamparo_forgetting.py", *args)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
    with open(out / "forgetting.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == ("seed", "condition", "t_label", "epoch", "member", "events")
    # 3 epochs × 2 members for the independent run; 3 epochs × 2 children for each of the 2 spawn times.
    assert len(rows) == 3 * 2 + 2 * 3 * 2
    assert {r["epoch"] for r in rows} == {"1", "2", "3"}
    # Events are counts of the 1000 test examples that were right at one evaluation and wrong at the next.
    assert all(0 <= int(r["events"]) <= 1000 for r in rows) and any(int(r["events"]) > 0 for r in rows)
    # Re-derived from the snapshots: member 0 of the independent run, epoch 1 (the initialization → epoch 1).
    import jax.numpy as jnp
    import numpy as np

    from jaxens import ensemble as ensemble_lib
    from jaxens import run, trajectory

    workdir = str(out / "runs" / "s0_no_coupling")
    restored = run.restore(workdir)
    x, y = restored.dataset.normalize(restored.dataset.test_x), np.asarray(restored.dataset.test_y)
    right = []
    for tick in trajectory.steps(workdir)[:2]:
        params, stats = trajectory.load(workdir, at=[tick]).member(0)
        params, stats = (jax_tree_first(params), jax_tree_first(stats))
        logits = ensemble_lib.member_logits(restored.model, params, stats, x)
        right.append(np.asarray(jnp.argmax(logits, -1)) == y)
    expected = int(np.sum(right[0] & ~right[1]))
    got = next(
        int(r["events"]) for r in rows if r["condition"] == "no_coupling" and r["epoch"] == "1" and r["member"] == "0"
    )
    assert got == expected
    assert (out / "forgetting.png").read_bytes().startswith(b"\x89PNG")

    table = (out / "forgetting.csv").read_bytes()
    again = _script("zamparo_forgetting.py", *args)
    assert again.returncode == 0 and "2 runs (0 trained now, 2 finished before)" in again.stdout
    assert (out / "forgetting.csv").read_bytes() == table


def jax_tree_first(tree):
    """Leaves [1, ...] → [...] (one snapshot)."""
    import jax

    return jax.tree.map(lambda a: a[0], tree)
