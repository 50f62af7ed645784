"""What the per-step divergence check costs: training steps/s with and without it, measured side by side.

  python benchmarks/divergence_check.py [--config=configs/mnist1d_ensemble.py] [--steps=400] [--repeats=3]
      [-- --config.field=value ...]

Builds the config's model, optimizer and K-member state on its dataset, then times `TrainChunk` chunks of
`--steps` steps under each `divergence_check`: 'chunk' (the trainer's: the steps without a check, the chunk's
end verified finite, with a copy of its input kept for a rerun), 'step' (per member and step, a finiteness
reduction over loss and gradients and a select that keeps a failed member's old state) and 'off', alternating
them `--repeats` times after one warm-up chunk each (compilation excluded). Prints steps/s of each and the
ratios to 'off'.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax
import jax.numpy as jnp
import numpy as np
from common import trainer_setup  # noqa: E402  (benchmarks/common.py)

from jaxens import config as config_lib
from jaxens.trainer import spec as spec_lib
from jaxens.trainer import validation


def _override(config, text: str) -> None:
    path, value = text.removeprefix("--config.").split("=", 1)
    *groups, field = path.split(".")
    node = config
    for g in groups:
        node = node[g]
    import ast

    try:
        node[field] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        node[field] = value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=os.path.join(REPO, "configs", "mnist1d_ensemble.py"))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="--config.field=value")
    args = parser.parse_args()
    path, _, arg = args.config.partition(":")
    config = config_lib.load_file(path, arg or None)
    for text in args.overrides:
        _override(config, text)
    validation.validate(config)

    dataset, state, orders, chunk = trainer_setup(config)
    k = state.k
    chunks = {"chunk": chunk, **{check: trainer_setup(config, divergence_check=check)[3] for check in ("step", "off")}}
    strategy, step_loop = spec_lib.resolve(config).strategy, chunk.step_loop
    states = {check: jax.tree.map(jnp.copy, state) for check in chunks}
    times = {check: [] for check in chunks}
    for repeat in range(args.repeats + 1):
        for check, chunk in chunks.items():
            start = time.perf_counter()
            states[check], sums = chunk(states[check], orders, dataset, args.steps)
            jax.block_until_ready((states[check], sums))
            if repeat:  # The first round compiles.
                times[check].append(time.perf_counter() - start)
    rate = {check: args.steps / np.median(t) for check, t in times.items()}
    print(
        f"{config.model.name} K={k} batch {config.train.batch_size} on {jax.default_backend()} "
        f"({strategy}, {step_loop} loop), {args.steps} steps x {args.repeats}:"
    )
    for check in chunks:
        print(f"  divergence_check={check!r:8} {rate[check]:9.1f} steps/s, / 'off' {rate[check] / rate['off']:.3f}")


if __name__ == "__main__":
    main()
