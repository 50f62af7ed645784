"""config.grid: groups of one program equal the runs of their settings alone (`jaxens.grid`).

Each test trains a grid run, then the standalone run of some of its groups (`grid.group_config`, the config a
user would otherwise run), and compares parameters and summaries. Under the `loop` member strategy every
member's arithmetic is its own whatever runs beside it: bitwise. Under `vmap` the grid's members are one
batched computation of K members where the run alone has k (or one parent where the grid stacks several),
and XLA:CPU may pick another matmul kernel for another batch of members: equal to float rounding.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO, small_config

from jaxens import checkpoint as checkpoint_lib
from jaxens import config as config_lib
from jaxens import grid, results, run, sweep
from jaxens.config import ConfigError
from jaxens.trainer import context, memory, validation
from jaxens.trainer import spec as spec_lib

K = 2


def _group_rows(summary: dict, setting: grid.Setting) -> int:
    """The index of `setting`'s group in a grid run's summary."""
    t = None if setting.t is None else str(setting.t)
    return next(
        i
        for i, g in enumerate(summary["groups"])
        if g["grid"] == dict(setting.values) and g["lam"] == setting.lam and g["t_label"] == t
    )


def _compare(tmp_path, config, settings, bitwise, trained: dict | None = None):
    """Trains `config` (unless `trained` is its summary) and each of `settings` alone; asserts equal parameters
    and summaries."""
    summary = trained or run.train_and_evaluate(config, str(tmp_path / "grid"))
    state = run.restore(str(tmp_path / "grid")).state
    for i, setting in enumerate(settings):
        alone_dir = str(tmp_path / f"alone{i}")
        alone = run.train_and_evaluate(grid.group_config(config, setting), alone_dir)
        g = _group_rows(summary, setting)
        mine = jax.tree.map(lambda a, g=g: np.asarray(a)[g * K : (g + 1) * K], state.params)
        theirs = run.restore(alone_dir).state.params
        for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(theirs)):
            if bitwise(setting):
                np.testing.assert_array_equal(a, b, err_msg=str(setting))
            else:
                np.testing.assert_allclose(a, b, rtol=0, atol=1e-6, err_msg=str(setting))
        group = summary["groups"][g]
        assert group["steps"] == alone["groups"][0]["steps"]
        np.testing.assert_allclose(group["test"]["member_error"], alone["test"]["member_error"], atol=2e-3)
        np.testing.assert_allclose(group["test"]["ensemble_nll"], alone["test"]["ensemble_nll"], rtol=1e-5)
    return summary


CLI_GRID = [
    "--config.model.widths=(32,)", f"--config.ensemble.k={K}", "--config.train.num_epochs=1",
    "--config.train.batch_size=500", "--config.optimizer.learning_rate=0.1", "--config.grid.seed=(0,1)",
    "--config.grid.learning_rate=(0.02,0.05)", "--config.ensemble.strategy=loop",
]  # fmt: skip


def test_seeds_and_learning_rates_are_groups_equal_to_their_runs_bitwise(tmp_path):
    # The grid through the command line, as a user runs it; each group's run alone in this process.
    cmd = [
        sys.executable,
        "-m",
        "jaxens.train",
        "--config=configs/mnist1d_ensemble.py",
        f"--workdir={tmp_path / 'grid'}",
    ]
    done = subprocess.run([*cmd, *CLI_GRID], cwd=REPO, capture_output=True, text=True, env=dict(os.environ, CI="true"))
    assert done.returncode == 0, done.stderr[-3000:]
    config = config_lib.apply_overrides(
        config_lib.load_file("configs/mnist1d_ensemble.py"), [a.removeprefix("--config.") for a in CLI_GRID]
    )
    settings = grid.settings(config)
    assert [dict(s.values) for s in settings] == [
        {"seed": 0, "learning_rate": 0.02},
        {"seed": 0, "learning_rate": 0.05},
        {"seed": 1, "learning_rate": 0.02},
        {"seed": 1, "learning_rate": 0.05},
    ]
    with open(tmp_path / "grid" / "summary.json") as f:
        summary = _compare(tmp_path, config, settings[1:3], bitwise=lambda s: True, trained=json.load(f))
    # Every group is findable: in summary.json, in results.load's columns, in TensorBoard and in the report.
    assert summary["grid"] == ["seed", "learning_rate"]
    assert [(g["seed"], g["grid"]["learning_rate"]) for g in summary["groups"]] == [
        (0, 0.02),
        (0, 0.05),
        (1, 0.02),
        (1, 0.05),
    ]
    df = results.load(str(tmp_path / "grid"))
    test = df.query("split == 'test' and scope == 'ensemble' and metric == 'error'")
    last = test[test["step"] == test["step"].max()]
    by_group = {(r["seed"], r["optimizer.learning_rate"]): r["value"] for _, r in last.iterrows()}
    assert by_group == {(g["seed"], g["grid"]["learning_rate"]): g["test"]["ensemble_error"] for g in summary["groups"]}
    assert set(df["group"]) == {"seed=0,lr=0.02", "seed=0,lr=0.05", "seed=1,lr=0.02", "seed=1,lr=0.05"}
    # One TensorBoard run per group, beside the members' phase's step rate.
    assert set(os.listdir(tmp_path / "grid" / "tensorboard")) == set(df["group"]) | {"members"}
    # The printed report: a table, one row per group.
    table = done.stdout.strip().splitlines()[-5:]
    assert table[0].split()[:2] == ["seed", "lr"] and table[2].split()[:2] == ["0", "0.05"]
    errors = [float(row.split()[3]) for row in table[1:]]
    assert errors == [round(g["test"]["ensemble_error"], 4) for g in summary["groups"]]


def test_a_spawning_grid_of_two_seeds_trains_both_parents_stacked_and_equals_the_runs_alone(tmp_path):
    config = small_config(**{"ensemble.k": K, "coupling.t": (0, "4it"), "train.checkpoint_every": "4it"})
    config.ensemble.strategy = "loop"
    config.grid.seed = (0, 1)
    config.grid.condition = ("no_coupling", "coupled_to_t", "coupled_to_t_reset")
    settings = grid.settings(config)
    # Per seed: no_coupling (no parent, no spawn times), then each spawning condition at every spawn time.
    assert len(settings) == 2 * (1 + 2 * 2)
    # Seed 1's groups without a parent, and spawned at t > 0 under both conditions (from the second parent).
    seed1 = [s for s in settings if dict(s.values)["seed"] == 1 and s.t != 0]
    summary = _compare(tmp_path, config, seed1, bitwise=lambda s: True)
    assert [g["steps"] for g in summary["groups"][:5]] == [16, 16, 16, 16, 20]  # Reset: t + T.
    # The two parents trained in one phase, one stacked state saved at every spawn time.
    members = run.restore(str(tmp_path / "grid")).state
    assert jax.tree.leaves(members.params)[0].shape[0] == len(settings) * K
    spec = spec_lib.resolve(config)
    saved = checkpoint_lib.Checkpointer(str(tmp_path / "grid" / "parent"), read_only=True)
    assert sorted(saved.all_steps()) == [0, 4]
    template = context.state_template(
        spec, 2, jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("member", "data"))
    )
    both = saved.restore_progress(4, template).state
    assert both.step.tolist() == [4, 4] and not np.array_equal(*jax.tree.leaves(both.params)[0])
    records = [json.loads(line) for line in open(tmp_path / "grid" / "metrics.jsonl")]
    parents = {json.dumps(r.get("grid")) for r in records if r["phase"] == "parent"}
    assert parents == {json.dumps({"seed": 0}), json.dumps({"seed": 1})}


@pytest.mark.slow  # The spawning test covers conditions in the default suite; this adds vmap, reinit, momentum.
def test_a_vmapped_grid_of_conditions_reinitializations_and_momenta_equals_its_runs(tmp_path):
    config = small_config(**{"ensemble.k": K, "coupling.t": ("4it",), "train.num_epochs": 1})
    config.grid.condition = ("coupled_to_t", "coupled_to_t_reset")
    config.grid.reinit_fraction = (0.0, 0.5)
    config.grid.momentum = (0.0, 0.9)
    settings = grid.settings(config)
    assert len(settings) == 2 * 2 * 2
    picked = [s for s in settings if dict(s.values)["momentum"] == 0.0 or dict(s.values)["reinit_fraction"] == 0.5]
    _compare(tmp_path, config, [picked[1], picked[-1]], bitwise=lambda s: False)


def test_lambda_groups_of_a_seed_and_learning_rate_grid_equal_their_runs(tmp_path):
    config = small_config(**{"ensemble.k": K, "train.num_epochs": 1, "coupling.condition": "coupled_order"})
    config.loss.lam = (0.0, 0.5)
    config.grid.seed, config.grid.learning_rate = (0, 1), (0.02, 0.1)
    config.optimizer.learning_rate, config.ensemble.strategy = 0.1, "loop"
    settings = grid.settings(config)
    assert len(settings) == 8 and [s.lam for s in settings[:2]] == [0.0, 0.5]
    # The groups' modular losses are one computation mapped over the G groups (and the two seeds' shared batches
    # are fed per member), where the run alone computes one group's: equal to float rounding even under loop.
    _compare(tmp_path, config, [settings[1], settings[6]], bitwise=lambda s: False)


@pytest.mark.parametrize(
    "grid_values, overrides, pattern",
    [
        ({"learning_rate": (0.1, 0.2)}, {"optimizer.learning_rate": 0.05}, r"config.grid.learning_rate=.* and config.optimizer.learning_rate=0.05 are both set"),
        ({"seed": (1, 1)}, {}, r"config.grid.seed=\(1, 1\): values repeat"),
        ({"learning_rate": (0.1,)}, {"optimizer.name": "sgmcmc", "optimizer.learning_rate": 0.1}, r"sgmcmc's hyperparameters cannot vary"),
        ({"momentum": (0.0, 0.5)}, {"optimizer.name": "adam"}, r"config.grid.momentum: .*'adam' has no momentum"),
        ({"learning_rate": (0.1, -1.0)}, {"optimizer.learning_rate": 0.1}, r"config.optimizer.learning_rate=-1.0: must be > 0 \(in config.grid's groups\)"),
        ({"condition": ("coupled_to_t", "nope")}, {"coupling.t": ("1ep",)}, r"config.coupling.condition='nope': unknown"),
        ({"reinit_side": ("low", 3)}, {}, r"config.grid.reinit_side=.*expected a tuple of strings"),
        ({"seed": (0, 1)}, {"mesh.member": 4}, r"config.mesh.member=4: must divide the 6 members"),
    ],
)  # fmt: skip
def test_bad_grids_are_refused_naming_the_fields(grid_values, overrides, pattern):
    config = small_config()
    for path, value in overrides.items():
        group, field = path.split(".")
        config[group][field] = value
    for name, values in grid_values.items():
        config.grid[name] = values
    with pytest.raises(ConfigError, match=pattern):
        validation.validate(config)


def test_fields_that_change_shapes_cannot_be_on_the_grid():
    (message,) = config_lib.unknown_fields(["config.grid.batch_size"])
    assert "'batch_size' cannot vary per group" in message and "array shapes" in message
    (message,) = config_lib.unknown_fields(["config.grid.learning_rat"])
    assert "fields there: condition, learning_rate" in message


def test_members_per_call_runs_the_population_in_chunks_with_the_same_results(tmp_path):
    config = small_config(**{"ensemble.k": K, "train.num_epochs": 1, "optimizer.learning_rate": 0.1})
    config.grid.seed, config.grid.learning_rate = (0, 1), (0.02, 0.05)
    chunked = config.copy_and_resolve_references()
    chunked.ensemble.members_per_call = 3  # K = 8 members: chunks of 3, 3 and 2, one after another.
    spec, chunked_spec = spec_lib.resolve(config), spec_lib.resolve(chunked)
    assert (spec.strategy, chunked_spec.strategy) == ("vmap", "vmap:3")
    # The estimate counts the activations of 3 members at once instead of 8; the state is all of them.
    whole, parts = memory.estimate(spec), memory.estimate(chunked_spec)
    assert parts.activations == pytest.approx(whole.activations * 3 / 8, rel=0.01) and parts.state == whole.state
    a = run.train_and_evaluate(config, str(tmp_path / "whole"))
    b = run.train_and_evaluate(chunked, str(tmp_path / "chunked"))
    for x, y in zip(jax.tree.leaves(run.restore(str(tmp_path / "whole")).state.params),
                    jax.tree.leaves(run.restore(str(tmp_path / "chunked")).state.params)):  # fmt: skip
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)
    for g, h in zip(a["groups"], b["groups"]):
        np.testing.assert_allclose(g["test"]["member_error"], h["test"]["member_error"], atol=2e-3)
    # Too large a population is refused before any compute, with the estimate and this way out.
    with pytest.raises(
        ConfigError,
        match=r"config.grid.members_per_run .*, config.ensemble.members_per_call \(members computed at once, now all\)",
    ):
        memory.check(spec, limit_bytes=(1, "a test's limit"))


def test_split_cuts_the_grid_into_sub_grids_of_whole_parents_in_member_order():
    config = small_config(**{"ensemble.k": K, "coupling.condition": "coupled_order"})
    config.grid.seed, config.grid.learning_rate, config.loss.lam = (0, 1), (0.02, 0.05, 0.1), (0.0, 1.0)
    assert len(grid.settings(config)) * K == 24 and grid.split(config, 24) == {} and grid.split(config, 0) == {}
    # 12 members per seed fit 12: one part per seed; 8 do not, so each part holds 2 of a seed's 3 rates or the rest.
    expected = {
        12: [((0,), (0.02, 0.05, 0.1)), ((1,), (0.02, 0.05, 0.1))],
        8: [((0,), (0.02, 0.05)), ((0,), (0.1,)), ((1,), (0.02, 0.05)), ((1,), (0.1,))],
    }
    for members, cut in expected.items():
        parts = grid.split(config, members)
        assert list(parts) == [f"part{i + 1}of{len(cut)}" for i in range(len(cut))]
        assert [(tuple(p.grid.seed), tuple(p.grid.learning_rate)) for p in parts.values()] == cut
        assert [s for p in parts.values() for s in grid.settings(p)] == grid.settings(config)
        assert all(len(grid.settings(p)) * K <= members for p in parts.values())
    with pytest.raises(ConfigError, match=r"members_per_run=3: the groups of one parent's settings .* hold 4 members"):
        grid.split(config, 3)  # One seed and rate: its two λ groups of 2.


def test_a_population_larger_than_members_per_run_trains_in_parts_equal_to_the_whole(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "jaxens.train",
        "--config=configs/mnist1d_ensemble.py",
        f"--workdir={tmp_path / 'parts'}",
    ]
    cmd += [*CLI_GRID, "--config.grid.members_per_run=4"]  # 2 seeds × 2 rates × k = 2: a part per seed.
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ, CI="true"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "parts")) == ["part1of2", "part2of2", "sweep.json"]
    config = config_lib.apply_overrides(
        config_lib.load_file("configs/mnist1d_ensemble.py"), [a.removeprefix("--config.") for a in CLI_GRID]
    )
    whole = run.train_and_evaluate(config, str(tmp_path / "whole"))
    everyone = run.restore(str(tmp_path / "whole")).state.params
    for i in (0, 1):
        part = run.restore(str(tmp_path / "parts" / f"part{i + 1}of2"))
        assert tuple(part.config.grid.seed) == (i,)
        mine = jax.tree.map(lambda a, i=i: np.asarray(a)[4 * i : 4 * i + 4], everyone)
        for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(part.state.params)):
            np.testing.assert_array_equal(a, b)  # Under loop: bitwise.
    df = results.load(str(tmp_path / "parts"))
    assert set(df["group"]) == {"seed=0,lr=0.02", "seed=0,lr=0.05", "seed=1,lr=0.02", "seed=1,lr=0.05"}
    config_lib.apply_overrides(config, ["grid.members_per_run=4"])
    with pytest.raises(ConfigError, match=r"members_per_run=4: this population runs as 2 parts"):
        run.train_and_evaluate(config, str(tmp_path / "elsewhere"))  # One run cannot hold it.
    joined = sweep.train_population(config, str(tmp_path / "parts"))
    assert [g["test"] for g in joined["groups"]] == [g["test"] for g in whole["groups"]]  # Finished: read back.
    assert list(joined["parts"]) == ["part1of2", "part2of2"]
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ, CI="true"))
    assert again.returncode == 0 and again.stdout.count("finished before; skipped") == 2
    # The population as one run cannot move into the parts' directory: nothing is adopted or mixed.
    config.grid.members_per_run = 0
    with pytest.raises(ConfigError, match=r"holds a sweep of runs \(sweep.json"):
        sweep.train_population(config, str(tmp_path / "parts"))
