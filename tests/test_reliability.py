"""Reliability: kills and SIGTERM resume bitwise, invalid configs cost nothing, a corrupt checkpoint is passed
over, a diverging member is frozen without touching the others, sweeps survive failures."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time

import jax
import numpy as np
import pytest
from conftest import (
    REPO,
    SMALL_SPAWN_ARGS,
    cli,
    cli_in_process,
    finish,
    small_config,
    tensorboard_scalars,
    timeless_summary,
)

from jaxens import checkpoint as checkpoint_lib
from jaxens import run, sweep
from jaxens import workdir as workdir_lib

# A spawn sweep small enough for a test: the parent trains 3 epochs of 8 steps, saving at 8, 16 and 24;
# children spawned at steps 16 and 24 (k = 2 each) train to step 48 together, saving at ticks 8, 16, 24, 32.
# The members track train-side forgetting (config.eval.forgetting), so its trackers resume bit for bit too.
SPAWN_ARGS = (
    *SMALL_SPAWN_ARGS,
    "--config.coupling.t=('2ep','3ep')",
    "--config.eval.every_epochs=1",
    "--config.eval.forgetting=True",
)


def _records(workdir):
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def _assert_same_arrays(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _assert_same_run(workdir, reference):
    """Summary, metrics log, TensorBoard scalars (as TensorBoard reads them: the interrupted run's stale
    events purged) and final members' state equal (bitwise) to those of `reference`."""
    assert timeless_summary(workdir) == timeless_summary(reference)
    assert _records(workdir) == _records(reference)
    metrics_only = lambda scalars: {key: v for key, v in scalars.items() if not key[1].startswith("perf/")}
    assert metrics_only(tensorboard_scalars(workdir)) == metrics_only(tensorboard_scalars(reference))
    mine, theirs = run.restore(str(workdir)), run.restore(str(reference))
    assert mine.step == theirs.step
    _assert_same_arrays(mine.state, theirs.state)


def _tmp_dirs(directory):
    return [p for p in os.listdir(directory) if "tmp" in p]


def test_runs_killed_at_three_points_or_stopped_by_sigterm_end_bitwise_equal(tmp_path):
    """SIGKILL during a parent checkpoint write, right after the spawn and during a children checkpoint
    write, each followed by the same command; and SIGTERM, which saves and exits 143: every one ends
    with the summary, metrics log and parameters of the uninterrupted run."""
    reference = tmp_path / "reference"
    rc, out, err = finish(cli(reference, *SPAWN_ARGS))
    assert rc == 0, err
    assert all(group["train_forgetting"]["events"] for group in timeless_summary(reference)["groups"])

    killed = tmp_path / "killed"
    rc, _, err = finish(cli(killed, *SPAWN_ARGS, kill_at="parent@8"))
    assert rc == -signal.SIGKILL, err
    assert _tmp_dirs(killed / "parent"), "the kill should land while checkpoint 8 is being written"
    assert checkpoint_lib.Checkpointer(str(killed / "parent"), read_only=True).all_steps() == []

    rc, _, err = finish(cli(killed, *SPAWN_ARGS, kill_at="spawn"))
    assert rc == -signal.SIGKILL, err
    assert {16, 24} <= set(checkpoint_lib.Checkpointer(str(killed / "parent"), read_only=True).all_steps())
    assert not (killed / "checkpoints").exists() or not os.listdir(killed / "checkpoints")

    rc, out, err = finish(cli(killed, *SPAWN_ARGS, kill_at="checkpoints@16"))
    assert rc == -signal.SIGKILL, err
    assert _tmp_dirs(killed / "checkpoints")
    assert checkpoint_lib.Checkpointer(str(killed / "checkpoints"), read_only=True).all_steps() == [8]
    assert json.load(open(killed / "status.json"))["status"] == "running"  # Killed: nothing could say otherwise.

    rc, out, err = finish(cli(killed, *SPAWN_ARGS))
    assert rc == 0, err
    assert "resuming" in out and "from step 8" in out
    _assert_same_run(killed, reference)
    assert json.load(open(killed / "status.json"))["status"] == "finished"

    # SIGTERM once the parent's first checkpoint exists: saved, exit 128 + 15, then resumed.
    stopped = tmp_path / "stopped"
    proc = cli(stopped, *SPAWN_ARGS)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (stopped / "parent").is_dir() and checkpoint_lib.Checkpointer(
            str(stopped / "parent"), read_only=True
        ).all_steps():
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    rc, out, err = finish(proc)
    assert rc == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM at step" in err and "Rerun the same command to resume" in err
    status = json.load(open(stopped / "status.json"))
    assert status["status"] == "preempted"
    rc, out, err = finish(cli(stopped, *SPAWN_ARGS))
    assert rc == 0, err
    _assert_same_run(stopped, reference)


