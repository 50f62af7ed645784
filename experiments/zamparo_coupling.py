"""Zamparo et al. Fig. 1a–d: the ensemble's accuracy gain and its calibration (MACE, and ECE beside it) against
the coupling time t, with and without reset.

  python experiments/zamparo_coupling.py --out=results/zamparo_coupling             # CPU scale (defaults)
  JAX_NUM_CPU_DEVICES=$(nproc) python experiments/zamparo_coupling.py ...          # the members on every core
  python experiments/zamparo_coupling.py --config=configs/resnet20_spawn.py \\
      --times=0ep,1ep,2ep,5ep,10ep,20ep --seeds=0,1,2 --out=results/zamparo_resnet20   # paper scale (accelerator)

The whole figure is ONE program (`--program=grid`, the default): the run OUT/runs/grid has config.grid.seed =
the seeds and config.grid.condition = (coupled_to_t, coupled_to_t_reset, no_coupling, coupled_order)
(`jaxens.grid`). Its parents, one per seed, train stacked up to the last t; then every seed's groups train
side by side on one member axis: the k children of every spawn time under coupled_to_t, the same under
coupled_to_t_reset (optimizer and schedule restart, T more steps), k independent members (no_coupling, the
baseline at the top of Zamparo's panels) and k members from independent initializations on the same
minibatches (coupled_order: Zamparo et al. §2 find it indistinguishable from no coupling in error and MACE;
`verdicts['coupled_order']`). Each group equals the run of its settings alone (tests/test_grid.py).

`--program=separate` trains the same groups as a resumable `jaxens.sweep` of four runs per seed instead
(`s<seed>_coupled_to_t`, `s<seed>_coupled_to_t_reset` reading its parent through config.coupling.parent_dir,
`s<seed>_no_coupling`, `s<seed>_coupled_order`): what benchmarks/grid.py times the grid against.

From the runs' summaries it writes, atomically:
- OUT/results.csv: tidy, one row per run × group × metric: seed, condition, t (steps), t_epochs, t_label,
  metric (ensemble_error, ensemble_mace, ensemble_ece, ensemble_nll, mean_member_error, ensemble_sym_kl, and
  accuracy_gain: the ensemble's test accuracy minus its mean member's, = mean_member_error − ensemble_error),
  value;
- OUT/results.json: the rows, the settings and the verdicts (`verdicts`);
- OUT/coupling.png: accuracy gain (Fig. 1a/b: top), MACE (Fig. 1c/d) and ECE against t for coupled-to-t
  (left) and coupled-to-t-reset (right), mean ± standard deviation over seeds, the no-coupling ensemble as a
  dashed band.
- OUT/members.csv: every member's own test error (seed, condition, t_label, member, error);
- OUT/ensemble_kl.csv: Fig. 1f, the symmetric KL between the test predictions of two ensembles spawned at
  the same t from different parents (seeds a < b; cached in OUT/ensemble_kl.json);
- OUT/diversity.png: the members' symmetric KL against t (Fig. 1e), the KL between ensembles of two
  parents (Fig. 1f) and every member's own test error by condition and t (Fig. 2).
Each run also writes its own TensorBoard events and metrics (`OUT/runs/<run>/tensorboard`).

Zamparo et al. name "mean average calibration error (MACE)" and cite Naeini et al., who define ECE and MCE;
MACE here is our reading (docs/definitions.md), so every calibration trend is printed under both and stated
as a conclusion only where the two agree. A trend between the first and the last t is "held" where the two
means differ by more than the sum of their standard deviations over seeds, else "inconclusive".

Rerunning the command trains nothing that finished (the sweep skips it) and rebuilds the table and the
figure from the stored summaries. `--set field=value` overrides the trainer config (Python literals).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import artifacts
import numpy as np

from jaxens import config as config_lib
from jaxens import grid, sweep
from jaxens.trainer import spec as spec_lib
from jaxens.workdir import write_bytes_atomic, write_json_atomic

CONDITIONS = ("coupled_to_t", "coupled_to_t_reset")
# Trained from initialization: Zamparo et al. §2 find the two indistinguishable in error and MACE.
BASELINES = ("no_coupling", "coupled_order")
METRICS = ("ensemble_error", "ensemble_mace", "ensemble_ece", "ensemble_nll", "mean_member_error", "ensemble_sym_kl")
# Zamparo et al. Fig. 1a/b/i plot the accuracy gain: ensemble accuracy minus the mean member's.
GAIN = "accuracy_gain"
COLUMNS = ("seed", "condition", "t", "t_epochs", "t_label", "metric", "value")
MEMBER_COLUMNS = ("seed", "condition", "t_label", "member", "error")
KL_COLUMNS = ("condition", "t", "t_epochs", "t_label", "seed_a", "seed_b", "sym_kl")


def sweep_runs(base, times: tuple[str, ...], seeds: tuple[int, ...], root: str, program: str = "grid") -> dict:
    """name → config of the sweep: one grid run ('grid'), or ('separate') four runs per seed in the order they
    run (the reset runs read their parent's checkpoints from the coupled_to_t run of the same seed, first)."""
    if program == "grid":
        config = copy.deepcopy(base)
        config.seed, config.coupling.condition, config.coupling.parent_dir = 0, "no_coupling", ""  # The grid's.
        config.coupling.t = tuple(times)
        config.grid.seed, config.grid.condition = tuple(seeds), (*CONDITIONS, *BASELINES)
        return {"grid": config}
    runs = {}
    for seed in seeds:
        for condition in (*CONDITIONS, *BASELINES):
            config = copy.deepcopy(base)
            config.seed = seed
            config.coupling.condition = condition
            config.coupling.t = tuple(times) if condition in CONDITIONS else ()
            config.coupling.parent_dir = (
                os.path.join(root, f"s{seed}_coupled_to_t") if condition == "coupled_to_t_reset" else ""
            )
            runs[f"s{seed}_{condition}"] = config
    return runs


def ensembles(outcomes: dict, runs: dict) -> list[dict]:
    """Every ensemble the figure compares, from the finished runs' summaries: {seed, condition, group (its
    summary entry), run, index (its group in the run)} (a grid's groups carry their seed and condition)."""
    out = []
    for name, outcome in outcomes.items():
        if outcome.status != "finished":
            continue
        config = runs[name]
        for g, group in enumerate(outcome.summary["groups"]):
            seed, condition = group.get("seed", config.seed), group.get("condition", config.coupling.condition)
            out.append(dict(seed=seed, condition=condition, group=group, run=name, index=g))
    return out


def table(outcomes: dict, runs: dict, steps_per_epoch: int) -> list[dict]:
    """Tidy rows (COLUMNS) from the finished runs' summaries."""
    rows = []
    for unit in ensembles(outcomes, runs):
        group = unit["group"]
        test = group["test"]
        t = group["t"]
        values = {metric: float(test[metric]) for metric in METRICS if metric in test}
        values[GAIN] = values["mean_member_error"] - values["ensemble_error"]
        for metric, value in values.items():
            rows.append(
                dict(
                    seed=unit["seed"],
                    condition=unit["condition"],
                    t=t,
                    t_epochs=None if t is None else t / steps_per_epoch,
                    t_label=group["t_label"],
                    metric=metric,
                    value=value,
                )
            )
    return rows


def trend(rows: list[dict], condition: str, metric: str) -> str:
    """'decreases' / 'increases' from the first to the last t where the means differ by more than the sum of
    their standard deviations over seeds, else 'inconclusive' (also with a single seed or t)."""
    _, mean, std = summarize(rows, condition, metric)
    if mean.size < 2 or len({r["seed"] for r in rows}) < 2:
        return "inconclusive"
    if not artifacts.beyond_spread(mean[0], std[0], mean[-1], std[-1]):
        return "inconclusive"
    return "decreases" if mean[-1] < mean[0] else "increases"


def basic_finding(rows: list[dict]) -> dict:
    """Zamparo et al. §2: coupled_order against no_coupling, per metric 'indistinguishable' where the means
    differ by at most the sum of their standard deviations over seeds, else 'differs' (with both)."""
    out = {}
    for metric in ("ensemble_error", "ensemble_mace", "ensemble_ece", GAIN):
        (_, a, sa), (_, b, sb) = (summarize(rows, c, metric) for c in BASELINES)
        if a.size and b.size:
            verdict = "differs" if artifacts.beyond_spread(a[0], sa[0], b[0], sb[0]) else "indistinguishable"
            out[metric] = f"{verdict} ({a[0]:.4f} ± {sa[0]:.4f} against {b[0]:.4f} ± {sb[0]:.4f})"
    return out


def verdicts(rows: list[dict]) -> dict:
    """Per spawning condition: the trends with t of the accuracy gain, MACE and ECE, and the calibration
    conclusion, stated only where MACE and ECE agree; and `basic_finding` (under 'coupled_order')."""
    out: dict = {"coupled_order": basic_finding(rows)}
    for condition in CONDITIONS:
        gain, mace, ece = (trend(rows, condition, m) for m in (GAIN, "ensemble_mace", "ensemble_ece"))
        calibration = mace if mace == ece else f"no conclusion (MACE {mace}, ECE {ece})"
        out[condition] = dict(accuracy_gain=gain, mace=mace, ece=ece, calibration=calibration)
    return out


def summarize(rows: list[dict], condition: str, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t in epochs, mean over seeds, std over seeds) of one condition's metric, sorted by t."""
    by_t: dict[float, list[float]] = {}
    for r in rows:
        if r["condition"] == condition and r["metric"] == metric:
            by_t.setdefault(r["t_epochs"] if r["t_epochs"] is not None else 0.0, []).append(r["value"])
    ts = np.asarray(sorted(by_t))
    values = [np.asarray(by_t[t]) for t in ts]
    return ts, np.asarray([v.mean() for v in values]), np.asarray([v.std() for v in values])


def figure(rows: list[dict], title: str) -> bytes:
    """Fig. 1a–d laid out as the paper's panels, as PNG bytes."""
    plt = artifacts.pyplot()

    panels = ((GAIN, "accuracy gain over mean member"), ("ensemble_mace", "MACE"), ("ensemble_ece", "ECE"))
    fig, axes = plt.subplots(len(panels), 2, figsize=(8, 8), sharex=True, sharey="row")
    for col, condition in enumerate(CONDITIONS):
        for row, (metric, label) in enumerate(panels):
            ax = axes[row, col]
            ts, mean, std = summarize(rows, condition, metric)
            ax.errorbar(ts, mean, yerr=std, marker="o", capsize=3, label=condition.replace("_", "-"))
            _, base_mean, base_std = summarize(rows, "no_coupling", metric)
            if base_mean.size:
                ax.axhline(base_mean[0], color="gray", linestyle="--", label="no coupling")
                ax.axhspan(base_mean[0] - base_std[0], base_mean[0] + base_std[0], color="gray", alpha=0.15)
            if row == 0:
                ax.set_title(condition.replace("_", "-"))
            if row == len(panels) - 1:
                ax.set_xlabel("coupling time t (epochs)")
            if col == 0:
                ax.set_ylabel(label)
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return artifacts.png_bytes(fig)


def member_rows(outcomes: dict, runs: dict) -> list[dict]:
    """Every member's own test error (Fig. 2): seed, condition, t_label, member, error."""
    rows = []
    for unit in ensembles(outcomes, runs):
        for m, error in enumerate(unit["group"]["test"]["member_error"]):
            label = unit["group"]["t_label"] or ""
            rows.append(dict(seed=unit["seed"], condition=unit["condition"], t_label=label, member=m, error=error))
    return rows


def ensemble_kls(outcomes: dict, runs: dict, stored: dict, steps_per_epoch: int) -> list[dict]:
    """Fig. 1f: the symmetric KL between the test predictions of two ensembles spawned at the same t from
    different parents (seeds a < b), per condition and t (`jaxens.metrics.ensemble_kl`). Pairs computed
    before are taken from `stored` (updated in place); the others restore the runs' latest checkpoints."""
    import jax

    from jaxens import ensemble as ensemble_lib
    from jaxens import metrics, run

    cache: dict = {}

    def logits_of(unit):  # The ensemble's member logits on the test split, [k, N, C].
        name = unit["run"]
        if name not in cache:
            r = run.restore(outcomes[name].workdir)
            predictor = ensemble_lib.Predictor(r.model, r.config.eval.batch_size, r.strategy)
            logits = np.asarray(jax.device_get(predictor(r.state, r.dataset.test_x, r.dataset)))
            cache[name] = np.split(logits, r.plan.num_groups)
        return cache[name][unit["index"]]

    rows = []
    units = ensembles(outcomes, runs)
    for condition in CONDITIONS:
        mine = sorted((u for u in units if u["condition"] == condition), key=lambda u: (u["group"]["t"], u["seed"]))
        for i, a in enumerate(mine):
            for b in mine[i + 1 :]:
                t = a["group"]["t"]
                if b["group"]["t"] != t or b["seed"] == a["seed"]:
                    continue
                key = f"{condition}|{t}|{a['seed']}|{b['seed']}"
                if key not in stored:
                    method = runs[a["run"]].ensemble.method
                    stored[key] = float(metrics.ensemble_kl(logits_of(a), logits_of(b), method))
                rows.append(
                    dict(condition=condition, t=t, t_epochs=t / steps_per_epoch, t_label=a["group"]["t_label"],
                         seed_a=a["seed"], seed_b=b["seed"], sym_kl=stored[key])
                )  # fmt: skip
    return rows


def diversity_figure(rows: list[dict], kl_rows: list[dict], members: list[dict], title: str) -> bytes:
    """Fig. 1e (members' symmetric KL), Fig. 1f (KL between ensembles of different parents) and Fig. 2
    (every member's own test error by condition and t), as PNG bytes."""
    plt = artifacts.pyplot()

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for condition in CONDITIONS:
        ts, mean, std = summarize(rows, condition, "ensemble_sym_kl")
        axes[0].errorbar(ts, mean, yerr=std, marker="o", capsize=3, label=condition.replace("_", "-"))
        by_t: dict = {}
        for r in kl_rows:
            if r["condition"] == condition:
                by_t.setdefault(r["t_epochs"], []).append(r["sym_kl"])
        if by_t:
            ts = sorted(by_t)
            means = [np.mean(by_t[t]) for t in ts]
            stds = [np.std(by_t[t]) for t in ts]
            axes[1].errorbar(ts, means, yerr=stds, marker="o", capsize=3, label=condition.replace("_", "-"))
    _, base, _ = summarize(rows, "no_coupling", "ensemble_sym_kl")
    if base.size:
        axes[0].axhline(base[0], color="gray", linestyle="--", label="no coupling")
    axes[0].set_title("members' symmetric KL (Fig. 1e)", fontsize=9)
    axes[1].set_title("sym. KL between ensembles of two parents (Fig. 1f)", fontsize=9)
    for ax in axes[:2]:
        ax.set_xlabel("coupling time t (epochs)")
        ax.legend(fontsize=8)
    labels = sorted({(m["condition"], m["t_label"]) for m in members}, key=lambda c: (c[0], _epochs(c[1])))
    data = [[m["error"] for m in members if (m["condition"], m["t_label"]) == c] for c in labels]
    axes[2].boxplot(data)
    names = [f"{c[0].replace('coupled_to_t', 'c2t').replace('no_coupling', 'none')} {c[1]}" for c in labels]
    axes[2].set_xticks(range(1, len(labels) + 1), names, rotation=60, fontsize=7)
    axes[2].set_title("members' own test error (Fig. 2)", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return artifacts.png_bytes(fig)


def _epochs(label: str) -> float:
    try:
        return float(label.removesuffix("ep")) if label.endswith("ep") and "it" not in label else float("inf")
    except ValueError:
        return float("inf")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/mnist1d_spawn.py", help="trainer config (path or name)")
    parser.add_argument("--times", default="0ep,1ep,2ep,5ep,10ep", help="spawn times t (step strings)")
    parser.add_argument("--seeds", default="0,1,2", help="one parent per seed")
    parser.add_argument("--set", action="append", default=[], help="trainer config override field=value")
    parser.add_argument(
        "--program", choices=("grid", "separate"), default="grid", help="one grid run, or a sweep of separate runs"
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        base = config_lib.apply_overrides(config_lib.load_file(args.config), args.set)
        times = tuple(t for t in args.times.split(",") if t)
        seeds = tuple(int(s) for s in args.seeds.split(",") if s)
        if not times or not seeds:
            raise config_lib.ConfigError("--times and --seeds need at least one value each")
        root = os.path.join(args.out, "runs")
        runs = sweep_runs(base, times, seeds, root, args.program)
        sweep.validate_all(runs, root)
    except (config_lib.ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

    started = time.time()
    outcomes = sweep.run_all(runs, root)
    first = next(iter(runs.values()))
    spe = spec_lib.resolve(first).steps_per_epoch
    first = grid.group_config(first, grid.settings(first)[0])  # For the titles: one group's settings.
    rows = table(outcomes, runs, spe)
    settings = dict(
        config=args.config,
        overrides=args.set,
        times=times,
        seeds=seeds,
        program=args.program,
        dataset=first.dataset,
        model=first.model.name,
        k=first.ensemble.k,
        epochs=first.train.num_epochs,
        steps_per_epoch=spe,
        failed=artifacts.failed(outcomes),
    )
    write_bytes_atomic(os.path.join(args.out, "results.csv"), artifacts.csv_bytes(rows, COLUMNS))
    found = verdicts(rows)
    write_json_atomic(os.path.join(args.out, "results.json"), dict(rows=rows, settings=settings, verdicts=found))
    title = f"{first.dataset} {first.model.name}, k={first.ensemble.k}, {first.train.num_epochs} epochs, seeds {seeds}"
    write_bytes_atomic(os.path.join(args.out, "coupling.png"), figure(rows, title))
    members = member_rows(outcomes, runs)
    stored_path = os.path.join(args.out, "ensemble_kl.json")
    stored = json.load(open(stored_path)) if os.path.exists(stored_path) else {}
    kl_rows = ensemble_kls(outcomes, runs, stored, spe)
    write_json_atomic(stored_path, stored)
    write_bytes_atomic(os.path.join(args.out, "members.csv"), artifacts.csv_bytes(members, MEMBER_COLUMNS))
    write_bytes_atomic(os.path.join(args.out, "ensemble_kl.csv"), artifacts.csv_bytes(kl_rows, KL_COLUMNS))
    write_bytes_atomic(os.path.join(args.out, "diversity.png"), diversity_figure(rows, kl_rows, members, title))
    print(
        f"{artifacts.runs_line(outcomes, time.time() - started)}; wrote {args.out}/results.csv, results.json, coupling.png, members.csv, "
        "ensemble_kl.csv, diversity.png",
        flush=True,
    )
    for condition in (*CONDITIONS, *BASELINES):
        for metric in ("ensemble_error", GAIN, "ensemble_mace", "ensemble_ece"):
            ts, mean, std = summarize(rows, condition, metric)
            points = ", ".join(f"t={t:g}ep {m:.4f}±{s:.4f}" for t, m, s in zip(ts, mean, std))
            print(f"  {condition}: {metric} {points}", flush=True)
    for metric, verdict in found["coupled_order"].items():
        print(f"  coupled_order against no_coupling (Zamparo §2): {metric} {verdict}", flush=True)
    for condition in CONDITIONS:
        found_here = found[condition]
        print(
            f"  {condition}, from the first to the last t: accuracy gain {found_here['accuracy_gain']}; "
            f"calibration error {found_here['calibration']}",
            flush=True,
        )
    if settings["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
