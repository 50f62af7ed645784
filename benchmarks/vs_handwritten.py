"""The jaxens trainer end to end against the ensemble loop a user would write by hand, seconds per epoch.

  python benchmarks/vs_handwritten.py [--cases=mlp,cnn2d] [--rounds=3] [--short=1] [--long=3]

The hand-written loop is the minimal flax + optax version: one member's step (cross-entropy, `optax.sgd`),
`jax.vmap` over the K stacked members, one jitted `lax.scan` over an epoch's steps, the uint8 training set
normalized on the device per batch, a permutation per member and epoch, the test error of every member
once at the end. jaxens runs `jaxens.run.train_and_evaluate` with the same model (the module
`jaxens.models.build` returns), data, optimizer, K and batch, and everything a run does on: per-member
PRNG streams, the per-step divergence check, training-metric sums, one evaluation at the end (validation,
test, the ensemble's metrics), a checkpoint every epoch, metrics.jsonl and TensorBoard.

Seconds per epoch = (time of a `--long`-epoch run − time of a `--short`-epoch run) / (long − short), each
time the median over `--rounds` rounds that alternate the four runs (so all see the same machine load);
start-up, compilation and the final evaluation cancel in the difference. Prints both and their ratio
(jaxens / hand-written: < 1 means jaxens is faster). Cases (Fashion-MNIST, batch 128, SGD lr 0.05
momentum 0.9, constant schedule): `mlp` 784-256-256-10 at K = 8; `cnn2d` (32, 64) at K = 4.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jaxens import config as config_lib  # noqa: E402
from jaxens import data as data_lib  # noqa: E402
from jaxens import models, run  # noqa: E402

CASES = {"mlp": ("mlp", (256, 256), 8), "cnn2d": ("cnn2d", (32, 64), 4)}


def case_config(name: str, epochs: int):
    """The jaxens config of a case trained for `epochs` epochs (one evaluation, at the end)."""
    model, widths, k = CASES[name]
    config = config_lib.get_default_config()
    config.dataset = "fashion_mnist"
    config.model.name, config.model.widths, config.ensemble.k = model, widths, k
    config.optimizer.learning_rate, config.optimizer.momentum = 0.05, 0.9
    config.train.batch_size, config.train.num_epochs = 128, epochs
    config.eval.every_epochs = epochs
    return config


TX = optax.sgd(0.05, momentum=0.9)


def hand_loss(model: nn.Module, params, batch_stats, x, y):
    """One member's mean cross-entropy in training mode: (loss, new BatchNorm statistics)."""
    if not batch_stats:
        return optax.softmax_cross_entropy_with_integer_labels(
            model.apply({"params": params}, x, train=True), y
        ).mean(), {}
    variables = {"params": params, "batch_stats": batch_stats}
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates["batch_stats"]


def hand_member_step(model: nn.Module, member, x, y):
    """One member's step as a user writes it: member = (params, batch_stats, opt_state) -> (member, loss)."""
    params, batch_stats, opt_state = member
    (loss, batch_stats), grads = jax.value_and_grad(hand_loss, argnums=1, has_aux=True)(
        model, params, batch_stats, x, y
    )
    updates, opt_state = TX.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), batch_stats, opt_state), loss


def hand_normalize(dataset, x):
    return (x.astype(jnp.float32) / 255.0 - dataset.mean) / dataset.std


def hand_init(model: nn.Module, k: int, example, key):
    """K members' (params, batch_stats, opt_state), stacked."""
    variables = jax.vmap(lambda kk: model.init(kk, example))(jax.random.split(key, k))
    params = variables["params"]
    return params, variables.get("batch_stats", {}), jax.vmap(TX.init)(params)


def handwritten(model: nn.Module, dataset, k: int, batch_size: int, seed: int = 0):
    """The loop a user writes: `(epochs) -> test error [K]`, every member's state stacked on axis 0."""
    train_x, train_y = jax.device_put((dataset.train_x, dataset.train_y))
    test_x, test_y = jax.device_put((dataset.test_x, dataset.test_y))
    n, steps = len(train_y), len(train_y) // batch_size
    init = jax.jit(lambda key, example: hand_init(model, k, hand_normalize(dataset, example), key))

    @jax.jit
    def epoch(members, key, train_x, train_y):
        perms = jax.vmap(lambda kk: jax.random.permutation(kk, n))(jax.random.split(key, k))  # [K, N]
        idx = perms[:, : steps * batch_size].reshape(k, steps, batch_size).swapaxes(0, 1)  # [S, K, B]

        def body(members, idx_s):
            x, y = hand_normalize(dataset, train_x[idx_s]), train_y[idx_s]  # [K, B, ...], [K, B]
            return jax.vmap(lambda m, x, y: hand_member_step(model, m, x, y))(members, x, y)

        members, losses = jax.lax.scan(body, members, idx)
        return members, losses.mean(0)

    @jax.jit
    def test_error(members, test_x, test_y):  # Arrays as arguments: closed over, XLA would constant-fold them.
        params, batch_stats, _ = members

        def logits(p, bs):  # [N_test, C]
            return model.apply({"params": p, **({"batch_stats": bs} if bs else {})}, hand_normalize(dataset, test_x))

        return (jax.vmap(logits)(params, batch_stats).argmax(-1) != test_y).mean(-1)  # [K]

    def train(epochs: int) -> np.ndarray:
        key = jax.random.key(seed)
        members = init(key, train_x[:1])
        for e in range(epochs):
            members, _ = epoch(members, jax.random.fold_in(key, e), train_x, train_y)
        return np.asarray(test_error(members, test_x, test_y))

    return train