def _files(directory):
    """path → (bytes, mtime in ns) of every file under `directory`."""
    out = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            out[os.path.relpath(path, directory)] = (open(path, "rb").read(), os.stat(path).st_mtime_ns)
    return out


def test_a_finished_runs_command_changes_no_file_and_overwrite_replaces_it(tmp_path):
    workdir = tmp_path / "run"
    args = ("--config.train.num_epochs=2", "--config.ensemble.k=2")
    rc, out, err = finish(cli(workdir, *args, config="configs/mnist1d_ensemble.py"))
    assert rc == 0, err
    summary = json.load(open(workdir / "summary.json"))
    assert summary["k"] == 2 and summary["steps"] == 80 and len(summary["test"]["member_error"]) == 2
    assert "member 1:" in out and "ensemble (mean_prob): error" in out
    before = _files(workdir)
    assert {"config.json", "metrics.jsonl", "summary.json", "status.json"} <= set(before)

    rc, out, err = finish(cli(workdir, *args, config="configs/mnist1d_ensemble.py"))
    assert rc == 0 and "ensemble (mean_prob): error" in out, err
    assert _files(workdir) == before

    # Another config: refused, nothing changes; with --overwrite it replaces the run.
    rc, _, err = finish(
        cli(workdir, "--config.train.num_epochs=1", "--config.ensemble.k=2", config="configs/mnist1d_ensemble.py")
    )
    assert rc == 2 and "config.train.num_epochs: 2 there, 1 now" in err and "--overwrite" in err
    assert _files(workdir) == before
    (workdir / "notes.txt").write_text("mine")
    rc, _, err = finish(
        cli(
            workdir,
            "--overwrite",
            "--config.train.num_epochs=1",
            "--config.ensemble.k=2",
            config="configs/mnist1d_ensemble.py",
        )
    )
    assert rc == 0, err
    assert json.load(open(workdir / "summary.json"))["epochs"] == 1
    assert (workdir / "notes.txt").read_text() == "mine"  # Only the run's own files are replaced.


ENSEMBLE = "configs/mnist1d_ensemble.py"
SPAWN = "configs/mnist1d_spawn.py"


