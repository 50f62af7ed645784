"""Minibatch order: each member's batch at step s is a pure function of (its order key, s).

Epoch e of a member is the permutation `jax.random.permutation(fold_in(order_key, e), N)`; step s takes
the slice [(s mod S)·B, (s mod S)·B + B) of the permutation of epoch s // S, where S = N // B steps per
epoch (the last incomplete batch is dropped). Permutations are computed once per epoch on device
(sorting N keys is far too slow to repeat every step); batches are index gathers into them.

A child spawned mid-epoch (at step t with r = t mod S > 0) keeps sampling without replacement within
its spawn epoch e = t // S: positions [0, r·B) of its epoch order are the parent's (the examples the
parent drew before the spawn), and positions [r·B, N) hold the parent's not yet drawn examples in the
child's own order, a uniformly random ordering drawn from fold_in(child's order key, e). So parent and
child together see every example once in that epoch, and siblings see the remainder in different
orders (Zamparo et al. §1: "from t+1 onwards the mini-batches differ"). Later epochs are the child's own.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxens.members import map_members


def steps_per_epoch(num_train: int, batch_size: int) -> int:
    return num_train // batch_size


@functools.partial(jax.jit, static_argnums=2)
def epoch_orders(order_keys: jax.Array, epochs: jax.Array, num_train: int) -> jax.Array:
    """Per-member permutations of the training indices.

    Args:
      order_keys: [K, 2] the members' order streams.
      epochs: [K] int, the epoch each member is in.
      num_train: N.

    Returns:
      [K, N] int32, row m a permutation of 0..N-1.
    """
    permutation = lambda key, e: jax.random.permutation(jax.random.fold_in(key, e), num_train)  # noqa: E731
    return map_members(permutation, "vmap", (0, 0))(order_keys, epochs).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=2)
def spawn_epoch_orders(
    order_keys: jax.Array, epochs: jax.Array, num_train: int, parent_keys: jax.Array, seen: jax.Array
) -> jax.Array:
    """`epoch_orders`, where member m's first `seen[m]` positions are its parent's order of that epoch and
    the rest the parent's remaining examples in m's own random order (see the module docstring).

    Args:
      order_keys: [K, 2] the members' order streams.
      epochs: [K] int, the epoch each member is in.
      num_train: N.
      parent_keys: [K, 2] the order stream of each member's parent.
      seen: [K] int, the examples the parent drew in that epoch before the spawn, r·B (0: the member's own
        permutation, as `epoch_orders`).

    Returns:
      [K, N] int32, row m a permutation of 0..N-1 starting with the parent's first seen[m] examples.
    """

    def order(key, parent_key, epoch, seen):
        own = jax.random.permutation(jax.random.fold_in(key, epoch), num_train)  # [N]
        parents = jax.random.permutation(jax.random.fold_in(parent_key, epoch), num_train)  # [N]
        # The positions >= seen in `own`'s order: a uniformly random ordering of the parent's remainder.
        rest = own[jnp.argsort(own < seen, stable=True)]  # [N]: positions >= seen first, in own's order.
        position = jnp.arange(num_train)
        remainder = parents[rest[jnp.maximum(position - seen, 0)]]
        mixed = jnp.where(position < seen, parents, remainder)
        return jnp.where(seen > 0, mixed, own)

    mapped = map_members(order, "vmap", (0, 0, 0, 0))
    return mapped(order_keys, parent_keys, epochs, seen).astype(jnp.int32)


def batch_indices(order: jax.Array, step: jax.Array, batch_size: int, num_steps_per_epoch: int) -> jax.Array:
    """One member's batch: [N] permutation of its current epoch, its step → [B] example indices."""
    start = (step % num_steps_per_epoch) * batch_size
    return jax.lax.dynamic_slice(order, (start,), (batch_size,))
