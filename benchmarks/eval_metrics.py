"""What one evaluation's metric kernels cost, as a fraction of one epoch of training, measured side by side.

  python benchmarks/eval_metrics.py [--k=16] [--n=10000] [--c=10] [--repeats=5]
      [--config=configs/fort_fmnist_mlp.py] [--train_steps=50]

Metric side: random float32 logits [K, N, C] and int labels [N] placed on the device; times the jitted
`evaluation.labelled_metrics(logits, labels, method="mean_prob")` (per-member and ensemble error, NLL, Brier,
ECE and MACE, plus the members' symmetric KL and disagreement: what the trainer computes per labelled
evaluation set) and, where `jaxens.metrics` has it, the jitted `js_divergence`. Training side: the
config's model, optimizer and K-member state (K set to --k) on its dataset; `--train_steps` steps of
`TrainChunk` timed and scaled to one epoch (steps_per_epoch steps). Every timing is the median of
`--repeats` runs, the kernels and the training chunk alternating, after a warm-up round (compilation
excluded). Prints the metric times, the epoch time and the ratio of `_labelled_metrics` (the trainer's
kernel) to the epoch (target: ≤ 5%), and of all of them (`js_divergence` serves the analyses, not the
trainer).
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

from jaxens import data as data_lib
from jaxens import metrics
from jaxens.trainer import evaluation


def _metric_kernels(k: int, n: int, c: int) -> dict:
    """name -> no-argument call of each evaluation kernel on random logits [k, n, c] and labels [n]."""
    logits_key, labels_key = jax.random.split(jax.random.key(0))
    logits = jax.device_put(jax.random.normal(logits_key, (k, n, c), jnp.float32) * 3.0)  # [K, N, C]
    labels = jax.device_put(jax.random.randint(labels_key, (n,), 0, c))  # [N]
    kernels = {"labelled_metrics": lambda: evaluation.labelled_metrics(logits, labels, method="mean_prob")}
    if hasattr(metrics, "js_divergence"):
        js = jax.jit(metrics.js_divergence)
        kernels["js_divergence"] = lambda: js(logits)
    return kernels


def _train_call(config, steps: int) -> tuple:
    """(no-argument call training `steps` steps, steps per epoch, step loop) of the config's ensemble."""
    dataset, state, orders, chunk = trainer_setup(config)  # orders [K, N]
    spe = data_lib.steps_per_epoch(dataset.num_train, config.train.batch_size)
    step_loop = chunk.step_loop
    holder = [state]  # The chunk donates its input state: each call trains on from the last one's output.

    def train():
        holder[0], sums = chunk(holder[0], orders, dataset, steps)
        return holder[0], sums

    return train, spe, step_loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--c", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--config", default=os.path.join(REPO, "configs", "fort_fmnist_mlp.py"))
    parser.add_argument("--train_steps", type=int, default=50)
    args = parser.parse_args()
    config = load_config(args.config, args.k)

    train, spe, step_loop = _train_call(config, args.train_steps)
    metric = median_seconds({**_metric_kernels(args.k, args.n, args.c), "train": train}, args.repeats)
    epoch = metric.pop("train") * spe / args.train_steps
    trainer = metric["labelled_metrics"]  # What the trainer runs per labelled evaluation set.
    total = sum(metric.values())
    print(f"{jax.default_backend()} ({jax.devices()[0].device_kind}), median of {args.repeats}:")
    for name, seconds in metric.items():
        print(f"  {name:<18} K={args.k} N={args.n} C={args.c}  {seconds * 1e3:9.2f} ms")
    print(
        f"  one epoch of {config.model.name} K={args.k} batch {config.train.batch_size} ({step_loop} loop): "
        f"{epoch:.2f} s ({spe} steps, extrapolated from {args.train_steps} timed)"
    )
    print(f"  ratio (labelled_metrics / epoch) {trainer / epoch:.2%}  (target ≤ 5%)")
    if len(metric) > 1:
        print(f"  ratio (all metrics above / epoch) {total / epoch:.2%}")


if __name__ == "__main__":
    main()