@pytest.mark.parametrize(
    "config, overrides, message",
    [
        (ENSEMBLE, ["--config.ensemble.k=0"], "config.ensemble.k=0: must be >= 1"),
        (ENSEMBLE, ["--config.ensemble.kk=3"], "--config.ensemble.kk: unknown config field 'kk'"),
        (ENSEMBLE, ["--config.ensemble.k=three"], "config.ensemble.k"),
        (
            ENSEMBLE,
            ["--config.coupling.condition=coupled_order", "--config.loss.lam=(1.5,)"],
            "config.loss.lam: 1.5 must be a number in [0, 1]",
        ),
        (ENSEMBLE, ["--config.loss.lam=(0.5,)"], "config.loss.lam=(0.5,): the modular loss couples the members"),
        (
            ENSEMBLE,
            ["--config.coupling.condition=sometimes"],
            "config.coupling.condition='sometimes': unknown; allowed",
        ),
        (
            ENSEMBLE,
            ["--config.coupling.condition=coupled_to_t"],
            "config.coupling.t=(): coupled_to_t needs spawn times",
        ),
        (SPAWN, ["--config.coupling.condition=coupled_to_t", "--config.coupling.t=('40ep',)"], "config.coupling.t"),
        (SPAWN, ["--config.coupling.reinit_fraction=1.5"], "config.coupling.reinit_fraction=1.5: must lie in [0, 1]"),
        (
            SPAWN,
            ["--config.coupling.reinit_side=middle"],
            "config.coupling.reinit_side='middle': unknown; allowed: low, high",
        ),
        (ENSEMBLE, ["--config.model.name=resnet7"], "config.model.name='resnet7': unknown; allowed"),
        (ENSEMBLE, ["--config.model.name=cnn2d"], "config.model.name='cnn2d'"),
        (ENSEMBLE, ["--config.dataset=cifar11"], "config.dataset='cifar11': unknown dataset; allowed"),
        (ENSEMBLE, ["--config.optimizer.name=rmsprop"], "config.optimizer.name='rmsprop': unknown; allowed: sgd, adam"),
        (ENSEMBLE, ["--config.optimizer.schedule=linear"], "config.optimizer.schedule='linear': unknown; allowed"),
        (
            ENSEMBLE,
            ["--config.ensemble.strategy=pmap"],
            "config.ensemble.strategy='pmap': unknown; allowed: auto, vmap, loop",
        ),
        (ENSEMBLE, ["--config.train.batch_size=5000"], "config.train.batch_size=5000: larger than the 4000"),
        (ENSEMBLE, ["--config.optimizer.learning_rate=0"], "config.optimizer.learning_rate=0.0: must be > 0"),
        (ENSEMBLE, ["--config.train.num_epochs=0"], "config.train.num_epochs=0: must be >= 1"),
        (
            ENSEMBLE,
            ["--config.train.checkpoint_every=0it"],
            "config.train.checkpoint_every='0it': must be at least one step",
        ),
        (ENSEMBLE, ["--config.train.checkpoint_every=often"], "config.train.checkpoint_every='often'"),
        (
            ENSEMBLE,
            ["--config.train.on_divergence=explode"],
            "config.train.on_divergence='explode': unknown; allowed: freeze, stop",
        ),
        (
            ENSEMBLE,
            ["--config.optimizer.member_lr_scale=(1.0,2.0)"],
            "config.optimizer.member_lr_scale=(1.0, 2.0): needs one",
        ),
        (ENSEMBLE, ["--config.optimizer.member_lr_scale=(1.0,2.0,-1.0,1.0)"], "config.optimizer.member_lr_scale"),
        (ENSEMBLE, ["--config.eval.every_epochs=0"], "config.eval.every_epochs=0: must be >= 1"),
        (ENSEMBLE, ["--config.data.val_size=4000"], "config.data.val_size=4000: must be < the 4000"),
        (ENSEMBLE, ["--config.model.dropout=1.0"], "config.model.dropout=1.0: must lie in [0, 1)"),
    ],
)
@pytest.mark.parametrize("existing", [False, True], ids=["new_workdir", "existing_workdir"])
def test_an_invalid_config_exits_2_naming_the_field_and_writes_nothing(
    tmp_path, monkeypatch, capsys, config, overrides, message, existing
):
    workdir = tmp_path / "run"
    if existing:  # An unfinished run's directory with the default config: it must stay as it is.
        workdir.mkdir()
        (workdir / "notes.txt").write_text("keep")
        before = _files(workdir)
    code = cli_in_process(monkeypatch, [f"--config={os.path.join(REPO, config)}", f"--workdir={workdir}", *overrides])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err
    assert "Traceback" not in err
    if existing:
        assert _files(workdir) == before
    else:
        assert not workdir.exists()


