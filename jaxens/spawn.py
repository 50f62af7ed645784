"""Spawning (Zamparo et al. §1): k children that copy a parent's parameters AND optimizer state.

`spawn` is a pure state transformation. A child at spawn time equals its parent bitwise in parameters,
BatchNorm statistics, optimizer state (momentum, schedule position) and step counter; only its PRNG
streams are new, drawn from the spawn key, plus what `reset_optimizer` and `reinit` change:

- `reset_optimizer` (the coupled-to-t-reset condition, "extended training"): the optimizer state is a
  fresh `tx.init`, so momentum is zero and the learning-rate schedule restarts at its first value;
- `reinit` (§3): the tensors a mask selects get fresh initializer draws, independently per child, and
  their optimizer slots (momentum, Adam moments) restart at zero, as for a freshly initialized tensor.
  BatchNorm running statistics are kept (they are not parameters; training re-estimates them).

Spawn times are written as step strings: '500it', '2ep', '2ep10it' (see `parse_steps`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxens import reinit as reinit_lib
from jaxens import rng as rng_lib
from jaxens.ensemble import EnsembleState

PyTree = Any
_STEPS = re.compile(r"^(?:(\d+)ep)?(?:(\d+)it)?$")


def parse_steps(text: str | int, steps_per_epoch: int) -> int:
    """'500it' → 500, '2ep' → 2·S, '2ep10it' → 2·S + 10, for S steps per epoch; an integer n → n.

    Raises:
      ValueError: naming the value and the accepted forms.
    """
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text
    match = _STEPS.match(text.strip()) if isinstance(text, str) else None
    if not match or not any(match.groups()):
        raise ValueError(f"{text!r}: expected a step string like '500it', '2ep' or '2ep10it', or a step count")
    epochs, iterations = (int(g) if g else 0 for g in match.groups())
    return epochs * steps_per_epoch + iterations


@dataclasses.dataclass(frozen=True)
class Reinit:
    """What to re-initialize at spawn.

    Attributes:
      mask: pytree of bools over one member's params (`jaxens.reinit.mask`).
      init_params: key → a fresh draw of one member's params (e.g. `model.init(...)['params']`).
    """

    mask: PyTree
    init_params: Callable[[jax.Array], PyTree]


def child_streams(key: jax.Array, k: int, shared: tuple[str, ...] = ()) -> rng_lib.Streams:
    """Fresh streams for k children: child c, stream s → fold_in(fold_in(key, c), STREAM_IDS[s]).

    Streams named in `shared` are child 0's for every child (see `jaxens.rng.streams_from`).
    """
    return rng_lib.streams_from(key, k, shared)


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
    """k children of a one-member parent, stacked on the member axis.

    Args:
      parent: an ensemble state with K = 1 (every leaf [1, ...]).
      k: number of children.
      key: spawn key; the children's streams are `child_streams(key, k)`. Child c re-initializes from
        its own init stream, so two children get different fresh draws.
      reset_optimizer: restart the optimizer state and schedule (needs `tx`).
      tx: the optimizer; needed by `reset_optimizer` and `reinit`.
      reinit: tensors to re-initialize, per child; their optimizer slots restart at zero.
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
    params, opt_state = copies.params, copies.opt_state
    if reinit is not None:
        fresh = jax.jit(jax.vmap(reinit.init_params))(streams.init)  # [k, ...] one draw per child
        params = reinit_lib.reinitialize(params, fresh, reinit.mask)
        # Param-shaped optimizer slots of re-initialized tensors start over (zeros, as tx.init makes them).
        opt_state = optax.tree_map_params(
            tx, lambda slot, m: jnp.zeros_like(slot) if m else slot, opt_state, reinit.mask
        )
    if reset_optimizer:
        assert tx is not None  # checked above
        opt_state = jax.jit(jax.vmap(tx.init))(params)
    return copies.replace(params=params, opt_state=opt_state, rngs=streams)
