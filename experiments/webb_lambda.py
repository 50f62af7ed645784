"""Webb et al. Fig. 2 and Table 2: test error against λ for ensembles of M modules × H hidden units, with the
learning rate tuned per architecture and λ on each trial's validation split.

  python experiments/webb_lambda.py --out=results/webb_lambda                         # CPU scale (defaults, 41 min)
  python experiments/webb_lambda.py --config=configs/webb_fmnist_mlp.py --learning_rates=0.005,0.01,0.02,0.05 \\
      --architectures=1x1024,16x64,64x16,256x4 --seeds=0,1,2,3,4 --out=results/webb_fmnist   # the paper's Table 2

Webb et al.'s protocol: "we tune the learning rate independently for each configuration and λ", over "5
trials of random train/validation splits", reporting the test error at the epoch of lowest validation error.
Here a trial is a seed S: its groups draw their initializations and minibatches from S and hold out the
validation split of S (`config.data.val_from_seed`), so every trial has its own split. Every architecture is
ONE program: a run of `python -m jaxens.train` whose groups are every trial × learning rate × λ
(config.grid.seed × config.grid.learning_rate × config.loss.lam, `jaxens.grid`: K = |S|·|η|·|λ|·M members side
by side, each trial training on its own examples of one pool) in a resumable `jaxens.sweep` under
OUT/runs/<architecture>. Then `jaxens.results.select` picks, per architecture, trial and λ, the learning rate
whose ensemble reached the lowest validation error (each at its own early-stopped epoch), and the test error
at that epoch is the trial's result. A one-module architecture (1xH) is the single network, trained without
the modular loss.

Learning rates: the trainer's modular loss is k·L_λ (docs/definitions.md#modular-loss), so a learning rate η
here is Webb et al.'s L_λ at k·η: their 256×4 runs' 5.15 and 1.536 are 0.020 and 0.006 here.

Writes atomically:
- OUT/results.csv: tidy, one row per architecture × trial × λ (at its selected learning rate) × metric:
  architecture, modules, hidden, seed, lam (empty for the single network), learning_rate, metric
  (test_error_at_best_val: Webb's early-stopped test error, and val_error_at_best_val; ensemble_error,
  mean_member_error, ensemble_nll: at the end of training), value;
- OUT/selection.csv and OUT/selection.json: the selection itself, every candidate (architecture, seed, lam,
  learning_rate, best_epoch, val_error, test_error, selected, run);
- OUT/results.json: the rows and the settings; OUT/table2.md: Table 2 (test error at the best validation
  epoch, mean ± standard deviation over trials, per architecture and λ) and the learning rates selected;
- OUT/lambda.png: Fig. 2, test error against λ per architecture (the single network as a dashed line).
Rerunning trains nothing that finished and rebuilds the tables and the figure from the runs' records.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import artifacts
import numpy as np

from jaxens import config as config_lib
from jaxens import sweep
from jaxens.workdir import write_bytes_atomic, write_json_atomic

COLUMNS = ("architecture", "modules", "hidden", "seed", "lam", "learning_rate", "metric", "value")
SELECTION_COLUMNS = (
    "architecture", "seed", "lam", "learning_rate", "best_epoch", "val_error", "test_error", "selected", "run",
)  # fmt: skip


def sweep_runs(config_path: str, architectures, seeds, overrides, learning_rates=()) -> dict:
    """name → (architecture, config): every architecture one program holding every trial (config.grid.seed, each
    seed also choosing its validation split: config.data.val_from_seed) and learning rate (config.grid.learning_rate).
    No learning rates (or one): the config's own (or that one), not on the grid."""
    runs = {}
    for arch in architectures:
        config = config_lib.apply_overrides(config_lib.load_file(config_path, arch), overrides)
        config.grid.seed = tuple(int(s) for s in seeds)
        config.data.val_from_seed = True  # Each trial its own train/validation split.
        if len(learning_rates) > 1:  # The grid gives every group its rate; the twin stays at its default.
            config.optimizer.learning_rate = config_lib.get_default_config().optimizer.learning_rate
            config.grid.learning_rate = tuple(float(lr) for lr in learning_rates)
        elif learning_rates:
            config.optimizer.learning_rate = float(learning_rates[0])
        runs[arch] = (arch, config)
    return runs


