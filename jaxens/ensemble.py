"""The stacked ensemble: K members in one pytree, initialized together and predicting together.

Every leaf of an `EnsembleState` carries the leading member axis K (docs/definitions.md#invariants). Members
are initialized from their own `init` streams (`jaxens.rng`) and predict with `member_logits`, ONE
member's eval-mode forward pass, mapped over K by `jaxens.members.map_members`. Training a step is
`jaxens.train_step`; running many steps of all members in one call is `jaxens.train_chunk`.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxens import data as data_lib
from jaxens import progress
from jaxens import rng as rng_lib
from jaxens import sharding as sharding_lib
from jaxens.members import map_members
from jaxens.metrics import forgetting as forgetting_lib
from jaxens.setup_jit import setup_jit

PyTree = Any


@struct.dataclass
class EnsembleState:
    """Everything that evolves during training; every leaf has the leading member axis K.

    Attributes:
      step: [K] int32, optimizer steps each member has taken.
      params: leaves [K, ...].
      batch_stats: leaves [K, ...], per-member BatchNorm statistics ({} for models without BatchNorm).
      opt_state: leaves [K, ...] (momentum, schedule counts, ...).
      rngs: the members' PRNG streams, each [K, 2].
      diverged: [K] int32, the step whose update turned the member's loss or state non-finite (the member
        is frozen at its state before that step), or -1.
      forgetting: train-side forgetting trackers (`jaxens.metrics.forgetting.ForgettingState`, leaves
        [K, N] over the N training examples) updated inside every step, or None when not tracked
        (config.eval.forgetting). Part of the state, so checkpoints, spawns and resumes carry it.
    """

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: PyTree
    rngs: rng_lib.Streams
    diverged: jax.Array
    forgetting: PyTree = None

    @property
    def k(self) -> int:
        return int(self.step.shape[0])


def placement_mesh(state: EnsembleState) -> jax.sharding.Mesh:
    """The mesh a call runs the members on: the one their state is sharded over, or a one-device mesh on
    the device it lives on (a fresh or host-made state)."""
    mesh = sharding_lib.mesh_of(state.step)
    if mesh is not None:
        return mesh
    devices = getattr(state.step, "devices", None)
    return sharding_lib.single_device_mesh(next(iter(devices())) if devices else None)


def init_member(model: nn.Module, tx: optax.GradientTransformation, init_key: jax.Array, input_shape):
    """One member's (params, batch_stats, opt_state) from its init key."""
    variables = model.init({"params": init_key}, jnp.zeros((1, *input_shape), jnp.float32), train=False)
    params = variables["params"]
    return params, variables.get("batch_stats", {}), tx.init(params)


@functools.partial(setup_jit, static_argnames=("model", "tx", "input_shape"))
def _init_members(init_keys: jax.Array, model: nn.Module, tx: optax.GradientTransformation, input_shape: tuple):
    """`init_member` of K members from their init keys [K, 2] (compiled once per model, optimizer, shape)."""
    return map_members(lambda key: init_member(model, tx, key, input_shape), "vmap", (0,))(init_keys)


