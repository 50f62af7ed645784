"""Webb et al.'s early stopping: each λ group's members kept at the group's best validation evaluation."""

from __future__ import annotations

import json
import signal

import jax
import numpy as np
import pytest
from conftest import cli, finish, small_config

from jaxens import checkpoint as checkpoint_lib
from jaxens import config as config_lib
from jaxens import run
from jaxens.trainer import summary

K = 2
ARGS = (  # configs/mnist1d_ensemble.py as two λ groups of k = 2 (coupled_order), 500 examples held out.
    "--config.coupling.condition=coupled_order",
    "--config.loss.lam=(0.0,1.0)",
    f"--config.ensemble.k={K}",
    "--config.model.widths=(32,)",
    "--config.data.val_size=100",  # A small, noisy validation split; 3900 examples, batch 500: 7 steps per epoch.
    "--config.train.batch_size=500",
    "--config.optimizer.learning_rate=0.5",  # Large enough that validation error goes up and down.
    "--config.optimizer.schedule=constant",
    "--config.train.num_epochs=12",
    "--config.train.checkpoint_every=1ep",
    "--config.train.max_checkpoints=12",  # Every epoch's members kept: the reference below.
    "--config.eval.keep_best=True",
)
ENSEMBLE = "configs/mnist1d_ensemble.py"


@pytest.fixture(scope="module")
def kept_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("early") / "run"
    rc, _, err = finish(cli(workdir, *ARGS, config=ENSEMBLE))
    assert rc == 0, err
    return workdir


def _group(tree, g):
    return jax.tree.map(lambda a: np.asarray(a)[g * K : (g + 1) * K], tree)


def _assert_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


def test_each_group_is_kept_at_its_best_validation_evaluation(kept_run):
    """The kept members of group g equal, bit for bit, the members' checkpoint at the step where the metrics
    log (read by `summary.at_best_val`, independently of the callback) has g's lowest ensemble validation
    error; some group's best is not the last step, so the test tells kept from final members apart."""
    best = run.restore(str(kept_run), best=True)
    records = [json.loads(line) for line in open(kept_run / "metrics.jsonl")]
    checkpoints = checkpoint_lib.Checkpointer(str(kept_run / "checkpoints"), read_only=True)
    steps = []
    for g, lam in enumerate(best.plan.group_lams()):
        expected = summary.at_best_val(records, (None, lam))
        assert best.best[str(g)]["step"] == expected["step"]
        assert best.best[str(g)]["val_error"] == expected["val_error"]
        at_best = checkpoints.restore(expected["step"], best.state)  # Into its shapes and shardings.
        for field in ("params", "batch_stats", "opt_state", "step"):
            _assert_equal(_group(getattr(best.state, field), g), _group(getattr(at_best, field), g))
        steps.append(expected["step"])
    assert min(steps) < best.plan.total_steps, steps


def test_a_run_killed_while_saving_its_best_members_ends_with_the_same_ones(kept_run, tmp_path):
    """SIGKILL during the save of the last improvement: the rerun resumes from the members' checkpoint before
    it, evaluates again and keeps the same members, bit for bit."""
    reference = run.restore(str(kept_run), best=True)
    last = max(b["tick"] for b in reference.best.values())
    assert last > 7, reference.best  # An improvement after the first evaluation, so the kill is not at the start.
    workdir = tmp_path / "run"
    rc, _, err = finish(cli(workdir, *ARGS, config=ENSEMBLE, kill_at=f"best@{last}"))
    assert rc == -signal.SIGKILL, err
    rc, out, err = finish(cli(workdir, *ARGS, config=ENSEMBLE))
    assert rc == 0, err
    assert "resuming" in out
    mine = run.restore(str(workdir), best=True)
    assert mine.best == reference.best
    _assert_equal(mine.state, reference.state)


def test_keep_best_needs_a_validation_split():
    with pytest.raises(config_lib.ConfigError, match="config.eval.keep_best=True: early stopping selects"):
        small_config(**{"eval.keep_best": True})