def profile(name: str, steps: int, repeats: int) -> None:
    """Prints ms per step of the trainer's step built up part by part, next to the hand-written step's."""
    from common import median_seconds  # benchmarks/common.py

    from jaxens import ensemble as ensemble_lib
    from jaxens import train_step
    from jaxens.members import map_members
    from jaxens.trainer import spec as spec_lib
    from jaxens.trainer import validation

    config = case_config(name, 1)
    validation.validate(config)
    spec = spec_lib.resolve(config)
    dataset = data_lib.load(spec.source).to_device()
    model, tx, b, s = spec.model, spec.tx, spec.batch_size, spec.steps_per_epoch
    state = ensemble_lib.init_ensemble(model, tx, spec.plan.streams(), spec.input_shape)
    k = state.k
    orders = data_lib.epoch_orders(state.rngs.order, jnp.zeros((k,), jnp.int32), dataset.num_train)  # [K, N]
    x0, y0 = dataset.normalize(dataset.train_x[orders[:, :b]]), dataset.train_y[orders[:, :b]]  # [K, B, ...]
    members = lambda fn, axes: map_members(fn, spec.strategy, axes)  # noqa: E731  (as the trainer maps)

    def batch_at(i):  # [K, B] indices of step i, as the hand-written scan slices them
        return jax.lax.dynamic_slice_in_dim(orders, (i % s) * b, b, axis=1)

    # Forward/backward alone: plain p − η·g (one pass over the parameters), so that the gradients are not
    # loop-invariant (XLA would hoist them out of the loop).
    sgd = lambda params, grads: jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads)  # noqa: E731

    def hand_grads(i, members):
        params, batch_stats, opt_state = members
        loss = lambda p, bs, x, y: hand_loss(model, p, bs, x, y)  # noqa: E731
        grads, batch_stats = jax.vmap(jax.grad(loss, has_aux=True))(params, batch_stats, x0, y0)
        return sgd(params, grads), batch_stats, opt_state

    def hand_fixed(i, members):
        return jax.vmap(lambda m, x, y: hand_member_step(model, m, x, y)[0])(members, x0, y0)

    def hand_full(i, members):
        idx = batch_at(i)
        x, y = hand_normalize(dataset, dataset.train_x[idx]), dataset.train_y[idx]
        return jax.vmap(lambda m, x, y: hand_member_step(model, m, x, y)[0])(members, x, y)

    def jaxens_grads(i, state):
        grads, batch_stats, *_ = members(lambda st, x, y: train_step.member_gradients(model, st, x, y), (0, 0, 0))(
            state, x0, y0
        )
        return state.replace(step=state.step + 1, params=sgd(state.params, grads), batch_stats=batch_stats)

    def jaxens_fixed(i, state):
        step = lambda st, x, y: train_step.member_step_on_batch(model, tx, st, x, y, check_finite=False)[0]  # noqa: E731
        return members(step, (0, 0, 0))(state, x0, y0)

    def jaxens_gather(i, state):
        step = lambda st, order: train_step.member_train_step(  # noqa: E731
            model, tx, st, order, dataset, b, spec.augment, spec.crop_padding, check_finite=False
        )[0]
        return members(step, (0, 0))(state, orders)

    hand = (state.params, state.batch_stats, jax.vmap(TX.init)(state.params))
    carries = {
        "hand_grads": hand,
        "hand_fixed": hand,
        "hand_full": hand,
        "jaxens_grads": state,
        "jaxens_fixed": state,
        "jaxens_gather": state,
    }
    bodies = {
        "hand_grads": hand_grads,
        "hand_fixed": hand_fixed,
        "hand_full": hand_full,
        "jaxens_grads": jaxens_grads,
        "jaxens_fixed": jaxens_fixed,
        "jaxens_gather": jaxens_gather,
    }
    carries = {key: jax.tree.map(jnp.copy, c) for key, c in carries.items()}
    chunks = {check: spec_lib.make_train_chunk(spec, divergence_check=check) for check in ("chunk", "step", "off")}
    step_loop = chunks["chunk"].step_loop

    def runner(key):
        body = bodies[key]
        if key.startswith("hand") or step_loop == "device":  # The hand-written loop is always a scan.
            many = jax.jit(lambda c: jax.lax.fori_loop(0, steps, body, c), donate_argnums=0)
        else:
            one = jax.jit(body, donate_argnums=1)  # The trainer's host loop: one call per step.
            many = lambda c: [c := one(i, c) for i in range(steps)][-1]  # noqa: E731

        def call():
            carries[key] = many(carries[key])
            return carries[key]

        return call

    fns = {key: runner(key) for key in bodies}

    def trainer(check):
        holder = [jax.tree.map(jnp.copy, state)]

        def call():
            holder[0], sums = chunks[check](holder[0], orders, dataset, steps)  # The state is donated.
            return holder[0], sums

        return call

    fns.update({f"trainer_{check}": trainer(check) for check in chunks})
    ms = {key: 1e3 * t / steps for key, t in median_seconds(fns, repeats).items()}
    rows = [
        ("forward/backward + p − η·g (a fixed batch)", ms["hand_grads"], ms["jaxens_grads"]),
        ("rest of the update", ms["hand_fixed"] - ms["hand_grads"], ms["jaxens_fixed"] - ms["jaxens_grads"]),
        ("gather + augmentation + normalization", ms["hand_full"] - ms["hand_fixed"], ms["jaxens_gather"] - ms["jaxens_fixed"]),
        ("metric sums", 0.0, ms["trainer_off"] - ms["jaxens_gather"]),
        ("divergence check, every step ('step')", 0.0, ms["trainer_step"] - ms["trainer_off"]),
        ("divergence check, chunk end ('chunk')", 0.0, ms["trainer_chunk"] - ms["trainer_off"]),
        ("whole step (the trainer's: 'chunk')", ms["hand_full"], ms["trainer_chunk"]),
        ("whole step, divergence_check='step'", ms["hand_full"], ms["trainer_step"]),
    ]  # fmt: skip
    print(f"{name}: ms per step of K={k} members, batch {b} (jaxens: {spec.strategy}, {step_loop} loop; "
          f"hand-written: vmap, scan), {steps} steps x {repeats}:")  # fmt: skip
    print(f"  {'part':<44}{'hand-written':>14}{'jaxens':>10}")
    for part, hand, ours in rows:
        print(f"  {part:<44}{hand:>14.2f}{ours:>10.2f}")
    print(f"  ratio jaxens / hand-written (whole step): {ms['trainer_chunk'] / ms['hand_full']:.3f}")


