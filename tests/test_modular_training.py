"""Training with Webb et al.'s modular loss in the trainer: λ groups side by side, λ = 0 as independent
training, early stopping on the validation split, and Theorem 1's bound as a config error."""

from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np
import pytest
from conftest import REPO, small_config

from jaxens import checkpoint as checkpoint_lib
from jaxens import config as config_lib
from jaxens import ensemble as ensemble_lib
from jaxens import models, optim, run
from jaxens import rng as rng_lib


def _config(**overrides):
    return small_config(
        **{
            "ensemble.k": 2,
            "model.widths": (16,),
            "coupling.condition": "coupled_order",
            "ensemble.method": "mean_logit",
            **overrides,
        }
    )


def _params(workdir, config, k):
    model = models.build(config.model, 10)
    like = ensemble_lib.init_ensemble(
        model, optim.make_optimizer(config.optimizer, 1), rng_lib.member_streams(0, k), (40, 1)
    )
    ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
    state = ckpt.restore(ckpt.latest_step(), like)
    ckpt.close()
    return state.params


def test_lambda_zero_trains_like_independent_members(tmp_path):
    """k·L_0 gives each member the gradient of its own NLL: the same members as a run without the loss."""
    plain = _config()
    run.train_and_evaluate(plain, str(tmp_path / "plain"))
    modular = _config(**{"loss.lam": (0.0,)})
    run.train_and_evaluate(modular, str(tmp_path / "lam0"))
    for a, b in zip(
        jax.tree.leaves(_params(tmp_path / "plain", plain, 2)), jax.tree.leaves(_params(tmp_path / "lam0", modular, 2))
    ):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


def test_a_lambda_sweep_equals_one_run_per_lambda(tmp_path):
    """Groups λ = 0.5 and 1 in one program (K = 4) against λ = 1 alone: the same members (every group starts
    from the same k initializations), and early stopping picks the best validation evaluation."""
    sweep_config = _config(**{"loss.lam": (0.5, 1.0), "data.val_size": 500})
    sweep = run.train_and_evaluate(sweep_config, str(tmp_path / "sweep"))
    alone_config = _config(**{"loss.lam": (1.0,), "data.val_size": 500})
    alone = run.train_and_evaluate(alone_config, str(tmp_path / "alone"))
    assert [g["lam"] for g in sweep["groups"]] == [0.5, 1.0]
    for a, b in zip(
        jax.tree.leaves(_params(tmp_path / "sweep", sweep_config, 4)),
        jax.tree.leaves(_params(tmp_path / "alone", alone_config, 2)),
    ):
        np.testing.assert_allclose(a[2:], b, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(sweep["groups"][1]["test"]["ensemble_error"], alone["test"]["ensemble_error"], atol=2e-3)
    # Different λ, different members (from the same initializations).
    kernel = np.asarray(_params(tmp_path / "sweep", sweep_config, 4)["dense0"]["kernel"])
    assert not np.allclose(kernel[:2], kernel[2:])
    # Early stopping, re-derived from the metrics log: the test error where validation error was lowest.
    records = [json.loads(line) for line in open(tmp_path / "alone" / "metrics.jsonl")]
    ens = [r for r in records if r["scope"] == "ensemble" and r["metric"] == "error"]
    val = {r["step"]: r["value"] for r in ens if r["split"] == "val"}
    step = min(val, key=lambda s: (val[s], s))
    best = alone["groups"][0]["at_best_val"]
    assert (best["step"], best["val_error"]) == (step, val[step])
    assert best["test_error"] == next(r["value"] for r in ens if r["split"] == "test" and r["step"] == step)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"loss.lam": (1.2,)},
            "config.loss.lam: 1.2 must be a number in [0, 1]; beyond 1 the modular loss is unbounded below (Webb et al., Theorem 1)",
        ),
        ({"loss.lam": (-0.1,)}, "config.loss.lam: -0.1 must be a number in [0, 1]"),
        (
            {"loss.lam": (0.5,), "coupling.condition": "no_coupling"},
            "needs config.coupling.condition='coupled_order' (not 'no_coupling')",
        ),
        ({"loss.lam": (0.5, 0.5)}, "values repeat"),
        ({"loss.family": "gaussian"}, "config.loss.family='gaussian': the trainer trains classifiers"),
    ],
)
def test_modular_loss_config_errors(overrides, message):
    with pytest.raises(config_lib.ConfigError) as e:
        _config(**overrides)
    assert message in str(e.value)


def test_removal_experiment_on_a_trained_lambda_sweep(tmp_path):
    """experiments/webb_removal.py on a real (small) run: removing no module gives the run's own ensemble
    test error, the curve has a row per (λ, n), and existing results are never overwritten."""
    sys.path.insert(0, os.path.join(REPO, "experiments"))
    import webb_removal

    config = _config(**{"loss.lam": (0.0, 1.0), "ensemble.k": 4})
    summary = run.train_and_evaluate(config, str(tmp_path / "run"))
    rows = webb_removal.removal_table(str(tmp_path / "run"), num_trials=5)
    assert {(r["lam"], r["removed"]) for r in rows} == {(lam, n) for lam in (0.0, 1.0) for n in (0, 1, 2, 3)}
    for group in summary["groups"]:
        full = next(r for r in rows if r["lam"] == group["lam"] and r["removed"] == 0)
        assert full["error_mean"] == pytest.approx(group["test"]["ensemble_error"], abs=1e-6)
        assert full["error_std"] == 0.0
    webb_removal.write_results(rows, str(tmp_path / "out"), {})
    assert sorted(os.listdir(tmp_path / "out")) == ["removal.csv", "removal.json", "removal.png"]
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        webb_removal.write_results(rows, str(tmp_path / "out"), {})
    with pytest.raises(ValueError, match=r"--lams: \[0.5\] not trained"):
        webb_removal.removal_table(str(tmp_path / "run"), lams=(0.5,))
