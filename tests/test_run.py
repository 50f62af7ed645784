"""End to end: training reaches its accuracy, the CLI as a real subprocess, checkpoints, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import REPO, load_config_file, small_config

from jaxens import checkpoint as checkpoint_lib
from jaxens import data as data_lib
from jaxens import ensemble as ensemble_lib
from jaxens import models, optim, run, train_chunk
from jaxens import rng as rng_lib


def _cli(workdir, *overrides, config="configs/mnist1d_ensemble.py", **kwargs):
    cmd = [sys.executable, "-m", "jaxens.train", f"--config={config}", f"--workdir={workdir}", *overrides]
    env = dict(os.environ, CI="true")
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_mlp_ensemble_accuracy_on_mnist1d(tmp_path):
    """4 MLP members, 30 epochs: each member below 42% test error, the ensemble below 38% and below the
    mean member (measured here: members 0.333-0.343, ensemble 0.300)."""
    config = small_config(
        **{
            "ensemble.k": 4,
            "model.widths": (256, 256),
            "optimizer.schedule": "cosine",
            "train.batch_size": 100,
            "train.num_epochs": 30,
            "train.steps_per_call": 40,
            "eval.every_epochs": 10,
        }
    )
    summary = run.train_and_evaluate(config, str(tmp_path))
    test = summary["test"]
    assert max(test["member_error"]) < 0.42
    assert test["ensemble_error"] < 0.38
    assert test["ensemble_error"] <= test["mean_member_error"]
    assert test["ensemble_nll"] < min(test["member_nll"])
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert sorted({r["epoch"] for r in records}) == [10, 20, 30]
    assert json.load(open(tmp_path / "summary.json")) == summary
    assert 0 < summary["train_time_s"] < summary["wall_time_s"]  # The steps, within the run's evaluations.


def test_augmented_cnn_run_with_validation_split_and_coupled_order(tmp_path):
    """Digits, 3 CNN members sharing their data order, crop+flip on device, 200 examples held out:
    metrics.jsonl holds train, val and test rows; the members learn (chance is 0.9 error)."""
    config = small_config(
        **{
            "dataset": "digits",
            "model.name": "cnn2d",
            "model.widths": (16, 32),
            "train.batch_size": 64,
            "train.num_epochs": 6,
            "train.steps_per_call": 10,
            "data.augment": "crop_flip",
            "data.crop_padding": 1,
            "data.val_size": 200,
            "coupling.condition": "coupled_order",
            "eval.every_epochs": 3,
        }
    )
    summary = run.train_and_evaluate(config, str(tmp_path))
    assert summary["steps"] == 6 * (1297 // 64)
    assert max(summary["test"]["member_error"]) < 0.5
    assert 0 <= summary["eval"]["val"]["ensemble_error"] < 0.5 and len(summary["eval"]["val"]["member_nll"]) == 3
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert {(r["split"], r["epoch"]) for r in records} == {(s, e) for s in ("train", "val", "test") for e in (3, 6)}


def test_summary_metrics_match_a_numpy_rederivation_from_the_final_members(tmp_path, mnist1d):
    """The trainer's evaluation (error, NLL, Brier, MACE, diversity) recomputed in NumPy from the logits of
    the restored final members: the summary is what the formulas give."""
    config = small_config(**{"ensemble.k": 3, "train.num_epochs": 1})
    summary = run.train_and_evaluate(config, str(tmp_path))
    model = models.build(config.model, 10)
    tx = optim.make_optimizer(config.optimizer, 1)
    like = ensemble_lib.init_ensemble(model, tx, rng_lib.member_streams(0, 3), (40, 1))
    ckpt = checkpoint_lib.Checkpointer(str(tmp_path / "checkpoints"))
    state = ckpt.restore(ckpt.latest_step(), like)
    dataset = mnist1d.to_device()
    logits = np.asarray(ensemble_lib.Predictor(model, 1000, "vmap")(state, dataset.test_x, dataset), np.float64)
    y = np.asarray(mnist1d.test_y)
    z = logits - logits.max(-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)  # [K, N, C]
    ens = p.mean(0)
    onehot = np.eye(10)[y]
    conf, correct = ens.max(-1), ens.argmax(-1) == y
    bins = np.minimum((conf * 15).astype(int), 14)
    gaps = [abs(correct[bins == b].mean() - conf[bins == b].mean()) for b in range(15) if np.any(bins == b)]
    pairs = [(i, j) for i in range(3) for j in range(i + 1, 3)]
    sym_kl = np.mean([np.mean(np.sum((p[i] - p[j]) * (np.log(p[i]) - np.log(p[j])), -1)) for i, j in pairs])
    disagree = np.mean([np.mean(p[i].argmax(-1) != p[j].argmax(-1)) for i, j in pairs])
    test = summary["test"]
    assert test["ensemble_error"] == pytest.approx(np.mean(~correct), abs=1e-6)
    assert test["ensemble_nll"] == pytest.approx(-np.mean(np.log(ens[np.arange(len(y)), y])), rel=1e-4)
    assert test["ensemble_brier"] == pytest.approx(np.mean(np.sum((ens - onehot) ** 2, -1)), rel=1e-4)
    assert test["ensemble_mace"] == pytest.approx(np.mean(gaps), abs=1e-4)
    np.testing.assert_allclose(test["member_brier"], np.mean(np.sum((p - onehot) ** 2, -1), -1), rtol=1e-4)
    assert test["ensemble_sym_kl"] == pytest.approx(sym_kl, rel=1e-3)
    assert test["ensemble_disagreement"] == pytest.approx(disagree, abs=1e-6)


def test_checkpoint_restore_gives_identical_arrays(tmp_path, mnist1d):
    config = small_config(**{"model.name": "cnn1d", "model.widths": (8,)})
    dataset = mnist1d.to_device()
    model = models.build(config.model, 10)
    tx = optim.make_optimizer(config.optimizer, 100)
    state = ensemble_lib.init_ensemble(model, tx, rng_lib.member_streams(5, 3), dataset.input_shape)
    orders = data_lib.epoch_orders(state.rngs.order, np.zeros(3, np.int32), dataset.num_train)
    state, _ = train_chunk.TrainChunk(model, tx, 500, "vmap", "host")(state, orders, dataset, 2)
    ckpt = checkpoint_lib.Checkpointer(str(tmp_path / "ckpt"))
    ckpt.save(2, state)
    fresh = ensemble_lib.init_ensemble(model, tx, rng_lib.member_streams(9, 3), dataset.input_shape)
    restored = ckpt.restore(ckpt.latest_step(), fresh)
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.ensemble.kk=3", "unknown config field 'kk'"),
        (
            "--config.dataset=cifar11",
            "config.dataset='cifar11': unknown dataset; allowed: mnist1d, digits, fashion_mnist",
        ),
    ],
)
def test_cli_bad_config_stops_before_anything(tmp_path, override, message):
    proc = _cli(tmp_path / "run", override)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # Its kill-and-resume coverage runs by default in test_reliability.py (three kill points).
def test_killed_run_resumes_to_the_same_result(tmp_path):
    """SIGKILL after the first checkpoint; rerunning the command resumes and ends bitwise equal to an
    uninterrupted run."""
    args = (
        "--config.train.num_epochs=40",
        "--config.ensemble.k=2",
        "--config.train.checkpoint_every=5ep",
        "--config.train.max_checkpoints=3",
    )
    full = _cli(tmp_path / "full", *args)
    _, err = full.communicate(timeout=300)
    assert full.returncode == 0, err

    killed = tmp_path / "killed"
    proc = _cli(killed, *args)
    ckpt_dir = killed / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ckpt_dir.exists() and any(p.name.isdigit() for p in ckpt_dir.iterdir()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()

    resumed = _cli(killed, *args)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "resuming" in out

    a = json.load(open(tmp_path / "full" / "summary.json"))["test"]
    b = json.load(open(killed / "summary.json"))["test"]
    assert a == b
    # Final checkpoints bitwise equal.
    config = load_config_file("mnist1d_ensemble.py")
    model = models.build(config.model, 10)
    tx = optim.make_optimizer(config.optimizer, 1)
    like = ensemble_lib.init_ensemble(model, tx, rng_lib.member_streams(0, 2), (40, 1))
    states = []
    for d in ("full", "killed"):
        ckpt = checkpoint_lib.Checkpointer(str(tmp_path / d / "checkpoints"))
        states.append(ckpt.restore(ckpt.latest_step(), like))
    for x, y in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # The metrics log holds each evaluation once.
    steps = [
        r["step"]
        for r in map(json.loads, open(killed / "metrics.jsonl"))
        if r["scope"] == "ensemble" and r["metric"] == "error"
    ]
    assert steps == sorted(set(steps)) and len(steps) == 40
