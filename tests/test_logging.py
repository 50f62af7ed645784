"""TensorBoard event files read back by TensorBoard's own reader, results loaded as a DataFrame, and the
package installed from a wheel running the CLI from an unrelated directory."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, load_config_file, small_config, tensorboard_scalars
from tensorboard.backend.event_processing import event_accumulator

from jaxens import results, run, sweep


def _jsonl(workdir) -> list[dict]:
    return [json.loads(line) for line in open(os.path.join(str(workdir), "metrics.jsonl"))]


def test_the_quickstart_config_writes_tensorboard_scalars_equal_to_its_metrics_log(tmp_path):
    """configs/mnist1d_ensemble.py (2 epochs): per-member and ensemble scalars under the documented tags, at
    the logged steps, equal to metrics.jsonl; the step rate and the config as text."""
    config = load_config_file("mnist1d_ensemble.py")
    config.train.num_epochs = 2
    config.eval.every_epochs = 1
    run.train_and_evaluate(config, str(tmp_path))
    scalars = tensorboard_scalars(tmp_path)

    records = _jsonl(tmp_path)
    assert records
    expected = {}
    for r in records:  # An independent mapping of the documented tag scheme.
        who = "ensemble" if r["scope"] == "ensemble" else f"member_{r['member']}"
        expected.setdefault(("members", f"{r['split']}/{who}/{r['metric']}"), []).append((r["step"], r["value"]))
    metric_scalars = {key: v for key, v in scalars.items() if not key[1].startswith("perf/")}
    assert metric_scalars.keys() == expected.keys()
    for key, points in expected.items():
        steps, values = zip(*metric_scalars[key])
        assert list(steps) == [s for s, _ in points], key
        np.testing.assert_allclose(values, [v for _, v in points], rtol=1e-6, err_msg=str(key))

    tags = {tag for _, tag in scalars}
    for tag in ("train/member_0/loss", "train/member_3/error", "test/ensemble/error", "test/ensemble/nll",
                "test/ensemble/ece", "test/ensemble/mace", "test/member_2/mace", "test/ensemble/sym_kl",
                "test/ensemble/disagreement", "perf/steps_per_s", "perf/examples_per_s"):  # fmt: skip
        assert tag in tags, tag
    spe = 4000 // config.train.batch_size
    assert [s for s, _ in scalars[("members", "perf/steps_per_s")]] == [spe, 2 * spe]
    assert all(v > 0 for _, v in scalars[("members", "perf/steps_per_s")])

    acc = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard" / "members"))
    acc.Reload()
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"dataset": "mnist1d"' in text and '"widths": [\n' in text


def test_a_spawn_run_writes_one_tensorboard_run_per_group():
    """Tag scheme of a spawning run's groups (pure: the run names of records)."""
    from jaxens import tensorboard_log

    assert tensorboard_log.run_name("parent", None, None) == "parent"
    assert tensorboard_log.run_name("members", 16, None) == "t=16"
    assert tensorboard_log.run_name("members", None, 0.5) == "lam=0.5"
    assert tensorboard_log.run_name("members", 8, 1.0) == "t=8,lam=1"
    assert tensorboard_log.run_name("members", None, None) == "members"
    assert tensorboard_log.tag("val", "member", 3, "nll") == "val/member_3/nll"
    assert tensorboard_log.tag("test", "ensemble", None, "mace") == "test/ensemble/mace"


def test_a_run_resumed_in_the_same_process_and_second_keeps_the_earlier_events(tmp_path):
    """Two Boards on one workdir within one second (a run resumed in-process, as in a notebook): the second
    writes a file of its own, sorted after the first, whose purge drops only the steps it rewrites."""
    from jaxens import tensorboard_log

    def rows(steps, value):
        return [dict(phase="members", step=s, t=None, lam=None, split="test", scope="ensemble", member=None,
                     metric="error", value=value + s) for s in steps]  # fmt: skip

    first = tensorboard_log.Board(str(tmp_path), {"seed": 0})
    first.write(rows([8, 16, 24], 0.0))
    first.close()
    second = tensorboard_log.Board(str(tmp_path), {"seed": 0})
    second.write(rows([24], 100.0))  # Resumed from step 16: step 24 again, with other values.
    second.close()
    assert len(os.listdir(tmp_path / "tensorboard" / "members")) == 2
    assert tensorboard_scalars(tmp_path)[("members", "test/ensemble/error")] == [(8, 8.0), (16, 16.0), (24, 124.0)]


