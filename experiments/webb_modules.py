"""Webb et al. Fig. 3, Fig. 5, Fig. 7 and Table 6: what the modules of a λ sweep do, per λ.

  python experiments/webb_modules.py --runs=results/webb_lambda/runs --architecture=64x4 --out=results/webb_modules

Reads the finished run `<architecture>` of `experiments/webb_lambda.py` under --runs (every trial in one
program): for every trial and λ, the group of the learning rate its selection picked (OUT/selection.json beside
--runs), or without a tuned learning rate every λ group. It predicts each trial's validation and test splits with
every module as early stopping left it (each λ group at its best validation evaluation, config.eval.keep_best;
else the latest checkpoint), and per λ group of M modules computes (`jaxens.modules`):

- Fig. 3: the ensemble's test NLL (softmax of the mean logits, Webb's combination) against its modules'
  mean NLL: joint training (λ → 1) lowers the first while the second grows;
- Fig. 5: specialists: for every class, the one-vs-all test F1 of the single module and of the sub-ensemble
  of --size modules with the best validation F1 (`select_specialists`, --candidates random sub-ensembles),
  against a random module / sub-ensemble; the rows hold the means over classes;
- Fig. 7: dominance: the best module's test error, the ensemble's, their gap (≈ 0 when one module carries
  the ensemble) and the runner-up gap (`dominance`);
- Table 6: the modules' mean predictive entropy, min / max / mean / std over modules (`entropy_statistics`).

Writes atomically OUT/modules.csv (tidy: architecture, seed, lam, metric, value), OUT/results.json (rows
and settings), OUT/table6.md and OUT/modules.png (Fig. 3, 5, 7 against λ, mean ± std over seeds). Nothing
under --runs is written; rerunning recomputes the same numbers from the same checkpoints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import artifacts
import numpy as np

from jaxens.workdir import write_bytes_atomic, write_json_atomic

COLUMNS = ("architecture", "seed", "lam", "metric", "value")


def analyse(workdir: str, size: int, candidates: int, seed: int, lams=None, trial=None) -> list[dict]:
    """Rows (lam, metric, value) of one run: every λ group's Fig. 3, 5, 7 and Table 6 numbers (only the
    groups of `lams`, when given; of a run with several learning rates per λ, the selected one's:
    `artifacts.lambda_groups`)."""
    import jax

    from jaxens import ensemble as ensemble_lib
    from jaxens import metrics, modules

    trial = artifacts.trial_of(workdir, trial)
    restored = artifacts.early_stopped(workdir, trial)  # Webb et al. analyse the early-stopped model.
    plan, dataset = restored.plan, restored.dataset
    if not plan.lams:
        raise ValueError(f"{workdir}: not a modular-loss run (config.loss.lam is empty)")
    if dataset.val_x.shape[0] == 0:
        raise ValueError(f"{workdir}: no validation split (config.data.val_size = 0): Fig. 5 chooses on it")
    predictor = ensemble_lib.Predictor(restored.model, restored.config.eval.batch_size, restored.strategy)
    test = np.asarray(jax.device_get(predictor(restored.state, dataset.test_x, dataset)))  # [K, N, C]
    val = np.asarray(jax.device_get(predictor(restored.state, dataset.val_x, dataset)))
    test_y, val_y = np.asarray(dataset.test_y), np.asarray(dataset.val_y)
    m, method = plan.k, restored.config.ensemble.method
    size = min(size, m - 1) if m > 1 else 1
    key = jax.random.PRNGKey(seed)
    rows = []
    for lam, g in artifacts.lambda_groups(workdir, plan, trial=trial).items():
        if lams is not None and lam not in lams:
            continue
        group_test, group_val = test[g * m : (g + 1) * m], val[g * m : (g + 1) * m]  # [M, N, C]
        ens = metrics.ensemble_log_probs(group_test, method)
        values = {
            "ensemble_nll": float(metrics.nll(ens, test_y)),
            "mean_module_nll": float(np.mean(metrics.nll(group_test, test_y))),
        }
        d = modules.dominance(group_test, test_y, method)
        values.update(
            best_module_error=float(d.best_module_error),
            ensemble_error=float(d.ensemble_error),
            dominance_gap=float(d.gap),
            runner_up_gap=float(d.runner_up_gap),
            best_module_agreement=float(d.best_module_agreement),
        )
        h = modules.entropy_statistics(group_test).over_modules
        values.update(entropy_min=float(h.min), entropy_max=float(h.max), entropy_mean=float(h.mean))
        values["entropy_std"] = float(h.std)
        for s, name in ((1, "single"), (size, "subensemble")):
            picked, random = [], []
            for cls in range(group_test.shape[-1]):
                spec = modules.select_specialists(
                    group_val, val_y, group_test, test_y, cls, s, candidates, jax.random.fold_in(key, cls), method
                )
                picked.append(float(spec.test_f1))
                random.append(float(spec.random_test_f1))
            values[f"specialist_f1_{name}"] = float(np.mean(picked))
            values[f"random_f1_{name}"] = float(np.mean(random))
        rows += [dict(lam=lam, metric=k, value=v) for k, v in values.items()]
    return rows


def selected_runs(runs: str, architecture: str) -> list[tuple[int, str, list | None]]:
    """(trial seed, workdir, the λ to analyse or None for all) per trial of the finished run `<architecture>` under
    `runs` (webb_lambda.py trains every trial of an architecture in one program): per trial the λ groups whose
    learning rate webb_lambda.py's selection picked, else every group."""
    workdir = os.path.join(runs, architecture)
    if not os.path.exists(os.path.join(workdir, "summary.json")):
        return []
    chosen = os.path.join(os.path.dirname(os.path.abspath(runs)), "selection.json")
    if not os.path.exists(chosen):
        return [(seed, workdir, None) for seed in artifacts.trials(workdir)]
    with open(chosen) as f:
        picks = [c for c in json.load(f)["candidates"] if c["selected"] and c["run"] == architecture]
    by_trial: dict = {}
    for c in picks:
        by_trial.setdefault(c["seed"], []).append(c["lam"])
    return [(seed, workdir, lams) for seed, lams in sorted(by_trial.items())]


