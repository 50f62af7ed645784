"""Per-member PRNG streams (docs/definitions.md#prng-streams).

Every member owns one key per stream: `init` (parameter initialization), `order` (minibatch order),
`augment` (data augmentation) and `dropout`. The derivation is a contract that tests re-derive:

    member_key(m)   = fold_in(PRNGKey(seed), m)
    stream(m, name) = fold_in(member_key(m), STREAM_IDS[name])

Per-step randomness is `fold_in(stream, step)` and per-epoch randomness `fold_in(stream, epoch)`, so
everything a member draws at step s is a function of (its keys, s): a resumed run draws the same.

A stream can be *shared*: every member then takes member 0's key for it. Sharing `order` alone is the
coupled-order condition of Zamparo et al. (same minibatches, independent initialization, augmentation
and dropout); sharing ('order', 'augment') also gives every member the same augmented images.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxens.members import map_members

STREAM_IDS = {"init": 0, "order": 1, "augment": 2, "dropout": 3}


@struct.dataclass
class Streams:
    """One raw uint32 PRNG key per member and stream; every field is [K, 2]."""

    init: jax.Array
    order: jax.Array
    augment: jax.Array
    dropout: jax.Array


def member_streams(seed: int, k: int, shared: tuple[str, ...] = ()) -> Streams:
    """Streams for members 0..k-1: independent, except those named in `shared` (member 0's for all).

    Args:
      seed: the run's seed.
      k: number of members K.
      shared: stream names (from STREAM_IDS) all members share. () is the no-coupling condition.
    """
    return streams_from(jax.random.PRNGKey(seed), k, shared)


def streams_from(root: jax.Array, k: int, shared: tuple[str, ...] = ()) -> Streams:
    """Streams of k members derived from a root key: stream(m, name) = fold_in(fold_in(root, m), id)."""
    unknown = set(shared) - set(STREAM_IDS)
    if unknown:
        raise ValueError(f"shared streams {sorted(unknown)}: allowed: {', '.join(STREAM_IDS)}")
    member_keys = map_members(lambda m: jax.random.fold_in(root, m), "vmap", (0,))(jnp.arange(k))  # [K, 2]
    streams = {}
    for name, i in STREAM_IDS.items():
        keys = map_members(lambda key, i=i: jax.random.fold_in(key, i), "vmap", (0,))(member_keys)  # [K, 2]
        streams[name] = jnp.broadcast_to(keys[0], keys.shape) if name in shared else keys
    return Streams(**streams)
