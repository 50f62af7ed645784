"""Zamparo et al. Fig. 1g–h: forgetting events on the test set, per epoch and cumulated after coupling.

  python experiments/zamparo_forgetting.py --out=results/zamparo_forgetting          # CPU scale (defaults)
  python experiments/zamparo_forgetting.py --config=configs/resnet20_spawn.py --window=50 \\
      --times=0ep,1ep,2ep,5ep,10ep,20ep --seeds=0,1,2 --out=results/zamparo_forgetting_resnet20   # paper scale

For every seed a resumable `jaxens.sweep` under OUT/runs/ trains `s<seed>_no_coupling` (k members from
independent initializations and data orders) and `s<seed>_coupled_to_t_reset` (one parent, k children per
spawn time t, each restarting optimizer and schedule), both saving every member's weights at every epoch
(config.trajectory.every='1ep'). Each snapshot is evaluated on the test set, and a member's test-side
forgetting events are counted between consecutive evaluations (an example correct at one evaluation and
wrong at the next: `jaxens.metrics.forgetting.update_all`,
docs/definitions.md#forgetting-events).

Writes atomically OUT/forgetting.csv (tidy: seed, condition, t_label, epoch since the member's start or
spawn, member, events: the events between evaluation epoch − 1 and epoch), OUT/results.json (the rows of
both panels and the settings) and OUT/forgetting.png: Fig. 1g, the mean events per epoch of the
independent members (mean ± std over seeds), and Fig. 1h, the children's cumulative events over the first
--window epochs after the spawn against t. Rerunning trains nothing that finished; the event counts of a
finished run are kept in OUT/events.json, so the table and the figure are rebuilt from stored results.
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
from jaxens.trainer import spec as spec_lib
from jaxens.workdir import write_bytes_atomic, write_json_atomic

COLUMNS = ("seed", "condition", "t_label", "epoch", "member", "events")


def sweep_runs(base, times, seeds) -> dict:
    """name → config: per seed the independent members, then the spawned children, with per-epoch snapshots."""
    runs = {}
    for seed in seeds:
        for condition in ("no_coupling", "coupled_to_t_reset"):
            config = copy.deepcopy(base)
            config.seed = seed
            config.coupling.condition = condition
            config.coupling.t = tuple(times) if condition != "no_coupling" else ()
            config.coupling.parent_dir = ""
            config.trajectory.every = "1ep"
            config.trajectory.keep_last = 0
            runs[f"s{seed}_{condition}"] = config
    return runs


def test_events(workdir: str, batch_size: int = 1000) -> dict:
    """Per group of the run (its t label, '' without a parent): [epochs, k] test-side forgetting events
    between consecutive per-epoch snapshots, as lists."""
    import jax
    import jax.numpy as jnp

    from jaxens import ensemble as ensemble_lib
    from jaxens import members, run, trajectory
    from jaxens.metrics import forgetting

    restored = run.restore(workdir)
    model, dataset, plan = restored.model, restored.dataset, restored.plan
    x_all, y = dataset.normalize(dataset.test_x), jnp.asarray(dataset.test_y)  # [N, ...], [N]

    @jax.jit
    def correct_of(params, batch_stats, x, labels):  # One snapshot of the K members → [K, B] correctness.
        member = lambda p, s: ensemble_lib.member_logits(model, p, s, x)  # noqa: E731
        logits = members.map_members(member, "vmap", (0, 0))(params, batch_stats)
        return jnp.argmax(logits, -1) == labels

    snapshots = trajectory.steps(workdir)
    k = plan.num_members
    tracker = jax.vmap(lambda _: forgetting.init(x_all.shape[0]))(jnp.arange(k))
    events = []
    for tick in snapshots:  # Ticks 0, 1 epoch, 2 epochs, ...: one snapshot in memory at a time.
        snap = trajectory.load(workdir, at=[tick])
        params = jax.tree.map(lambda a: a[0], snap.params)
        stats = jax.tree.map(lambda a: a[0], snap.batch_stats)
        correct = jnp.concatenate(
            [
                correct_of(params, stats, x_all[i : i + batch_size], y[i : i + batch_size])
                for i in range(0, len(y), batch_size)
            ],
            axis=1,
        )  # [K, N]
        tracker, new = jax.vmap(forgetting.update_all)(tracker, correct)
        if tick > 0:
            events.append(np.asarray(new))  # [K] events between the previous evaluation and this one.
    per_member = np.stack(events)  # [epochs, K]
    labels = plan.spawn_labels or ("",)
    return {label: per_member[:, g * plan.k : (g + 1) * plan.k].tolist() for g, label in enumerate(labels)}


def table(events: dict, runs: dict) -> list[dict]:
    rows = []
    for name, groups in events.items():
        config = runs[name]
        for label, per_epoch in groups.items():
            for epoch, values in enumerate(per_epoch, start=1):
                for member, count in enumerate(values):
                    rows.append(
                        dict(seed=config.seed, condition=config.coupling.condition, t_label=label, epoch=epoch,
                             member=member, events=int(count))
                    )  # fmt: skip
    return rows


def per_epoch(rows: list[dict]) -> list[dict]:
    """Fig. 1g: mean events per epoch of the independent members, mean and std over seeds."""
    out = []
    for epoch in sorted({r["epoch"] for r in rows if r["condition"] == "no_coupling"}):
        seeds = sorted({r["seed"] for r in rows if r["condition"] == "no_coupling"})
        means = [
            np.mean(
                [
                    r["events"]
                    for r in rows
                    if r["condition"] == "no_coupling" and r["epoch"] == epoch and r["seed"] == s
                ]
            )
            for s in seeds
        ]
        out.append(dict(epoch=epoch, mean=float(np.mean(means)), std=float(np.std(means))))
    return out


def cumulative(rows: list[dict], window: int, steps_per_epoch: int) -> list[dict]:
    """Fig. 1h: the children's events summed over their first `window` epochs after the spawn (mean over
    the k children of a seed), mean and std over seeds, per spawn time."""
    from jaxens import steps as steps_lib

    out = []
    children = [r for r in rows if r["condition"] == "coupled_to_t_reset"]
    for label in sorted({r["t_label"] for r in children}, key=lambda s: steps_lib.parse(s, steps_per_epoch)):
        per_seed = []
        for s in sorted({r["seed"] for r in children}):
            mine = [r for r in children if r["t_label"] == label and r["seed"] == s and r["epoch"] <= window]
            members = {r["member"] for r in mine}
            per_seed.append(sum(r["events"] for r in mine) / max(len(members), 1))
        t = steps_lib.parse(label, steps_per_epoch) / steps_per_epoch
        out.append(dict(t_label=label, t_epochs=t, mean=float(np.mean(per_seed)), std=float(np.std(per_seed))))
    return out


def figure(g: list[dict], h: list[dict], window: int, title: str) -> bytes:
    plt = artifacts.pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = np.asarray([r["epoch"] for r in g])
    mean, std = np.asarray([r["mean"] for r in g]), np.asarray([r["std"] for r in g])
    axes[0].plot(epochs, mean, marker=".")
    axes[0].fill_between(epochs, mean - std, mean + std, alpha=0.25)
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("test forgetting events per member")
    axes[0].set_title("independent members, per epoch (Fig. 1g)", fontsize=9)
    ts = np.asarray([r["t_epochs"] for r in h])
    axes[1].errorbar(ts, [r["mean"] for r in h], yerr=[r["std"] for r in h], marker="o", capsize=3)
    axes[1].set_xlabel("coupling time t (epochs)")
    axes[1].set_ylabel(f"cumulative events, first {window} epochs")
    axes[1].set_title("children after the spawn, coupled-to-t-reset (Fig. 1h)", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return artifacts.png_bytes(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/mnist1d_spawn.py", help="trainer config (path or name)")
    parser.add_argument("--times", default="0ep,1ep,2ep,5ep,10ep", help="spawn times t (step strings)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--window", type=int, default=40, help="Fig. 1h: epochs after the spawn summed over")
    parser.add_argument("--set", action="append", default=[], help="trainer config override field=value")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        base = config_lib.apply_overrides(config_lib.load_file(args.config), args.set)
        times = tuple(t for t in args.times.split(",") if t)
        seeds = tuple(int(s) for s in args.seeds.split(",") if s)
        if not times or not seeds or args.window < 1:
            raise config_lib.ConfigError("--times and --seeds need a value each; --window must be ≥ 1")
        runs = sweep_runs(base, times, seeds)
        root = os.path.join(args.out, "runs")
        sweep.validate_all(runs, root)
    except (config_lib.ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

    started = time.time()
    outcomes = sweep.run_all(runs, root)
    stored_path = os.path.join(args.out, "events.json")
    stored = json.load(open(stored_path)) if os.path.exists(stored_path) else {}
    for name, outcome in outcomes.items():
        if outcome.status == "finished" and name not in stored:
            stored[name] = test_events(outcome.workdir)
            write_json_atomic(stored_path, stored)
    rows = table({n: stored[n] for n in runs if n in stored}, runs)
    first = next(iter(runs.values()))
    spe = spec_lib.resolve(first).steps_per_epoch
    g, h = per_epoch(rows), cumulative(rows, args.window, spe)
    settings = dict(
        config=args.config,
        overrides=args.set,
        times=times,
        seeds=seeds,
        window=args.window,
        dataset=first.dataset,
        model=first.model.name,
        k=first.ensemble.k,
        epochs=first.train.num_epochs,
        failed=artifacts.failed(outcomes),
    )
    write_bytes_atomic(os.path.join(args.out, "forgetting.csv"), artifacts.csv_bytes(rows, COLUMNS))
    write_json_atomic(os.path.join(args.out, "results.json"), dict(fig1g=g, fig1h=h, settings=settings))
    title = f"{first.dataset} {first.model.name}, k={first.ensemble.k}, {first.train.num_epochs} epochs, seeds {seeds}"
    write_bytes_atomic(os.path.join(args.out, "forgetting.png"), figure(g, h, args.window, title))
    print(
        f"{artifacts.runs_line(outcomes, time.time() - started)}; wrote {args.out}/forgetting.csv, results.json, forgetting.png",
        flush=True,
    )
    print("  Fig. 1g, events per epoch: " + ", ".join(f"{r['epoch']}: {r['mean']:.1f}" for r in g), flush=True)
    print("  Fig. 1h, cumulative: " + ", ".join(f"t={r['t_label']} {r['mean']:.1f}±{r['std']:.1f}" for r in h))
    if settings["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