def test_checkpointer_falls_back_past_a_corrupt_latest_checkpoint(tmp_path):
    ckpt = checkpoint_lib.Checkpointer(str(tmp_path / "c"), max_to_keep=3)
    trees = {s: {"w": np.arange(6, dtype=np.float32) * s, "n": np.full((1,), s, np.int32)} for s in (1, 2, 3)}
    for s, tree in trees.items():
        ckpt.save(s, tree, {"note": s})
    # 3: a file of its arrays is gone (a partial copy); 2: the arrays are not those saved (fingerprint).
    state_dir = tmp_path / "c" / "3" / "state"
    os.remove(next(os.path.join(r, f) for r, _, fs in os.walk(state_dir) for f in fs if "manifest" in f))
    meta_path = tmp_path / "c" / "2" / "meta" / "metadata"
    meta = json.load(open(meta_path))
    meta["fingerprint"] = "0" * 32
    json.dump(meta, open(meta_path, "w"))

    reader = checkpoint_lib.Checkpointer(str(tmp_path / "c"), read_only=True)
    restored = reader.restore_latest(trees[1])
    assert restored.step == 1 and restored.progress == {"note": 1}
    _assert_same_arrays(restored.state, trees[1])
    assert sorted(os.listdir(tmp_path / "c")) == ["1", "2", "3"]  # A read-only reader moves nothing.
    reader.close()

    restored = ckpt.restore_latest(trees[1])
    assert restored.step == 1
    assert ckpt.all_steps() == [1]
    moved = sorted(p.split("-")[0] for p in os.listdir(tmp_path / "c.corrupt"))
    assert moved == ["2", "3"]  # Set aside, not deleted.
    ckpt.save(2, trees[2])  # Its step can be saved again.
    assert ckpt.restore(2, trees[2])["n"][0] == 2

    # Every checkpoint failing at once (here: restored into the wrong structure) moves nothing.
    with pytest.raises(checkpoint_lib.CorruptCheckpoint, match="no checkpoint .* restores"):
        ckpt.restore_latest({"w": trees[1]["w"]})
    assert ckpt.all_steps() == [1, 2]
    ckpt.close()


