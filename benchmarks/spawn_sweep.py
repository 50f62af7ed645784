"""Wall time of a spawn sweep in one program against one run per spawn time, measured side by side.

  python benchmarks/spawn_sweep.py [--config=configs/mnist1d_spawn.py] [--repeats=1] [-- --config.field=value ...]

Every run is a real `python -m jaxens.train` process in a fresh workdir (so each pays its own start-up,
data loading and compilation, as a user's runs do). The sweep trains the parent once and all spawn times'
children as one stacked state; the separate runs each train the parent up to their own t. The script
prints both wall times, their ratio, and the largest difference between the two ways' per-child test
errors (the same children, so it should be ~0).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)  # Every run compiles for itself, as a user's runs do.


def _train(config: str, workdir: str, overrides: list[str]) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "jaxens.train", f"--config={config}", f"--workdir={workdir}", *overrides]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, env=dict(os.environ, CI="true"))
    with open(os.path.join(workdir, "summary.json")) as f:
        return time.perf_counter() - start, json.load(f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/mnist1d_spawn.py")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="--config.field=value overrides for every run")
    args = parser.parse_args()

    from jaxens.config import load_file

    config = load_file(os.path.join(REPO, args.config))
    times = [str(t) for t in config.coupling.t]
    for override in args.overrides:
        if override.startswith("--config.coupling.t="):
            raise SystemExit("set the spawn times in the config file, not with --config.coupling.t")
    print(f"{args.config}: condition {config.coupling.condition}, spawn times {times}, k={config.ensemble.k}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            sweep_s, sweep = _train(args.config, os.path.join(tmp, f"sweep{r}"), args.overrides)
            separate_s, diff = 0.0, 0.0
            for i, t in enumerate(times):
                seconds, single = _train(
                    args.config, os.path.join(tmp, f"single{r}_{i}"), [*args.overrides, f"--config.coupling.t=('{t}',)"]
                )
                separate_s += seconds
                group = single["groups"][0]
                ours = next(g for g in sweep["groups"] if g["t"] == group["t"])
                diff = max(
                    diff, *(abs(a - b) for a, b in zip(ours["test"]["member_error"], group["test"]["member_error"]))
                )
            rows.append((sweep_s, separate_s, diff))
            print(
                f"repeat {r}: sweep {sweep_s:.1f} s, {len(times)} separate runs {separate_s:.1f} s, "
                f"ratio separate/sweep {separate_s / sweep_s:.2f}x, max |Δ member test error| {diff:.4f}"
            )
    import jax

    print(f"backend: {jax.default_backend()}, devices: {jax.devices()}, cpus: {os.cpu_count()}")


if __name__ == "__main__":
    main()