def test_results_load_of_a_two_run_sweep_equals_the_runs_metrics_logs(tmp_path):
    """Every row of `results.load(sweep root)` is one metrics.jsonl record of its run, with that run's config
    fields; and `load(one workdir)` gives that run's rows alone."""
    runs = {
        "lr0.05": small_config(**{"train.num_epochs": 2, "eval.every_epochs": 1}),
        "lr0.2": small_config(**{"train.num_epochs": 2, "eval.every_epochs": 1, "optimizer.learning_rate": 0.2}),
    }
    root = tmp_path / "sweep"
    sweep.run_all(runs, str(root))

    df = results.load(str(root))
    assert list(df.columns[:11]) == ["run", *results.RECORD_COLUMNS]
    assert {"optimizer.learning_rate", "ensemble.k", "model.widths", "dataset"} <= set(df.columns)
    assert sorted(df["run"].unique()) == ["lr0.05", "lr0.2"]
    for name, config in runs.items():
        mine = df[df["run"] == name]
        records = _jsonl(root / name)
        assert len(mine) == len(records)
        for (_, row), r in zip(mine.iterrows(), records):
            assert (row["phase"], row["step"], row["split"], row["scope"], row["metric"]) == (
                r["phase"], r["step"], r["split"], r["scope"], r["metric"],
            )  # fmt: skip
            assert row["value"] == r["value"]
            assert (pd.isna(row["member"]) and r["member"] is None) or row["member"] == r["member"]
            assert pd.isna(row["t"]) and r["t"] is None
        assert (mine["optimizer.learning_rate"] == config.optimizer.learning_rate).all()
        assert (mine["model.widths"] == (32,)).all()

    # The query users write: final ensemble test error per learning rate.
    final = df[(df.split == "test") & (df.scope == "ensemble") & (df.metric == "error") & (df.step == df.step.max())]
    by_lr = final.set_index("optimizer.learning_rate")["value"].to_dict()
    for name, config in runs.items():
        summary = json.load(open(root / name / "summary.json"))
        assert by_lr[config.optimizer.learning_rate] == pytest.approx(summary["test"]["ensemble_error"])

    one = results.load(str(root / "lr0.2"))
    assert set(one["run"]) == {"lr0.2"} and len(one) == len(_jsonl(root / "lr0.2"))
    assert list(results.load(str(root), config_fields=["seed"]).columns) == ["run", *results.RECORD_COLUMNS, "seed"]
    with pytest.raises(KeyError, match="no.such"):
        results.load(str(root), config_fields=["no.such"])
    with pytest.raises(FileNotFoundError, match="no run"):
        results.load(str(tmp_path / "sweep" / "lr0.2" / "checkpoints"))


@pytest.mark.slow  # Builds and installs a wheel; CI's own install (.ci/run) covers the packaging each time.
def test_a_wheel_installed_elsewhere_trains_with_a_packaged_config(tmp_path):
    """`pip wheel .` holds the package, its configs and py.typed; installed into a directory of its own, the
    CLI runs from an unrelated working directory with --config naming a packaged config."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), REPO],
        check=True,
        capture_output=True,
    )
    (wheel,) = glob.glob(str(wheels / "jaxens-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "jaxens/py.typed" in names and "jaxens/configs/resnet20_spawn.py" in names
    assert "jaxens/models/conv.py" in names and "jaxens/metrics/calibration.py" in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "experiments/"))]

    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), wheel],
        check=True,
        capture_output=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site), CI="true")
    where = subprocess.run(
        [sys.executable, "-c", "import jaxens; print(jaxens.__file__)"], cwd=elsewhere, env=env,
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert where.stdout.strip().startswith(str(site))
    overrides = ["--config.train.num_epochs=1", "--config.ensemble.k=2", "--config.model.widths=(16,)"]
    for spec in ("configs/mnist1d_ensemble.py", "mnist1d_ensemble"):
        workdir = tmp_path / f"run-{spec.replace('/', '_')}"
        proc = subprocess.run(
            [sys.executable, "-m", "jaxens.train", f"--config={spec}", f"--workdir={workdir}", *overrides],
            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert json.load(open(workdir / "summary.json"))["k"] == 2
    proc = subprocess.run(
        [sys.executable, "-m", "jaxens.train", "--config=configs/no_such.py", f"--workdir={tmp_path / 'x'}"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--config=configs/no_such.py: no such file, nor an installed config" in proc.stderr
    assert "mnist1d_spawn" in proc.stderr and not (tmp_path / "x").exists()