@pytest.mark.parametrize("damage", ["missing_file", "truncated_file"])
def test_a_run_whose_latest_checkpoint_is_damaged_resumes_from_the_previous_one(tmp_path, damage, caplog):
    config = small_config(**{"train.num_epochs": 3, "train.checkpoint_every": "1ep", "train.max_checkpoints": 3})
    reference = tmp_path / "reference"
    run.train_and_evaluate(config, str(reference))
    workdir = tmp_path / "damaged"
    shutil.copytree(reference, workdir)
    os.remove(workdir / "summary.json")  # As if killed after the last checkpoint, before the summary.
    files = sorted(
        (os.path.join(r, f) for r, _, fs in os.walk(workdir / "checkpoints" / "24" / "state") for f in fs),
        key=os.path.getsize,
    )
    if damage == "missing_file":
        os.remove(files[-1])
    else:
        with open(files[-1], "r+b") as f:
            f.truncate(os.path.getsize(files[-1]) // 2)

    run.train_and_evaluate(config, str(workdir))
    assert "checkpoint 24" in caplog.text and "falling back" in caplog.text
    assert [p.split("-")[0] for p in os.listdir(workdir / "checkpoints.corrupt")] == ["24"]
    _assert_same_run(workdir, reference)


def test_a_diverging_member_is_frozen_and_reported_while_the_others_are_unchanged(tmp_path, caplog):
    """Member 1 gets a learning rate 10^6 times the others': it diverges, is frozen and marked; members 0
    and 2 end bitwise as in the same run without the huge rate."""
    overrides = {"train.num_epochs": 3, "ensemble.strategy": "vmap"}
    calm = run.train_and_evaluate(
        small_config(**overrides, **{"optimizer.member_lr_scale": (1.0, 1.0, 1.0)}), str(tmp_path / "calm")
    )
    wild = run.train_and_evaluate(
        small_config(**overrides, **{"optimizer.member_lr_scale": (1.0, 1e6, 1.0)}), str(tmp_path / "wild")
    )

    assert calm["diverged"] == [None, None, None]
    step = wild["diverged"][1]
    assert wild["diverged"] == [None, step, None] and 0 <= step < 24
    assert f"member 1 diverged at step {step}" in caplog.text
    for metric in ("error", "nll", "brier", "ece", "mace"):
        for m in (0, 2):
            assert wild["test"][f"member_{metric}"][m] == calm["test"][f"member_{metric}"][m]
    # The ensemble of the members that did not diverge: members 0 and 2, recomputed here.
    a, b = run.restore(str(tmp_path / "calm")), run.restore(str(tmp_path / "wild"))
    for m in (0, 2):
        _assert_same_arrays(jax.tree.map(lambda x: x[m], a.state.params), jax.tree.map(lambda x: x[m], b.state.params))
    assert int(b.state.step[1]) == step and int(b.state.diverged[1]) == step  # Frozen at the step it diverged.
    assert all(np.isfinite(np.asarray(x[1])).all() for x in jax.tree.leaves(b.state.params))
    from jaxens import ensemble as ensemble_lib
    from jaxens import metrics

    logits = ensemble_lib.Predictor(a.model, 1000, "vmap")(b.state, b.dataset.test_x, b.dataset)[np.array([0, 2])]
    expected = metrics.error(metrics.ensemble_log_probs(logits, "mean_prob"), b.dataset.test_y)
    assert wild["test"]["ensemble_error"] == pytest.approx(float(expected), abs=1e-7)
    # The members' training metrics in the log agree too, for the members that did not diverge: the loss to
    # its last bits (after member 1 froze, the wild run's chunks run the per-step check, a program whose loss
    # reduction XLA fuses differently; docs/definitions.md#invariants), the rest exactly.
    keep = lambda r: r["member"] in (0, 2)  # noqa: E731
    wild_records, calm_records = ([r for r in _records(tmp_path / d) if keep(r)] for d in ("wild", "calm"))
    assert [{**r, "value": None} for r in wild_records] == [{**r, "value": None} for r in calm_records]
    for w, c in zip(wild_records, calm_records):
        assert w["value"] == (pytest.approx(c["value"], rel=1e-6) if w["metric"] == "loss" else c["value"])


def test_on_divergence_stop_ends_the_run_with_its_status(tmp_path):
    config = small_config(**{"optimizer.member_lr_scale": (1.0, 1e6, 1.0), "train.on_divergence": "stop"})
    with pytest.raises(run.Diverged, match="on_divergence='stop'"):
        run.train_and_evaluate(config, str(tmp_path / "run"))
    assert workdir_lib.read_status(str(tmp_path / "run"))["status"] == "diverged"
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_sweep_records_each_status_survives_a_failure_and_skips_finished_runs(tmp_path):
    ok = small_config(**{"train.num_epochs": 1})
    bad = small_config(
        **{"train.num_epochs": 1, "optimizer.member_lr_scale": (1.0, 1e6, 1.0), "train.on_divergence": "stop"}
    )
    runs = {"a": ok, "b": bad, "c": small_config(**{"train.num_epochs": 1, "seed": 1})}
    root = tmp_path / "sweep"
    outcomes = sweep.run_all(runs, str(root))
    assert {n: o.status for n, o in outcomes.items()} == {"a": "finished", "b": "diverged", "c": "finished"}
    table = json.load(open(root / "sweep.json"))
    assert table["b"]["status"] == "diverged" and "Diverged" in table["b"]["message"]
    assert {n: r["status"] for n, r in sweep.statuses(str(root)).items()} == {
        "a": "finished",
        "b": "diverged",
        "c": "finished",
    }

    finished = {n: _files(root / n) for n in ("a", "c")}
    outcomes = sweep.run_all(runs, str(root))
    assert {n: (o.status, o.ran) for n, o in outcomes.items()} == {
        "a": ("finished", False),
        "b": ("diverged", True),
        "c": ("finished", False),
    }
    assert outcomes["a"].summary["k"] == 3
    assert {n: _files(root / n) for n in ("a", "c")} == finished


def test_a_sweep_with_an_invalid_config_stops_before_any_run(tmp_path):
    runs = {"a": small_config(), "b": small_config()}
    runs["b"].ensemble.k = 0
    with pytest.raises(Exception, match=r"run 'b': invalid config:\n +config.ensemble.k=0: must be >= 1"):
        sweep.run_all(runs, str(tmp_path / "sweep"))
    assert not (tmp_path / "sweep").exists()
