"""experiments/webb_regression.py: the λ sweep on diabetes writes one tidy row per λ, λ = 0 is independent
training with the learning rate scaled by 1/M (Webb et al. §3.1), the test NLLs obey the ambiguity
decomposition (eq. 6), and existing results are never overwritten."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO

_SCRIPT = os.path.join(REPO, "experiments", "webb_regression.py")
spec = importlib.util.spec_from_file_location("webb_regression", _SCRIPT)
webb_regression = importlib.util.module_from_spec(spec)
sys.modules["webb_regression"] = webb_regression  # Dataclasses look their module up there.
spec.loader.exec_module(webb_regression)

LAMS = (0.0, 0.5, 1.0)
M, HIDDEN, EPOCHS, SEED = 3, 4, 5, 1
LR = {"gaussian": 0.1, "poisson": 0.001}
FAMILIES = ("gaussian", "poisson")


def _argv(family, out):
    return [
        f"--family={family}",
        "--lams=" + ",".join(str(lam) for lam in LAMS),
        f"--members={M}",
        f"--hidden={HIDDEN}",
        f"--epochs={EPOCHS}",
        f"--lr={LR[family]}",
        f"--seed={SEED}",
        f"--out={out}",
    ]


@pytest.fixture(scope="module", params=FAMILIES)
def run(request, tmp_path_factory):
    """One CLI run per family: (family, out dir, returned rows)."""
    family = request.param
    out = str(tmp_path_factory.mktemp(f"webb_{family}"))
    rows = webb_regression.main(_argv(family, out))
    return family, out, rows


def test_results_have_one_finite_row_per_lambda(run):
    family, out, rows = run
    with open(os.path.join(out, "results.csv")) as f:
        table = list(csv.DictReader(f))
    with open(os.path.join(out, "results.json")) as f:
        summary = json.load(f)
    metrics = webb_regression.metric_columns(family)
    assert [float(r["lam"]) for r in table] == list(LAMS)
    assert [r["lam"] for r in summary["rows"]] == list(LAMS)
    assert summary["settings"]["family"] == family and summary["settings"]["members"] == M
    for row, json_row, returned in zip(table, summary["rows"], rows):
        assert row["family"] == family and int(row["epochs"]) == EPOCHS
        for key in metrics:
            assert math.isfinite(float(row[key])), (key, row)
            assert float(row[key]) == pytest.approx(json_row[key], rel=1e-6)
            assert json_row[key] == returned[key]
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]  # No temporary file left behind.


def test_ensemble_nll_is_mean_member_nll_minus_ambiguity(run):
    """Eq. 6 at λ = 1: NLL(η̄) = (1/M) Σ_j NLL(η_j) − (1/M) Σ_j KL(q̄ ‖ q_j) for every NEF, on any data.

    The ambiguity is ≥ 0 (A is convex), so the ensemble never does worse than its mean member in NLL —
    exactly, for the Gaussian and the Poisson family alike (not just in expectation).
    """
    family, _, rows = run
    for r in rows:
        assert r["test_ambiguity"] >= 0.0
        assert r["test_ensemble_nll"] <= r["test_member_nll_mean"] + 1e-5
        want = r["test_member_nll_mean"] - r["test_ambiguity"]
        assert r["test_ensemble_nll"] == pytest.approx(want, rel=1e-4, abs=1e-4)
        assert r["test_member_nll_min"] <= r["test_member_nll_mean"] <= r["test_member_nll_max"]


def _eta(params, x):
    """One member's forward pass written out: x [B, D] → relu(x W0 + b0) W1 + b1 → [B]."""
    hidden = jnp.maximum(x @ params["dense0"]["kernel"] + params["dense0"]["bias"], 0.0)
    return (hidden @ params["head"]["kernel"] + params["head"]["bias"])[:, 0]


def _alone_nll(family, eta, y):
    """The member's own mean NLL up to constants (they carry no gradient)."""
    if family == "gaussian":
        return jnp.mean(0.5 * jnp.square(y - eta))
    return jnp.mean(jnp.exp(eta) - y * eta)


@pytest.mark.parametrize("family", FAMILIES)
def test_lambda_zero_group_is_each_member_trained_alone_with_lr_over_m(family):
    """The λ = 0 group of the stacked sweep equals M separate trainings, each on its own NLL with SGD at
    learning rate lr/M (same momentum), re-implemented here one member at a time without vmap."""
    _, info = webb_regression.run_sweep(family, LAMS, M, HIDDEN, EPOCHS, LR[family], 0.9, SEED)
    split = info["split"]
    x, y = jnp.asarray(split.x_train), jnp.asarray(split.y_train)
    lr, momentum = LR[family] / M, 0.9
    grad = jax.jit(jax.grad(lambda p: _alone_nll(family, _eta(p, x), y)))
    for j in range(M):
        params = jax.tree.map(lambda a: a[j], info["params0"])  # Group 0 (λ = 0), member j.
        velocity = jax.tree.map(jnp.zeros_like, params)
        for _ in range(EPOCHS):
            g = grad(params)
            velocity = jax.tree.map(lambda v, gi: momentum * v + gi, velocity, g)
            params = jax.tree.map(lambda p, v: p - lr * v, params, velocity)
        alone = jax.tree.leaves(params)
        swept = jax.tree.leaves(jax.tree.map(lambda a: a[j], info["params"]))  # Group 0, member j.
        joint = jax.tree.leaves(jax.tree.map(lambda a: a[(len(LAMS) - 1) * M + j], info["params"]))  # λ = 1.
        for a, b in zip(alone, swept):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-5, atol=2e-6)
        # The comparison can tell: the λ = 1 member, from the same start, went elsewhere.
        assert max(float(np.abs(np.asarray(a) - np.asarray(c)).max()) for a, c in zip(alone, joint)) > 1e-3
        # Every group starts from the same M members.
        for a in jax.tree.leaves(info["params0"]):
            np.testing.assert_array_equal(np.asarray(a[j]), np.asarray(a[(len(LAMS) - 1) * M + j]))


def test_existing_results_are_not_overwritten(run):
    family, out, _ = run
    before = {n: open(os.path.join(out, n), "rb").read() for n in ("results.csv", "results.json")}
    with pytest.raises(SystemExit, match="results.csv already exists: refusing to overwrite"):
        webb_regression.main(_argv(family, out))
    assert {n: open(os.path.join(out, n), "rb").read() for n in before} == before


def test_bad_lambda_is_rejected_before_anything_is_written(tmp_path, capsys):
    with pytest.raises(SystemExit):
        webb_regression.main(["--lams=0,1.5", f"--out={tmp_path / 'x'}"])
    assert "must lie in [0, 1]" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x")
