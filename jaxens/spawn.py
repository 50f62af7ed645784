"""Spawning (Zamparo et al. §1): k children that copy a parent's parameters AND optimizer state.

Everything about a spawn lives here: the key the children draw their streams from (`spawn_key`), their
streams (`child_streams`), the state transformation itself (`spawn`), the children of every spawn time of a
sweep stacked into one state (`spawn_children`), and the re-initialization mask built from the model
(`reinit_for`). See docs/definitions.md#spawning.

`spawn` is a pure state transformation. A child at spawn time equals its parent bitwise in parameters,
BatchNorm statistics, optimizer state (momentum, schedule position) and step counter; only its PRNG
streams are new, drawn from the spawn key, plus what `reset_optimizer` and `reinit` change:

- `reset_optimizer` (the coupled-to-t-reset condition, "extended training"): the optimizer state is a
  fresh `tx.init`, so momentum is zero and the learning-rate schedule restarts at its first value;
- `reinit` (§3; docs/definitions.md#re-initialization): the layers (or tensors) chosen get fresh
  initializer draws, independently per child, and their optimizer slots (momentum, Adam moments) restart
  at zero, as for a freshly initialized tensor; the BatchNorm running statistics of chosen layers restart
  at their initial values (mean 0, var 1), so that statistics never describe a layer that was re-drawn.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxens import members as members_lib
from jaxens import optim
from jaxens import reinit as reinit_lib
from jaxens import rng as rng_lib
from jaxens.ensemble import EnsembleState
from jaxens.members import map_members
from jaxens.setup_jit import setup_jit

PyTree = Any
# fold_in data of the spawn domain: the largest uint32, a member index no run reaches.
_SPAWN_DOMAIN = 2**32 - 1


def spawn_key(seed: int, t: int) -> jax.Array:
    """The key the children of spawn step t draw their streams from: fold_in(fold_in(PRNGKey(seed), 2³²−1), t).

    It depends on (seed, t) only, so a member of a spawn sweep equals the member of a single-spawn run with the
    same seed and t (docs/definitions.md#spawning). 2³² − 1 is a member index no run reaches, so spawn keys are
    derived apart from the members' keys.

    Args:
      seed: the run's seed.
      t: the spawn step.

    Returns:
      A raw PRNG key (uint32 [2]).
    """
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), _SPAWN_DOMAIN), t)


def child_streams(key: jax.Array, k: int, shared: tuple[str, ...] = ()) -> rng_lib.Streams:
    """Fresh streams for k children: child c, stream s → fold_in(fold_in(key, c), STREAM_IDS[s]).

    Streams named in `shared` are child 0's for every child (see `jaxens.rng.streams_from`).

    Args:
      key: the spawn key (`spawn_key`).
      k: number of children.
      shared: names of the streams every child takes from child 0 (e.g. ('order',)).

    Returns:
      `jaxens.rng.Streams` whose every stream holds k keys, [k, 2].
    """
    return rng_lib.streams_from(key, k, shared)


@dataclasses.dataclass(frozen=True)
class Reinit:
    """What to re-initialize at spawn (Zamparo et al. §3).

    Attributes:
      mask: pytree of bools over one member's params (`jaxens.reinit.mask_of`, `jaxens.reinit.mask`).
      model: the model whose initializer draws the fresh tensors (`model.init`).
      input_shape: one example's shape (to trace `model.init`).
      stats_modules: module paths whose BatchNorm running statistics restart (the chosen layers'; none
        under the tensor unit).
      chosen: the names of the chosen layers (or tensors), nearest to the side first, for logs and tests.
      covered: the share of the parameter count the mask re-draws (at least the fraction asked for).
      side, unit: where the run was taken from ('low', 'high') and what it is made of ('layer', 'tensor').
    """

    mask: PyTree
    model: Any
    input_shape: tuple[int, ...]
    stats_modules: tuple[tuple[str, ...], ...] = ()
    chosen: tuple[str, ...] = ()
    covered: float = 0.0
    side: str = ""
    unit: str = ""

    def describe(self) -> str:
        """One line for the run's log: how much was re-drawn, and which layers.

        Returns:
          E.g. 're-initializing 2 layers from the low side, 12.50% of the parameters: dense0, dense1'.
        """
        units = f"{len(self.chosen)} {self.unit}{'' if len(self.chosen) == 1 else 's'}"
        names = ", ".join(self.chosen)
        return f"re-initializing {units} from the {self.side} side, {self.covered:.2%} of the parameters: {names}"


def reinit_for(
    model, input_shape: Sequence[int], params: PyTree, fraction: float, side: str, unit: str = "layer"
) -> Reinit | None:
    """The re-initialization of `fraction` of the parameter count from `side` (Zamparo et al. §3).

    Whole units of `unit` are taken from `side` in the model's forward order until they cover at least
    `fraction` of the parameters (`jaxens.reinit.select`; docs/definitions.md#re-initialization).

    Args:
      model: the model of one member (a `jaxens.models` module).
      input_shape: one example's shape, without the batch axis.
      params: one member's parameters (only shapes are read).
      fraction: in [0, 1], the share of the parameter count to re-draw.
      side: 'low' (from the input side) or 'high' (from the output side).
      unit: 'layer' (`jaxens.reinit.layers`) or 'tensor' (each parameter tensor on its own).

    Returns:
      A `Reinit` with the mask, the chosen units' names, the covered share and the modules whose BatchNorm
      statistics restart; None for fraction 0.
    """
    if fraction <= 0:
        return None
    shape = tuple(input_shape)
    chosen = reinit_lib.select(params, reinit_lib.units(model, shape, unit), fraction, side)
    mask = reinit_lib.mask_of(params, chosen)
    return Reinit(
        mask=mask,
        model=model,
        input_shape=shape,
        stats_modules=tuple(m for u in chosen for m in u.modules),
        chosen=tuple(u.name for u in chosen),
        covered=reinit_lib.covered_fraction(params, mask),
        side=side,
        unit=unit,
    )


@functools.partial(setup_jit, static_argnames=("model", "input_shape"))  # As `ensemble.init_ensemble`'s.
def _fresh_variables(init_keys: jax.Array, model, input_shape: tuple[int, ...]):
    """One draw of the model's (params, batch_stats) per init key [k, 2] (compiled once per model and shape)."""

    def draw(key):
        variables = model.init({"params": key}, jnp.zeros((1, *input_shape)), train=False)
        return variables["params"], variables.get("batch_stats", {})

    return map_members(draw, "vmap", (0,))(init_keys)


@functools.partial(jax.jit, static_argnames="tx")
def _fresh_optimizer(params, tx: optax.GradientTransformation):
    """`tx.init` of every member's params (leaves [k, ...]), compiled once per optimizer."""
    return map_members(tx.init, "vmap", (0,))(params)


def spawn(
    parent: EnsembleState,
    k: int,
    key: jax.Array,
    *,
    reset_optimizer: bool = False,
    tx: optax.GradientTransformation | None = None,
    reinit: Reinit | None = None,
    streams: rng_lib.Streams | None = None,
) -> EnsembleState:
    """k children of a one-member parent, stacked on the member axis (Zamparo et al. §1).

    Each child equals the parent bit for bit except for its PRNG streams and what `reset_optimizer` and
    `reinit` change (docs/definitions.md#spawning).

    Args:
      parent: an ensemble state with K = 1 (every leaf [1, ...]).
      k: number of children.
      key: spawn key; the children's streams are `child_streams(key, k)`. Child c re-initializes from
        its own init stream, so two children get different fresh draws.
      reset_optimizer: restart the optimizer state and schedule (needs `tx`).
      tx: the optimizer; needed by `reset_optimizer` and `reinit`.
      reinit: tensors to re-initialize, per child; their optimizer slots restart at zero, and the running
        statistics of its `stats_modules` at their initial values.
      streams: the children's streams ([k, 2] each) instead of fresh ones (e.g. the parent's own, to
        continue its data order exactly).

    Returns:
      The children's state, every leaf [k, ...].
    """
    if parent.k != 1:
        raise ValueError(f"parent has K={parent.k} members; spawn takes a one-member state")
    if (reset_optimizer or reinit is not None) and tx is None:
        raise ValueError("reset_optimizer and reinit need the optimizer: pass tx")
    # New buffers (never aliases of the parent's), so training the children may donate them.
    copies = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), parent.replace(rngs=None))  # type: ignore[attr-defined]
    streams = child_streams(key, k) if streams is None else jax.tree.map(jnp.copy, streams)
    params, batch_stats, opt_state = copies.params, copies.batch_stats, copies.opt_state
    if reinit is not None:
        # One draw per child.
        fresh, fresh_stats = _fresh_variables(streams.init, model=reinit.model, input_shape=reinit.input_shape)
        params = reinit_lib.reinitialize(params, fresh, reinit.mask)
        if reinit.stats_modules:  # A re-drawn layer's old statistics describe activations it no longer makes.
            restart = reinit_lib.stats_mask(batch_stats, reinit.stats_modules)
            batch_stats = reinit_lib.reinitialize(batch_stats, fresh_stats, restart)
        # Param-shaped optimizer slots of re-initialized tensors start over (zeros, as tx.init makes them).
        opt_state = optax.tree_map_params(
            tx, lambda slot, m: jnp.zeros_like(slot) if m else slot, opt_state, reinit.mask
        )
    if reset_optimizer:
        assert tx is not None  # checked above
        # The schedule and moments restart; hyperparameters a grid holds per member stay the parent's.
        opt_state = optim.set_hyperparameters(_fresh_optimizer(params, tx=tx), optim.hyperparameters(opt_state))
    return copies.replace(params=params, batch_stats=batch_stats, opt_state=opt_state, rngs=streams)


