"""Where the ensemble lives: a device mesh with axes 'member' and 'data', on one host or many.

The stacked state (every leaf [K, ...]) is sharded on 'member': each row of the mesh holds K/M members.
Within a member, the minibatch [B, ...] is sharded on 'data': each device of a row computes B/D examples
and XLA's SPMD partitioner adds the reductions over 'data' (gradients, BatchNorm statistics). The
training and evaluation inputs are replicated on every device. Nothing here distributes by hand: arrays
carry `NamedSharding`s and `jax.jit` partitions the program (`jax.shard_map` over 'member' alone for the
'shard_map/<within>' strategies, 'data' staying automatic).

Mesh shape (`mesh_shape`), from config.mesh.member × config.mesh.data (0 = automatic):

    member = config.mesh.member or gcd(K, devices // (config.mesh.data or 1))   # all devices on 'member'
                                                                                # when K allows
    data   = config.mesh.data or the most of the remaining devices dividing the batch size

A phase with fewer members than the mesh's member axis (a spawning condition's one-member parent) runs on
gcd(member, K) rows and moves the spare factor onto 'data' when the batch size allows it, so it still uses
every device.

Multi-host (a Cloud TPU pod slice, several GPU hosts): `initialize_distributed` starts JAX's distributed
runtime (config.mesh.distributed), after which `jax.devices()` lists every host's devices and the mesh
spans them. Each process runs the same program on its own devices; `host` gathers what the host reads
(metrics, logits) from all processes; only the primary process (`is_primary`) writes logs and results,
while every process takes part in Orbax's checkpoint saves, each writing its own shards.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxens.config import ConfigError

MEMBER = "member"  # The mesh axis the stacked members are sharded over.
DATA = "data"  # The mesh axis a member's minibatch is sharded over.


class MeshError(ConfigError):
    """config.mesh does not fit the devices, the members or the batch size (a config error: the trainer
    reports it before any compute and exits with code 2)."""


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def mesh_shape(k: int, batch_size: int, member: int = 0, data: int = 0, num_devices: int | None = None):
    """(M, D): devices on the 'member' and 'data' axes for K members (see the module docstring).

    Args:
      k: K, the members of the phase.
      batch_size: B per member (D must divide it).
      member, data: config.mesh.member / config.mesh.data (0: automatic).
      num_devices: defaults to `jax.device_count()` (every host's devices).

    Raises:
      MeshError: a set value does not divide K or B, or M·D exceeds the devices; the message names the field.
    """
    n = jax.device_count() if num_devices is None else num_devices
    if member < 0 or data < 0:
        raise MeshError(f"config.mesh.member={member}, config.mesh.data={data}: must be ≥ 0 (0 = automatic)")
    if data and batch_size % data:
        raise MeshError(
            f"config.mesh.data={data} does not divide config.train.batch_size={batch_size}: a member's batch is "
            f"split evenly over the 'data' axis (allowed: {', '.join(map(str, _divisors(batch_size)))})"
        )
    if member and data and member * data > n:
        raise MeshError(
            f"config.mesh.member={member} × config.mesh.data={data} needs {member * data} devices; {n} here"
        )
    if member > n or data > n:
        raise MeshError(f"config.mesh (member={member}, data={data}): only {n} device(s) here")
    m = member or math.gcd(k, n // (data or 1))
    if m > 0 and k % m:
        raise MeshError(
            f"config.mesh.member={member} does not divide the {k} members (K): every device row holds K/M "
            f"members (allowed: {', '.join(map(str, _divisors(k)))})"
        )
    d = data or max(x for x in _divisors(n // m) if batch_size % x == 0)
    return m, d


def phase_shape(shape: tuple[int, int], k: int, batch_size: int) -> tuple[int, int]:
    """The mesh of a phase with K members on a run whose members' mesh is `shape` (M, D): gcd(M, K) rows,
    the spare factor moved to 'data' when B allows (so a one-member parent still uses every device)."""
    m, d = shape
    rows = math.gcd(m, k)
    spare = m // rows
    return (rows, d * spare) if batch_size % (d * spare) == 0 else (rows, d)


def make_mesh(shape: tuple[int, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ('member', 'data') mesh of shape (M, D) over M·D devices (all hosts' devices by default; on TPU,
    `jax.make_mesh` orders them by the physical topology when it uses them all). A smaller mesh takes the
    first devices, as many from each process."""
    devices = list(jax.devices() if devices is None else devices)
    m, d = shape
    auto = (jax.sharding.AxisType.Auto,) * 2
    if m * d == len(devices):
        try:
            return jax.make_mesh((m, d), (MEMBER, DATA), axis_types=auto, devices=devices)
        except (ValueError, NotImplementedError):  # Topologies make_mesh cannot lay out: the plain order.
            pass
    return Mesh(np.asarray(_spread(devices, m * d)).reshape(m, d), (MEMBER, DATA), axis_types=auto)


def _spread(devices: list, n: int) -> list:
    """n of `devices`, the same number from every process (each process must take part in every
    computation of a multi-host run)."""
    processes = sorted({dev.process_index for dev in devices})
    if len(processes) == 1:
        return devices[:n]
    if n % len(processes):
        raise MeshError(
            f"a mesh of {n} device(s) cannot give each of the {len(processes)} processes the same share: choose "
            "config.mesh and config.train.batch_size so that every phase's mesh uses a multiple of the process count"
        )
    per = n // len(processes)
    return [dev for p in processes for dev in [x for x in devices if x.process_index == p][:per]]


def single_device_mesh(device: jax.Device | None = None) -> Mesh:
    """A (1, 1) mesh on one device (the default device when not given)."""
    return make_mesh((1, 1), [device or jax.devices()[0]])


def members(mesh: Mesh) -> NamedSharding:
    """Leaves [K, ...] sharded on 'member', replicated over 'data'."""
    return NamedSharding(mesh, PartitionSpec(MEMBER))


def replicated(mesh: Mesh) -> NamedSharding:
    """A copy on every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def mesh_of(tree) -> Mesh | None:
    """The mesh the first leaf of `tree` is sharded over, or None when it is not on a mesh."""
    sharding = getattr(jax.tree.leaves(tree)[0], "sharding", None)
    return sharding.mesh if isinstance(sharding, NamedSharding) and isinstance(sharding.mesh, Mesh) else None


def put(tree, sharding: NamedSharding):
    """`tree` placed with `sharding` (no copy for arrays already there).

    On a mesh spanning several processes, host values (NumPy arrays, or arrays on one local device: the
    same on every process) go through `jax.make_array_from_callback`, so each process transfers only the
    shards its own devices hold. Everything else is an explicit `jax.device_put`.
    """

    def one(x):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        if sharding.is_fully_addressable:  # This process holds every device of the mesh.
            return jax.device_put(x, sharding)
        if isinstance(x, jax.Array):
            if x.sharding.device_set == sharding.device_set:
                return jax.device_put(x, sharding)
            # Across processes JAX reshards only within one device set: by way of the host otherwise.
            x = host(x)
        x = np.asarray(x)  # A host value (the same in every process) going onto a mesh of several.
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(one, tree)


def put_members(tree, mesh: Mesh):
    """Every leaf [K, ...] sharded on 'member' of `mesh`."""
    return put(tree, members(mesh))


def put_replicated(tree, mesh: Mesh):
    """Every leaf replicated on all devices of `mesh`."""
    return put(tree, replicated(mesh))


def put_shared(tree, mesh: Mesh):
    """Arrays all members read (the dataset, evaluation inputs) onto `mesh`, keeping their layout: a
    replicated array stays replicated, a training set split over the devices (`put_dataset`) is split
    over this mesh's devices."""

    def one(x):
        if isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding):
            return x if x.sharding.mesh == mesh else put(x, NamedSharding(mesh, x.sharding.spec))
        return put(x, replicated(mesh))

    return jax.tree.map(one, tree)