def curve(rows: list[dict], metric: str):
    by_lam: dict = {}
    for r in rows:
        if r["metric"] == metric:
            by_lam.setdefault(r["lam"], []).append(r["value"])
    lams = sorted(by_lam)
    return (
        np.asarray(lams),
        np.asarray([np.mean(by_lam[x]) for x in lams]),
        np.asarray([np.std(by_lam[x]) for x in lams]),
    )


def table6(rows: list[dict]) -> str:
    lams = sorted({r["lam"] for r in rows})
    lines = ["| entropy (nats) | " + " | ".join(f"λ = {lam:g}" for lam in lams) + " |", "|---|" + "---|" * len(lams)]
    for stat in ("min", "max", "mean", "std"):
        _, mean, std = curve(rows, f"entropy_{stat}")
        lines.append(f"| {stat} | " + " | ".join(f"{a:.3f} ± {b:.3f}" for a, b in zip(mean, std)) + " |")
    return "\n".join(lines) + "\n"


def figure(rows: list[dict], size: int, title: str) -> bytes:
    plt = artifacts.pyplot()

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = (
        (axes[0], (("ensemble_nll", "ensemble"), ("mean_module_nll", "mean module")), "test NLL (Fig. 3)"),
        (
            axes[1],
            (
                ("specialist_f1_single", "specialist module"),
                ("random_f1_single", "random module"),
                ("specialist_f1_subensemble", f"specialist {size} modules"),
                ("random_f1_subensemble", f"random {size} modules"),
            ),
            "one-vs-all test F1, mean over classes (Fig. 5)",
        ),
        (
            axes[2],
            (("best_module_error", "best module"), ("ensemble_error", "ensemble"), ("dominance_gap", "gap")),
            "module dominance, test error (Fig. 7)",
        ),
    )
    for ax, series, label in panels:
        for metric, name in series:
            lams, mean, std = curve(rows, metric)
            ax.errorbar(lams, mean, yerr=std, marker="o", capsize=3, label=name)
        ax.set_xlabel("λ")
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return artifacts.png_bytes(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True, help="the runs/ directory of experiments/webb_lambda.py")
    parser.add_argument("--architecture", default="64x4")
    parser.add_argument("--size", type=int, default=16, help="Fig. 5: modules in a specialist sub-ensemble")
    parser.add_argument("--candidates", type=int, default=200, help="Fig. 5: random sub-ensembles to choose from")
    parser.add_argument("--seed", type=int, default=0, help="key of the random sub-ensembles")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    found = selected_runs(args.runs, args.architecture)
    if not found:
        print(f"error: no finished run {args.architecture} under --runs={args.runs}", file=sys.stderr)
        sys.exit(2)
    started = time.time()
    rows = []
    for trial, workdir, lams in found:
        try:
            part = analyse(workdir, args.size, args.candidates, args.seed, lams, trial)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        rows += [dict(architecture=args.architecture, seed=trial, **r) for r in part]
    settings = dict(
        runs=args.runs, architecture=args.architecture, seeds=sorted({s for s, *_ in found}), size=args.size,
        candidates=args.candidates, key_seed=args.seed,
    )  # fmt: skip
    markdown = table6(rows)
    os.makedirs(args.out, exist_ok=True)
    write_bytes_atomic(os.path.join(args.out, "modules.csv"), artifacts.csv_bytes(rows, COLUMNS))
    write_json_atomic(os.path.join(args.out, "results.json"), dict(rows=rows, settings=settings))
    write_bytes_atomic(os.path.join(args.out, "table6.md"), markdown.encode())
    title = f"{args.architecture} modules, seeds {settings['seeds']}"
    write_bytes_atomic(os.path.join(args.out, "modules.png"), figure(rows, args.size, title))
    print(
        f"{len({w for _, w, _ in found})} runs analysed in {time.time() - started:.0f} s; wrote {args.out}/modules.csv, table6.md, modules.png"
    )
    for metric in ("ensemble_nll", "mean_module_nll", "dominance_gap", "specialist_f1_single", "random_f1_single"):
        lams, mean, std = curve(rows, metric)
        print(f"  {metric}: " + ", ".join(f"λ={a:g} {b:.4f}±{c:.4f}" for a, b, c in zip(lams, mean, std)))
    print(markdown)


if __name__ == "__main__":
    main()
