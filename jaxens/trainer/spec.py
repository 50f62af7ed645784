"""The run spec: a config validated and resolved ONCE into a frozen value, before any data is loaded.

Everything the trainer derives from the config is derived here, once: K and the groups of members (the
coupling `Plan`), the steps per epoch S and the cadences in steps, the model and the optimizer, the member
strategy and step loop for this backend, the mesh shape for this machine's devices, the augmentation, and
whether the members share one minibatch. Below `resolve` nothing reads the ConfigDict:

    spec = resolve(config)        # raises ConfigError (or MeshError) naming the field; computes nothing
    spec.plan.num_members, spec.steps_per_epoch, spec.model, spec.tx, spec.strategy, spec.mesh_shape, ...

The spec is computed from the dataset's registered sizes (`jaxens.data.dataset_info`); the trainer checks
that the loaded data has them (`check_loaded`).
"""

from __future__ import annotations

import dataclasses
import json

import flax.linen as nn
import ml_collections
import numpy as np
import optax

from jaxens import coupling as coupling_lib
from jaxens import data as data_lib
from jaxens import ensemble as ensemble_lib
from jaxens import members as members_lib
from jaxens import models, optim, train_step
from jaxens import rng as rng_lib
from jaxens import sharding as sharding_lib
from jaxens import steps as steps_lib
from jaxens import train_chunk as train_chunk_lib
from jaxens import workdir as workdir_lib
from jaxens.config import ConfigError
from jaxens.trainer import validation


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything a run computes from its config, resolved (see the module docstring).

    Attributes:
      config_json: the whole config as JSON (what config.json holds; TensorBoard shows it).
      seed: config.seed (a grid's groups have their own: `plan.groups`).
      source: where the data comes from (`jaxens.data.Source`).
      input_shape, num_classes: of the dataset.
      num_train: training examples after the validation hold-out (N).
      model_name, model: config.model.name and the built module (one member).
      tx: one member's optimizer (its schedule spans T steps).
      plan: who trains what, from when, until when (`jaxens.coupling.Plan`): K, groups, spawn steps, T.
      batch_size, steps_per_epoch, num_epochs: B, S = N // B, and the epochs of T.
      augment, crop_padding: the training augmentation ('auto' resolved for the dataset).
      shared_batch: the number of minibatches the members share (each gathered once; one per seed of a grid,
        each for a consecutive block of members), or 0 when every member draws its own.
      lr_scales: [K] each member's learning-rate multiplier, or () for none.
      reinit_unit, parent_dir: what the spawn re-initializes whole, and where parents come from (each group's
        seed, fraction and side are in `plan`).
      strategy, step_loop: how the members and the steps execute ('auto' resolved for this backend; 'vmap:<n>'
        with config.ensemble.members_per_call = n: `jaxens.members.members_per_call`).
      mesh_shape: (M, D) devices on the 'member' and 'data' axes of the members' mesh.
      shard_train: the training examples are divided over the devices.
      steps_per_call: the most steps between two looks of the host (and between a SIGTERM and its stop).
      method: how member predictions combine ('mean_prob' or 'mean_logit').
      eval_every, eval_batch_size: evaluation period in steps, and the evaluation batch size.
      keep_best: keep each group's members at its best validation evaluation (DIR/best/).
      forgetting: track train-side forgetting events per member inside the step (`fresh_state`).
      checkpoint_every, max_checkpoints: checkpoint period in steps, and how many to keep.
      on_divergence: 'freeze' or 'stop'.
      snapshot_every, keep_snapshots: trajectory snapshot period in steps (0: none), and how many to keep.
    """

    config_json: str
    seed: int
    source: data_lib.Source
    input_shape: tuple[int, ...]
    num_classes: int
    num_train: int
    model_name: str
    model: nn.Module
    tx: optax.GradientTransformation
    plan: coupling_lib.Plan
    batch_size: int
    steps_per_epoch: int
    num_epochs: int
    augment: str
    crop_padding: int
    shared_batch: int
    lr_scales: tuple[float, ...]
    reinit_unit: str
    parent_dir: str
    strategy: str
    step_loop: str
    mesh_shape: tuple[int, int]
    shard_train: bool
    steps_per_call: int
    method: str
    eval_every: int
    eval_batch_size: int
    keep_best: bool
    forgetting: bool
    checkpoint_every: int
    max_checkpoints: int
    on_divergence: str
    snapshot_every: int
    keep_snapshots: int

    def fresh_state(self, streams: rng_lib.Streams, hyper: dict | None = None) -> ensemble_lib.EnsembleState:
        """Fresh members from `streams` (one per row), with empty train-side forgetting trackers over the
        N training examples when `forgetting`, and each member's optimizer hyperparameters `hyper`
        ({name: [K]}, a grid's; `jaxens.optim.set_hyperparameters`)."""
        examples = self.num_train if self.forgetting else None
        state = ensemble_lib.init_ensemble(self.model, self.tx, streams, self.input_shape, examples)
        return state.replace(opt_state=optim.set_hyperparameters(state.opt_state, hyper))  # type: ignore[attr-defined]

    def groups_state(self, groups: tuple[coupling_lib.Group, ...] | None = None) -> ensemble_lib.EnsembleState:
        """Fresh members of `groups` (default: every group) as trained from initialization: k each, in order."""
        groups = self.plan.groups if groups is None else groups
        return self.fresh_state(self.plan.streams(groups), self.plan.member_hyper(groups))

    @property
    def config(self) -> dict:
        """The config as plain JSON values (a fresh copy)."""
        return json.loads(self.config_json)

    @property
    def run_id(self) -> str:
        """The fingerprint of what this run computes (its members' checkpoints record it)."""
        return workdir_lib.run_fingerprint(self.config)

    @property
    def parent_id(self) -> str:
        """The fingerprint of its parent (its parent checkpoints record it; runs sharing a parent share it)."""
        return workdir_lib.fingerprint(coupling_lib.parent_fields(self.config))

    def phase_mesh_shape(self, k: int) -> tuple[int, int]:
        """The mesh of a phase with k members (a spawning condition's one-member parent: fewer rows)."""
        return sharding_lib.phase_shape(self.mesh_shape, k, self.batch_size)

    def member_lr_scales(self) -> np.ndarray | None:
        """[K] float32 learning-rate multipliers, or None."""
        return np.asarray(self.lr_scales, np.float32) if self.lr_scales else None


def resolve(config: ml_collections.ConfigDict, automatic_mesh: bool = False) -> RunSpec:
    """Validates `config` and resolves it for this machine (see the module docstring).

    Args:
      automatic_mesh: ignore config.mesh.member / .data and take the automatic mesh for this machine's
        devices (`run.restore`: a run restores onto whatever devices are here).

    Raises:
      ConfigError: an invalid field, or config.mesh that does not fit the devices (`MeshError`).
    """
    validation.validate(config)
    info = data_lib.config_info(config)
    assert info is not None  # Validated.
    spe = validation.steps_per_epoch(config, info)
    plan = coupling_lib.make_plan(config, spe)
    num_train = info.num_train - config.data.val_size
    member, data = (0, 0) if automatic_mesh else (config.mesh.member, config.mesh.data)
    mesh_shape = sharding_lib.mesh_shape(plan.num_members, config.train.batch_size, member, data)
    if config.mesh.shard_train and not automatic_mesh:  # (Restoring does not split the data.)
        check_split_train(num_train, config.data.val_size, mesh_shape)
    convolutional = models.MODELS[config.model.name].convolutional
    augment = data_lib.resolve_augment(config.dataset, config.data.augment, config.data.image_size)
    scales = tuple(float(s) for s in config.optimizer.member_lr_scale) * plan.num_groups
    return RunSpec(
        config_json=config.to_json(),
        seed=config.seed,
        source=data_lib.Source.from_config(config),
        input_shape=info.input_shape,
        num_classes=info.num_classes,
        num_train=num_train,
        model_name=config.model.name,
        model=models.build(config.model, info.num_classes, info.input_shape),
        tx=optim.make_optimizer(
            config.optimizer,
            plan.total_steps,
            num_train=num_train,
            per_member=tuple(n for n, _ in plan.groups[0].hyper),
        ),
        plan=plan,
        batch_size=config.train.batch_size,
        steps_per_epoch=spe,
        num_epochs=config.train.num_epochs,
        augment=augment,
        crop_padding=config.data.crop_padding,
        shared_batch=shared_batches(plan, augment),
        lr_scales=tuple(float(np.float32(s)) for s in scales),
        reinit_unit=config.coupling.reinit_unit,
        parent_dir=config.coupling.parent_dir,
        strategy=members_lib.with_members_per_call(
            members_lib.resolve_strategy(config.ensemble.strategy, convolutional, num_devices=mesh_shape[0]),
            config.ensemble.members_per_call,
        ),
        step_loop=train_chunk_lib.resolve_step_loop(
            config.train.step_loop, models.MODELS[config.model.name].host_loop_on_cpu
        ),
        mesh_shape=mesh_shape,
        shard_train=config.mesh.shard_train,
        steps_per_call=config.train.steps_per_call,
        method=config.ensemble.method,
        eval_every=steps_lib.Steps(epochs=config.eval.every_epochs).at(spe).count,
        eval_batch_size=config.eval.batch_size,
        keep_best=config.eval.keep_best,
        forgetting=config.eval.forgetting,
        checkpoint_every=steps_lib.parse(config.train.checkpoint_every, spe),
        max_checkpoints=config.train.max_checkpoints,
        on_divergence=config.train.on_divergence,
        snapshot_every=steps_lib.parse(config.trajectory.every, spe) if config.trajectory.every else 0,
        keep_snapshots=config.trajectory.keep_last,
    )


def shared_batches(plan: coupling_lib.Plan, augment: str) -> int:
    """How many minibatches the members share at each step (`RunSpec.shared_batch`): one per seed when every
    group trains from initialization sharing its members' order (and augmentation), else 0."""
    if not all(train_step.shared_batch_of(g.shared_streams, augment, g.spawning) for g in plan.groups):
        return 0
    return len({g.seed for g in plan.groups})


def check_split_train(num_train: int, val_size: int, mesh_shape: tuple[int, int]) -> None:
    """config.mesh.shard_train needs the training examples to divide evenly over the mesh's devices."""
    devices = mesh_shape[0] * mesh_shape[1]
    if num_train % devices:
        raise ConfigError(
            f"config.mesh.shard_train=True: the {num_train} training examples do not divide over the mesh's "
            f"{devices} devices (member={mesh_shape[0]} × data={mesh_shape[1]}); hold out "
            f"config.data.val_size={val_size + num_train % devices} (or another mesh), or set "
            "config.mesh.shard_train=False"
        )


def check_loaded(spec: RunSpec, dataset: data_lib.Dataset) -> None:
    """The loaded data has the shape and sizes the spec was resolved for.

    Raises:
      DatasetError: naming the dataset and both counts.
    """
    if dataset.num_train != spec.num_train or tuple(dataset.input_shape) != tuple(spec.input_shape):
        raise data_lib.DatasetError(
            f"{spec.source.name}: the loaded training split has {dataset.num_train} examples of shape "
            f"{tuple(dataset.input_shape)} after the validation hold-out, where {spec.num_train} of shape "
            f"{tuple(spec.input_shape)} are expected; the dataset's files are incomplete or not {spec.source.name}'s"
        )


def make_train_chunk(spec: RunSpec, **overrides) -> train_chunk_lib.TrainChunk:
    """The members' `TrainChunk` as the trainer builds it (strategy, step loop, augmentation, λ groups,
    shared batch); `overrides` replace its arguments (benchmarks)."""
    kwargs = dict(
        batch_size=spec.batch_size,
        strategy=spec.strategy,
        step_loop=spec.step_loop,
        augment=spec.augment,
        padding=spec.crop_padding,
        lams=spec.plan.lams,
        shared_batch=spec.shared_batch,
    )
    return train_chunk_lib.TrainChunk(spec.model, spec.tx, **{**kwargs, **overrides})
