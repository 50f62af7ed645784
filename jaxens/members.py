"""The member axis: the one map over K stacked members, and the choice of how to run it.

Per-member code (a model's forward pass, `jaxens.train_step.member_train_step`, a metric) is written for
ONE member. `map_members` maps it over the leading member axis K of its arguments, and every map over
that axis in jaxens goes through it, with one of these strategies:

- `vmap`: `jax.vmap` over K. Vectorizes well for MLPs; on CPU a conv with batched kernels lowers to a
  grouped convolution, which can be slower than a loop.
- `loop`: a Python loop over the K members inside the traced function (K copies of the member's code in
  one XLA program), stacking the results.
- `vmap:<n>`: `vmap` over chunks of n members, one chunk after another (`jax.lax.map` with batch_size n):
  the activations of n members at a time instead of K (config.ensemble.members_per_call).
- `shard_map/<within>`: `jax.shard_map` manual over the 'member' axis of the run's mesh
  (`jaxens.sharding`): each row of M devices runs its K/M members with `within` ('vmap' or 'loop'), the
  'data' axis left to XLA's partitioner. The config value 'shard_map' resolves `within` as 'auto' does
  (`resolve_strategy`). On CPU, `XLA_FLAGS=--xla_force_host_platform_device_count=D` (or
  `jax_num_cpu_devices`) gives D host devices.

All strategies compute the same numbers, to float rounding (XLA may pick other kernels for another number of
members at once; tested: `tests/test_ensemble.py`, `tests/test_sharding.py`, `tests/test_grid.py`).
`map_members` is a function transformation, like `jax.vmap`: it compiles nothing by itself, and the
functions that call it are jitted once (module-level `jax.jit` with static arguments, or one jitted
function per `TrainChunk` / `Predictor`), never per call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaxens import sharding as sharding_lib
from jaxens.config import MEMBER_STRATEGIES

STRATEGIES = ("vmap", "loop", "shard_map/vmap", "shard_map/loop")  # Resolved strategies.


def is_sharded(strategy: str) -> bool:
    """Whether `strategy` (resolved) runs the members under `jax.shard_map` over the mesh's 'member' axis."""
    return strategy.startswith("shard_map/")


def map_members(
    fn: Callable, strategy: str, in_axes: Sequence[int | None], mesh: jax.sharding.Mesh | None = None
) -> Callable:
    """Maps a one-member function over the leading member axis K of the arguments with `in_axes` 0.

    Args:
      fn: a function of one member's arguments; returns a pytree.
      strategy: 'vmap', 'loop', or 'shard_map/vmap' / 'shard_map/loop' (manual over the 'member' axis of
        `mesh`, each device row mapping its K/M members with the part after the slash; 'data' stays
        automatic, so arguments sharded on it stay sharded).
      in_axes: per positional argument, 0 (has the member axis) or None (shared by all members; pass
        shared arrays as arguments rather than closing over them, which a sharded strategy cannot do).
      mesh: the ('member', 'data') mesh the call runs on (`jaxens.sharding`); required by 'shard_map/*'.
        Under 'vmap', sharding constraints inside `fn` get 'member' on the mapped axis.

    Returns:
      A function of the stacked arguments returning the stacked results (leading axis K).
    """
    in_axes = tuple(in_axes)
    if is_sharded(strategy):
        if mesh is None:
            raise ValueError(f"strategy={strategy!r} needs the mesh to shard the members over")
        within = map_members(fn, strategy.removeprefix("shard_map/"), in_axes)
        specs = tuple(P(sharding_lib.MEMBER) if ax == 0 else P() for ax in in_axes)
        # Every output leaf has the member axis; shared inputs are replicated over the member rows.
        return jax.shard_map(
            within, mesh=mesh, in_specs=specs, out_specs=P(sharding_lib.MEMBER), axis_names={sharding_lib.MEMBER}
        )
    if strategy == "vmap":
        return jax.vmap(fn, in_axes=in_axes, spmd_axis_name=None if mesh is None else sharding_lib.MEMBER)
    if strategy.startswith("vmap:"):
        return _in_chunks(fn, in_axes, members_per_call(strategy))
    if strategy != "loop":
        raise ValueError(f"strategy={strategy!r}: allowed: {', '.join(STRATEGIES)}")

    def looped(*args):
        k = num_members(args, in_axes)
        outs = []
        for m in range(k):
            member_args = [jax.tree.map(lambda x: x[m], a) if ax == 0 else a for a, ax in zip(args, in_axes)]
            outs.append(fn(*member_args))
        return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

    return looped