def spawn_children(
    parents: dict[int, EnsembleState],
    k: int,
    seed: int,
    shared_streams: tuple[str, ...] = (),
    reset_optimizer: bool = False,
    tx: optax.GradientTransformation | None = None,
    reinit: Reinit | None = None,
) -> EnsembleState:
    """The k children of every spawn step t, stacked in increasing t (K = |t|·k).

    A spawn sweep of Zamparo et al. §1: each group of k children is `spawn` of its parent with the spawn key
    of (seed, t) (docs/definitions.md#coupling-conditions, #spawning).

    Args:
      parents: {t: the one-member parent state at step t}.
      k: children per spawn time.
      seed: the run's seed; the children of t draw `child_streams(spawn_key(seed, t), k, shared_streams)`.
      shared_streams: names of the streams every child of a spawn time takes from its child 0.
      reset_optimizer: coupled_to_t_reset: the children's optimizer state and schedule restart.
      tx: the optimizer (restarted under `reset_optimizer`; re-initialized tensors' slots restart).
      reinit: `reinit_for(...)`, or None.

    Returns:
      The children's state, every leaf [|t|·k, ...]; group g holds members g·k … g·k + k − 1.
    """
    groups = []
    for t in sorted(parents):
        key = spawn_key(seed, t)
        streams = child_streams(key, k, shared_streams)
        groups.append(spawn(parents[t], k, key, reset_optimizer=reset_optimizer, tx=tx, reinit=reinit, streams=streams))
    return members_lib.concatenate(groups)
