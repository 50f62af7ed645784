"""Webb et al. Fig. 2 and Table 2: test error against λ for ensembles of M modules × H hidden units.

  python experiments/webb_lambda.py --out=results/webb_lambda                         # CPU scale (defaults)
  python experiments/webb_lambda.py --config=configs/webb_fmnist_mlp.py \\
      --architectures=1x1024,16x64,64x16,256x4 --seeds=0,1,2 --out=results/webb_fmnist   # the paper's Table 2

The config file takes the architecture as its config string (`--config=FILE:MxH`); every architecture of a
seed is one run of `python -m jaxens.train`, its λ groups side by side on the member axis (K = |λ|·M), in a
resumable `jaxens.sweep` under OUT/runs/<architecture>_s<seed>. A one-module architecture (1xH) is the
single network, trained without the modular loss.

Writes atomically:
- OUT/results.csv: tidy, one row per run × λ group × metric: architecture, modules, hidden, seed, lam
  (empty for the single network), metric (test_error_at_best_val: Webb's early-stopped test error;
  ensemble_error, mean_member_error, ensemble_nll: at the end of training), value;
- OUT/results.json: the rows and the settings; OUT/table2.md: Table 2 (test error at the best validation
  epoch, mean ± standard deviation over seeds, per architecture and λ);
- OUT/lambda.png: Fig. 2, test error against λ per architecture (the single network as a dashed line).
Rerunning trains nothing that finished and rebuilds the table and the figure from the runs' summaries.
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

COLUMNS = ("architecture", "modules", "hidden", "seed", "lam", "metric", "value")


def sweep_runs(config_path: str, architectures, seeds, overrides) -> dict:
    """name → (architecture, seed, config)."""
    runs = {}
    for seed in seeds:
        for arch in architectures:
            config = config_lib.apply_overrides(config_lib.load_file(config_path, arch), overrides)
            config.seed = seed
            runs[f"{arch}_s{seed}"] = (arch, seed, config)
    return runs


def table(outcomes: dict, runs: dict) -> list[dict]:
    rows = []
    for name, outcome in outcomes.items():
        if outcome.status != "finished":
            continue
        arch, seed, config = runs[name]
        base = dict(architecture=arch, modules=config.ensemble.k, hidden=config.model.widths[-1], seed=seed)
        for group in outcome.summary["groups"]:
            values = {m: group["test"][m] for m in ("ensemble_error", "mean_member_error", "ensemble_nll")}
            if group.get("at_best_val"):
                values["test_error_at_best_val"] = group["at_best_val"]["test_error"]
            for metric, value in values.items():
                rows.append(dict(base, lam=group["lam"], metric=metric, value=float(value)))
    return rows


def by_lambda(rows: list[dict], arch: str, metric: str) -> dict:
    """λ (None for the single network) → (mean, std, number of seeds) of one architecture's metric."""
    values: dict = {}
    for r in rows:
        if r["architecture"] == arch and r["metric"] == metric:
            values.setdefault(r["lam"], []).append(r["value"])
    return {lam: (float(np.mean(v)), float(np.std(v)), len(v)) for lam, v in values.items()}


def table2(rows: list[dict], architectures, metric: str) -> str:
    """Markdown: one row per architecture, one column per λ, mean ± std in percent."""
    lams = sorted({r["lam"] for r in rows if r["lam"] is not None})
    lines = [
        "| architecture | " + " | ".join(f"λ = {lam:g}" for lam in lams) + " | single network |",
        "|---|" + "---|" * (len(lams) + 1),
    ]
    for arch in architectures:
        cells = by_lambda(rows, arch, metric)
        fmt = lambda c: f"{100 * c[0]:.1f} ± {100 * c[1]:.1f}" if c else "—"  # noqa: E731
        lines.append(f"| {arch} | " + " | ".join(fmt(cells.get(lam)) for lam in lams) + f" | {fmt(cells.get(None))} |")
    return "\n".join(lines) + "\n"


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
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--set", action="append", default=[], help="trainer config override field=value")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    architectures = tuple(a for a in args.architectures.split(",") if a)
    try:
        seeds = tuple(int(s) for s in args.seeds.split(",") if s)
        if not architectures or not seeds:
            raise config_lib.ConfigError("--architectures and --seeds need at least one value each")
        runs = sweep_runs(args.config, architectures, seeds, args.set)
        root = os.path.join(args.out, "runs")
        sweep.validate_all({name: config for name, (*_, config) in runs.items()}, root)
    except (config_lib.ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

    started = time.time()
    outcomes = sweep.run_all({name: config for name, (*_, config) in runs.items()}, root)
    rows = table(outcomes, runs)
    first = next(iter(runs.values()))[2]
    metric = "test_error_at_best_val" if first.data.val_size else "ensemble_error"
    settings = dict(
        config=args.config,
        overrides=args.set,
        architectures=architectures,
        seeds=seeds,
        dataset=first.dataset,
        epochs=first.train.num_epochs,
        learning_rate=first.optimizer.learning_rate,
        figure_metric=metric,
        failed=artifacts.failed(outcomes),
    )
    markdown = table2(rows, architectures, metric)
    write_bytes_atomic(os.path.join(args.out, "results.csv"), artifacts.csv_bytes(rows, COLUMNS))
    write_json_atomic(os.path.join(args.out, "results.json"), dict(rows=rows, settings=settings))
    write_bytes_atomic(os.path.join(args.out, "table2.md"), markdown.encode())
    title = f"{first.dataset}, {first.train.num_epochs} epochs, seeds {seeds}"
    write_bytes_atomic(os.path.join(args.out, "lambda.png"), figure(rows, architectures, metric, title))
    print(
        f"{artifacts.runs_line(outcomes, time.time() - started)}; wrote {args.out}/results.csv, results.json, table2.md, lambda.png",
        flush=True,
    )
    print(markdown, flush=True)
    if settings["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
