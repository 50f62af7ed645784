"""The coupling conditions in the trainer (Zamparo et al. §1): what members share, spawn sweeps in one
program, parents reused from an earlier run, and resuming either phase."""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO, load_config_file, small_config

from jaxens import checkpoint as checkpoint_lib
from jaxens import config as config_lib
from jaxens import ensemble as ensemble_lib
from jaxens import models, optim, run, train_step
from jaxens import rng as rng_lib
from jaxens import spawn as spawn_lib
from jaxens.trainer import spec as spec_lib
from jaxens.trainer import validation

SPE = 8  # small_config: 4,000 MNIST-1D training examples in batches of 500.


def _config(**overrides):
    return small_config(**{"ensemble.k": 2, "model.widths": (16,), **overrides})


def _state(workdir, config, k, sub="checkpoints", step=None):
    """A checkpoint of a run under `workdir` (the latest, or `step`), restored with real Orbax."""
    model = models.build(config.model, 10)
    tx = optim.make_optimizer(config.optimizer, 1)
    like = ensemble_lib.init_ensemble(model, tx, rng_lib.member_streams(0, k), (40, 1))
    ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, sub))
    state = ckpt.restore(ckpt.latest_step() if step is None else step, like)
    ckpt.close()
    return state


def _indices(order_key, steps, n=4000, batch=500):
    """A member's minibatch indices at `steps`, re-derived from the documented order contract."""
    out = []
    for s in steps:
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(order_key, s // SPE), n))
        out.append(perm[(s % SPE) * batch : (s % SPE + 1) * batch])
    return np.stack(out)


def _init_params(config, streams):
    model = models.build(config.model, 10)
    tx = optim.make_optimizer(config.optimizer, 1)
    return ensemble_lib.init_ensemble(model, tx, streams, (40, 1)).params


def _distinct_rows(x):
    x = np.asarray(x).reshape(x.shape[0], -1)
    return len({row.tobytes() for row in x}) == x.shape[0]


def _same_rows(x):
    x = np.asarray(x).reshape(x.shape[0], -1)
    return all(np.array_equal(row, x[0]) for row in x)


@pytest.mark.parametrize(
    "condition, shared_streams, shared",
    [
        ("no_coupling", (), ()),
        ("coupled_order", (), ("order", "augment")),  # Zamparo et al.: "share the same mini-batches".
        ("coupled_order", ("order",), ("order",)),  # The override: the same examples augmented per member.
    ],
    ids=["no_coupling", "coupled_order", "coupled_order_order_only"],
)
def test_members_share_what_their_condition_says(tmp_path, condition, shared_streams, shared):
    """no_coupling shares nothing; coupled_order shares every minibatch, examples and augmentation, and
    nothing else (dropout stays per member); config.ensemble.shared_streams names the shared streams."""
    config = _config(**{"coupling.condition": condition, "ensemble.k": 3, "ensemble.shared_streams": shared_streams})
    run.train_and_evaluate(config, str(tmp_path))
    state = _state(tmp_path, config, 3)
    streams = state.rngs
    seqs = [_indices(streams.order[m], range(2 * SPE)) for m in range(3)]
    if "order" in shared:
        assert all(np.array_equal(s, seqs[0]) for s in seqs)
    else:
        assert not np.array_equal(seqs[0], seqs[1]) and not np.array_equal(seqs[1], seqs[2])
    for name in ("init", "order", "augment", "dropout"):
        assert (_same_rows if name in shared else _distinct_rows)(getattr(streams, name)), name
    # Independent initializations: the members' init keys give different first-layer weights.
    assert _distinct_rows(_init_params(config, streams)["dense0"]["kernel"])


def test_coupled_to_t_at_zero_shares_only_the_initialization(tmp_path):
    config = _config(**{"coupling.condition": "coupled_to_t", "coupling.t": ("0it",), "ensemble.k": 3})
    run.train_and_evaluate(config, str(tmp_path))
    parent = _state(tmp_path, config, 1, sub="parent", step=0)
    init = _init_params(config, rng_lib.member_streams(config.seed, 1))
    for a, b in zip(jax.tree.leaves(parent.params), jax.tree.leaves(init)):
        np.testing.assert_array_equal(a, b)  # The parent at t=0 is the seed's initialization.
    children = _state(tmp_path, config, 3)
    np.testing.assert_array_equal(children.step, [2 * SPE] * 3)
    for name in ("order", "augment", "dropout"):
        assert _distinct_rows(getattr(children.rngs, name)), name
    seqs = [_indices(children.rngs.order[m], range(2 * SPE)) for m in range(3)]
    assert not np.array_equal(seqs[0], seqs[1]) and not np.array_equal(seqs[1], seqs[2])
    # The children start from that one initialization (spawn copies it) and part ways after.
    spec = spec_lib.resolve(config)
    start = spawn_lib.spawn_children(
        {0: parent}, spec.plan.k, spec.seed, spec.plan.groups[0].shared_streams, tx=spec.tx
    )
    assert _same_rows(start.params["dense0"]["kernel"])
    np.testing.assert_array_equal(start.rngs.order, children.rngs.order)
    assert _distinct_rows(children.params["dense0"]["kernel"])


def _groups(summary):
    return {g["t"]: g for g in summary["groups"]}


@pytest.mark.parametrize("condition", ["coupled_to_t", "coupled_to_t_reset"])
def test_a_sweep_equals_separate_runs(tmp_path, condition):
    """Spawn times 3 and 11 in one program (K = 4) against one run per spawn time (K = 2 each): the same
    children, step counts and metrics. Under coupled_to_t the t=11 children finish 8 ticks early."""
    times = ("3it", "1ep3it")
    sweep_config = _config(**{"coupling.condition": condition, "coupling.t": times})
    sweep = run.train_and_evaluate(sweep_config, str(tmp_path / "sweep"))
    sweep_state = _state(tmp_path / "sweep", sweep_config, 4)
    assert [g["t"] for g in sweep["groups"]] == [3, 11]
    assert "test" not in sweep  # Per group only.
    for g, t in enumerate(times):
        config = _config(**{"coupling.condition": condition, "coupling.t": (t,)})
        single = run.train_and_evaluate(config, str(tmp_path / t))
        state = _state(tmp_path / t, config, 2)
        part = jax.tree.map(lambda x: x[2 * g : 2 * g + 2], sweep_state)
        np.testing.assert_array_equal(part.step, state.step)
        np.testing.assert_array_equal(part.rngs.order, state.rngs.order)
        for a, b in zip(jax.tree.leaves(part.params), jax.tree.leaves(state.params)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        ours, theirs = _groups(sweep)[single["groups"][0]["t"]], single["groups"][0]
        assert ours["steps"] == theirs["steps"]
        for key in ("member_error", "ensemble_error", "member_nll", "ensemble_nll"):
            np.testing.assert_allclose(ours["test"][key], theirs["test"][key], atol=2e-3)
    expected_end = {3: 3 + 16, 11: 11 + 16} if condition == "coupled_to_t_reset" else {3: 16, 11: 16}
    assert {g["t"]: g["steps"] for g in sweep["groups"]} == expected_end
    np.testing.assert_array_equal(sweep_state.step, [expected_end[3]] * 2 + [expected_end[11]] * 2)
    # Tidy records tagged by (t, member); each group logged at its own steps, and the parent at each t.
    records = [json.loads(line) for line in open(tmp_path / "sweep" / "metrics.jsonl")]
    parent_steps = sorted({r["step"] for r in records if r["phase"] == "parent"})
    assert {3, 8, 11} <= set(parent_steps)
    for t in (3, 11):
        rows = [r for r in records if r["phase"] == "members" and r["t"] == t and r["split"] == "test"]
        assert {r["member"] for r in rows if r["scope"] == "member"} == {0, 1}
        assert max(r["step"] for r in rows) == expected_end[t]


def test_children_spawn_from_an_earlier_runs_parent(tmp_path, capsys):
    """A coupled_to_t_reset run reuses a coupled_to_t run's parent (restored at step 8, trained 4 more
    steps to 12) and ends exactly where the same run training its own parent ends."""
    first = _config(**{"coupling.condition": "coupled_to_t", "coupling.t": ("1ep",)})
    run.train_and_evaluate(first, str(tmp_path / "first"))
    reuse = _config(
        **{
            "coupling.condition": "coupled_to_t_reset",
            "coupling.t": ("1ep", "1ep4it"),
            "coupling.parent_dir": str(tmp_path / "first"),
        }
    )
    capsys.readouterr()
    reused = run.train_and_evaluate(reuse, str(tmp_path / "reuse"))
    assert "parent: restored the checkpoint at step 8" in capsys.readouterr().out
    own_config = _config(**{"coupling.condition": "coupled_to_t_reset", "coupling.t": ("1ep", "1ep4it")})
    own = run.train_and_evaluate(own_config, str(tmp_path / "own"))
    for a, b in zip(reused["groups"], own["groups"]):
        assert a["test"] == b["test"]
    assert sorted(os.listdir(tmp_path / "reuse" / "parent")) == sorted(os.listdir(tmp_path / "own" / "parent"))


def test_parent_dir_of_a_different_parent_is_refused_before_anything(tmp_path):
    first = _config(**{"coupling.condition": "coupled_to_t", "coupling.t": ("1ep",)})
    run.train_and_evaluate(first, str(tmp_path / "first"))
    other = _config(
        **{
            "coupling.condition": "coupled_to_t",
            "coupling.t": ("1ep",),
            "seed": 1,
            "optimizer.learning_rate": 0.1,
            "coupling.parent_dir": str(tmp_path / "first"),
        }
    )
    with pytest.raises(config_lib.ConfigError, match=r"config.seed: 0 there, 1 here.*learning_rate"):
        run.train_and_evaluate(other, str(tmp_path / "other"))
    assert not (tmp_path / "other").exists()
    with pytest.raises(config_lib.ConfigError, match="no run there"):
        run.train_and_evaluate(
            _config(
                **{
                    "coupling.condition": "coupled_to_t",
                    "coupling.t": ("1ep",),
                    "coupling.parent_dir": str(tmp_path / "nothing"),
                }
            ),
            str(tmp_path / "x"),
        )


def test_a_sweep_resumes_in_either_phase_to_the_same_result(tmp_path, capsys):
    """A finished sweep's workdir, cut back to (a) an earlier children checkpoint and (b) the parent's
    checkpoints only, reruns to the same summary and the same metrics log."""
    config = _config(
        **{
            "coupling.condition": "coupled_to_t",
            "coupling.t": ("3it", "1ep3it"),
            "train.num_epochs": 3,
            "train.max_checkpoints": 3,
        }
    )
    full = run.train_and_evaluate(config, str(tmp_path / "full"))
    log = sorted(open(tmp_path / "full" / "metrics.jsonl"))
    for case in ("children", "parent"):
        d = tmp_path / case
        shutil.copytree(tmp_path / "full", d)
        os.remove(d / "summary.json")
        ckpts = d / "checkpoints"
        if case == "children":
            steps = sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
            assert steps == [8, 16, 21]  # Ticks: epoch ends of the members' phase and its last tick.
            shutil.rmtree(ckpts / "21")
            shutil.rmtree(ckpts / "16")
        else:
            shutil.rmtree(ckpts)
        capsys.readouterr()
        resumed = run.train_and_evaluate(config, str(d))
        out = capsys.readouterr().out
        assert ("resuming" in out) == (case == "children")
        assert ("parent: restored the checkpoint at step 11" in out) == (case == "parent")
        assert resumed["groups"] == full["groups"]
        assert sorted(open(d / "metrics.jsonl")) == log


def test_spawn_config_errors_name_the_field():
    cases = [
        ({"coupling.condition": "coupled"}, "config.coupling.condition='coupled': unknown; allowed: no_coupling"),
        ({"coupling.condition": "coupled_to_t"}, "config.coupling.t=(): coupled_to_t needs spawn times"),
        ({"coupling.condition": "coupled_to_t", "coupling.t": ("2ep",)}, "'2ep' past the end"),
        ({"coupling.condition": "coupled_to_t", "coupling.t": ("1ep", "8it")}, "spawn times repeat"),
        ({"coupling.condition": "coupled_to_t", "coupling.t": ("1.5ep",)}, "config.coupling.t: '1.5ep': expected"),
        ({"coupling.reinit_fraction": 0.5}, "re-initialization happens at spawn"),
        (
            {"coupling.condition": "coupled_to_t", "coupling.t": (0,), "coupling.reinit_fraction": 1.5},
            "must lie in [0, 1]",
        ),
        (
            {"coupling.condition": "coupled_to_t", "coupling.t": (0,), "coupling.reinit_side": "top"},
            "allowed: low, high",
        ),
        ({"ensemble.shared_streams": ("order",)}, "set config.coupling.condition='coupled_order'"),
        ({"coupling.parent_dir": "runs/x"}, "no_coupling has no parent"),
    ]
    for overrides, message in cases:
        with pytest.raises(config_lib.ConfigError) as e:
            small_config(**overrides)
        assert message in str(e.value), (overrides, str(e.value))
    # t = T is allowed under coupled_to_t_reset (the children train T more steps); a baseline ignores t.
    small_config(**{"coupling.condition": "coupled_to_t_reset", "coupling.t": ("2ep",)})
    small_config(**{"coupling.t": ("2ep",)})


def test_resnet20_spawn_config():
    """The paper's recipe; it validates on Fashion-MNIST (the override a CPU user makes)."""
    config = load_config_file("resnet20_spawn.py")
    assert (config.dataset, config.model.name, config.coupling.condition) == (
        "cifar10",
        "resnet20",
        "coupled_to_t_reset",
    )
    assert (config.optimizer.name, config.optimizer.momentum, config.optimizer.learning_rate) == ("sgd", 0.9, 0.1)
    assert (config.optimizer.schedule, config.optimizer.weight_decay, config.train.batch_size) == (
        "piecewise",
        1e-4,
        128,
    )
    assert config.data.augment == "crop_flip" and len(config.coupling.t) > 1
    config.dataset = "fashion_mnist"
    validation.validate(config)


def test_resnet20_spawn_without_cifar_stops_fast_with_the_data_message(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "jaxens.train",
        "--config=configs/resnet20_spawn.py",
        f"--workdir={tmp_path / 'run'}",
        f"--config.data.tfds_dir={tmp_path / 'tfds'}",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env=dict(os.environ, CI="true"))
    assert proc.returncode == 2, proc.stderr
    assert "cifar10" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_cpu_spawn_config_runs_from_the_command_line(tmp_path):
    """configs/mnist1d_spawn.py through the real CLI, shortened; spawn times given on the command line."""
    cmd = [
        sys.executable,
        "-m",
        "jaxens.train",
        "--config=configs/mnist1d_spawn.py",
        f"--workdir={tmp_path}",
        "--config.train.num_epochs=2",
        "--config.coupling.t=('0ep','1ep3it')",
        "--config.ensemble.k=2",
        "--config.model.widths=(32,)",
        "--config.eval.every_epochs=1",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=dict(os.environ, CI="true"))
    assert proc.returncode == 0, proc.stderr
    assert "children spawned at t=1ep3it (step 43)" in proc.stdout
    summary = json.load(open(tmp_path / "summary.json"))
    assert [(g["t"], g["steps"]) for g in summary["groups"]] == [(0, 80), (43, 123)]  # t + T under reset.
    assert sorted(os.listdir(tmp_path / "parent")) == ["0", "43"]  # One checkpoint per spawn time.


@pytest.mark.parametrize("step_loop", ["device", "host"])
def test_each_phase_traces_its_training_step_once(tmp_path, monkeypatch, step_loop):
    """A spawn run with two evaluations and a checkpoint per epoch traces the member step exactly once per
    phase (the parent's K = 1 and the children's K), whatever the chunk lengths (chex counts the traces),
    and compiles the step and the prediction once per phase too: a fresh state (uncommitted arrays) and
    the same state after a step (committed) must not compile twice (JAX's lowering events count them)."""

    lowered = collections.Counter()

    def on_event(event, secs, fun_name="", **kwargs):
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            lowered[fun_name] += 1

    jax.monitoring.register_event_duration_secs_listener(on_event)
    try:
        _trace_and_compile_once_per_phase(tmp_path, monkeypatch, step_loop, lowered)
    finally:
        jax.monitoring.unregister_event_duration_listener(on_event)


def _trace_and_compile_once_per_phase(tmp_path, monkeypatch, step_loop, lowered):
    import chex

    step = "jit(chunk)" if step_loop == "device" else "jit(counted_step)"
    chex.clear_trace_counter()
    counted = chex.assert_max_traces(train_step.member_gradients, n=2)
    monkeypatch.setattr(train_step, "member_gradients", counted)
    config = _config(
        **{
            "coupling.condition": "coupled_to_t",
            "coupling.t": ("1ep",),
            "ensemble.k": 2,
            "train.step_loop": step_loop,
            "train.steps_per_call": 3,
        }
    )
    run.train_and_evaluate(config, str(tmp_path / "run"))  # Chunks of 3, 3, 2 steps per epoch.
    assert (lowered[step], lowered["jit(predict_batch)"]) == (2, 2), dict(lowered)
    lowered.clear()
    chex.clear_trace_counter()
    strict = chex.assert_max_traces(train_step.member_gradients, n=1)
    monkeypatch.setattr(train_step, "member_gradients", strict)
    run.train_and_evaluate(_config(**{"ensemble.k": 2, "train.step_loop": step_loop}), str(tmp_path / "plain"))
    assert (lowered[step], lowered["jit(predict_batch)"]) == (1, 1), dict(lowered)