class Replicas:
    """Shared arrays (the dataset, evaluation inputs) placed on a mesh by `put_shared`, once per source object
    and mesh: a `TrainChunk` or `Predictor` called again with the same dataset reuses its copy."""

    def __init__(self):
        self._recent: list[tuple[Any, Mesh, Any]] = []  # (source object, mesh, its copy there)

    def __call__(self, tree, mesh: Mesh):
        for source, source_mesh, placed in self._recent:
            if source is tree and source_mesh == mesh:
                return placed
        placed = put_shared(tree, mesh)
        self._recent = [*self._recent[-3:], (tree, mesh, placed)]  # A few recent ones (train, eval sets).
        return placed


SPLIT_EXAMPLES = PartitionSpec((MEMBER, DATA))  # Axis 0 (the examples) over every device of the mesh.


def put_dataset(dataset, mesh: Mesh, split_train: bool = False):
    """A `jaxens.data.Dataset` onto `mesh`: every array replicated or, with `split_train`
    (config.mesh.shard_train), the training split's examples divided over all devices of the mesh, so that
    each device holds N/(M·D) of them and each process places only its devices' rows. Batches are then
    gathered across devices: per step an all-reduce of the K·B examples the members draw."""
    placed = put_replicated(dataset, mesh)
    if not split_train:
        return placed
    split = NamedSharding(mesh, SPLIT_EXAMPLES)
    return placed.replace(train_x=put(dataset.train_x, split), train_y=put(dataset.train_y, split))


