"""Per-member PRNG streams (DESIGN invariant 3).

Every member owns one key per stream: `init` (parameter initialization), `order` (minibatch order),
`augment` (data augmentation) and `dropout`. The derivation is a contract that tests re-derive:

    member_key(m)   = fold_in(PRNGKey(seed), m)
    stream(m, name) = fold_in(member_key(m), STREAM_IDS[name])

Per-step randomness is `fold_in(stream, step)` and per-epoch randomness `fold_in(stream, epoch)`, so
everything a member draws at step s is a function of (its keys, s): a resumed run draws the same.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

STREAM_IDS = {"init": 0, "order": 1, "augment": 2, "dropout": 3}


@struct.dataclass
class Streams:
    """One raw uint32 PRNG key per member and stream; every field is [K, 2]."""

    init: jax.Array
    order: jax.Array
    augment: jax.Array
    dropout: jax.Array


def member_streams(seed: int, k: int) -> Streams:
    """Independent streams for members 0..k-1 (the no-coupling condition)."""
    root = jax.random.PRNGKey(seed)
    member_keys = jax.vmap(lambda m: jax.random.fold_in(root, m))(jnp.arange(k))  # [K, 2]
    return Streams(
        **{
            name: jax.vmap(lambda key, i=i: jax.random.fold_in(key, i))(member_keys)
            for name, i in STREAM_IDS.items()
        }
    )