def selection(root: str, outcomes: dict, runs: dict) -> list[dict]:
    """Every candidate (one λ group of one finished run) scored on its validation split, and which one
    `jaxens.results.select` picks per architecture, trial and λ."""
    import pandas as pd

    from jaxens import results

    frames = []
    for name, outcome in outcomes.items():
        if outcome.status == "finished":
            frame = results.load(os.path.join(root, name), config_fields=["seed", "optimizer.learning_rate"])
            frames.append(frame.assign(architecture=runs[name][0]))  # Each group's seed is its trial's.
    if not frames:
        return []
    scored = results.candidates(
        pd.concat(frames, ignore_index=True), by="optimizer.learning_rate", within=["architecture", "seed"]
    )
    return [
        dict(
            architecture=r["architecture"],
            seed=int(r["seed"]),
            lam=None if pd.isna(r["lam"]) else float(r["lam"]),
            learning_rate=float(r["optimizer.learning_rate"]),
            best_epoch=float(r["epoch"]),
            val_error=float(r["val_error"]),
            test_error=float(r["test_error"]),
            selected=bool(r["selected"]),
            run=r["run"],
        )  # fmt: skip
        for _, r in scored.iterrows()
    ]


def table(outcomes: dict, runs: dict, chosen: list[dict]) -> list[dict]:
    """Per selected candidate: its early-stopped validation and test error and its run's end-of-training metrics."""
    rows = []
    for c in (c for c in chosen if c["selected"]):
        arch, config = runs[c["run"]]
        base = dict(architecture=arch, modules=config.ensemble.k, hidden=config.model.widths[-1], seed=c["seed"])
        base.update(lam=c["lam"], learning_rate=c["learning_rate"])
        group = next(
            g
            for g in outcomes[c["run"]].summary["groups"]
            if g["lam"] == c["lam"]
            and g["grid"]["seed"] == c["seed"]
            and g["grid"].get("learning_rate", c["learning_rate"]) == c["learning_rate"]
        )
        values = {m: group["test"][m] for m in ("ensemble_error", "mean_member_error", "ensemble_nll")}
        values.update(test_error_at_best_val=c["test_error"], val_error_at_best_val=c["val_error"])
        rows += [dict(base, metric=metric, value=float(value)) for metric, value in values.items()]
    return rows


def by_lambda(rows: list[dict], arch: str, metric: str) -> dict:
    """λ (None for the single network) → (mean, std, number of seeds) of one architecture's metric."""
    values: dict = {}
    for r in rows:
        if r["architecture"] == arch and r["metric"] == metric:
            values.setdefault(r["lam"], []).append(r["value"])
    return {lam: (float(np.mean(v)), float(np.std(v)), len(v)) for lam, v in values.items()}


def table2(rows: list[dict], architectures, metric: str) -> str:
    """Markdown: one row per architecture, one column per λ, mean ± std in percent; then the learning rates
    selected in each trial."""
    lams = sorted({r["lam"] for r in rows if r["lam"] is not None})
    header = "| architecture | " + " | ".join(f"λ = {lam:g}" for lam in lams) + " | single network |"
    rule = "|---|" + "---|" * (len(lams) + 1)
    lines, chosen = [header, rule], ["", "Learning rate selected on each trial's validation split:", "", header, rule]
    for arch in architectures:
        cells = by_lambda(rows, arch, metric)
        fmt = lambda c: f"{100 * c[0]:.1f} ± {100 * c[1]:.1f}" if c else "—"  # noqa: E731
        lines.append(f"| {arch} | " + " | ".join(fmt(cells.get(lam)) for lam in lams) + f" | {fmt(cells.get(None))} |")
        rates = {}
        for r in sorted(rows, key=lambda r: r["seed"]):
            if r["architecture"] == arch and r["metric"] == metric:
                rates.setdefault(r["lam"], []).append(f"{r['learning_rate']:g}")
        cell = lambda lam: ", ".join(rates[lam]) if lam in rates else "—"  # noqa: E731
        chosen.append(f"| {arch} | " + " | ".join(cell(lam) for lam in lams) + f" | {cell(None)} |")
    return "\n".join(lines + chosen) + "\n"


