"""Checkpoints belong to the run that wrote them: faults a hostile user (or a preemptible TPU) causes, each
with real processes, real kills and real damaged files.

- A fresh run over another run's leftover checkpoints/ or parent/ is refused before any compute.
- A checkpoint of another config is never restored (nor moved).
- An --overwrite killed midway leaves no trap.
- A corrupt parent checkpoint with none earlier: the parent trains again from initialization.
- A parent checkpoint set aside is saved again: parent/ holds every spawn time when the run finishes.
- SIGTERM stops the run within config.train.steps_per_call steps of the signal.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import ENSEMBLE_ARGS, REPO, SMALL_SPAWN_ARGS, cli, file_tree, finish, timeless_summary

from jaxens import checkpoint as checkpoint_lib
from jaxens import config as config_lib
from jaxens import run

ENSEMBLE = "configs/mnist1d_ensemble.py"
# The parent trains 3 epochs of 8 steps, saving at 8, 16 and 24 (spawn times 16 and 24 kept); the
# children (k = 2 per spawn time) train to step 48.
SPAWN_ARGS = SMALL_SPAWN_ARGS


def _steps(directory) -> list[int]:
    return checkpoint_lib.Checkpointer(str(directory), read_only=True).all_steps()


def _damage(checkpoint_dir) -> None:
    """Truncates the largest array file of a checkpoint (bytes lost on disk)."""
    files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(checkpoint_dir, "state")) for f in fs]
    largest = max(files, key=os.path.getsize)
    with open(largest, "r+b") as f:
        f.truncate(os.path.getsize(largest) // 2)


def _forget_the_run(workdir) -> None:
    """Removes what says whose the files are (as a user cleaning up by hand, or an old --overwrite killed
    after deleting config.json): the checkpoints stay."""
    for name in ("config.json", "status.json", "metrics.jsonl", "summary.json"):
        if os.path.exists(os.path.join(workdir, name)):
            os.remove(os.path.join(workdir, name))


def test_a_fresh_run_over_leftover_checkpoints_is_refused_before_any_compute(tmp_path, ensemble_run):
    """The measured failure: with config.json and the logs removed, a run of seed 1 resumed from seed 0's
    checkpoints and reported them as its own. Now it is refused (exit 2, the directory and --overwrite
    named) and nothing in the directory changes; --overwrite replaces the leftovers."""
    workdir = tmp_path / "run"
    shutil.copytree(ensemble_run, workdir)
    _forget_the_run(workdir)
    before = file_tree(workdir)
    rc, out, err = finish(cli(workdir, *ENSEMBLE_ARGS, "--config.seed=1", config=ENSEMBLE))
    assert rc == 2, err
    assert f"--workdir={workdir} holds checkpoints" in err and "no config.json" in err and "--overwrite" in err
    assert "resuming" not in out and file_tree(workdir) == before
    rc, _, err = finish(cli(workdir, *ENSEMBLE_ARGS, "--config.seed=1", "--overwrite", config=ENSEMBLE))
    assert rc == 0, err
    assert json.load(open(workdir / "config.json"))["seed"] == 1
    assert timeless_summary(workdir) != timeless_summary(ensemble_run)  # Seed 1's members, trained from scratch.


def test_a_checkpoint_of_another_config_is_never_restored(tmp_path, ensemble_run):
    """Seed 0's checkpoints copied under a seed-1 run's config.json: resuming is refused (exit 2), nothing is
    moved aside, and `run.restore` refuses them too."""
    workdir = tmp_path / "seed1"
    shutil.copytree(ensemble_run, workdir)
    os.remove(workdir / "summary.json")  # An unfinished seed-1 run ...
    config = json.load(open(workdir / "config.json"))
    config["seed"] = 1
    json.dump(config, open(workdir / "config.json", "w"))  # ... holding seed 0's checkpoints.
    rc, out, err = finish(cli(workdir, *ENSEMBLE_ARGS, "--config.seed=1", config=ENSEMBLE))
    assert rc == 2, err
    assert "belongs to another run" in err and "resuming" not in out
    assert not (workdir / "checkpoints.corrupt").exists()
    assert _steps(workdir / "checkpoints") == _steps(ensemble_run / "checkpoints")
    with pytest.raises(config_lib.ConfigError, match="belongs to another run"):
        run.restore(str(workdir))


def test_an_overwrite_killed_midway_leaves_no_trap(tmp_path, ensemble_run):
    """--overwrite deletes the old run's summary first and its config.json last: killed in between (its
    checkpoints gone), the directory still names its config, so the new config is refused, the old one
    starts afresh (and ends exactly as before), and the new one with --overwrite replaces it."""
    workdir = tmp_path / "run"
    shutil.copytree(ensemble_run, workdir)
    new = (*ENSEMBLE_ARGS, "--config.seed=1")
    rc, _, err = finish(cli(workdir, *new, "--overwrite", config=ENSEMBLE, kill_at="overwrite"))
    assert rc == -signal.SIGKILL, err
    assert (workdir / "config.json").exists() and not (workdir / "checkpoints").exists()
    assert not (workdir / "summary.json").exists() and not (workdir / "status.json").exists()
    rc, _, err = finish(cli(workdir, *new, config=ENSEMBLE))
    assert rc == 2 and "config.seed: 0 there, 1 now" in err, err
    rc, out, err = finish(cli(workdir, *ENSEMBLE_ARGS, config=ENSEMBLE))  # The old command: from scratch.
    assert rc == 0 and "resuming" not in out, err
    assert timeless_summary(workdir) == timeless_summary(ensemble_run)
    rc, _, err = finish(cli(workdir, *new, "--overwrite", config=ENSEMBLE))
    assert rc == 0, err
    assert json.load(open(workdir / "config.json"))["seed"] == 1


@pytest.fixture(scope="module")
def spawn_runs(tmp_path_factory):
    """times → (the uninterrupted run, a run killed right after its spawn, its arguments), made on first use."""
    made = {}

    def get(times: str):
        if times not in made:
            root = tmp_path_factory.mktemp("spawn")
            args = (*SPAWN_ARGS, f"--config.coupling.t={times}")
            rc, _, err = finish(cli(root / "reference", *args))
            assert rc == 0, err
            rc, _, err = finish(cli(root / "killed", *args, kill_at="spawn"))
            assert rc == -signal.SIGKILL, err
            made[times] = (root / "reference", root / "killed", args)
        return made[times]

    return get


def test_leftover_parent_checkpoints_are_refused(tmp_path, spawn_runs):
    _, killed, args = spawn_runs("('2ep','3ep')")
    workdir = tmp_path / "run"
    shutil.copytree(killed, workdir)
    _forget_the_run(workdir)
    rc, _, err = finish(cli(workdir, *args, "--config.seed=1"))
    assert rc == 2 and "holds parent" in err and "--overwrite" in err, err


@pytest.mark.parametrize(
    "times, damaged",
    [("('2ep','3ep')", (8, 16)), pytest.param("('0ep','2ep')", (0,), marks=pytest.mark.slow)],
    ids=["earliest_at_1ep", "at_0"],
)
def test_a_corrupt_earliest_parent_checkpoint_trains_the_parent_again(tmp_path, spawn_runs, times, damaged):
    """Every parent checkpoint at or before the first spawn time is damaged: the parent trains again from
    initialization (saying so), the damaged ones are set aside, and the run ends as the uninterrupted one,
    with every spawn time's checkpoint in parent/."""
    reference, killed, args = spawn_runs(times)
    workdir = tmp_path / "run"
    shutil.copytree(killed, workdir)
    for step in damaged:
        _damage(workdir / "parent" / str(step))
    rc, out, err = finish(cli(workdir, *args))
    assert rc == 0, err
    assert "training it from initialization" in out
    assert timeless_summary(workdir) == timeless_summary(reference)
    spawn_steps = [g["t"] for g in timeless_summary(reference)["groups"]]
    assert set(spawn_steps) <= set(_steps(workdir / "parent")), _steps(workdir / "parent")
    assert sorted(int(p.split("-")[0]) for p in os.listdir(workdir / "parent.corrupt")) == sorted(damaged)


