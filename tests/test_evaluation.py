"""The trainer's evaluation: every group's metrics, computed for all groups in one call, against numpy."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import small_config

from jaxens import data as data_lib
from jaxens import ensemble, models, optim, rng
from jaxens.trainer import evaluation


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_each_group_is_its_own_ensemble_of_its_healthy_members():
    """K = 6 members in 3 groups of 2, member 3 (group 1's second) diverged: per group, member metrics of
    both members, ensemble metrics (mean of probabilities) of the healthy ones, and no diversity for a group
    left with one member; the OOD set's entropy and confidence the same way."""
    config = small_config()
    dataset = data_lib.load(config)
    model = models.build(config.model, dataset.num_classes, dataset.input_shape)
    tx = optim.make_optimizer(config.optimizer, 10)
    state = ensemble.init_ensemble(model, tx, rng.member_streams(0, 6), dataset.input_shape)
    predictor = ensemble.Predictor(model, 128, "vmap")
    x, y = dataset.test_x[:300], np.asarray(dataset.test_y[:300])
    sets = {"test": data_lib.EvalSet(x, y, "test"), "far": data_lib.EvalSet(x, y, "ood")}
    diverged = np.array([-1, -1, -1, 5, -1, -1])
    out = evaluation.evaluate(predictor, state, dataset, sets, "mean_prob", num_groups=3, diverged=diverged)

    probs = _softmax(np.asarray(predictor(state, x, dataset), np.float64))  # [K, N, C]
    rows = np.arange(len(y))
    for g, healthy in enumerate(([0, 1], [2], [4, 5])):
        test, far = out[g]["test"], out[g]["far"]
        members = [2 * g, 2 * g + 1]
        assert test["member_error"] == pytest.approx([np.mean(probs[m].argmax(-1) != y) for m in members])
        nll = [-np.log(probs[m][rows, y]).mean() for m in members]
        assert test["member_nll"] == pytest.approx(nll, rel=1e-5)
        p = probs[healthy].mean(0)  # [N, C]
        assert test["ensemble_error"] == pytest.approx(np.mean(p.argmax(-1) != y))
        assert test["ensemble_nll"] == pytest.approx(-np.log(p[rows, y]).mean(), rel=1e-5)
        assert far["ensemble_entropy"] == pytest.approx(-(p * np.log(p)).sum(-1).mean(), rel=1e-5)
        assert far["ensemble_confidence"] == pytest.approx(p.max(-1).mean(), rel=1e-5)
        assert ("ensemble_sym_kl" in test) == (len(healthy) == 2)
    assert out[1]["test"]["ensemble_nll"] == pytest.approx(out[1]["test"]["member_nll"][0])  # Member 2's alone.
