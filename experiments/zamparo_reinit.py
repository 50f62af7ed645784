"""Zamparo et al. Fig. 1i–j and Fig. 3: re-initializing a fraction of the parent's parameters at spawn,
from the input side ('low') or the output side ('high'): the ensemble's accuracy gain over its mean member,
MACE and ECE beside it, and the error barrier between two children, against the fraction.

  python experiments/zamparo_reinit.py --out=results/zamparo_reinit                # CPU scale (defaults)
  python experiments/zamparo_reinit.py --config=configs/resnet20_spawn.py --time=20ep \\
      --fractions=0,0.05,0.1,0.2,0.4,0.6 --seeds=0,1,2 --out=results/zamparo_reinit_resnet20   # paper scale

For every seed a resumable `jaxens.sweep` under OUT/runs/ trains `s<seed>_f0` (the parent up to --time,
then k children without re-initialization, under the config's spawning condition: coupled_to_t_reset for
the default configs/mnist1d_reinit.py, six-layer MLPs whose layers give the fractions a fine grain), one run per side and fraction f > 0, `s<seed>_<side><f>`, spawning
from the same parent's checkpoint (config.coupling.parent_dir) with config.coupling.reinit_fraction=f and
reinit_side=side (whole layers in forward order until f of the parameter count, fresh draws per child;
docs/definitions.md#re-initialization), and `s<seed>_no_coupling`, the baseline. Then, per run, the error
barrier on the test set along the straight line between children 2i and 2i+1 (`jaxens.landscape.barrier`,
--alphas points, BatchNorm statistics recomputed), averaged over the k/2 pairs.

Writes atomically OUT/results.csv (tidy: seed, side, fraction, metric, value; metrics ensemble_error,
ensemble_mace, ensemble_ece, ensemble_nll, mean_member_error, ensemble_sym_kl, accuracy_gain (= mean_member_error −
ensemble_error, what Fig. 1i plots), error_barrier, and reinitialized: the share
of the parameter count actually re-drawn, at least f since whole layers are; side 'none' for f = 0 and
'no_coupling' for the baseline), OUT/results.json (rows, settings) and OUT/reinit.png (the four panels against
the share actually re-initialized, mean ± standard deviation over seeds). Rerunning trains nothing that finished, and the barriers are kept in
OUT/barriers.json, so the table and the figure are rebuilt from stored results.
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
from jaxens import sweep
from jaxens.workdir import write_bytes_atomic, write_json_atomic

SIDES = ("low", "high")
METRICS = ("ensemble_error", "ensemble_mace", "ensemble_ece", "ensemble_nll", "mean_member_error", "ensemble_sym_kl")
COLUMNS = ("seed", "side", "fraction", "metric", "value")


def run_name(seed: int, side: str, fraction: float) -> str:
    if side == "no_coupling":
        return f"s{seed}_no_coupling"
    return f"s{seed}_f0" if fraction == 0 else f"s{seed}_{side}{fraction:g}"


def sweep_runs(base, time_: str, fractions, seeds, root: str) -> dict:
    """name → (seed, side, fraction, config), in the order they run (f = 0 first: it trains the parent)."""
    condition = base.coupling.condition if base.coupling.condition in config_lib.SPAWNING_CONDITIONS else None
    runs = {}
    for seed in seeds:
        points = [("none", 0.0)] + [(side, f) for side in SIDES for f in fractions if f > 0]
        for side, fraction in points:
            config = copy.deepcopy(base)
            config.seed = seed
            config.coupling.condition = condition or "coupled_to_t_reset"
            config.coupling.t = (time_,)
            config.coupling.reinit_fraction = float(fraction)
            config.coupling.reinit_side = side if side in SIDES else "low"
            config.coupling.parent_dir = os.path.join(root, run_name(seed, "none", 0)) if fraction > 0 else ""
            runs[run_name(seed, side, fraction)] = (seed, side, float(fraction), config)
        config = copy.deepcopy(base)
        config.seed = seed
        config.coupling.condition = "no_coupling"
        config.coupling.t = ()
        config.coupling.reinit_fraction = 0.0
        config.coupling.parent_dir = ""
        runs[run_name(seed, "no_coupling", 0)] = (seed, "no_coupling", 0.0, config)
    return runs


def analyse_run(workdir: str, num_alphas: int) -> dict:
    """{'barrier', 'reinitialized'} of a finished run, from its latest checkpoint (restored once)."""
    from jaxens import run

    restored = run.restore(workdir)
    return {"barrier": _mean_pair_barrier(restored, num_alphas), "reinitialized": _reinitialized_share(restored)}


def _mean_pair_barrier(restored, num_alphas: int) -> float:
    """The mean test-set error barrier between the run's children 2i and 2i + 1."""
    import jax

    from jaxens import landscape

    state, dataset = jax.device_get(restored.state), restored.dataset
    has_bn = bool(jax.tree.leaves(state.batch_stats))
    train_x = None
    if has_bn:  # Ten training batches to recompute BatchNorm statistics on, at every α.
        batch = restored.config.train.batch_size
        idx = np.arange((min(dataset.num_train, 10 * batch) // batch) * batch).reshape(-1, batch)
        train_x = dataset.normalize(dataset.train_x[idx])  # [10, B, ...]
    data = landscape.PathData(x=dataset.normalize(dataset.test_x), y=dataset.test_y, train_x=train_x)

    def member(i: int) -> dict:
        variables = {"params": jax.tree.map(lambda a: a[i], state.params)}
        if has_bn:
            variables["batch_stats"] = jax.tree.map(lambda a: a[i], state.batch_stats)
        return variables

    barriers = [
        float(landscape.barrier(restored.model.apply, member(m), member(m + 1), data, num_alphas=num_alphas)["barrier"])
        for m in range(0, state.k - 1, 2)
    ]
    return float(np.mean(barriers))


def _reinitialized_share(restored) -> float:
    """The share of the parameter count the run's re-initialization re-drew (whole layers, or tensors under
    config.coupling.reinit_unit='tensor': at least config.coupling.reinit_fraction, more where a unit's
    boundary falls past it)."""
    import jax

    from jaxens import spawn

    c = restored.config.coupling
    if c.reinit_fraction == 0:
        return 0.0
    params = jax.tree.map(lambda a: a[0], restored.state.params)
    # The units the trainer chose at the spawn.
    shape = restored.dataset.input_shape
    return spawn.reinit_for(restored.model, shape, params, c.reinit_fraction, c.reinit_side, c.reinit_unit).covered


def table(outcomes: dict, runs: dict, barriers: dict) -> list[dict]:
    rows = []
    for name, outcome in outcomes.items():
        if outcome.status != "finished":
            continue
        seed, side, fraction, _ = runs[name]
        test = outcome.summary["test"]
        values = {m: test[m] for m in METRICS if m in test}
        values["accuracy_gain"] = values["mean_member_error"] - values["ensemble_error"]  # Zamparo Fig. 1i.
        if name in barriers:
            values["error_barrier"] = barriers[name]["barrier"]
            values["reinitialized"] = barriers[name]["reinitialized"]
        for metric, value in values.items():
            rows.append(dict(seed=seed, side=side, fraction=fraction, metric=metric, value=float(value)))
    return rows


def curve(rows: list[dict], side: str, metric: str, x: str = "fraction"):
    """(x, mean over seeds, std over seeds) of one side's metric, x the configured fraction or, with
    x='reinitialized', the share of the parameters actually re-initialized (the same for every seed);
    f = 0 (no re-initialization) belongs to both sides."""
    share = {(r["seed"], r["side"], r["fraction"]): r["value"] for r in rows if r["metric"] == "reinitialized"}
    by_f: dict[float, list[float]] = {}
    for r in rows:
        if r["metric"] == metric and (r["side"] == side or (r["side"] == "none" and side in SIDES)):
            at = r["fraction"] if x == "fraction" else share.get((r["seed"], r["side"], r["fraction"]), 0.0)
            by_f.setdefault(round(at, 6), []).append(r["value"])
    fs = np.asarray(sorted(by_f))
    return fs, np.asarray([np.mean(by_f[f]) for f in fs]), np.asarray([np.std(by_f[f]) for f in fs])


def figure(rows: list[dict], title: str) -> bytes:
    plt = artifacts.pyplot()

    panels = (
        ("accuracy_gain", "accuracy gain over mean member (Fig. 1i)"),
        ("ensemble_mace", "MACE (Fig. 1j)"),
        ("ensemble_ece", "ECE (beside MACE)"),
        ("error_barrier", "error barrier between children (Fig. 3)"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(16, 3.6))
    for ax, (metric, label) in zip(axes, panels):
        for side, color in zip(SIDES, ("tab:blue", "tab:orange")):
            fs, mean, std = curve(rows, side, metric, x="reinitialized")
            if fs.size:
                ax.plot(fs, mean, marker="o", color=color, label=side)
                ax.fill_between(fs, mean - std, mean + std, color=color, alpha=0.2)
        _, base, base_std = curve(rows, "no_coupling", metric)
        if base.size:
            ax.axhline(base[0], color="gray", linestyle="--", label="no coupling")
            ax.axhspan(base[0] - base_std[0], base[0] + base_std[0], color="gray", alpha=0.15)
        ax.set_xlabel("share of the parameters re-initialized")
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return artifacts.png_bytes(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/mnist1d_reinit.py", help="trainer config (path or name)")
    parser.add_argument("--time", default="5ep", help="the spawn time t (a step string)")
    parser.add_argument("--fractions", default="0,0.1,0.2,0.3,0.5,0.7", help="re-initialized fractions")
    parser.add_argument("--seeds", default="0,1,2", help="one parent per seed")
    parser.add_argument("--alphas", type=int, default=11, help="points on each linear path (endpoints included)")
    parser.add_argument("--set", action="append", default=[], help="trainer config override field=value")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        base = config_lib.apply_overrides(config_lib.load_file(args.config), args.set)
        fractions = tuple(sorted({float(f) for f in args.fractions.split(",") if f} | {0.0}))
        seeds = tuple(int(s) for s in args.seeds.split(",") if s)
        if not seeds or not all(0 <= f < 1 for f in fractions):
            raise config_lib.ConfigError("--seeds needs a value; --fractions must lie in [0, 1)")
        root = os.path.join(args.out, "runs")
        runs = sweep_runs(base, args.time, fractions, seeds, root)
        sweep.validate_all({name: config for name, (*_, config) in runs.items()}, root)
    except (config_lib.ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

    started = time.time()
    outcomes = sweep.run_all({name: config for name, (*_, config) in runs.items()}, root)
    stored = os.path.join(args.out, "barriers.json")
    barriers = json.load(open(stored)) if os.path.exists(stored) else {}
    for name, (_, side, _, _) in runs.items():
        if side != "no_coupling" and outcomes[name].status == "finished" and name not in barriers:
            barriers[name] = analyse_run(outcomes[name].workdir, args.alphas)
            write_json_atomic(stored, barriers)
    rows = table(outcomes, runs, barriers)
    first = next(iter(runs.values()))[3]
    settings = dict(
        config=args.config,
        overrides=args.set,
        time=args.time,
        fractions=fractions,
        seeds=seeds,
        alphas=args.alphas,
        dataset=first.dataset,
        model=first.model.name,
        k=first.ensemble.k,
        condition=first.coupling.condition,
        epochs=first.train.num_epochs,
        failed=artifacts.failed(outcomes),
    )
    write_bytes_atomic(os.path.join(args.out, "results.csv"), artifacts.csv_bytes(rows, COLUMNS))
    write_json_atomic(os.path.join(args.out, "results.json"), dict(rows=rows, settings=settings))
    title = (
        f"{first.dataset} {first.model.name}, k={first.ensemble.k}, spawned at t={args.time} "
        f"({first.coupling.condition}), {first.train.num_epochs} epochs, seeds {seeds}"
    )
    write_bytes_atomic(os.path.join(args.out, "reinit.png"), figure(rows, title))
    print(
        f"{artifacts.runs_line(outcomes, time.time() - started)}; wrote {args.out}/results.csv, results.json, reinit.png",
        flush=True,
    )
    for side in (*SIDES, "no_coupling"):
        for metric in ("ensemble_error", "error_barrier"):
            fs, mean, std = curve(rows, side, metric, x="reinitialized")
            if fs.size:
                points = ", ".join(f"share {f:.3f}: {m:.4f}±{s:.4f}" for f, m, s in zip(fs, mean, std))
                print(f"  {side} {metric}: {points}", flush=True)
    if settings["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