def init_ensemble(
    model: nn.Module,
    tx: optax.GradientTransformation,
    streams: rng_lib.Streams,
    input_shape,
    forgetting_examples: int | None = None,
) -> EnsembleState:
    """K members, member m initialized from `streams.init[m]`, all at step 0; with `forgetting_examples` = N,
    each with an empty train-side forgetting tracker over N training examples."""
    k = streams.init.shape[0]
    params, batch_stats, opt_state = _init_members(streams.init, model=model, tx=tx, input_shape=tuple(input_shape))
    trackers = None
    if forgetting_examples is not None:
        empty = lambda _: forgetting_lib.init(forgetting_examples)  # noqa: E731
        trackers = map_members(empty, "vmap", (0,))(jnp.arange(k))  # leaves [K, N]
    return EnsembleState(
        step=jnp.zeros((k,), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=opt_state,
        rngs=streams,
        diverged=jnp.full((k,), -1, jnp.int32),
        forgetting=trackers,
    )


def member_logits(model: nn.Module, params, batch_stats, x: jax.Array) -> jax.Array:
    """One member's eval-mode logits [B, C] for normalized inputs x [B, ...]."""
    variables = {"params": params}
    if batch_stats:
        variables["batch_stats"] = batch_stats
    return model.apply(variables, x, train=False)  # type: ignore[return-value]  # no `mutable`: logits only


class Predictor:
    """Eval-mode logits of all K members on a whole split, in fixed-size batches (one compilation).

    `__call__(state, x [N, ...] raw inputs, dataset) -> [K, N, C]` logits, computed on the mesh the state
    lives on (members on 'member', each batch split over 'data') and left sharded on 'member'. With a dataset
    of V views (`jaxens.data.Dataset.views`), the K members form V consecutive blocks, each normalizing with
    its view's statistics; `per_view=True` then takes x [V, N, ...], block v predicting x[v] (its own
    validation split).
    """

    def __init__(self, model: nn.Module, batch_size: int, strategy: str):
        self.batch_size = batch_size

        def predict_batch(params, batch_stats, x_all, dataset, start, mesh, per_view):
            # The last batch repeats the final example to keep the shape; callers drop the extras.
            idx = jnp.minimum(start + jnp.arange(batch_size), x_all.shape[int(per_view)] - 1)
            if dataset.views is None:
                x = sharding_lib.constrain_batch(dataset.normalize(x_all[idx]), mesh)
                apply_all = map_members(lambda p, s, x: member_logits(model, p, s, x), strategy, (0, 0, None), mesh)
                return apply_all(params, batch_stats, x)  # [K, B, C]
            views = data_lib.member_views(jax.tree.leaves(params)[0].shape[0], dataset.num_views)  # [K]
            raw = x_all[:, idx] if per_view else x_all[idx]  # [V, B, ...] or [B, ...]

            def member(p, s, view, raw, dataset):  # Normalized per member: each view has its own statistics.
                x = dataset.normalize(raw[view] if per_view else raw, view)
                # On the mesh in context: inside shard_map the 'member' axis is manual.
                return member_logits(model, p, s, sharding_lib.constrain_batch(x))

            mapped = map_members(member, strategy, (0, 0, 0, None, None), mesh)
            return mapped(params, batch_stats, views, raw, dataset)  # [K, B, C]

        self._jitted = jax.jit(predict_batch, static_argnames=("mesh", "per_view"))
        self._replicas = sharding_lib.Replicas()

    def __call__(
        self, state: EnsembleState, x_all: jax.Array | np.ndarray, dataset, per_view: bool = False
    ) -> jax.Array:
        n = x_all.shape[int(per_view)]
        if dataset.views is not None and state.k % dataset.num_views:
            raise ValueError(
                f"{state.k} members cannot form the {dataset.num_views} blocks of this dataset's views; predict a "
                "whole run's members, or one view's members with `dataset.view(v)`"
            )
        mesh = placement_mesh(state)
        params, batch_stats = sharding_lib.put_members((state.params, state.batch_stats), mesh)
        x_all, dataset = self._replicas(x_all, mesh), self._replicas(dataset, mesh)
        starts = range(0, n, self.batch_size)
        # A bar for long evaluations on a terminal, one batch behind the dispatch (so it follows the device).
        bar = progress.bar(len(starts), desc="evaluate", unit="batch", leave=False) if len(starts) >= 50 else None
        parts = []
        with jax.set_mesh(mesh):  # The mesh each member's batch is split on (`constrain_batch`).
            for start in starts:
                start_index = sharding_lib.put_replicated(np.int32(start), mesh)
                parts.append(
                    self._jitted(params, batch_stats, x_all, dataset, start_index, mesh=mesh, per_view=per_view)
                )
                if bar is not None and not bar.disable:
                    if len(parts) > 1:
                        parts[-2].block_until_ready()
                    bar.update(1)
        if bar is not None:
            bar.close()
        return _concatenate_members(parts, n, mesh)  # [K, N, C]


@functools.partial(jax.jit, static_argnames=("n", "mesh"))
def _concatenate_members(parts, n: int, mesh):
    """Batches of logits [K, B, C] → [K, N, C] (the padding dropped), sharded on 'member'."""
    return jax.lax.with_sharding_constraint(jnp.concatenate(parts, axis=1)[:, :n], sharding_lib.members(mesh))
