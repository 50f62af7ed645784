"""Fort et al. Fig. S4: how much of the members' diversity comes from random initialization and how much from
random minibatches, each alone and together, at several learning rates.

  python experiments/fort_randomness.py --out=results/fort_randomness          # CPU: MNIST-1D MLPs, ~10 min
  python experiments/fort_randomness.py --config=configs/fort_cifar10_cnn.py --epochs=40 \\
      --learning_rates=0.01,0.05,0.1 --out=results/fort_randomness_cifar10     # the paper's setting (GPU)

Fort et al. (App. B): "both of them provide complementary sources of randomness, with random initialization
being the dominant of the two", and "random mini-batch shuffling adds more randomness at higher learning
rates". The k members of one run differ in what their PRNG streams do not share (`config.ensemble.
shared_streams`, docs/definitions.md#prng-streams):

- `init_and_batches`: nothing shared (independent members, no_coupling);
- `init_only`: the same minibatches, augmentation and dropout (coupled_order sharing order, augment and
  dropout): only the initializations differ;
- `batches_only`: the same initialization (no_coupling sharing init): only minibatches, augmentation and
  dropout differ;
- `neither`: everything shared. On this CPU the members then compute the same bits (diversity 0), as
  Fort et al. saw on a TPU; GPUs' non-deterministic reductions make such members drift apart.

Per learning rate, condition and seed, one run of `python -m jaxens.train` (resumable `jaxens.sweep` under
OUT/runs). Diversity is the members' mean pairwise test disagreement (fraction of test examples on which
two members' predicted labels differ) and symmetric KL, from the run's summary, and their mean pairwise weight
cosine similarity (`metrics.pairwise_cosine_similarity`). Writes atomically OUT/randomness.csv (tidy:
learning_rate, condition, seed, metric, value), OUT/results.json (rows, verdicts, settings) and
OUT/randomness.png (Fig. S4: disagreement per condition against the learning rate, mean ± std over seeds).
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

COLUMNS = ("learning_rate", "condition", "seed", "metric", "value")
ALL_STREAMS = ("init", "order", "augment", "dropout")
# condition → (coupling condition, shared streams): what the members of a run have in common.
CONDITIONS = {
    "init_and_batches": ("no_coupling", ()),
    "init_only": ("coupled_order", ("order", "augment", "dropout")),
    "batches_only": ("no_coupling", ("init",)),
    "neither": ("coupled_order", ALL_STREAMS),
}
METRICS = ("disagreement", "sym_kl", "weight_cosine", "mean_member_error")


def sweep_runs(base, learning_rates, seeds, epochs: int | None) -> dict:
    """name → (learning rate, condition, seed, config)."""
    runs = {}
    for lr in learning_rates:
        for condition, (coupling, shared) in CONDITIONS.items():
            for seed in seeds:
                config = base.copy_and_resolve_references()
                config.seed = seed
                config.optimizer.learning_rate = float(lr)
                config.coupling.condition = coupling
                config.ensemble.shared_streams = shared
                if epochs:
                    config.train.num_epochs = epochs
                runs[f"lr{lr:g}_{condition}_s{seed}"] = (float(lr), condition, seed, config)
    return runs


def weight_cosine(workdir: str) -> float:
    """The members' mean pairwise cosine similarity of their final parameters (i < j)."""
    from jaxens import metrics, run

    cosine = np.asarray(metrics.pairwise_cosine_similarity(run.restore(workdir).state.params))  # [K, K]
    upper = np.triu_indices(cosine.shape[0], 1)
    return float(cosine[upper].mean())


def table(outcomes: dict, runs: dict) -> list[dict]:
    rows = []
    for name, outcome in outcomes.items():
        if outcome.status != "finished":
            continue
        lr, condition, seed, _ = runs[name]
        test = outcome.summary["test"]
        values = {
            "disagreement": test["ensemble_disagreement"],
            "sym_kl": test["ensemble_sym_kl"],
            "weight_cosine": weight_cosine(outcome.workdir),
            "mean_member_error": test["mean_member_error"],
        }
        rows += [
            dict(learning_rate=lr, condition=condition, seed=seed, metric=m, value=float(v)) for m, v in values.items()
        ]
    return rows


def summarize(rows: list[dict], condition: str, metric: str):
    """(learning rates, mean, std over seeds) of one condition's metric."""
    by_lr: dict = {}
    for r in rows:
        if r["condition"] == condition and r["metric"] == metric:
            by_lr.setdefault(r["learning_rate"], []).append(r["value"])
    lrs = sorted(by_lr)
    return lrs, np.asarray([np.mean(by_lr[x]) for x in lrs]), np.asarray([np.std(by_lr[x]) for x in lrs])