def abstract_members(tree, mesh: Mesh):
    """`jax.ShapeDtypeStruct`s of `tree` sharded on 'member' of `mesh` (Orbax restores into them, onto any
    device count: a checkpoint saved on 8 devices restores onto 1 and the other way round)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=members(mesh)), tree)


def constrain_batch(tree, mesh: Mesh | None = None):
    """A minibatch [B, ...] split over the 'data' axis: of `mesh`, or of the mesh in context (`jax.set_mesh`,
    as `TrainChunk` sets it; unchanged without one). Mapped over the members (vmap with 'member' as its SPMD
    axis, or `shard_map` manual over 'member'), the member axis goes on 'member'."""
    if mesh is not None:
        spec: NamedSharding | PartitionSpec = NamedSharding(mesh, PartitionSpec(DATA))
    else:
        context = jax.sharding.get_abstract_mesh()
        if context.empty or DATA not in context.axis_names:
            return tree
        spec = PartitionSpec(DATA)
    return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, spec), tree)


def host(tree):
    """`tree` as NumPy arrays on this host, gathered from every process when some shard lives on another
    (every process must call it: it is a collective then)."""
    leaves = jax.tree.leaves(tree)
    if all(not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated for x in leaves):
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def is_primary() -> bool:
    """Whether this process writes the run's logs and results (process 0; always true on one host)."""
    return jax.process_index() == 0


def initialize_distributed() -> None:
    """Starts JAX's distributed runtime for a multi-host run (before any other JAX call of the process).

    On Cloud TPU (and SLURM, and the other clusters JAX detects) it needs no arguments. Elsewhere set
    JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and JAX_PROCESS_ID in each process's environment.
    Host (CPU) devices then communicate through gloo. A second call does nothing.
    """
    if jax.distributed.is_initialized():
        return
    kwargs: dict[str, Any] = {}
    if "JAX_NUM_PROCESSES" in os.environ:
        kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
    if "JAX_PROCESS_ID" in os.environ:
        kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)


# HLO collectives, with their asynchronous '-start' forms (whose '-done' halves move nothing more).
_COLLECTIVES = (
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "collective-permute",
    "all-to-all",
    "collective-broadcast",
)
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<type>.+?)\s+(?P<op>" + "|".join(_COLLECTIVES) + r")(?:-start)?\(",
)
_ARRAY = re.compile(r"\b(?P<dtype>pred|s8|u8|s16|u16|f16|bf16|s32|u32|f32|s64|u64|f64|c64|c128)\[(?P<dims>[\d,]*)\]")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4}
_BYTES.update({"s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16})


def collectives(hlo_text: str) -> list[tuple[str, int, int]]:
    """The cross-device collectives of a compiled HLO module (`jax.stages.Compiled.as_text()`).

    Returns:
      (op, elements, bytes) per collective instruction, counting the arrays of its result (for an
      asynchronous '-start' op, its operands' share of the result tuple is not counted twice: only the
      last half of the tuple, the output buffers, is). One instruction in a loop body runs once per trip.
    """
    out = []
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        arrays = [(a["dtype"], [int(s) for s in a["dims"].split(",") if s]) for a in _ARRAY.finditer(match["type"])]
        if line.split("=", 1)[1].lstrip().startswith("(") and f"{match['op']}-start(" in line and len(arrays) > 1:
            arrays = arrays[len(arrays) // 2 :]  # (operands..., outputs...) of an async start.
        elements = sum(math.prod(dims) for _, dims in arrays)
        out.append((match["op"], elements, sum(math.prod(dims) * _BYTES[dtype] for dtype, dims in arrays)))
    return out
