"""A finished (or interrupted) run's members, restored for analyses after training."""

from __future__ import annotations

import json
import os
from typing import NamedTuple

import flax.linen as nn
import jax
import ml_collections

from jaxens import checkpoint as checkpoint_lib
from jaxens import coupling as coupling_lib
from jaxens import data as data_lib
from jaxens import ensemble as ensemble_lib
from jaxens import sharding as sharding_lib
from jaxens.config import ConfigError
from jaxens.trainer import spec as spec_lib
from jaxens.trainer.context import state_template


class Restored(NamedTuple):
    """A run's members as its latest checkpoint holds them (see `restore`).

    Attributes:
      config: the run's config (from its config.json).
      spec: that config resolved for this machine's devices (an automatic mesh).
      plan: `spec.plan`: the groups of members are consecutive blocks of `plan.k`.
      dataset: the run's data, on this machine's devices.
      model: one member's module.
      state: the members (every leaf [K, ...]), sharded over the automatic mesh.
      step: the checkpoint's tick of the members' phase.
      best: with `restore(best=True)`, each group's best evaluation {group index: {step, tick, val_error}}.
    """

    config: ml_collections.ConfigDict
    spec: spec_lib.RunSpec
    plan: coupling_lib.Plan
    dataset: data_lib.Dataset
    model: nn.Module
    state: ensemble_lib.EnsembleState
    step: int
    best: dict | None = None

    @property
    def strategy(self) -> str:
        """The member strategy for the restored state ('auto' resolved on this backend and its mesh)."""
        return self.spec.strategy


def restore(workdir: str, best: bool = False, seed: int | None = None) -> Restored:
    """The members of the run in `workdir` at its latest intact checkpoint, with its config, data and model.

    Args:
      best: each group's members at its best validation evaluation instead (Webb et al.'s early-stopped
        model; DIR/best/, kept with config.eval.keep_best: `jaxens.trainer.early_stopping`).
      seed: of a grid over seeds (config.grid.seed), that seed's groups alone, as the run of that seed would
        restore: its config (config.seed = seed, the grid's seed emptied), plan, members, best evaluations
        and data (its own validation split under config.data.val_from_seed: `Restored.dataset` has no views).

    For analyses after training (e.g. `experiments/webb_removal.py`): predict with
    `ensemble.Predictor(r.model, ...)(r.state, x, r.dataset)`. The run restores onto this machine's devices
    (the automatic mesh), whatever mesh trained it. Nothing in `workdir` is written.

    Raises:
      ConfigError: `workdir` holds no run or no intact members' checkpoint, or a checkpoint of another run
        (`ForeignCheckpoint`).
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise ConfigError(f"{workdir}: no run there (no config.json)")
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    spec = spec_lib.resolve(config, automatic_mesh=True)
    mesh = sharding_lib.make_mesh(spec.mesh_shape)
    dataset = data_lib.load(spec.source)
    spec_lib.check_loaded(spec, dataset)
    dataset = sharding_lib.put_replicated(dataset, mesh)
    directory = os.path.join(workdir, "best" if best else "checkpoints")
    if best and not config.eval.keep_best:
        raise ConfigError(f"{workdir}: the run kept no best members (it ran without config.eval.keep_best=True)")
    checkpointer = checkpoint_lib.Checkpointer(directory, read_only=True, owner=spec.run_id)
    restored = checkpointer.restore_latest(state_template(spec, spec.plan.num_members, mesh))
    checkpointer.close()
    if restored is None:
        raise ConfigError(f"{workdir}: no intact checkpoint of the {'best ' if best else ''}members yet")
    kept = restored.progress.get("best") if best else None
    whole = Restored(config, spec, spec.plan, dataset, spec.model, restored.state, restored.step, kept)
    return whole if seed is None else _of_seed(whole, seed, workdir)


def _of_seed(whole: Restored, seed: int, workdir: str) -> Restored:
    """The groups of one seed of a grid run, as the run of that seed alone (`restore(seed=...)`)."""
    seeds = tuple(whole.config.grid.seed)
    if seed not in seeds:
        raise ConfigError(f"{workdir}: seed={seed} is not one of the run's config.grid.seed={seeds}")
    config = ml_collections.ConfigDict(whole.config.to_dict())
    config.grid.seed, config.seed = (), seed
    spec = spec_lib.resolve(config, automatic_mesh=True)
    groups, block = spec.plan.num_groups, seeds.index(seed)  # A grid's seeds are its outermost field.
    assert groups * len(seeds) == whole.plan.num_groups
    members = slice(block * spec.plan.num_members, (block + 1) * spec.plan.num_members)
    state = jax.tree.map(lambda leaf: leaf[members], whole.state)
    kept = None
    if whole.best is not None:
        mine = range(block * groups, (block + 1) * groups)
        kept = {str(int(g) - block * groups): v for g, v in whole.best.items() if int(g) in mine}
    dataset = whole.dataset.view(block) if whole.dataset.views is not None else whole.dataset
    return Restored(config, spec, spec.plan, dataset, spec.model, state, whole.step, kept)
