"""The memory a run needs, estimated before anything is allocated, and the check that refuses a run that
cannot fit (`python -m jaxens.train ... --ignore_memory_estimate` overrides it).

    est = estimate(spec)          # bytes per device of spec.mesh_shape, from jax.eval_shape only
    check(spec)                   # logs est at INFO; raises ConfigError when it exceeds limit()

Shapes are exact (`jax.eval_shape` of the calls the trainer makes); what XLA keeps alive is an assumption,
stated per field of `Estimate`. Measured on CPU (configs/mnist1d_ensemble.py, 1 epoch): the peak RSS of a
K=1000 run exceeded a K=4 run's by 4.85 GB (eval batch 1000) and 4.86 GB (100), estimated 4.96 and 4.71 GB.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxens import data as data_lib
from jaxens import members as members_lib
from jaxens.config import ConfigError
from jaxens.trainer.spec import RunSpec

FLOAT_DATASETS = ("mnist1d",)  # Registered datasets of float32 features; the others hold uint8 images.
# A forward-only pass frees each intermediate once consumed, but residual inputs, convolution workspaces and
# fusions keep a few alive: XLA's memory_analysis of the `Predictor` on CPU measured 2x (MLP), 2.7x (cnn1d)
# and 5.4-7.1x (ResNet-20, K = 1-4) the largest intermediate per member; the 4 largest are within 2x of each.
LIVE_IN_FORWARD = 4


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Bytes held by ONE device of an (M, D) mesh: members split over M ('member'), each member's batch
    over D ('data'); with M = D = 1 these are the whole run's. Peak = `total` (see there).

    Attributes:
      state: the K/M members' `EnsembleState` (params, optimizer slots, BatchNorm statistics, rng keys,
        counters), replicated over 'data'.
      update: a training step's besides the state: the gradients (the params' bytes) and one more copy of
        the state (`TrainChunk`'s divergence check keeps each chunk's input; the new state aliases the
        donated one: XLA's memory_analysis reports alias size = state).
      activations: a training step's: every submodule output of a member's forward pass (flax
        `capture_intermediates`) and its input, at batch B/D, × 2 for the backward pass, × K/M.
      evaluation: the `Predictor`'s: forward only, the `LIVE_IN_FORWARD` largest of them and the input at
        eval batch/D, × K/M.
      logits: [K/M, N, C] float32 of the largest evaluation set, twice (batches and their concatenation;
        then the concatenation and its split into groups).
      metrics: the diversity metrics of one group of k members: pairwise disagreement materializes
        [k/M, k, N] float32.
      data: the training, validation, test and extra evaluation sets (replicated; the training split
        divided over all M·D devices with config.mesh.shard_train). Not counted: the loaded NumPy copy
        in host memory.
      orders: the members' epoch permutations [K/M, N] int32.
      devices: M·D.
      num_members: K.
    """

    state: int
    update: int
    activations: int
    evaluation: int
    logits: int
    metrics: int
    data: int
    orders: int
    devices: int = 1
    num_members: int = 1

    @property
    def total(self) -> int:
        """Peak per device: training, prediction and metrics never hold their temporaries together."""
        evaluating = self.logits + max(self.evaluation, self.metrics)
        return self.state + self.data + self.orders + max(self.update + self.activations, evaluating)

    @property
    def host_total(self) -> int:
        """All M·D devices together (CPU devices share the host's memory)."""
        return self.total * self.devices

    def scaled(self, factor: float) -> Estimate:
        """The estimate with K × factor members (same groups, same mesh): `metrics` grows with k²."""
        linear = ("state", "update", "activations", "evaluation", "logits", "orders")
        changes = {f: int(getattr(self, f) * factor) for f in linear}
        members = round(self.num_members * factor)
        return dataclasses.replace(self, **changes, metrics=int(self.metrics * factor**2), num_members=members)

    def describe(self) -> str:
        """One line: every part, then the peak per device and on all devices."""
        parts = ("state", "update", "activations", "evaluation", "logits", "metrics", "data", "orders")
        text = " + ".join(f"{p} {_size(getattr(self, p))}" for p in parts)
        on = f"{self.devices} devices: {_size(self.host_total)} in all" if self.devices > 1 else "1 device"
        return (
            f"{text}: peak {_size(self.total)} per device (state + data + orders + max(update + activations, "
            f"logits + max(evaluation, metrics))), K={self.num_members} on {on}"
        )


