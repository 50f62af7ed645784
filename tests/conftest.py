"""Shared fixtures: small configs on real offline data, and a helper that trains n steps."""

from __future__ import annotations

import glob
import json
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# XLA compiles dominate the suite on CPU, and many tests (and the CLI subprocesses they start, which
# inherit the environment) compile the same programs: share them through JAX's persistent cache.
_XLA_CACHE = os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "jaxens-tests-xla")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
jax.config.update("jax_compilation_cache_dir", _XLA_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

from jaxens import config as config_lib  # noqa: E402
from jaxens import data as data_lib  # noqa: E402
from jaxens.trainer import validation  # noqa: E402


def small_config(**overrides):
    """A validated MNIST-1D config small enough for unit tests; overrides as 'group.field': value."""
    c = config_lib.get_default_config()
    c.dataset = "mnist1d"
    c.model.name = "mlp"
    c.model.widths = (32,)
    c.ensemble.k = 3
    c.optimizer.learning_rate = 0.05
    c.train.batch_size = 500  # 8 steps per epoch on MNIST-1D's 4000 training examples.
    c.train.num_epochs = 2
    c.train.steps_per_call = 3
    for path, value in overrides.items():
        node = c
        *groups, field = path.split(".")
        for g in groups:
            node = node[g]
        node[field] = value
    validation.validate(c)
    return c


BN_EPS = 1e-5  # BatchNorm epsilon of DenseBN.


class DenseBN(nn.Module):
    """Dense → BatchNorm → ReLU per hidden width (layers dense{i}, bn{i}), then Dense(3) 'head': a tiny
    BatchNorm network whose NumPy re-derivations the landscape tests compare against."""

    widths: tuple[int, ...] = (6, 5)

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i, width in enumerate(self.widths):
            x = nn.Dense(width, name=f"dense{i}")(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=BN_EPS, name=f"bn{i}")(x)
            x = nn.relu(x)
        return nn.Dense(3, name="head")(x)


def init_variables(model, seed, x):
    """model.init with PRNGKey(seed) on one example of x, in eval mode (jitted)."""
    return jax.jit(lambda k: model.init(k, x[:1], train=False))(jax.random.PRNGKey(seed))


def np_nll(logits, y):
    """Mean NLL of integer labels y [N] under logits [N, C], in NumPy."""
    z = logits - logits.max(-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -log_p[np.arange(len(y)), y].mean()


def np_softmax(z):
    """Softmax over the last axis in float64: the NumPy reference the metric tests re-derive from."""
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def random_logits(seed, shape, scale=3.0):
    """float32 logits of `shape` [..., N, C] (normal × scale) and int32 labels [N] in [0, C)."""
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=shape) * scale).astype(np.float32)
    labels = rng.integers(0, shape[-1], size=shape[-2]).astype(np.int32)
    return logits, labels


def load_config_file(name):
    """`get_config()` of configs/<name>.py, loaded the way config_flags loads it (by path)."""
    return config_lib.load_file(os.path.join(REPO, "configs", name))


@pytest.fixture(scope="session")
def mnist1d():
    """MNIST-1D host arrays (generated once, cached on disk)."""
    return data_lib.load(small_config())


def train_steps(train_chunk, state, dataset, num_steps, batch_size, steps_per_call=3):
    """Runs `num_steps` steps the way the trainer does: per-epoch orders, chunks capped at epoch ends."""
    spe = data_lib.steps_per_epoch(dataset.num_train, batch_size)
    k = state.step.shape[0]
    step = int(state.step[0])
    end = step + num_steps
    while step < end:
        epoch = step // spe
        orders = data_lib.epoch_orders(state.rngs.order, jnp.full((k,), epoch), dataset.num_train)
        n = min(steps_per_call, (epoch + 1) * spe - step, end - step)
        state, _ = train_chunk(state, orders, dataset, n)
        step += n
    return jax.block_until_ready(state)


