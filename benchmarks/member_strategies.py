"""Member execution strategies × K: member-images/s, and the ratio to K sequential single-member steps.

  python benchmarks/member_strategies.py [--models=mlp,cnn,resnet20,narrow_mlp] [--ks=1,4,8,16]
      [--strategies=vmap,loop,shard_map/vmap,shard_map/loop] [--cpu-devices=2] [--repeats=3]

For each model and K, builds the K-member training step the trainer runs (`jaxens.train_chunk.TrainChunk`,
the trainer's default step loop for the model on this backend) under every strategy, and the same step of
ONE member (K = 1, the same jitted code). Every timing is a median over `--repeats` rounds after a warm-up
call (compilation excluded); all variants of one (model, K) are timed in the same rounds, interleaved.
Prints member-images/s (K·B / step time) and `vs sequential` = K · (one member's step time) / (the
K-member step time): above 1, one K-member step beats running K single-member steps one after another.

`shard_map/<within>` shards the members over the 'member' axis of a mesh of the devices
(`jaxens.sharding.mesh_shape` with data = 1), each device running its share with `within`. On CPU, `--cpu-devices=N` splits the host into N XLA devices
(`jax_num_cpu_devices`) so that it has devices to shard over; the other strategies still run on device 0.

Models (float32, SGD with momentum 0.9, batch 128 per member, each member its own minibatch):
- `mlp`: 784-256-256-10 on Fashion-MNIST (Fort et al.'s MLP, configs/fort_fmnist_mlp.py without dropout);
- `narrow_mlp`: 40-64×6-10 on MNIST-1D (the members of configs/mnist1d_spawn_deep.py, the Zamparo figure's
  grid), whose products are too small for XLA:CPU to spread over the cores (not in the default --models);
- `cnn`: the strided `cnn2d` (32, 64 channels, BatchNorm) on Fashion-MNIST;
- `resnet20`: ResNet-20 on CIFAR-shaped random images [32, 32, 3] (CIFAR-10 itself cannot be downloaded
  here; the compute is the same).
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

from jaxens import config as config_lib
from jaxens import data as data_lib
from jaxens import ensemble as ensemble_lib
from jaxens import members, models, optim, sharding, train_chunk
from jaxens import rng as rng_lib

BATCH = 128
# Steps per timed call: enough to amortize dispatch, few enough for CPU minutes.
STEPS = {"mlp": 50, "narrow_mlp": 50, "cnn": 4, "resnet20": 1}


def _config(name: str):
    c = config_lib.get_default_config()
    c.train.batch_size = BATCH
    c.optimizer.learning_rate = 0.01
    if name == "mlp":
        c.dataset, c.model.name, c.model.widths = "fashion_mnist", "mlp", (256, 256)
    elif name == "narrow_mlp":
        c.dataset, c.model.name, c.model.widths = "mnist1d", "mlp", (64,) * 6
    elif name == "cnn":
        c.dataset, c.model.name, c.model.widths = "fashion_mnist", "cnn2d", (32, 64)
    elif name == "resnet20":
        c.model.name = "resnet20"
    else:
        raise SystemExit(f"--models: unknown model {name!r}; allowed: {', '.join(STEPS)}")
    return c


def _dataset(config, name: str) -> data_lib.Dataset:
    if name != "resnet20":
        return data_lib.load(config).to_device()
    rng = np.random.default_rng(0)
    arrays = {
        "train_x": rng.integers(0, 256, (5000, 32, 32, 3), dtype=np.uint8),
        "train_y": rng.integers(0, 10, 5000),
        "test_x": np.zeros((1, 32, 32, 3), np.uint8),
        "test_y": np.zeros(1, np.int32),
    }
    return data_lib.from_arrays("cifar_shaped_random", arrays, 10).to_device()


class _Variant:
    """One K-member training step, ready to time."""

    def __init__(self, model, tx, dataset, k: int, strategy: str, step_loop: str):
        self.state = ensemble_lib.init_ensemble(model, tx, rng_lib.member_streams(0, k), dataset.input_shape)
        if members.is_sharded(strategy):  # The members over a ('member', 'data') mesh of every device.
            mesh = sharding.make_mesh(sharding.mesh_shape(k, BATCH, data=1))
            self.state, dataset = sharding.put_members(self.state, mesh), sharding.put_replicated(dataset, mesh)
        self.orders = data_lib.epoch_orders(self.state.rngs.order, jnp.zeros((k,), jnp.int32), dataset.num_train)
        self.chunk = train_chunk.TrainChunk(model, tx, BATCH, strategy, step_loop)
        self.dataset = dataset

    def __call__(self, steps: int) -> float:
        start = time.perf_counter()
        self.state, sums = self.chunk(self.state, self.orders, self.dataset, steps)
        jax.block_until_ready((self.state, sums))
        return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mlp,cnn,resnet20")
    parser.add_argument("--ks", default="1,4,8,16")
    parser.add_argument("--strategies", default="vmap,loop,shard_map/vmap,shard_map/loop")
    parser.add_argument("--cpu-devices", type=int, default=2, help="XLA devices the CPU is split into")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    jax.config.update("jax_num_cpu_devices", args.cpu_devices)  # Before the backend starts.
    ks = [int(k) for k in args.ks.split(",")]
    strategies = args.strategies.split(",")
    print_backend()
    for name in args.models.split(","):
        report(name, ks, strategies, args.repeats)


def print_backend() -> None:
    device = jax.devices()[0]
    print(
        f"backend {jax.default_backend()} ({device.device_kind}), {jax.device_count()} devices, "
        f"{os.cpu_count()} CPU cores, jax {jax.__version__}"
    )


def report(name: str, ks: list[int], strategies: list[str], repeats: int) -> None:
    """Prints one model's table: per K and strategy, the step time, member-images/s and the ratio to one member."""
    config = _config(name)
    dataset = _dataset(config, name)
    model = models.build(config.model, dataset.num_classes, dataset.input_shape)
    tx = optim.make_optimizer(config.optimizer, 10_000)
    step_loop = train_chunk.resolve_step_loop("auto", models.MODELS[config.model.name].convolutional)
    steps = STEPS[name]
    single = _Variant(model, tx, dataset, 1, "vmap", step_loop)
    single(steps)  # Compiles.
    print(f"\n{name}: batch {BATCH} per member, {step_loop} step loop, {steps} steps per timing")
    print(f"  {'K':>3} {'strategy':>14} {'step ms':>9} {'member-img/s':>13} {'vs sequential':>14}")
    for k in ks:
        variants = {s: _Variant(model, tx, dataset, k, s, step_loop) for s in strategies}
        for v in variants.values():
            v(steps)  # Compiles.
        times = {s: [] for s in variants} | {"single": []}
        for _ in range(repeats):
            times["single"].append(single(steps))
            for s, v in variants.items():
                times[s].append(v(steps))
        one = float(np.median(times["single"]))
        for s in strategies:
            t = float(np.median(times[s]))
            print(f"  {k:>3} {s:>14} {t * 1e3:9.2f} {k * BATCH / t:13.0f} {k * one / t:14.2f}")
        print(f"  {k:>3} {'1 member':>14} {one * 1e3:9.2f} {BATCH / one:13.0f} {'1.00':>14}")


if __name__ == "__main__":
    main()