def _size(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _nbytes(tree) -> int:
    """Bytes of a pytree of arrays or ShapeDtypeStructs (a typed PRNG key counts its key data)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.extended):
            leaf = jax.eval_shape(jax.random.key_data, leaf)
        total += math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
    return total


def _intermediates(spec: RunSpec, params, batch_stats, batch: int) -> tuple[list[int], int]:
    """(bytes of each submodule output of ONE member's training forward pass on `batch` examples, bytes of
    its input), from flax's `capture_intermediates` under eval_shape. Each carries the batch axis, so
    bytes at another batch size scale in proportion."""
    variables = {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}
    x = jax.ShapeDtypeStruct((batch, *spec.input_shape), jnp.float32)  # [B, ...] normalized inputs.

    def forward(variables, x):
        kwargs = dict(rngs={"dropout": jax.random.PRNGKey(0)}, capture_intermediates=True)
        return spec.model.apply(variables, x, train=True, mutable=["intermediates", "batch_stats"], **kwargs)

    _, updates = jax.eval_shape(forward, variables, x)
    return [_nbytes(leaf) for leaf in jax.tree.leaves(updates["intermediates"])], _nbytes(x)


def _data_bytes(spec: RunSpec, devices: int) -> tuple[int, int]:
    """(bytes of the datasets on one device, examples N of the largest evaluation set)."""
    example = math.prod(spec.input_shape) * (4 if spec.source.name in FLOAT_DATASETS else 1) + 4  # + int32 label.
    source = spec.source
    infos = [data_lib.dataset_info(n, source.image_size) for n in (source.name, *source.shifted, *source.ood)]
    eval_sizes = [source.val_size, *(info.num_test for info in infos if info is not None)]
    views = len(source.val_seeds)
    if views:  # One pool (every training example), each view's validation split and its [N] int32 rows.
        examples = spec.num_train + source.val_size * (1 + views) + sum(eval_sizes[1:])
        return examples * example + 4 * views * spec.num_train, max(eval_sizes)
    train = spec.num_train // devices if spec.shard_train else spec.num_train
    return (train + sum(eval_sizes)) * example, max(eval_sizes)


def estimate(spec: RunSpec, mesh_shape: tuple[int, int] | None = None) -> Estimate:
    """The memory of `spec`'s members' phase per device of `mesh_shape` (default: spec.mesh_shape), from
    `jax.eval_shape` only (nothing is allocated or compiled): `init_ensemble` as `jaxens.run` calls it, and
    one member's `model.apply`."""
    m, d = mesh_shape or spec.mesh_shape
    plan = spec.plan
    k = plan.num_members
    state = jax.eval_shape(lambda: spec.groups_state())
    one = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), tree)  # noqa: E731
    per_row = lambda n: -(-n // m)  # noqa: E731  # Bytes of all K members → of the K/M on one device row.
    chunk = members_lib.members_per_call(spec.strategy)

    def at_once(per_member: int) -> int:  # Of the members one device computes at once (members_per_call).
        return min(per_row(per_member * k), per_member * chunk) if chunk else per_row(per_member * k)

    batch, eval_batch = -(-spec.batch_size // d), -(-spec.eval_batch_size // d)  # Per device.
    train, x = _intermediates(spec, one(state.params), one(state.batch_stats), batch)
    live = sum(sorted(train)[-LIVE_IN_FORWARD:]) + x
    data, n_eval = _data_bytes(spec, m * d)
    return Estimate(
        state=per_row(_nbytes(state)),
        update=per_row(_nbytes(state.params) + _nbytes(state)),
        activations=at_once(2 * (sum(train) + x)),
        evaluation=at_once(live * eval_batch // batch),
        logits=per_row(2 * k * n_eval * spec.num_classes * 4),
        metrics=per_row(plan.k * plan.k * n_eval * 4),
        data=data,
        orders=per_row(k * spec.num_train * 4),
        devices=m * d,
        num_members=k,
    )


def limit() -> tuple[int, str]:
    """(bytes the run may use, where the figure comes from).

    On a GPU or TPU: `bytes_limit` of the first local device's `memory_stats()`, per device (compared with
    `Estimate.total`). On CPU, where there is none: the host's available memory, MemAvailable of
    /proc/meminfo (else free pages × page size), for all CPU devices together (`Estimate.host_total`).
    """
    device = jax.local_devices()[0]
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"]), f"bytes_limit of {device.platform} device {device.id}'s memory_stats()"
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "the host's MemAvailable in /proc/meminfo"
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "the host's available pages (sysconf)"


def check(spec: RunSpec, ignore: bool = False, limit_bytes: tuple[int, str] | None = None) -> Estimate:
    """Estimates `spec`'s memory, logs it at INFO, and refuses a run that cannot fit.

    Args:
      ignore: skip the comparison (--ignore_memory_estimate); the estimate is still returned.
      limit_bytes: (bytes, source) instead of `limit()`; compared with the host total (all devices) on CPU,
        else with the per-device total.

    Raises:
      ConfigError: naming the breakdown, the limit and its source, the fields that drive the estimate (and
        the largest k that would fit), and the override.
    """
    est = estimate(spec)
    logging.info("Memory estimate: %s", est.describe())
    if ignore:
        return est
    available, source = limit_bytes or limit()
    host = jax.default_backend() == "cpu"
    needed = lambda e: e.host_total if host else e.total  # noqa: E731
    if needed(est) <= available:
        return est
    k, groups = spec.plan.k, spec.plan.num_groups
    fits = _largest_k(lambda j: needed(est.scaled(j / k)) <= available, k)
    scope = ("on the host" + (f", all {est.devices} devices" if est.devices > 1 else "")) if host else "per device"
    raise ConfigError(
        f"the run needs about {_size(needed(est))} of memory {scope} ({est.describe()}), more than the limit of "
        f"{_size(available)} ({source}). Lower config.ensemble.k={k} ({groups} group(s) of k: K={k * groups} "
        f"members; {f'about k ≤ {fits} would fit' if fits else 'even k=1 would not fit'}; the diversity metrics "
        f"grow with k²), config.train.batch_size={spec.batch_size} (training activations) or "
        f"config.eval.batch_size={spec.eval_batch_size} (evaluation), "
        + (
            "fewer values in config.grid or config.grid.members_per_run (members per program: the population "
            "runs in parts, one after another), "
            if spec.plan.gridded
            else ""
        )
        + (
            f"config.ensemble.members_per_call (members computed at once, now {members_lib.members_per_call(spec.strategy) or 'all'}), "
            if spec.strategy.split("/")[-1].startswith("vmap")
            else ""
        )
        + f"or choose a smaller model than config.model.name={spec.model_name!r}; or pass "
        "--ignore_memory_estimate to run anyway."
    )


def _largest_k(fits, k: int) -> int:
    """The largest j < k with fits(j) (0 if none), by bisection: the estimate grows with j."""
    lo, hi = 0, k  # fits(lo) or lo == 0; not fits(hi).
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
