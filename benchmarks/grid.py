"""Wall time of a whole paper figure as ONE grid program against the same work as separate runs, side by side.

  python benchmarks/grid.py [--config=configs/mnist1d_spawn_deep.py] [--times=0ep,1ep,2ep,5ep,10ep] [--seeds=0,1,2]
      [--cpu_devices=N] [--set field=value ...] [--out=DIR]
  python benchmarks/grid.py --figure=webb [--seeds=0,1,2] [--architectures=4x64] [--learning_rates=0.05,0.2]
      [--cpu_devices=N] [--set field=value ...]

`--figure=zamparo` (the default) is Zamparo et al. Fig. 1a–d (`experiments/zamparo_coupling.py`): every seed's
parent, the children of every spawn time under coupled_to_t and coupled_to_t_reset, and the no_coupling and
coupled_order baselines. `--program=grid` trains it as one run (config.grid: one parent phase for all seeds, one
members' phase for all groups); `--program=separate` as a sweep of four runs per seed (each paying its own
start-up, data loading and compilation, the reset runs reusing their seed's parent checkpoints).

`--figure=webb` is Webb et al.'s Table 2 (`experiments/webb_lambda.py`): per architecture, every trial × learning
rate × λ as one program (each trial holding out its own validation split: config.data.val_from_seed), against
one program per trial (the script run once per seed, as before the trials could share a program).

Both sides are real subprocesses of the experiment script in fresh output directories, without the shared
compilation cache, run one after the other in this process, each with JAX_NUM_CPU_DEVICES=N when
`--cpu_devices=N` is given (on a CPU: one JAX device per core, the members sharded over them); the script
prints both wall times, their ratio (grid / separate), each side's seconds in training steps (its runs'
summary.json `train_time_s`: the members' arithmetic, which the grid does as much of as the separate runs)
with the ratio's floor (the grid's training steps / the separate runs' wall time: what the ratio would be if
the grid spent nothing else), and per metric the largest difference between the two results.csv tables.
The groups are the same, but where the grid stacks what a run alone does not (several parents;
coupled_order's shared batch fed per member; λ groups) the parameters differ by float rounding from the first
step, and chaotic training can grow that into different final predictions over many epochs
(tests/test_grid.py and tests/test_trials.py check the equality on short runs).
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)  # Every program compiles for itself, as a user's do.


ENV = dict(os.environ, CI="true")  # Both sides' environment (`--cpu_devices` adds JAX_NUM_CPU_DEVICES).


def _figure(program: str, out: str, args: list[str]) -> float:
    script = os.path.join(REPO, "experiments", "zamparo_coupling.py")
    return _timed([sys.executable, script, f"--out={out}", f"--program={program}", *args])


def _timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=ENV)
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def _webb(args, root: str) -> tuple[dict, list, list]:
    """Webb's Table 2 as one program per architecture, then as one program per architecture and trial."""
    script = os.path.join(REPO, "experiments", "webb_lambda.py")
    common = [f"--architectures={args.architectures}", f"--learning_rates={args.learning_rates}"]
    common += [f"--set={item}" for item in args.set]
    seeds = [s for s in args.seeds.split(",") if s]
    seconds = {"grid": _timed([sys.executable, script, f"--out={root}/grid", f"--seeds={args.seeds}", *common])}
    seconds["separate"] = sum(
        _timed([sys.executable, script, f"--out={root}/s{seed}", f"--seeds={seed}", *common]) for seed in seeds
    )
    separate = [row for seed in seeds for row in _rows(os.path.join(root, f"s{seed}"))]
    return seconds, _rows(os.path.join(root, "grid")), separate


def _train_seconds(out: str) -> float:
    """The seconds the runs under `out` spent in their training steps (summary.json's train_time_s)."""
    paths = glob.glob(os.path.join(out, "**", "summary.json"), recursive=True)
    return sum(json.load(open(path)).get("train_time_s", 0.0) for path in paths)


def _key(row: dict, columns) -> tuple:
    return tuple(row[c] for c in columns)


def _rows(out: str) -> list[dict]:
    with open(os.path.join(out, "results.csv")) as f:
        return list(csv.DictReader(f))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--figure", choices=("zamparo", "webb"), default="zamparo")
    parser.add_argument("--config", default="configs/mnist1d_spawn_deep.py", help="zamparo only")
    parser.add_argument("--architectures", default="4x64", help="webb only")
    parser.add_argument("--learning_rates", default="0.05,0.2", help="webb only")
    parser.add_argument("--times", default="0ep,1ep,2ep,5ep,10ep")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--set", action="append", default=[], help="trainer override field=value")
    parser.add_argument("--cpu_devices", type=int, default=0, help="JAX CPU devices of both sides (0: JAX's default)")
    parser.add_argument("--out", default="", help="keep both programs' outputs here (default: a temporary one)")
    args = parser.parse_args()
    if args.cpu_devices:
        ENV["JAX_NUM_CPU_DEVICES"] = str(args.cpu_devices)
    with tempfile.TemporaryDirectory() as scratch:
        root = args.out or scratch
        if args.figure == "webb":
            seconds, grid, separate = _webb(args, root)
            columns: tuple[str, ...] = ("architecture", "seed", "lam", "metric")
            by_key = {_key(r, columns): r for r in separate}  # Trials come one file each: in the grid's order.
            separate = [by_key[_key(r, columns)] for r in grid]
            title = f"Webb et al. Table 2, {args.architectures}, η {args.learning_rates}, trials {args.seeds}"
        else:
            common = [f"--config={args.config}", f"--times={args.times}", f"--seeds={args.seeds}"]
            common += [f"--set={item}" for item in args.set]
            seconds = {p: _figure(p, os.path.join(root, p), common) for p in ("grid", "separate")}
            grid, separate = (_rows(os.path.join(root, p)) for p in ("grid", "separate"))
            columns = ("seed", "condition", "t", "metric")
            title = f"Zamparo Fig. 1a-d, {args.config}, t={args.times}, seeds {args.seeds}"
        grid_out = os.path.join(root, "grid")
        steps = {"grid": _train_seconds(grid_out), "separate": _train_seconds(root) - _train_seconds(grid_out)}
    assert [_key(r, columns) for r in grid] == [_key(r, columns) for r in separate]
    devices = ENV.get("JAX_NUM_CPU_DEVICES", "JAX's default number of")
    print(f"{title}, overrides {args.set}, {devices} CPU devices:")
    print(f"  one grid program:  {seconds['grid']:.1f} s  (training steps {steps['grid']:.1f} s)")
    print(f"  separate runs:     {seconds['separate']:.1f} s  (training steps {steps['separate']:.1f} s)")
    print(f"  ratio grid / separate: {seconds['grid'] / seconds['separate']:.2f}x")
    # The grid cannot take less than its own training steps, whatever start-up it saves the separate runs.
    print(
        f"  the ratio's floor (the grid's training steps / separate runs): {steps['grid'] / seconds['separate']:.2f}x"
    )
    print("  largest difference between the two results.csv tables, per metric (same groups):")
    for metric in dict.fromkeys(r["metric"] for r in grid):
        pairs = [(float(a["value"]), float(b["value"])) for a, b in zip(grid, separate) if a["metric"] == metric]
        print(f"    {metric:18} {max(abs(a - b) for a, b in pairs):.2e}")


if __name__ == "__main__":
    main()
