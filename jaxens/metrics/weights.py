"""Weight-space similarity of parameter pytrees (definition: docs/definitions.md#weight-cosine-similarity).

Fort et al., "Deep Ensembles: A Loss Landscape Perspective", §4.1: cos(θ₁, θ₂) = θ₁ᵀθ₂ / (‖θ₁‖ ‖θ₂‖), with θ
every parameter of the network flattened into one vector. Here θ is the concatenation of all leaves of a
pytree (in `jax.tree_util` leaf order; the order does not change the value). Sums run in at least float32
(bfloat16/float16 leaves are upcast). Tree structures and leaf shapes are checked at trace time.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def _leaves(tree, name: str) -> list[tuple[str, jax.Array]]:
    """(path string, leaf as an array of float dtype ≥ float32) for every leaf; a clear error if none."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    if not flat:
        raise ValueError(f"{name}: the pytree has no leaves")
    out = []
    for path, leaf in flat:
        leaf = jnp.asarray(leaf)
        out.append((jax.tree_util.keystr(path), leaf.astype(jnp.promote_types(leaf.dtype, jnp.float32))))
    return out


def _check_same_tree(tree_a, tree_b, name_a: str, name_b: str) -> None:
    struct_a = jax.tree_util.tree_structure(tree_a)
    struct_b = jax.tree_util.tree_structure(tree_b)
    if struct_a != struct_b:  # type: ignore[operator]
        raise ValueError(f"{name_a} and {name_b} have different pytree structures: {struct_a} vs {struct_b}")


def cosine_similarity(tree_a, tree_b) -> jax.Array:
    """Cosine similarity of two parameter pytrees, θa·θb / (‖θa‖ ‖θb‖) over all leaves flattened.

    Fort et al., "Deep Ensembles: A Loss Landscape Perspective", §4.1 (Fig. 2a, 3). The value is clipped
    to [−1, 1] against rounding; an all-zero tree gives nan (the angle is undefined). For a leading member
    axis use `jax.vmap`, or `pairwise_cosine_similarity` for all pairs.

    Args:
      tree_a: a pytree of arrays (e.g. one member's params).
      tree_b: a pytree with the same structure and the same leaf shapes.

    Returns:
      [] cosine similarity in [−1, 1].

    Raises:
      ValueError: at trace time, if the structures or any pair of leaf shapes differ, or the tree is empty.
    """
    _check_same_tree(tree_a, tree_b, "tree_a", "tree_b")
    leaves_a = _leaves(tree_a, "tree_a")
    leaves_b = _leaves(tree_b, "tree_b")
    dot: float | jax.Array = 0.0
    norm_a2: float | jax.Array = 0.0
    norm_b2: float | jax.Array = 0.0
    for (path, a), (_, b) in zip(leaves_a, leaves_b):
        if a.shape != b.shape:
            raise ValueError(
                f"tree_a and tree_b: leaf {path or '<root>'} has shape {tuple(a.shape)} in tree_a and "
                f"{tuple(b.shape)} in tree_b"
            )
        dot = dot + jnp.sum(a * b)
        norm_a2 = norm_a2 + jnp.sum(a * a)
        norm_b2 = norm_b2 + jnp.sum(b * b)
    cos = dot / (jnp.sqrt(norm_a2) * jnp.sqrt(norm_b2))
    return jnp.clip(cos, -1.0, 1.0)


def pairwise_cosine_similarity(stacked_tree) -> jax.Array:
    """Cosine similarity between every pair of members of a stacked pytree.

    S_ij = θ_i·θ_j / (‖θ_i‖ ‖θ_j‖), θ_m = member m's leaves (leaf[m] for every leaf) flattened. Computed from
    the Gram matrix G = Σ_leaves X Xᵀ, X = leaf reshaped to [K, -1], at full float32 matmul precision. Fort et
    al. §4.1 (Fig. 2a, 3); docs/definitions.md#weight-cosine-similarity.

    Args:
      stacked_tree: a pytree whose leaves all have the same leading member axis K, leaves [K, ...].

    Returns:
      [K, K] symmetric matrix, entries in [−1, 1] (clipped against rounding), diagonal 1 up to rounding
      (nan for a member whose parameters are all zero).

    Raises:
      ValueError: at trace time, if the tree is empty, a leaf has no leading axis, or K differs between leaves.
    """
    leaves = _leaves(stacked_tree, "stacked_tree")
    k = None
    gram: float | jax.Array = 0.0
    for path, x in leaves:
        if x.ndim < 1:
            raise ValueError(
                f"stacked_tree: leaf {path or '<root>'} is a scalar; expected a leading member axis [K, ...]"
            )
        if k is not None and x.shape[0] != k:
            raise ValueError(
                f"stacked_tree: leaf {path or '<root>'} of shape {tuple(x.shape)} has leading axis "
                f"{x.shape[0]}, the other leaves have K = {k}"
            )
        k = x.shape[0]
        flat = x.reshape(k, math.prod(x.shape[1:]))  # [K, P_leaf]
        gram = gram + jnp.matmul(flat, flat.T, precision=jax.lax.Precision.HIGHEST)  # [K, K]
    assert not isinstance(gram, float)  # `_leaves` raises on an empty tree, so the loop ran
    gram = 0.5 * (gram + gram.T)  # exactly symmetric
    norm = jnp.sqrt(jnp.diagonal(gram))  # [K]
    return jnp.clip(gram / (norm[:, None] * norm[None, :]), -1.0, 1.0)
