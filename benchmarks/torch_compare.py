"""jaxens against PyTorch on the CPU: ms per training step of a whole ensemble, measured side by side.

  python benchmarks/torch_compare.py [--cases=a,b,c] [--repeats=3] [--steps=20] [--cnn-steps=3]

Needs the `benchmark` extra (torch 2.13.0, CPU wheel). Each case trains the same architecture, batch of
100 and SGD step (learning rate 0.1, momentum 0.9, softmax cross-entropy, float32) on both sides:

  a. Webb et al.'s MLP ensemble: K=256 members 784-4-10, all on one shared batch (jaxens: Fashion-MNIST
     under coupled_order, whose step gathers the shared batch once, and the same with loss.lam=(0,), Webb's
     joint step at λ=0 = independent training). torch: a loop over 256 modules, torch.func (vmap of grad
     over stacked parameters) and a hand-batched einsum/bmm model.
  b. One big MLP, K=1 784-1024-10. torch: one module and torch.optim.SGD.
  In a and b jaxens also runs without its per-step divergence check (`divergence_check="off"`).
  c. K=16 StridedCNNs (`cnn2d`, widths (32, 64): 3x3 stride-2 SAME convs, train-mode BatchNorm, ReLU,
     global average pool, dense head), each member on its own batch. jaxens: 'vmap' and 'loop' strategies,
     host step loop. torch: a loop over 16 modules (NCHW and channels_last) and torch.func.

jaxens runs `TrainChunk` as the trainer does (on-device batch gather and normalization, divergence check);
torch trains on random tensors of the same shapes (the arithmetic is the same). Every variant runs one
warm-up chunk (compilation excluded), then all variants of a case alternate `--repeats` times in this one
process; printed: the median ms per step of each, and per jaxens variant the ratio fastest torch / jaxens
(> 1: jaxens is faster).
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
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

from jaxens import config as config_lib
from jaxens import data as data_lib
from jaxens import ensemble as ensemble_lib
from jaxens.trainer import spec as spec_lib
from jaxens.trainer import validation

BATCH, LR, MOMENTUM = 100, 0.1, 0.9


def _median_ms(runners: dict, steps: int, repeats: int) -> dict:
    """Median ms per step of each `runner(steps)`; round 0 warms up, later rounds alternate the runners."""
    times = {name: [] for name in runners}
    for repeat in range(repeats + 1):
        for name, runner in runners.items():
            start = time.perf_counter()
            runner(steps)
            if repeat:
                times[name].append(1e3 * (time.perf_counter() - start) / steps)
    return {name: float(np.median(t)) for name, t in times.items()}


# ---- jaxens ---------------------------------------------------------------------------------------------


def _config(name, widths, k, strategy="vmap", shared_batch=False, lam=()):
    config = config_lib.get_default_config()
    config.dataset = "fashion_mnist"
    config.model.name, config.model.widths = name, widths
    config.ensemble.k, config.ensemble.strategy = k, strategy
    config.coupling.condition = "coupled_order" if shared_batch else "no_coupling"
    config.loss.lam = lam
    config.train.batch_size = BATCH
    config.optimizer.name, config.optimizer.learning_rate, config.optimizer.momentum = "sgd", LR, MOMENTUM
    validation.validate(config)
    return config


def _jaxens_runner(config, dataset, **overrides):
    """(runner, step loop): runner(n) trains n steps of the config's K members and waits for them; the
    step is the trainer's own (`jaxens.trainer.spec.make_train_chunk`; `overrides` replace its arguments)."""
    spec = spec_lib.resolve(config)
    chunk = spec_lib.make_train_chunk(spec, **overrides)
    holder = [ensemble_lib.init_ensemble(spec.model, spec.tx, spec.plan.streams(), spec.input_shape)]
    orders = data_lib.epoch_orders(holder[0].rngs.order, jnp.zeros((holder[0].k,), jnp.int32), dataset.num_train)

    def runner(n):
        holder[0], sums = chunk(holder[0], orders, dataset, n)  # The state is donated: keep the new one.
        jax.block_until_ready((holder[0], sums))

    return runner, chunk.step_loop


# ---- torch ----------------------------------------------------------------------------------------------


def _sgd(params):
    return torch.optim.SGD(params, lr=LR, momentum=MOMENTUM)


