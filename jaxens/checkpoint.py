"""Orbax checkpoints of the ensemble state (atomic saves, the last few kept)."""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves and restores a pytree (the ensemble state) under `directory`, one checkpoint per step.

    Orbax writes each checkpoint to a temporary directory and renames it when complete, so a killed
    save never leaves a checkpoint that looks finished.
    """

    def __init__(self, directory: str, max_to_keep: int = 2):
        self._manager = ocp.CheckpointManager(
            os.path.abspath(directory),
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state) -> None:
        """Saves `state` as checkpoint `step` and waits until it is on disk."""
        self._manager.save(step, args=ocp.args.StandardSave(state))
        self._manager.wait_until_finished()

    def restore(self, step: int, like):
        """Checkpoint `step`, restored into the structure, shapes and dtypes of the pytree `like`."""
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        return self._manager.restore(step, args=ocp.args.StandardRestore(target))

    def close(self) -> None:
        self._manager.close()
