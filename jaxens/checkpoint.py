"""Orbax checkpoints of the ensemble state (atomic saves; the last few kept, plus chosen steps)."""

from __future__ import annotations

import os
from typing import Sequence

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers


class Checkpointer:
    """Saves and restores a pytree (the ensemble state) under `directory`, one checkpoint per step.

    Orbax writes each checkpoint to a temporary directory and renames it when complete, so a killed
    save never leaves a checkpoint that looks finished.

    Args:
      directory: where the checkpoints live.
      max_to_keep: how many of the latest checkpoints to keep.
      keep_steps: steps kept besides the latest (e.g. a parent's spawn times).
      read_only: only read (another run's checkpoints): saving raises, nothing is created or deleted.
    """

    def __init__(self, directory: str, max_to_keep: int = 2, keep_steps: Sequence[int] = (), read_only: bool = False):
        policy = checkpoint_managers.AnyPreservationPolicy(
            [checkpoint_managers.LatestN(max_to_keep), checkpoint_managers.CustomSteps(list(keep_steps))]
        )
        self._read_only = read_only
        # A read-only manager is one that never saves (so never deletes either); Orbax's own read_only
        # option would log warnings on every open.
        self._manager = ocp.CheckpointManager(
            os.path.abspath(directory),
            options=ocp.CheckpointManagerOptions(preservation_policy=policy, create=not read_only),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state) -> None:
        """Saves `state` as checkpoint `step` and waits until it is on disk."""
        if self._read_only:
            raise PermissionError("this Checkpointer was opened read_only: it never writes")
        self._manager.save(step, args=ocp.args.StandardSave(state))
        self._manager.wait_until_finished()

    def restore(self, step: int, like):
        """Checkpoint `step`, restored into the structure, shapes and dtypes of `like` (arrays, or
        `jax.ShapeDtypeStruct`s with a sharding)."""
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        return self._manager.restore(step, args=ocp.args.StandardRestore(target))

    def close(self) -> None:
        self._manager.close()