def figure(rows: list[dict], architectures, metric: str, title: str) -> bytes:
    plt = artifacts.pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    for arch in architectures:
        cells = by_lambda(rows, arch, metric)
        lams = sorted(lam for lam in cells if lam is not None)
        if lams:
            mean = np.asarray([cells[lam][0] for lam in lams])
            std = np.asarray([cells[lam][1] for lam in lams])
            ax.errorbar(lams, mean, yerr=std, marker="o", capsize=3, label=arch)
        if None in cells:
            ax.axhline(cells[None][0], color="gray", linestyle="--", label=f"{arch} (single network)")
    ax.set_xlabel("λ")
    ax.set_ylabel("test error at the best validation epoch")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return artifacts.png_bytes(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/webb_mnist1d_mlp.py", help="config file taking MxH")
    parser.add_argument("--architectures", default="1x256,4x64,16x16,64x4")
    parser.add_argument("--seeds", default="0,1,2", help="trials: each its seed and validation split")
    parser.add_argument(
        "--learning_rates",
        default="0.02,0.05,0.1,0.2,0.5,1",
        help="the grid tuned per architecture and λ ('' = the config's)",
    )
    parser.add_argument("--set", action="append", default=[], help="trainer config override field=value")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    architectures = tuple(a for a in args.architectures.split(",") if a)
    try:
        seeds = tuple(int(s) for s in args.seeds.split(",") if s)
        rates = tuple(float(x) for x in args.learning_rates.split(",") if x)
        if not architectures or not seeds:
            raise config_lib.ConfigError("--architectures and --seeds need at least one value each")
        if any(not np.isfinite(x) or x <= 0 for x in rates) or len(set(rates)) != len(rates):
            raise config_lib.ConfigError(f"--learning_rates={args.learning_rates}: distinct positive numbers")
        runs = sweep_runs(args.config, architectures, seeds, args.set, rates)
        first = next(iter(runs.values()))[1]
        if not first.data.val_size:
            raise config_lib.ConfigError(
                "the learning rate is selected on a validation split: set config.data.val_size > 0"
            )
        root = os.path.join(args.out, "runs")
        sweep.validate_all({name: config for name, (_, config) in runs.items()}, root)
    except (config_lib.ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

    started = time.time()
    outcomes = sweep.run_all({name: config for name, (_, config) in runs.items()}, root)
    chosen = selection(root, outcomes, runs)
    rows = table(outcomes, runs, chosen)
    metric = "test_error_at_best_val"
    settings = dict(
        config=args.config,
        overrides=args.set,
        architectures=architectures,
        seeds=seeds,
        learning_rates=list(rates) or [first.optimizer.learning_rate],
        dataset=first.dataset,
        epochs=first.train.num_epochs,
        validation=f"per trial: the split of the trial's seed (config.data.val_from_seed), val_size = {first.data.val_size}",
        figure_metric=metric,
        failed=artifacts.failed(outcomes),
    )
    markdown = table2(rows, architectures, metric)
    write_bytes_atomic(os.path.join(args.out, "results.csv"), artifacts.csv_bytes(rows, COLUMNS))
    write_json_atomic(os.path.join(args.out, "results.json"), dict(rows=rows, settings=settings))
    write_bytes_atomic(os.path.join(args.out, "selection.csv"), artifacts.csv_bytes(chosen, SELECTION_COLUMNS))
    write_json_atomic(os.path.join(args.out, "selection.json"), dict(candidates=chosen, settings=settings))
    write_bytes_atomic(os.path.join(args.out, "table2.md"), markdown.encode())
    title = f"{first.dataset}, {first.train.num_epochs} epochs, trials {seeds}, learning rate tuned per λ"
    write_bytes_atomic(os.path.join(args.out, "lambda.png"), figure(rows, architectures, metric, title))
    print(
        f"{artifacts.runs_line(outcomes, time.time() - started)}; wrote {args.out}/results.csv, selection.csv, "
        "results.json, table2.md, lambda.png",
        flush=True,
    )
    print(markdown, flush=True)
    if settings["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
