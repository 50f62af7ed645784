"""Achieved FLOP/s of the MLP training step (XLA's cost analysis) over this machine's measured f32 GEMM FLOP/s.

  python benchmarks/flops.py [--config=configs/fort_fmnist_mlp.py] [--k=1] [--steps=200] [--n=2048]
      [--repeats=5]

GEMM: a jitted `jnp.dot` of two float32 [n, n] matrices, counted as 2n³ flops. Training step: the
config's model, optimizer and K-member state (K set to --k) on its dataset, with a `TrainChunk` on the
device step loop; the flops of ONE step (all K members) come from XLA's cost analysis of the compiled
single-step function, its time from chunks of `--steps` steps divided by `--steps`. Every timing is the
median of `--repeats` runs, GEMM and training chunk alternating, after a warm-up round (compilation
excluded). Prints GEMM GFLOP/s, step ms, step GFLOP/s and their ratio (target: step / GEMM ≥ 50%), and
XLA's flops next to the analytic count 6·B·Σ(fan_in·fan_out) per member times K (2 flops per weight and
example forward, 4 backward) and next to that count less the first layer's input gradient, which is never
formed (XLA's number also holds the elementwise and optimizer flops, a few percent of an MLP's). The
analytic count reads the Dense kernels only: meant for MLP configs.
"""

from __future__ import annotations

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax
import jax.numpy as jnp
from common import load_config, median_seconds, trainer_setup  # noqa: E402  (benchmarks/common.py)


def _gemm_call(n: int):
    """A no-argument call of a jitted float32 [n, n] @ [n, n] product (2n³ flops)."""
    a_key, b_key = jax.random.split(jax.random.key(0))
    a = jax.random.normal(a_key, (n, n), jnp.float32)  # [n, n]
    b = jax.random.normal(b_key, (n, n), jnp.float32)  # [n, n]
    dot = jax.jit(jnp.dot)
    return lambda: dot(a, b)


def _xla_flops(compiled) -> float:
    """The 'flops' entry of a compiled computation's cost analysis (a dict, or a list of one per module)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, dict):
        analysis = [analysis]
    return float(sum(entry.get("flops", 0.0) for entry in analysis))


def _analytic_flops(params, batch_size: int) -> tuple[float, float]:
    """Matmul flops of one training step of ONE member (`params` leaves carry the member axis).

    Returns:
      (6·B·Σ(fan_in·fan_out) over the Dense kernels, the same with 4·B·fan_in·fan_out for the first
      kernel, whose input gradient is never formed).
    """
    sizes = [
        leaf.shape[1] * leaf.shape[2]  # Leaf [K, fan_in, fan_out].
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
        if getattr(path[-1], "key", None) == "kernel" and leaf.ndim == 3
    ]
    full = 6.0 * batch_size * sum(sizes)
    return full, full - 2.0 * batch_size * sizes[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=os.path.join(REPO, "configs", "fort_fmnist_mlp.py"))
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    config = load_config(args.config, args.k)

    dataset, state, orders, chunk = trainer_setup(config, step_loop="device")  # orders [K, N]
    k = state.k
    step_flops = _xla_flops(chunk.lower_step(state, orders, dataset).compile())
    analytic, tight = (k * f for f in _analytic_flops(state.params, config.train.batch_size))

    holder = [state]  # The chunk donates its input state: each call trains on from the last one's output.

    def train():
        holder[0], chunk_sums = chunk(holder[0], orders, dataset, args.steps)
        return holder[0], chunk_sums

    seconds = median_seconds({"gemm": _gemm_call(args.n), "train": train}, args.repeats)
    gemm = 2.0 * args.n**3 / seconds["gemm"]
    step_seconds = seconds["train"] / args.steps
    achieved = step_flops / step_seconds
    print(f"{jax.default_backend()} ({jax.devices()[0].device_kind}), median of {args.repeats}:")
    print(f"  f32 GEMM {args.n}x{args.n}          {gemm / 1e9:9.2f} GFLOP/s")
    print(
        f"  {config.model.name} step K={k} batch {config.train.batch_size} ({args.steps} steps per chunk): "
        f"{step_seconds * 1e3:.3f} ms"
    )
    print(f"  step                      {achieved / 1e9:9.2f} GFLOP/s")
    print(f"  ratio (step / GEMM) {achieved / gemm:.1%}  (target ≥ 50%)")
    print(f"  flops per step: XLA {step_flops / 1e6:.2f} M")
    print(f"    analytic 6·B·Σ(fan_in·fan_out)·K {analytic / 1e6:.2f} M (XLA / that {step_flops / analytic:.3f})")
    print(f"    without the first layer's input gradient {tight / 1e6:.2f} M (XLA / that {step_flops / tight:.3f})")


if __name__ == "__main__":
    main()
