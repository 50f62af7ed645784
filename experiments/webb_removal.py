"""Webb et al. Fig. 4: robustness of a modular-loss ensemble to removing random modules, per λ.

  python experiments/webb_removal.py --workdir=runs/webb_256x4 --out=results/webb_removal [--lams=0,0.99,1]

Reads a finished (or checkpointed) λ-sweep run of `python -m jaxens.train` (e.g. configs/webb_fmnist_mlp.py:256x4),
predicts the test split with every module as early stopping left it (each λ group at its best validation
evaluation, kept with config.eval.keep_best, as Webb et al. analyse it; else the latest checkpoint, with a
note), and for each λ group computes the
ensemble's test error (mean of the remaining modules' logits) with n of its M modules removed at random,
averaged over random draws (`jaxens.modules.removal_curve`). Webb et al. found jointly trained ensembles
(λ = 1) fragile — a few modules carry the prediction — and λ slightly below 1 robust.

Writes OUT/removal.csv (tidy: lam, removed, error_mean, error_std, trials), OUT/removal.json (rows and
settings) and OUT/removal.png (matplotlib), each through a temporary file and a rename; an OUT that already
holds results is refused.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import artifacts
import jax
import numpy as np

from jaxens import ensemble as ensemble_lib
from jaxens import modules
from jaxens.workdir import write_bytes_atomic, write_json_atomic

FILES = ("removal.csv", "removal.json", "removal.png")


def removal_table(
    workdir: str, lams=None, num_removed=None, num_trials: int = 20, seed: int = 0, learning_rate=None, trial=None
) -> list[dict]:
    """Rows {lam, removed, error_mean, error_std, trials} for the λ groups of the run in `workdir`.

    Args:
      workdir: a run trained with config.loss.lam (one group of M modules per λ).
      lams: the λ values to analyse (default: every group of the run).
      num_removed: how many modules to remove (default: 0, M/16, 2M/16, … up to M − 1).
      num_trials: random draws per point.
      seed: the key of the draws (the same draws for every λ).
      learning_rate: in a run with several learning rates per λ, which one (`artifacts.lambda_groups`).
      trial: in a run over several trials (config.grid.seed), which one (`artifacts.trial_of`).
    """
    trial = artifacts.trial_of(workdir, trial)
    restored = artifacts.early_stopped(workdir, trial)  # Webb et al. analyse the early-stopped model.
    plan = restored.plan
    if not plan.lams:
        raise ValueError(f"{workdir}: not a modular-loss run (config.loss.lam is empty)")
    index = artifacts.lambda_groups(workdir, plan, learning_rate, trial)
    group_lams = tuple(index)
    wanted = group_lams if lams is None else tuple(lams)
    missing = [lam for lam in wanted if lam not in group_lams]
    if missing:
        raise ValueError(f"--lams: {missing} not trained in {workdir} (it has {list(group_lams)})")
    m = plan.k
    if num_removed is None:
        num_removed = sorted({*range(0, m, max(m // 16, 1)), m - 1})
    predictor = ensemble_lib.Predictor(restored.model, restored.config.eval.batch_size, restored.strategy)
    logits = predictor(restored.state, restored.dataset.test_x, restored.dataset)  # [K, N, C]
    labels = restored.dataset.test_y
    key = jax.random.PRNGKey(seed)
    rows = []
    for lam in wanted:
        g = index[lam]
        curve = modules.removal_curve(
            logits[g * m : (g + 1) * m], labels, tuple(num_removed), key, num_trials=num_trials
        )
        for n, mean, std in zip(curve.num_removed.tolist(), curve.error_mean.tolist(), curve.error_std.tolist()):
            rows.append(dict(lam=lam, removed=int(n), error_mean=float(mean), error_std=float(std), trials=num_trials))
    return rows


def write_results(rows: list[dict], out: str, settings: dict) -> None:
    """removal.csv, removal.json and removal.png in `out` (refused if any exists)."""
    os.makedirs(out, exist_ok=True)
    existing = [f for f in FILES if os.path.exists(os.path.join(out, f))]
    if existing:
        raise FileExistsError(f"{out} already holds {', '.join(existing)}: refusing to overwrite results")
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(os.path.join(out, "removal.csv"), text.getvalue().encode())
    write_json_atomic(os.path.join(out, "removal.json"), {"rows": rows, "settings": settings})

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for lam in sorted({r["lam"] for r in rows}):
        mine = [r for r in rows if r["lam"] == lam]
        x = np.array([r["removed"] for r in mine])
        y, s = np.array([r["error_mean"] for r in mine]), np.array([r["error_std"] for r in mine])
        ax.plot(x, y, label=f"λ = {lam:g}")
        ax.fill_between(x, y - s, y + s, alpha=0.2)
    ax.set_xlabel("modules removed")
    ax.set_ylabel("test error")
    ax.set_title("Robustness to module removal (Webb et al. Fig. 4)")
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    write_bytes_atomic(os.path.join(out, "removal.png"), buffer.getvalue())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a run trained with config.loss.lam")
    parser.add_argument("--out", required=True, help="directory for removal.csv/.json/.png")
    parser.add_argument("--lams", default=None, help="comma-separated λ values (default: all of the run)")
    parser.add_argument("--learning_rate", type=float, default=None, help="of a run with several per λ")
    parser.add_argument("--trial", type=int, default=None, help="the trial's seed, of a run with several")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for f in FILES:
        if os.path.exists(os.path.join(args.out, f)):
            raise SystemExit(f"error: {args.out} already holds {f}: refusing to overwrite results")
    lams = None if args.lams is None else tuple(float(v) for v in args.lams.split(","))
    try:
        rows = removal_table(args.workdir, lams, None, args.trials, args.seed, args.learning_rate, args.trial)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    settings = {"workdir": os.path.abspath(args.workdir), "trial": args.trial, "trials": args.trials, "seed": args.seed}
    write_results(rows, args.out, settings)
    for lam in sorted({r["lam"] for r in rows}):
        curve = ", ".join(f"{r['removed']}: {r['error_mean']:.4f}" for r in rows if r["lam"] == lam)
        print(f"λ = {lam:g}  (removed: mean test error)  {curve}")


if __name__ == "__main__":
    main()