def test_a_parent_checkpoint_set_aside_is_saved_again(tmp_path, spawn_runs):
    """Spawn time 16's checkpoint is damaged while 8 and 24 are intact: the parent trains on from 8 and
    saves 16 again below the later 24 (which Orbax declined, silently, before): parent/ lists 16 and 24."""
    reference, killed, args = spawn_runs("('2ep','3ep')")
    workdir = tmp_path / "run"
    shutil.copytree(killed, workdir)
    _damage(workdir / "parent" / "16")
    rc, out, err = finish(cli(workdir, *args))
    assert rc == 0, err
    assert "restored the checkpoint at step 8" in out
    assert {16, 24} <= set(_steps(workdir / "parent"))
    assert timeless_summary(workdir) == timeless_summary(reference)


def test_checkpointer_records_its_owner_and_refuses_anothers(tmp_path):
    tree = {"w": np.arange(4, dtype=np.float32)}
    mine = checkpoint_lib.Checkpointer(str(tmp_path / "c"), owner="aaaa")
    mine.save(1, tree)
    mine.save(1, tree)  # Saved before, the same state: kept.
    mine.close()
    theirs = checkpoint_lib.Checkpointer(str(tmp_path / "c"), owner="bbbb")
    with pytest.raises(checkpoint_lib.ForeignCheckpoint, match="belongs to another run"):
        theirs.restore_latest(tree)
    with pytest.raises(checkpoint_lib.ForeignCheckpoint):
        theirs.save(1, tree)
    assert theirs.all_steps() == [1] and not (tmp_path / "c.corrupt").exists()  # Nothing moved.
    theirs.close()
    anyone = checkpoint_lib.Checkpointer(str(tmp_path / "c"))  # No owner: no check (library use).
    assert anyone.restore_latest(tree).step == 1
    anyone.save(0, tree)  # Below the latest step: saved, not declined.
    assert anyone.all_steps() == [0, 1]
    anyone.close()