def _in_chunks(fn: Callable, in_axes: tuple, chunk: int) -> Callable:
    """`fn` vmapped over chunks of `chunk` members, one chunk after another (the last may be smaller)."""

    def chunked(*args):
        mapped = [a for a, ax in zip(args, in_axes) if ax == 0]

        def member(xs):
            it = iter(xs)
            return fn(*(next(it) if ax == 0 else a for a, ax in zip(args, in_axes)))

        return jax.lax.map(member, mapped, batch_size=chunk)

    return chunked


def with_members_per_call(strategy: str, members_per_call: int) -> str:
    """`strategy` (resolved) computing at most `members_per_call` members at once: 'vmap' → 'vmap:<n>' (and
    within 'shard_map/vmap'); 'loop' computes one member at a time already; 0 leaves it as it is."""
    if members_per_call and strategy.endswith("vmap"):
        return f"{strategy}:{members_per_call}"
    return strategy


def members_per_call(strategy: str) -> int:
    """n of a strategy computing n members at a time ('vmap:<n>', 'shard_map/vmap:<n>'), else 0 (all at once)."""
    within = strategy.removeprefix("shard_map/")
    return int(within.removeprefix("vmap:")) if within.startswith("vmap:") else 0


def concatenate(parts: Sequence):
    """Pytrees with a leading member axis (states, streams) joined end to end along it, in order."""
    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts)


def num_members(args: Sequence, in_axes: Sequence[int | None]) -> int:
    """K: the leading axis of the first leaf of the first argument with the member axis."""
    return jax.tree.leaves(next(a for a, ax in zip(args, in_axes) if ax == 0))[0].shape[0]


def resolve_strategy(
    strategy: str, convolutional: bool, backend: str | None = None, num_devices: int | None = None
) -> str:
    """The member strategy to build with: one of `STRATEGIES`.

    Within a device, convolutional models on CPU run as an unrolled loop and everything else under vmap:
    on a 2-core CPU (`benchmarks/member_strategies.py`, batch 128 per member) vmap of conv members ran
    1.1-1.25x (small strided CNN, im2col convolutions, K = 4-16) and 5.9-7.2x (ResNet-20, whose stride-1
    convolutions vmap into grouped convolutions, K = 4-16) slower than the loop, while for an MLP the two
    were within 10% either way. 'auto' shards the members with `shard_map/<within>` when the mesh's 'member'
    axis has more than one device row, else runs `<within>` (each member still split over 'data'). A 2-core CPU
    split into 2 XLA devices gained little from it: MLP 0.97-1.20x, small CNN 0.78-0.98x the one-device
    speed at K = 4-16. 'shard_map' always shards (over one device if that is all there is).

    Args:
      strategy: config.ensemble.strategy: 'auto', or one of `jaxens.config.MEMBER_STRATEGIES`.
      convolutional: whether the model convolves.
      backend: defaults to JAX's default backend.
      num_devices: the devices on the mesh's 'member' axis (default: the backend's device count).
    """
    if strategy not in ("auto", *MEMBER_STRATEGIES):
        raise ValueError(f"strategy={strategy!r}: allowed: auto, {', '.join(MEMBER_STRATEGIES)}")
    backend = backend or jax.default_backend()
    within = "loop" if backend == "cpu" and convolutional else "vmap"
    if strategy == "shard_map" or (strategy == "auto" and (num_devices or jax.device_count(backend)) > 1):
        return f"shard_map/{within}"
    return within if strategy == "auto" else strategy