def jaxens_run(config, workdir: str) -> dict:
    summary = run.train_and_evaluate(config, workdir)
    jax.effects_barrier()
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="mlp,cnn2d")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--short", type=int, default=1)
    parser.add_argument("--long", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="print the per-step profile table instead")
    parser.add_argument("--steps", type=int, default=100, help="--profile: steps per timed call")
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.default_backend()} ({jax.devices()[0].device_kind}), {os.cpu_count()} CPUs")
    if args.profile:
        for name in args.cases.split(","):
            profile(name, args.steps, args.rounds)
        return
    for name in args.cases.split(","):
        config = case_config(name, args.short)
        dataset = data_lib.load(config)
        model = models.build(config.model, dataset.num_classes, dataset.input_shape)
        train_by_hand = handwritten(model, dataset, config.ensemble.k, config.train.batch_size)
        train_by_hand(1)  # Compiles the hand-written loop once (its jitted functions persist).
        times: dict = {(who, e): [] for who in ("jaxens", "handwritten") for e in (args.short, args.long)}
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.rounds):
                for (who, epochs), seconds in times.items():
                    start = time.perf_counter()
                    if who == "handwritten":
                        train_by_hand(epochs)
                    else:
                        jaxens_run(case_config(name, epochs), os.path.join(tmp, f"{who}{epochs}_{r}"))
                    seconds.append(time.perf_counter() - start)
        median = {key: float(np.median(t)) for key, t in times.items()}
        per_epoch = {
            who: (median[who, args.long] - median[who, args.short]) / (args.long - args.short)
            for who in ("jaxens", "handwritten")
        }
        model_name, widths, k = CASES[name]
        print(
            f"{model_name} {widths} K={k}, batch {config.train.batch_size}, {dataset.num_train} examples, "
            f"{args.rounds} rounds: s/epoch jaxens {per_epoch['jaxens']:.2f}, hand-written "
            f"{per_epoch['handwritten']:.2f}, ratio {per_epoch['jaxens'] / per_epoch['handwritten']:.3f}"
        )
        for key, t in times.items():
            print(f"  {key[0]:>11} {key[1]} epochs: " + " ".join(f"{s:.2f}" for s in t))


if __name__ == "__main__":
    main()
