"""Many training steps of all K members in one call: the compiled unit the trainer's loop dispatches.

A chunk maps `jaxens.train_step.member_train_step` over the members once (`jaxens.members.map_members`)
and runs it for `num_steps` steps, either in a `while` loop inside one jitted call ('device') or as one
jitted call per step dispatched from Python without waiting ('host'). Nothing crosses to the host inside
a chunk: batches are index gathers into the on-device dataset, and the training metrics are summed on
the device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxens import data as data_lib
from jaxens import sharding as sharding_lib
from jaxens import train_step
from jaxens.config import STEP_LOOPS
from jaxens.ensemble import EnsembleState, placement_mesh
from jaxens.members import map_members

DIVERGENCE_CHECKS = ("chunk", "step", "off")  # TrainChunk's ways of checking divergence.


def resolve_step_loop(step_loop: str, host_loop_on_cpu: bool, backend: str | None = None) -> str:
    """'auto' → 'host' on CPU for models whose `jaxens.models.ModelSpec.host_loop_on_cpu` says so, 'device'
    otherwise.

    Measured on a 2-core CPU (jax 0.10.2): with XLA's own convolution, a conv member step inside a `while`
    loop body ran 4.7x (1-D CNN) to 11x (2-D CNN) slower than the same step as its own jitted call, while an
    MLP ran 1.3x faster. Since the strided CNNs' convolutions are im2col GEMMs on CPU, their step inside the
    loop runs as fast or faster: `cnn2d` (32, 64), K = 4, batch 128: 92 ms per step on the device loop against
    109 ms on the host loop; `cnn1d`: 12.4 against 12.3 ms (benchmarks/vs_handwritten.py, 2026-12).
    """
    if step_loop not in STEP_LOOPS:
        raise ValueError(f"step_loop={step_loop!r}: allowed: {', '.join(STEP_LOOPS)}")
    if step_loop == "auto":
        on_cpu = (backend or jax.default_backend()) == "cpu"
        return "host" if on_cpu and host_loop_on_cpu else "device"
    return step_loop


class TrainChunk:
    """Runs `num_steps` training steps of all K members: `(state, orders, dataset, num_steps, ends=None,
    lr_scales=None) -> (state, sums)`.

    `orders` [K, N] are the members' current epoch permutations. The input state is donated. `sums` holds
    [K] metric arrays summed over the chunk's steps, with 'steps' counting the steps each member took
    (divide by it), left on device: no host synchronization happens inside a chunk.

    `ends` (optional, [K] int32 on device): member m stops updating once its step reaches `ends[m]` (its
    state is carried unchanged and it adds 0 to `sums`). Members of a spawn sweep finish at different
    steps; without `ends` every member takes every step.

    `lr_scales` (optional, [K] float32 on device): each member's learning-rate multiplier (default 1).

    Divergence (`divergence_check`): a member whose loss or gradients turn non-finite is frozen at its state
    before that step and the step recorded in `state.diverged` (`train_step.member_update`). 'chunk' (the
    trainer's) runs the chunk's steps without the per-step check and verifies its end instead: the members'
    loss sums and states must be finite, which they are not if some step's loss or gradients were not (a
    non-finite gradient makes the parameter it reaches non-finite for good under every `jaxens.optim`
    optimizer: p + u with u = ±inf or NaN, and a non-finite p stays so). Only if the verification fails, or
    a member had diverged before the chunk, is the chunk run (again, from a copy of its input) with 'step':
    the check at every step, a reduction over the gradients and a select between the new and the old state. The results
    are the same bits either way; 'chunk' costs one copy of the state per chunk instead of a select per step
    (docs/performance.md). 'off' runs no check (benchmarks).

    `step_loop`: 'device' runs the steps in a `while` loop inside one jitted call, `num_steps` traced, so
    every chunk length shares one compilation; 'host' dispatches one jitted call per step from Python
    (asynchronously: the host never waits for the device between steps). Resolve 'auto' with
    `resolve_step_loop` first.

    `augment`/`padding` select the on-device training augmentation ('none' by default).

    `lams` (Webb et al.'s λ per group, a tuple): train with the modular loss (`train_step.joint_train_step`)
    instead of each member on its own NLL; the K members form len(lams) groups.

    `shared_batch` (1, or True): every member's minibatch is the same (shared order, and no augmentation or a
    shared augmentation stream: `train_step.shared_batch_of`), so it is gathered once, from member 0's
    streams, and fed to all members unbatched (`member_step_on_batch`): one [B, D] input instead of K copies.
    Equal to the per-member path up to float rounding (the matmuls differ in shape). S > 1: a grid's S seeds,
    consecutive blocks of K/S members each sharing its own (`train_step.shared_batch`), fed per member.

    `trace_count` counts traces of the jitted function (one per phase is expected). `seconds` is the wall time
    `jaxens.trainer.loop.train` spent in this object's calls, from dispatch until their results were ready
    (each phase's first call compiles: included): the members' arithmetic, against which a run's wall time
    shows its overhead (summary.json's `train_time_s`).

    Placement: the steps run on the mesh the state is sharded over (`jaxens.sharding`; a one-device mesh
    for a state on one device), set as the context mesh, and the new state stays there. Each member's
    minibatch is split over the mesh's 'data' axis; `orders`, `ends` and `lr_scales` are sharded with the
    members and the dataset replicated (once per dataset object and mesh).
    """

    def __init__(
        self,
        model,
        tx: optax.GradientTransformation,
        batch_size: int,
        strategy: str,
        step_loop: str,
        augment: str = "none",
        padding: int = 4,
        lams: tuple[float, ...] = (),
        divergence_check: str = "chunk",
        shared_batch: int = 0,
    ):
        if step_loop not in ("device", "host"):
            raise ValueError(f"step_loop={step_loop!r}: allowed: device, host")
        if divergence_check not in DIVERGENCE_CHECKS:
            raise ValueError(f"divergence_check={divergence_check!r}: allowed: {', '.join(DIVERGENCE_CHECKS)}")
        self.trace_count = 0
        self.seconds = 0.0
        self.step_loop = step_loop
        self.divergence_check = divergence_check
        self._replicas = sharding_lib.Replicas()
        args = (model, tx, batch_size, strategy, augment, padding, lams)
        # The steps without the per-step check (the 'chunk' check's first try, or 'off'), and with it.
        self._runs = {
            checked: self._compile(_all_members_step(*args, checked, shared_batch)) for checked in (False, True)
        }

    def _compile(self, step_all):
        """(the jitted chunk, the jitted single step) of one way of stepping all members."""

        def step(state: EnsembleState, sums: dict, orders, dataset, ends, lr_scales, mesh):
            state, metrics = step_all(state, orders, dataset, ends, lr_scales, mesh)
            # The state keeps its placement: members on 'member', replicated over 'data'.
            state = jax.lax.with_sharding_constraint(state, sharding_lib.members(mesh))
            return state, jax.tree.map(jnp.add, sums, metrics)

        def chunk(state, orders, dataset, num_steps: jax.Array, ends, lr_scales, mesh):
            self.trace_count += 1
            return jax.lax.fori_loop(
                0,
                num_steps,
                lambda _, carry: step(carry[0], carry[1], orders, dataset, ends, lr_scales, mesh),
                (state, _zero_sums(state)),
            )

        def counted_step(*args, mesh):
            self.trace_count += 1
            return step(*args, mesh)

        return (
            jax.jit(chunk, donate_argnums=0, static_argnames="mesh"),
            jax.jit(counted_step, donate_argnums=(0, 1), static_argnames="mesh"),
        )

    def place(self, state, orders, dataset, ends=None, lr_scales=None):
        """(mesh, and the arguments placed on it) for a call on `state` (see the class docstring)."""
        mesh = placement_mesh(state)
        state, orders, ends, lr_scales = sharding_lib.put_members((state, orders, ends, lr_scales), mesh)
        return mesh, state, orders, self._replicas(dataset, mesh), ends, lr_scales

    def __call__(self, state, orders, dataset, num_steps: int, ends: jax.Array | None = None, lr_scales=None):
        mesh, state, orders, dataset, ends, lr_scales = self.place(state, orders, dataset, ends, lr_scales)
        args = (orders, dataset, num_steps, ends, lr_scales, mesh)
        with jax.set_mesh(mesh):  # Each member's batch is split over its 'data' axis.
            if self.divergence_check == "off":
                return self._run(False, state, *args)
            # A member frozen before the chunk must stay frozen: only the per-step check does that.
            if self.divergence_check == "chunk" and not np.any(sharding_lib.host(state.diverged) >= 0):
                backup = _copy(state)  # The chunk's input, for the rerun (the run donates `state`).
                new_state, sums = self._run(False, state, *args)
                if np.all(sharding_lib.host(_all_finite_members(new_state, sums))):
                    return new_state, sums
                state = backup  # Some member's loss or gradients were not finite at some step of the chunk.
            return self._run(True, state, *args)

    def _run(self, checked: bool, state, orders, dataset, num_steps: int, ends, lr_scales, mesh):
        chunk, step = self._runs[checked]
        if self.step_loop == "device":
            # One explicit scalar transfer per chunk; the steps themselves never touch the host.
            steps = sharding_lib.put_replicated(np.int32(num_steps), mesh)
            return chunk(state, orders, dataset, steps, ends, lr_scales, mesh=mesh)
        # Made on the device (nothing crosses from the host per step), placed as the steps' sums will be.
        sums = jax.device_put(_zero_sums_jit(state), sharding_lib.members(mesh))
        for _ in range(num_steps):
            state, sums = step(state, sums, orders, dataset, ends, lr_scales, mesh=mesh)
        return state, sums

    def lower_step(self, state, orders, dataset, ends=None, lr_scales=None) -> jax.stages.Lowered:
        """One training step lowered for these arguments' placement (to inspect its HLO: collectives,
        FLOPs, memory); runs nothing and leaves the arguments as they are."""
        mesh, state, orders, dataset, ends, lr_scales = self.place(state, orders, dataset, ends, lr_scales)
        sums = jax.eval_shape(_zero_sums, state)
        sums = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_lib.members(mesh)), sums)
        count = self.trace_count
        with jax.set_mesh(mesh):
            step = self._runs[self.divergence_check == "step"][1]
            lowered = step.lower(state, sums, orders, dataset, ends, lr_scales, mesh=mesh)
        self.trace_count = count  # Not a training trace.
        return lowered


def _all_members_step(model, tx, batch_size, strategy, augment, padding, lams, check_finite, shared_batch):
    """`(state, orders, dataset, ends, lr_scales, mesh) -> (state, metrics)`: one step of all K members."""
    if lams:
        lam_array = np.asarray(lams, np.float32)

        def joint(state, orders, dataset, ends, lr_scales, mesh):
            del ends  # Every group trains the same steps.
            return train_step.joint_train_step(
                model, tx, strategy, state, orders, dataset, batch_size, jnp.asarray(lam_array), augment,
                padding, lr_scales, check_finite, mesh, max(int(shared_batch), 1),
            )  # fmt: skip

        return joint

    def one_member(state, order, dataset, lr_scale, active, view):
        return train_step.member_train_step(
            model, tx, state, order, dataset, batch_size, augment, padding, lr_scale, active, check_finite, view
        )

    def on_batch(state, x, y, idx, lr_scale, active):
        return train_step.member_step_on_batch(model, tx, state, x, y, lr_scale, active, check_finite, idx)

    def all_members(state, orders, dataset, ends, lr_scales, mesh):
        active = None if ends is None else state.step < ends  # [K]: a finished member keeps its state.
        lr_axis, active_axis = (None if a is None else 0 for a in (lr_scales, active))
        if shared_batch:  # Gathered once, from member 0's streams, and fed to every member unbatched.
            sources = int(shared_batch)
            batch = train_step.shared_batch(dataset, state, orders, batch_size, augment, padding, sources)  # [B, ...]
            axis = None
            if sources > 1:  # One per block of a grid's seed, repeated for its members: [K, B, ...].
                batch, axis = train_step.per_member(batch, state.k), 0
            mapped = map_members(on_batch, strategy, (0, axis, axis, axis, lr_axis, active_axis), mesh)
            return mapped(state, *batch, lr_scales, active)
        views = None if dataset.views is None else data_lib.member_views(state.k, dataset.num_views)  # [K]
        mapped = map_members(
            one_member, strategy, (0, 0, None, lr_axis, active_axis, None if views is None else 0), mesh
        )
        return mapped(state, orders, dataset, lr_scales, active, views)

    return all_members


def _zero_sums(state: EnsembleState) -> dict:
    return {name: jnp.zeros(state.step.shape) for name in ("loss", "error", "steps")}


_zero_sums_jit = jax.jit(_zero_sums)
_copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))


@jax.jit
def _all_finite_members(state: EnsembleState, sums: dict) -> jax.Array:
    """[K] whether each member's loss sum and state (parameters, optimizer state, BatchNorm statistics) are
    finite: false if its loss or gradients were not finite at some step of the chunk (see `TrainChunk`)."""

    def member(state: EnsembleState, loss: jax.Array) -> jax.Array:
        return train_step.all_finite((loss, state.params, state.opt_state, state.batch_stats))

    return map_members(member, "vmap", (0, 0))(state, sums["loss"])
