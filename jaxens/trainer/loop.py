"""The phase loop: K members trained in lockstep, pausing for callbacks (evaluation, checkpoints, ...).

Both phases of a run (a spawning condition's parent, then the members) run `train`. At tick τ member m
is at step min(starts[m] + τ, ends[m]); a member at its end step stops updating. Between pauses the loop
dispatches chunks of steps (`jaxens.train_chunk.TrainChunk`), cut at every member's epoch end (where its
permutation changes), at every pause and after `steps_per_call` steps, and waits for each chunk to finish
(inside a chunk the host never waits for the device). At a pause the callbacks whose `ticks` hold it run
in order, each seeing the same `Pause` (a later one sees what an earlier one set). After every chunk a
stop request (`jaxens.preemption`) calls every callback's `on_stop` (the checkpoint saves) and raises
`Preempted`: a SIGTERM stops the run at most `steps_per_call` steps after it arrives.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxens import data as data_lib
from jaxens import preemption, progress
from jaxens import sharding as sharding_lib
from jaxens.ensemble import EnsembleState, placement_mesh
from jaxens.train_chunk import TrainChunk


@dataclasses.dataclass(frozen=True)
class Phase:
    """What `train` runs.

    Attributes:
      name: 'parent' or 'members' (messages, TensorBoard).
      starts: [K] each member's step at tick 0.
      ends: [K] the step each member stops at.
      steps_per_epoch: S (a member's permutation changes every S steps).
      steps_per_call: the most steps of one chunk (so also the most a stop request waits for).
      lr_scales: [K] learning-rate multipliers, or None.
      spawned: the members are children spawned at `starts` (a child spawned mid-epoch finishes its spawn
        epoch on its parent's remaining examples, `jaxens.data.spawn_epoch_orders`): (B, [K, 2] the parent's
        order key), or None.
    """

    name: str
    starts: np.ndarray
    ends: np.ndarray
    steps_per_epoch: int
    steps_per_call: int
    lr_scales: np.ndarray | None = None
    spawned: tuple[int, np.ndarray] | None = None

    @property
    def last(self) -> int:
        """The tick the phase ends at: when the member with the most steps to go finishes."""
        return int((self.ends - self.starts).max())


@dataclasses.dataclass
class Pause:
    """What the callbacks see when the loop pauses (and, on a stop request, after any chunk).

    Attributes:
      tick: the phase's tick.
      state: the members' state (on the device; a callback that keeps it must copy it: training donates it).
      sums: the running training-metric sums of the current window ({metric: [K]} on the device), or None
        right after a window ended; a callback that ends the window sets it to None.
      steps_per_s: the training rate since the previous pause.
      train: the window's mean training metrics {metric: [K] floats}, once a callback computed them.
      saved: whether a checkpoint of this tick was saved.
    """

    tick: int
    state: EnsembleState
    sums: dict | None
    steps_per_s: float
    train: dict | None = None
    saved: bool = False


class Callback:
    """Something done at some ticks of a phase. `ticks`: the ticks to pause at (None: at every pause)."""

    ticks: frozenset[int] | None = None

    def __call__(self, pause: Pause) -> None:
        pass

    def on_stop(self, pause: Pause) -> None:
        """A stop request arrived (`Preempted` is raised next)."""


def train(
    chunk: TrainChunk,
    dataset: data_lib.Dataset,
    state: EnsembleState,
    phase: Phase,
    callbacks: Sequence[Callback],
    tick: int = 0,
    sums: dict | None = None,
) -> EnsembleState:
    """Trains the members of `phase` from `tick` to `phase.last` (see the module docstring).

    Args:
      sums: the training-metric sums of the window the phase resumes in (a checkpoint's progress).

    Raises:
      preemption.Preempted: a stop request arrived; the callbacks' `on_stop` ran.
    """
    pauses = sorted(set().union(*(cb.ticks or () for cb in callbacks)) | {phase.last})
    mesh = placement_mesh(state)  # The phase runs where its state lives.
    masked = len(set((phase.ends - phase.starts).tolist())) > 1  # Members finish at different ticks.
    ends = sharding_lib.put_members(phase.ends.astype(np.int32), mesh) if masked else None
    lr_scales = None if phase.lr_scales is None else sharding_lib.put_members(phase.lr_scales, mesh)
    bar = progress.bar(phase.last, initial=tick, desc=f"{phase.name} K={state.k}")
    orders, order_epochs = None, None
    rate_from = (tick, time.perf_counter())  # Step rate over each window (device work done by its end).
    while tick < phase.last:
        steps = np.minimum(phase.starts + tick, phase.ends)
        epochs = steps // phase.steps_per_epoch
        if order_epochs is None or not np.array_equal(epochs, order_epochs):
            orders = _epoch_orders(state, phase, epochs, dataset.num_train, mesh)  # [K, N]
            order_epochs = epochs
        to_epoch_end = np.where(steps < phase.ends, (epochs + 1) * phase.steps_per_epoch - steps, np.iinfo(int).max)
        next_pause = next(p for p in pauses if p > tick)
        n = int(min(to_epoch_end.min(), next_pause - tick, phase.steps_per_call))
        dispatched = time.perf_counter()
        state, chunk_sums = chunk(state, orders, dataset, n, ends, lr_scales)
        # The host waits for each chunk, so a stop request is seen at most one chunk after it arrives (the
        # host never runs ahead of the device by more; the next chunk's dispatch is the only gap).
        jax.block_until_ready(chunk_sums)
        chunk.seconds += time.perf_counter() - dispatched
        sums = chunk_sums if sums is None else jax.tree.map(jnp.add, sums, chunk_sums)
        tick += n
        bar.update(n)
        rate = (tick - rate_from[0]) / max(time.perf_counter() - rate_from[1], 1e-9)
        pause = Pause(tick, state, sums, rate)
        if tick == next_pause:
            for callback in callbacks:
                if callback.ticks is None or tick in callback.ticks:
                    callback(pause)
            sums, rate_from = pause.sums, (tick, time.perf_counter())
        signum = preemption.requested()
        if signum is not None and tick < phase.last:
            for callback in callbacks:
                callback.on_stop(pause)
            bar.close()
            raise preemption.Preempted(signum, tick, f"{phase.name} phase")
    bar.close()
    return state


def _epoch_orders(state: EnsembleState, phase: Phase, epochs: np.ndarray, num_train: int, mesh) -> jax.Array:
    """[K, N] the members' orders of `epochs` ([K]); a child in its spawn epoch continues its parent's."""
    on_mesh = lambda a: sharding_lib.put_members(a, mesh)  # noqa: E731
    if phase.spawned is not None:
        batch_size, parent_keys = phase.spawned
        spe = phase.steps_per_epoch
        spawned_at = phase.starts  # A child's first step is its spawn step.
        seen = np.where(epochs == spawned_at // spe, (spawned_at % spe) * batch_size, 0).astype(np.int32)
        if seen.any():
            args = (on_mesh(epochs.astype(np.int32)), num_train, on_mesh(parent_keys), on_mesh(seen))
            return data_lib.spawn_epoch_orders(state.rngs.order, *args)
    return data_lib.epoch_orders(state.rngs.order, on_mesh(epochs.astype(np.int32)), num_train)
