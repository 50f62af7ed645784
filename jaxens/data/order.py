"""Minibatch order: each member's batch at step s is a pure function of (its order key, s).

Epoch e of a member is the permutation `jax.random.permutation(fold_in(order_key, e), N)`; step s takes
the slice [(s mod S)·B, (s mod S)·B + B) of the permutation of epoch s // S, where S = N // B steps per
epoch (the last incomplete batch is dropped). Permutations are computed once per epoch on device
(sorting N keys is far too slow to repeat every step); batches are index gathers into them.
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


def batch_indices(order: jax.Array, step: jax.Array, batch_size: int, num_steps_per_epoch: int) -> jax.Array:
    """One member's batch: [N] permutation of its current epoch, its step → [B] example indices."""
    start = (step % num_steps_per_epoch) * batch_size
    return jax.lax.dynamic_slice(order, (start,), (batch_size,))