# A child process whose TrainChunk calls are observed, not changed: a thread sends SIGTERM once the device
# has finished TRIGGER steps (seen through `is_ready` of each chunk's outputs, without waiting on them).
SIGTERM_CHILD = textwrap.dedent(
    """
    import json, os, signal, sys, threading, time
    from jaxens import config as config_lib, preemption, run, train_chunk

    workdir, trigger, overrides = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    dispatched = []  # (steps after the chunk, its sums), as the host dispatches them.
    call = train_chunk.TrainChunk.__call__

    def observed(self, state, orders, dataset, num_steps, *args):
        state, sums = call(self, state, orders, dataset, num_steps, *args)
        dispatched.append(((dispatched[-1][0] if dispatched else 0) + num_steps, sums))
        return state, sums

    train_chunk.TrainChunk.__call__ = observed
    at_signal = {}

    def watch():
        while True:
            done = max((n for n, s in list(dispatched) if all(x.is_ready() for x in s.values())), default=0)
            if done >= trigger:
                at_signal.update(done=done, dispatched=dispatched[-1][0])
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.0005)

    threading.Thread(target=watch, daemon=True).start()
    config = config_lib.get_default_config()
    config_lib.apply_overrides(config, [f"{k}={v}" for k, v in overrides.items()])
    try:
        run.train_and_evaluate(config, workdir)
        print(json.dumps({"stopped_at": None, **at_signal}))
    except preemption.Preempted as e:
        print(json.dumps({"stopped_at": e.step, **at_signal}))
    """
)


@pytest.mark.parametrize(
    "widths, step_loop", [("(256,)", "host"), ("(2048,2048)", "device")], ids=["fast_step_host", "slow_step_device"]
)
def test_sigterm_stops_within_steps_per_call_of_the_signal(tmp_path, widths, step_loop):
    """One epoch of 40 steps with no pause before its end, steps_per_call = 2: SIGTERM once the device has
    done 10 steps stops the run at most 2 steps later, at two step costs and with either step loop (main
    3748646 stopped 16 steps later with the 2048-wide MLP: its host ran ahead of the device)."""
    overrides = {
        "ensemble.k": 1,
        "model.widths": widths,
        "train.batch_size": 100,
        "train.num_epochs": 1,
        "train.steps_per_call": 2,
        "train.step_loop": step_loop,
    }
    env = dict(os.environ, CI="true")
    cmd = [sys.executable, "-c", SIGTERM_CHILD, str(tmp_path / "run"), "10", json.dumps(overrides)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["stopped_at"] is not None, report  # Stopped, not run to its end (40).
    assert report["done"] <= report["stopped_at"] <= report["done"] + 2, report
    assert json.load(open(tmp_path / "run" / "status.json"))["status"] == "preempted"
