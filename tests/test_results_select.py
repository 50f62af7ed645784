"""`jaxens.results.select`: per group of the remaining fields, the setting with the lowest validation metric,
reported at its early-stopped step; checked against choices worked out by hand."""

from __future__ import annotations

import pandas as pd
import pytest

from jaxens import results


def _frame() -> pd.DataFrame:
    """Two seeds × two learning rates, one run each with λ groups 0 and 1; validation and test error at
    steps 10 and 20 (values chosen so that the answers below are clear by hand)."""
    val = {  # (seed, lr, λ) → validation error at steps 10, 20
        (0, 0.1, 0.0): (0.30, 0.20),
        (0, 0.1, 1.0): (0.25, 0.40),
        (0, 0.5, 0.0): (0.28, 0.22),
        (0, 0.5, 1.0): (0.15, 0.15),  # Best of seed 0, λ 1, tied over steps: the first (10) is kept.
        (1, 0.1, 0.0): (0.10, 0.12),
        (1, 0.1, 1.0): (0.33, 0.31),
        (1, 0.5, 0.0): (0.10, 0.40),  # Ties seed 1, λ 0 with lr 0.1: the smaller lr wins.
        (1, 0.5, 1.0): (0.32, 0.30),
    }
    rows = []
    for (seed, lr, lam), errors in val.items():
        for step, error in zip((10, 20), errors):
            base = dict(run=f"lr{lr}_s{seed}", phase="members", step=step, epoch=step / 10, t=None, lam=lam)
            base.update(scope="ensemble", member=None)
            rows.append(dict(base, split="val", metric="error", value=error))
            # Test error encodes where it was read: seed + lr + λ/10 + step/1000.
            rows.append(dict(base, split="test", metric="error", value=seed + lr + lam / 10 + step / 1000))
            rows.append(dict(base, split="test", metric="nll", value=1.0))
            rows.append(dict(base, split="train", metric="loss", value=9.0, scope="member", member=0))
            rows[-4:] = [
                dict(r, **{"seed": seed, "optimizer.learning_rate": lr, "model.name": "mlp"}) for r in rows[-4:]
            ]
    df = pd.DataFrame(rows)
    df["t"] = df["t"].astype("Int64")
    df["member"] = df["member"].astype("Int64")
    return df


def test_select_picks_the_lowest_validation_error_per_seed_and_lambda_and_reports_test_at_that_step():
    chosen = results.select(_frame(), by="optimizer.learning_rate")
    got = {
        (r.seed, r.lam): (r["optimizer.learning_rate"], r.step, round(r.val_error, 6), round(r.test_error, 6))
        for _, r in chosen.iterrows()
    }
    assert got == {
        (0, 0.0): (0.1, 20, 0.20, round(0 + 0.1 + 0.0 + 0.020, 6)),
        (0, 1.0): (0.5, 10, 0.15, round(0 + 0.5 + 0.1 + 0.010, 6)),
        (1, 0.0): (0.1, 10, 0.10, round(1 + 0.1 + 0.0 + 0.010, 6)),
        (1, 1.0): (0.5, 20, 0.30, round(1 + 0.5 + 0.1 + 0.020, 6)),
    }
    assert set(chosen.columns) >= {"run", "epoch", "test_nll"} and "model.name" not in chosen.columns


def test_candidates_keep_every_setting_and_last_step_scoring_differs():
    every = results.candidates(_frame(), by=["optimizer.learning_rate"])
    assert len(every) == 8 and every["selected"].sum() == 4
    last = results.select(_frame(), by="optimizer.learning_rate", early_stopping=False)
    picks = {(r.seed, r.lam): r["optimizer.learning_rate"] for _, r in last.iterrows()}
    assert picks == {(0, 0.0): 0.1, (0, 1.0): 0.5, (1, 0.0): 0.1, (1, 1.0): 0.5}
    assert set(last["step"]) == {20}


def test_select_says_what_is_missing():
    with pytest.raises(KeyError, match="optimizer.momentum"):
        results.select(_frame(), by="optimizer.momentum")
    with pytest.raises(ValueError, match="config.data.val_size"):
        results.select(_frame()[lambda d: d["split"] != "val"], by="optimizer.learning_rate")