def timeless_summary(workdir) -> dict:
    """DIR/summary.json without its timings (`wall_time_s`, `train_time_s`), which no two runs share."""
    with open(os.path.join(str(workdir), "summary.json")) as f:
        summary = json.load(f)
    return {k: v for k, v in summary.items() if k not in ("wall_time_s", "train_time_s")}


def tensorboard_scalars(workdir) -> dict:
    """{(TensorBoard run, tag): [(step, value), ...]} of DIR/tensorboard, read by TensorBoard's
    EventAccumulator (which drops events a resumed run's purge step marks stale, as TensorBoard does)."""
    from tensorboard.backend.event_processing import event_accumulator

    out = {}
    for path in sorted(glob.glob(os.path.join(str(workdir), "tensorboard", "*"))):
        acc = event_accumulator.EventAccumulator(path, size_guidance={event_accumulator.SCALARS: 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out[(os.path.basename(path), tag)] = [(e.step, e.value) for e in acc.Scalars(tag)]
    return out


# A spawn run small enough for a test, on configs/mnist1d_spawn.py (add --config.coupling.t): the parent and
# the children train 6 epochs of 8 steps (batch 500), k = 2 children per spawn time, a checkpoint every
# epoch, the latest 3 kept.
SMALL_SPAWN_ARGS = (
    "--config.coupling.condition=coupled_to_t",
    "--config.ensemble.k=2",
    "--config.model.widths=(32,)",
    "--config.train.batch_size=500",
    "--config.train.num_epochs=6",
    "--config.train.steps_per_call=3",
    "--config.train.checkpoint_every=1ep",
    "--config.train.max_checkpoints=3",
)


def cli(workdir, *args, config="configs/mnist1d_spawn.py", kill_at=None):
    """`python -m jaxens.train --config=CONFIG --workdir=WORKDIR ARGS` as a real process (Popen), with
    `JAXENS_KILL_AT` (`jaxens.faults`) when `kill_at` is given."""
    import subprocess

    env = dict(os.environ, CI="true")
    env.pop("JAXENS_KILL_AT", None)
    if kill_at:
        env["JAXENS_KILL_AT"] = kill_at
    cmd = [sys.executable, "-m", "jaxens.train", f"--config={config}", f"--workdir={workdir}", *args]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=300):
    """(exit code, stdout, stderr) of a `cli` process once it ends."""
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def cli_in_process(monkeypatch, argv) -> int:
    """`python -m jaxens.train ARGV` in this process (flag parsing, validation, exit code): the exit code.
    Its messages go to this process's stderr (capsys)."""
    from absl import flags

    from jaxens import train

    def reset():
        flags.FLAGS.unparse_flags()
        # config_flags registers one flag per overridden field, bound to the config it parsed first.
        for name in [n for n in flags.FLAGS if n.startswith("config.")]:
            delattr(flags.FLAGS, name)

    monkeypatch.setattr(sys, "argv", ["jaxens.train", *argv])  # config_flags reads its overrides there.
    reset()
    try:
        train._parse_flags(sys.argv)
        train.main(["jaxens.train"])
    except SystemExit as e:
        return e.code
    finally:
        reset()
    return 0


# The smallest run of configs/mnist1d_ensemble.py: 2 epochs of 40 steps, k = 2, checkpoints at 40 and 80.
ENSEMBLE_ARGS = ("--config.train.num_epochs=2", "--config.ensemble.k=2", "--config.model.widths=(32,)")


@pytest.fixture(scope="session")
def ensemble_run(tmp_path_factory):
    """A finished `ENSEMBLE_ARGS` run made by the command line (copy it before changing it)."""
    workdir = tmp_path_factory.mktemp("ensemble") / "run"
    rc, _, err = finish(cli(workdir, *ENSEMBLE_ARGS, config="configs/mnist1d_ensemble.py"))
    assert rc == 0, err
    return workdir


def file_tree(directory) -> dict:
    """relative path → bytes of every file under `directory` (empty when it does not exist)."""
    out = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            out[os.path.relpath(path, directory)] = open(path, "rb").read()
    return out