def _autograd_runner(modules, batches):
    """Every member's own loss summed (members share no parameter) → one backward, one optimizer."""
    opt = _sgd([p for m in modules for p in m.parameters()])

    def runner(n):
        for _ in range(n):
            opt.zero_grad()
            torch.stack([F.cross_entropy(m(x), y) for m, (x, y) in zip(modules, batches)]).sum().backward()
            opt.step()

    return runner


def _func_runner(modules, x, y, x_dim):
    """torch.func: vmap over members of grad(loss) of the stacked parameters; the stacked BatchNorm buffers
    are updated in place by the train-mode forward. SGD steps on the stacked tensors."""
    params, buffers = stack_module_state(modules)
    base = modules[0]

    def loss(p, b, xb, yb):
        return F.cross_entropy(functional_call(base, (p, b), (xb,)), yb)

    member_grads = vmap(grad(loss), in_dims=(0, 0, x_dim, x_dim))
    opt = _sgd(list(params.values()))

    def runner(n):
        for _ in range(n):
            for p, g in zip(params.values(), member_grads(params, buffers, x, y).values()):
                p.grad = g
            opt.step()

    return runner


def _mlp(widths):
    layers, d = [], 784
    for w in widths:
        layers += [nn.Linear(d, w), nn.ReLU()]
        d = w
    return nn.Sequential(*layers, nn.Linear(d, 10))


class _BatchedMLP(nn.Module):
    """K one-hidden-layer MLPs as stacked weights; one shared input batch."""

    def __init__(self, k, hidden):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(k, 784, hidden) / 784**0.5)
        self.b1 = nn.Parameter(torch.zeros(k, 1, hidden))
        self.w2 = nn.Parameter(torch.randn(k, hidden, 10) / hidden**0.5)
        self.b2 = nn.Parameter(torch.zeros(k, 1, 10))

    def forward(self, x):  # x [B, 784] → logits [K, B, 10]
        h = torch.relu(torch.einsum("bi,kih->kbh", x, self.w1) + self.b1)
        return torch.bmm(h, self.w2) + self.b2


def _batched_runner(k, x, y):
    model = _BatchedMLP(k, 4)
    opt = _sgd(model.parameters())
    labels = y.repeat(k)

    def runner(n):
        for _ in range(n):
            opt.zero_grad()
            logits = model(x).reshape(-1, 10)
            # Σ over members of each one's mean cross-entropy.
            (F.cross_entropy(logits, labels, reduction="sum") / x.shape[0]).backward()
            opt.step()

    return runner


