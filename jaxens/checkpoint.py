"""Orbax checkpoints of the ensemble state: atomic saves, verified restores, fallback past a bad checkpoint.

A checkpoint of step s holds two items: `state` (the pytree, Orbax's standard format) and `meta` (JSON: the
caller's `progress`, e.g. running training-metric sums, a fingerprint of the state's bytes, the `owner`:
the fingerprint of the run's config, and the run's whole `config`, from which a damaged config.json can be
rewritten). A checkpoint belongs to the run that wrote it: a Checkpointer opened
for one owner refuses to restore another owner's checkpoint (`ForeignCheckpoint`, a config error), and a
save is either made or an error, never silently skipped (`CheckpointError`). Orbax writes
a checkpoint into a temporary directory and renames it when complete, so a process killed during a save
leaves no checkpoint that looks finished. A checkpoint that is finished but damaged afterwards (a file
missing or truncated, bytes changed on disk) fails to restore or fails its fingerprint: `restore_latest`
then moves it aside to `<directory>.corrupt/` (nothing is deleted), says so, and falls back to the
previous one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers

from jaxens import faults
from jaxens.config import ConfigError


class CorruptCheckpoint(Exception):
    """A finished checkpoint that cannot be restored, or whose bytes differ from what was saved."""


class ForeignCheckpoint(ConfigError):
    """A checkpoint written by another run (another config): never restored, never moved."""


class CheckpointError(Exception):
    """A checkpoint that should have been saved was not (Orbax declined it)."""


def fingerprint(tree) -> str | None:
    """A BLAKE2b digest of every leaf's dtype, shape and bytes, in tree order (None when some leaf is not
    fully addressable from this process, as on a multi-host mesh)."""
    digest = hashlib.blake2b(digest_size=16)
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            return None
        array = np.ascontiguousarray(jax.device_get(leaf))
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _unrestorable(e: Exception) -> CorruptCheckpoint:
    return CorruptCheckpoint(f"cannot be restored ({type(e).__name__}: {str(e).splitlines()[0][:200]})")


class Restored(NamedTuple):
    step: int
    state: Any
    progress: dict


class Checkpointer:
    """Saves and restores a pytree (the ensemble state) under `directory`, one checkpoint per step.

    Args:
      directory: where the checkpoints live.
      max_to_keep: how many of the latest checkpoints to keep.
      keep_steps: steps kept besides the latest (e.g. a parent's spawn times).
      read_only: only read (another run's checkpoints): saving raises, nothing is created, moved or deleted.
      owner: the fingerprint of the run these checkpoints belong to (`jaxens.workdir.run_fingerprint`), written
        into every checkpoint saved; a checkpoint of another owner is refused on restore. None: no check.
        Checkpoints saved before owners were recorded carry none and are accepted.
      config: the run's config (plain JSON values), recorded in every checkpoint saved (`recorded_configs`).
    """

    def __init__(
        self,
        directory: str,
        max_to_keep: int = 2,
        keep_steps: Sequence[int] = (),
        read_only: bool = False,
        owner: str | None = None,
        config: dict | None = None,
    ):
        policy = checkpoint_managers.AnyPreservationPolicy(
            [checkpoint_managers.LatestN(max_to_keep), checkpoint_managers.CustomSteps(list(keep_steps))]
        )
        self.directory = os.path.abspath(directory)
        self.owner = owner
        self._config = config
        self._read_only = read_only
        self._skipped: set[int] = set()  # Bad checkpoints of a read-only directory, ignored from now on.
        # A read-only manager is one that never saves (so never deletes either); Orbax's own read_only
        # option would log warnings on every open.
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(preservation_policy=policy, create=not read_only),
        )

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def all_steps(self) -> list[int]:
        return sorted(set(self._manager.all_steps()) - self._skipped)

    def save(self, step: int, state, progress: dict | None = None) -> None:
        """Saves `state` (and the JSON-able `progress`) as checkpoint `step`; returns once it is on disk.

        A step already saved by this owner is kept as it is (training is deterministic: a rerun reaching the
        step again has the same state; a differing one is logged). A step may be saved below later ones
        (a parent's spawn time whose checkpoint was set aside).

        Raises:
          ForeignCheckpoint: the step holds another run's checkpoint.
          CheckpointError: Orbax declined to write the checkpoint.
        """
        if self._read_only:
            raise PermissionError("this Checkpointer was opened read_only: it never writes")
        meta = {"progress": progress or {}, "fingerprint": fingerprint(state), "owner": self.owner}
        if self._config is not None:
            meta["config"] = self._config
        if step in self._manager.all_steps():
            try:
                saved = self._meta(step)
            except Exception as e:  # Damaged: set aside, then saved anew below.
                self.set_aside(step, f"cannot be read ({type(e).__name__})")
            else:
                self._check_owner(step, saved)
                if saved.get("fingerprint") != meta["fingerprint"]:
                    logging.warning("checkpoint %d in %s differs from this run's state; kept", step, self.directory)
                return
        # force: Orbax would otherwise decline a step below its latest one, silently.
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        if not self._manager.save(step, args=args, force=True):
            raise CheckpointError(
                f"Orbax declined to save checkpoint {step} in {self.directory} (it holds {self._manager.all_steps()})"
            )
        # Tests: SIGKILL while the write runs (once Orbax's thread has made the step's temporary directory).
        faults.kill_point(os.path.basename(self.directory), step, ready=self._writing)
        self._manager.wait_until_finished()

    def _writing(self) -> bool:
        """Whether an unfinished Orbax write has its temporary directory here."""
        return os.path.isdir(self.directory) and any("tmp" in p for p in os.listdir(self.directory))

    def _meta(self, step: int) -> dict:
        return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    def _check_owner(self, step: int, meta: dict) -> None:
        """Raises `ForeignCheckpoint` when checkpoint `step` records an owner other than this one."""
        theirs = meta.get("owner")
        if self.owner is not None and theirs is not None and theirs != self.owner:
            raise ForeignCheckpoint(
                f"checkpoint {step} in {self.directory} belongs to another run (its config fingerprint {theirs}, "
                f"this run's {self.owner}); nothing was restored or moved. Move that directory away, or pass "
                "--overwrite to replace the run the workdir holds"
            )

    def recorded_configs(self) -> dict[int, dict]:
        """Step → the run config recorded in that checkpoint (those that record one and can be read)."""
        out = {}
        for step in self.all_steps():
            try:
                config = self._meta(step).get("config")
            except Exception:  # A damaged checkpoint records nothing readable.
                continue
            if isinstance(config, dict):
                out[step] = config
        return out

    def restore_progress(self, step: int, like) -> Restored:
        """(step, state, progress) of checkpoint `step`, verified like `restore`.

        Raises:
          ForeignCheckpoint: the checkpoint belongs to another owner.
          CorruptCheckpoint: see `restore`.
        """
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        try:
            meta = self._meta(step)
        except Exception as e:  # Orbax and TensorStore raise many kinds for missing or damaged files.
            raise _unrestorable(e) from e
        self._check_owner(step, meta)  # Before the arrays: another run's are never read.
        try:
            state = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))).state
        except Exception as e:
            raise _unrestorable(e) from e
        expected = meta.get("fingerprint")
        if expected is not None and fingerprint(state) != expected:
            raise CorruptCheckpoint("its arrays differ from what was saved (fingerprint mismatch)")
        return Restored(step, state, meta.get("progress", {}))

    def restore(self, step: int, like):
        """Checkpoint `step`, restored into the structure, shapes and dtypes of `like` (arrays, or
        `jax.ShapeDtypeStruct`s with a sharding), its bytes verified.

        Raises:
          CorruptCheckpoint: the checkpoint cannot be read or its bytes changed since the save.
        """
        return self.restore_progress(step, like).state

    def restore_latest(self, like, at_most: int | None = None) -> Restored | None:
        """The newest checkpoint (at or before step `at_most`, if given) that restores intact, or None if
        there is no checkpoint.

        Newer checkpoints that fail are reported and (unless read-only) moved to
        `<directory>.corrupt/<step>-<time>`, so that later saves of their steps can proceed.

        Raises:
          CorruptCheckpoint: no checkpoint restores; the message lists each one tried and why it failed, and
            what the user can do. Then nothing is moved: every checkpoint failing at once points to a
            mismatch of code or config rather than to damaged files.
        """
        failed = []
        for step in reversed(self.all_steps()):
            if at_most is not None and step > at_most:
                continue
            try:
                restored = self.restore_progress(step, like)
            except CorruptCheckpoint as e:
                failed.append((step, str(e)))
                continue
            for bad, reason in failed:
                self.set_aside(bad, reason)
            return restored
        if failed:
            tried = "; ".join(f"{step} {reason}" for step, reason in failed)
            raise CorruptCheckpoint(
                f"no checkpoint in {self.directory} restores. Tried: {tried}. Nothing was moved or deleted. "
                "When every checkpoint fails at once, the code or its dependencies may differ from those that "
                "wrote them: rerun with that jaxens version to resume. If the files are damaged, move the "
                f"directory aside (mv {self.directory} {self.directory}.damaged) and rerun the same command: the "
                "run starts that phase again from its beginning"
            )
        return None

    def set_aside(self, step: int, reason: str) -> None:
        """Reports checkpoint `step` as bad and moves it out of the way (a read-only one stays, ignored
        by this Checkpointer from now on)."""
        where = "skipped"
        if not self._read_only:
            target = os.path.join(f"{self.directory}.corrupt", f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.move(os.path.join(self.directory, str(step)), target)
            self._manager.reload()
            where = f"moved to {target}"
        else:
            self._skipped.add(step)
        message = f"checkpoint {step} in {self.directory} {reason}; {where}, falling back to an earlier one"
        logging.warning(message)

    def close(self) -> None:
        self._manager.close()