def verdicts(rows: list[dict]) -> dict:
    """Fort et al.'s three observations, each 'held' / 'did not hold' / 'inconclusive': two means differ
    when further apart than the sum of their standard deviations over seeds (needs ≥ 2 seeds)."""
    seeds = len({r["seed"] for r in rows})

    def compare(a: tuple, b: tuple) -> str:  # Is a's mean above b's?
        (ma, sa), (mb, sb) = a, b
        if seeds < 2 or not artifacts.beyond_spread(ma, sa, mb, sb):
            return "inconclusive"
        return "held" if ma > mb else "did not hold"

    out: dict = {"init_dominant": {}, "complementary": {}}
    lrs, init, init_std = summarize(rows, "init_only", "disagreement")
    _, batches, batches_std = summarize(rows, "batches_only", "disagreement")
    _, both, both_std = summarize(rows, "init_and_batches", "disagreement")
    for i, lr in enumerate(lrs):
        # Initialization is the dominant source: init alone is more diverse than batches alone.
        out["init_dominant"][f"{lr:g}"] = compare((init[i], init_std[i]), (batches[i], batches_std[i]))
        # Complementary: together more diverse than either alone (or at least than batches alone and no less
        # than init alone); stated against the stronger of the two.
        stronger = (init[i], init_std[i]) if init[i] >= batches[i] else (batches[i], batches_std[i])
        out["complementary"][f"{lr:g}"] = compare((both[i], both_std[i]), stronger)
    out["batches_grow_with_lr"] = (
        compare((batches[-1], batches_std[-1]), (batches[0], batches_std[0])) if len(lrs) > 1 else "inconclusive"
    )
    _, neither, _ = summarize(rows, "neither", "disagreement")
    out["identical_without_randomness"] = bool(neither.size) and bool(np.all(neither == 0))
    return out


def figure(rows: list[dict], title: str) -> bytes:
    plt = artifacts.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric, label in (
        (axes[0], "disagreement", "members' mean pairwise test disagreement"),
        (axes[1], "weight_cosine", "members' mean pairwise weight cosine"),
    ):
        for condition in CONDITIONS:
            lrs, mean, std = summarize(rows, condition, metric)
            if lrs:
                ax.errorbar(lrs, mean, yerr=std, marker="o", capsize=3, label=condition.replace("_", " "))
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return artifacts.png_bytes(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/mnist1d_ensemble.py", help="trainer config (path or name)")
    parser.add_argument("--learning_rates", default="0.01,0.05,0.2")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs (0 = the config's)")
    parser.add_argument("--set", action="append", default=[], help="trainer config override field=value")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        base = config_lib.apply_overrides(config_lib.load_file(args.config), args.set)
        rates = tuple(sorted({float(x) for x in args.learning_rates.split(",") if x}))
        seeds = tuple(int(s) for s in args.seeds.split(",") if s)
        if not rates or not seeds or any(not np.isfinite(x) or x <= 0 for x in rates):
            raise config_lib.ConfigError("--learning_rates needs positive numbers and --seeds a value")
        if args.epochs < 0:
            raise config_lib.ConfigError(f"--epochs={args.epochs}: must be >= 0")
        if base.ensemble.k < 2:
            raise config_lib.ConfigError("diversity needs config.ensemble.k >= 2 members")
        root = os.path.join(args.out, "runs")
        runs = sweep_runs(base, rates, seeds, args.epochs)
        sweep.validate_all({name: config for name, (*_, config) in runs.items()}, root)
    except (config_lib.ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

    started = time.time()
    outcomes = sweep.run_all({name: config for name, (*_, config) in runs.items()}, root)
    rows = table(outcomes, runs)
    first = next(iter(runs.values()))[3]
    settings = dict(
        config=args.config, overrides=args.set, learning_rates=rates, seeds=seeds, epochs=first.train.num_epochs,
        dataset=first.dataset, model=first.model.name, k=first.ensemble.k,
        conditions={name: {"condition": c, "shared_streams": list(s)} for name, (c, s) in CONDITIONS.items()},
        failed=artifacts.failed(outcomes),
    )  # fmt: skip
    found = verdicts(rows)
    write_bytes_atomic(os.path.join(args.out, "randomness.csv"), artifacts.csv_bytes(rows, COLUMNS))
    write_json_atomic(os.path.join(args.out, "results.json"), dict(rows=rows, verdicts=found, settings=settings))
    title = f"{first.dataset} {first.model.name}, k={first.ensemble.k}, {first.train.num_epochs} epochs, seeds {seeds}"
    write_bytes_atomic(os.path.join(args.out, "randomness.png"), figure(rows, title))
    print(
        f"{artifacts.runs_line(outcomes, time.time() - started)}; wrote {args.out}/randomness.csv, results.json, "
        "randomness.png",
        flush=True,
    )
    for condition in CONDITIONS:
        lrs, mean, std = summarize(rows, condition, "disagreement")
        cells = ", ".join(f"lr {x:g}: {m:.4f} ± {s:.4f}" for x, m, s in zip(lrs, mean, std))
        print(f"  {condition:>16} disagreement  {cells}")
    print(f"  verdicts: {found}")
    if settings["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