def _same_padding(size, kernel=3, stride=2):
    """(before, after) of XLA/Flax 'SAME' padding: the extra pixel of an odd total goes after."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _StridedCNN(nn.Module):
    """jaxens.models.StridedCNN for images, in NCHW: per width a 3x3 stride-2 SAME conv without bias →
    BatchNorm (eps 1e-5, running averages 0.9 old + 0.1 new) → ReLU; global average pool; Dense(10)."""

    def __init__(self, widths, channels=1):
        super().__init__()
        self.convs, self.norms = nn.ModuleList(), nn.ModuleList()
        for w in widths:
            self.convs.append(nn.Conv2d(channels, w, 3, stride=2, padding=0, bias=False))
            self.norms.append(nn.BatchNorm2d(w, eps=1e-5, momentum=0.1))
            channels = w
        self.head = nn.Linear(channels, 10)

    def forward(self, x):
        for conv, bn in zip(self.convs, self.norms):
            (top, bottom), (left, right) = _same_padding(x.shape[-2]), _same_padding(x.shape[-1])
            x = torch.relu(bn(conv(F.pad(x, (left, right, top, bottom)))))
        return self.head(x.mean(dim=(2, 3)))


# ---- cases ----------------------------------------------------------------------------------------------


def _report(title, ms, jaxens_names, torch_names):
    print(title)
    for name, value in ms.items():
        print(f"  {name:34s} {value:9.2f} ms/step")
    best = min(torch_names, key=ms.get)
    for name in jaxens_names:
        print(f"  ratio {best} / {name}: {ms[best] / ms[name]:.2f}")
    print("  (ratio > 1: jaxens faster)\n")


def case_a(dataset, args):
    k = 256
    runner, loop = _jaxens_runner(_config("mlp", (4,), k, shared_batch=True), dataset)
    # Webb's modular loss at λ=0 is independent training through the joint step (also one shared batch).
    joint, _ = _jaxens_runner(_config("mlp", (4,), k, shared_batch=True, lam=(0.0,)), dataset)
    unchecked, _ = _jaxens_runner(_config("mlp", (4,), k, shared_batch=True), dataset, divergence_check="off")
    x, y = torch.randn(BATCH, 784), torch.randint(0, 10, (BATCH,))
    modules = [_mlp((4,)) for _ in range(k)]
    runners = {
        f"jaxens vmap, {loop} loop": runner,
        "jaxens vmap, loss.lam=(0,)": joint,
        "jaxens vmap, no divergence check": unchecked,
        f"torch loop over {k} modules": _autograd_runner(modules, [(x, y)] * k),
        "torch.func vmap(grad)": _func_runner(modules, x, y, x_dim=None),
        "torch batched einsum/bmm": _batched_runner(k, x, y),
    }
    ms = _median_ms(runners, args.steps, args.repeats)
    _report(
        f"a. K={k} MLPs 784-4-10, one shared batch of {BATCH}, {args.steps} steps x {args.repeats}:",
        ms,
        list(runners)[:3],
        list(runners)[3:],
    )


def case_b(dataset, args):
    runner, loop = _jaxens_runner(_config("mlp", (1024,), 1), dataset)
    unchecked, _ = _jaxens_runner(_config("mlp", (1024,), 1), dataset, divergence_check="off")
    x, y = torch.randn(BATCH, 784), torch.randint(0, 10, (BATCH,))
    runners = {
        f"jaxens K=1, {loop} loop": runner,
        "jaxens K=1, no divergence check": unchecked,
        "torch module + optim.SGD": _autograd_runner([_mlp((1024,))], [(x, y)]),
    }
    ms = _median_ms(runners, args.steps, args.repeats)
    _report(
        f"b. one MLP 784-1024-10, batch {BATCH}, {args.steps} steps x {args.repeats}:",
        ms,
        list(runners)[:2],
        list(runners)[2:],
    )


def case_c(dataset, args):
    k, widths = 16, (32, 64)
    runners = {}
    for strategy in ("vmap", "loop"):
        runner, loop = _jaxens_runner(_config("cnn2d", widths, k, strategy), dataset)
        runners[f"jaxens {strategy}, {loop} loop"] = runner
    x, y = torch.randn(k, BATCH, 1, 28, 28), torch.randint(0, 10, (k, BATCH))
    modules = [_StridedCNN(widths) for _ in range(k)]
    runners[f"torch loop over {k} modules (NCHW)"] = _autograd_runner(modules, list(zip(x, y)))
    last = [_StridedCNN(widths).to(memory_format=torch.channels_last) for _ in range(k)]
    runners[f"torch loop over {k} (channels_last)"] = _autograd_runner(
        last, [(xm.contiguous(memory_format=torch.channels_last), ym) for xm, ym in zip(x, y)]
    )
    runners["torch.func vmap(grad)"] = _func_runner(modules, x, y, x_dim=0)
    ms = _median_ms(runners, args.cnn_steps, args.repeats)
    names = list(runners)
    _report(
        f"c. K={k} StridedCNNs {widths} on 28x28x1, own batches of {BATCH}, {args.cnn_steps} steps x {args.repeats}:",
        ms,
        names[:2],
        names[2:],
    )


CASES = {"a": case_a, "b": case_b, "c": case_c}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="a,b,c", help="comma list of a, b, c")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed chunk, MLP cases")
    parser.add_argument("--cnn-steps", type=int, default=3, help="steps per timed chunk, CNN case")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    args = parser.parse_args()
    cases = args.cases.split(",")
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"--cases: unknown {unknown}; allowed: {', '.join(CASES)}")

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    dataset = data_lib.load(_config("mlp", (4,), 1)).to_device()  # Every case trains on Fashion-MNIST.
    print(
        f"jax {jax.__version__} on {jax.default_backend()} ({jax.device_count()} device, {os.cpu_count()} "
        f"cores); torch {torch.__version__}, {torch.get_num_threads()} threads. float32, SGD lr {LR} "
        f"momentum {MOMENTUM}; ms per training step of the whole ensemble, medians.\n"
    )
    for case in cases:
        CASES[case](dataset, args)


if __name__ == "__main__":
    main()
