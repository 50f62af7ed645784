"""Subspace sampling around one solution θ0, and weight averaging (Fort et al. 2020, §4.2 and §5).

Each sampler is a pure function of (PRNG key, statistics) returning ONE network's parameters (a pytree
like θ0); draw S samples with `jax.vmap` over S keys, and map over the member axis K outside. Statistics of
the last iterates are fitted from R snapshots of one member (leaves [R, ...], e.g.
`jaxens.trajectory.load(workdir, last=R).member(m)[0]`).

  random subspace      θ0 + t·v, v a random direction (`random_subspace`)
  dropout subspace     θ0 ⊙ mask / p_keep, mask ~ Bernoulli(p_keep) per parameter (`dropout_subspace`)
  diagonal Gaussian    θ_i ~ N(μ_i, σ_i²) from the iterates' mean and std (`diagonal_fit`, `diagonal_sample`)
  low-rank Gaussian    θ = μ + Σ_i z_i v_i along the top principal directions (`low_rank_fit`, `low_rank_sample`)
  weight averaging     μ, the mean of the iterates (`weight_average`)

New weights need new BatchNorm statistics before they are evaluated (docs/definitions.md#batchnorm-statistics):
evaluate samples with `jaxens.landscape.predict_points(..., train_x=...)`, which recomputes them per sample. §5
keeps only samples whose validation accuracy reaches 0.65 (`accepted`).

Memory: fitting either Gaussian needs the last R iterates of a member only, R·|θ| floats (R ≥ rank + 1 for
the low-rank one), never the whole trajectory; `config.trajectory.keep_last = R` bounds what a run keeps.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

PyTree = Any
METHODS = ("random", "dropout", "diagonal", "low_rank")


def _iterate_count(iterates: PyTree, name: str = "iterates") -> int:
    counts = {x.shape[0] if x.ndim else None for x in jax.tree.leaves(iterates)}
    if not counts or None in counts or len(counts) != 1:
        raise ValueError(
            f"{name}: expected leaves [R, ...] with one leading iterate axis R, got {sorted(map(str, counts))}"
        )
    count = counts.pop()
    assert count is not None  # checked above
    return count


def weight_average(iterates: PyTree) -> PyTree:
    """Weight averaging (WA; Izmailov et al. 2018, as used by Fort et al. §5): μ = (1/R) Σ_r θ_r.

    Args:
      iterates: leaves [R, ...], R snapshots of one network.

    Returns:
      The mean, a pytree of one network's shapes (recompute its BatchNorm statistics before evaluating).
    """
    _iterate_count(iterates)
    return jax.tree.map(lambda x: jnp.mean(x.astype(jnp.float32), axis=0).astype(x.dtype), iterates)


class Diagonal(NamedTuple):
    """A diagonal Gaussian over one network's parameters: per parameter mean and standard deviation.

    Attributes:
      mean: μ, a pytree of one network's shapes (float32).
      std: σ, the iterates' population standard deviation, a pytree like `mean`.
    """

    mean: PyTree
    std: PyTree


def diagonal_fit(iterates: PyTree) -> Diagonal:
    """Mean μ_i and standard deviation σ_i of every parameter over R iterates (Fort et al. §4.2).

    σ_i² = (1/R) Σ_r (θ_r,i − μ_i)² (the iterates' population variance, as SWAG-diagonal estimates it;
    computed around the mean, not as E[θ²] − μ², which cancels catastrophically in float32).

    Args:
      iterates: leaves [R ≥ 2, ...].

    Returns:
      Diagonal(mean, std), pytrees of one network's shapes.
    """
    r = _iterate_count(iterates)
    if r < 2:
        raise ValueError(f"iterates: R={r}; a standard deviation needs at least 2 iterates")
    mean = jax.tree.map(lambda x: jnp.mean(x.astype(jnp.float32), axis=0), iterates)
    std = jax.tree.map(lambda x, m: jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32) - m), axis=0)), iterates, mean)
    return Diagonal(mean, std)


def diagonal_sample(key: jax.Array, fit: Diagonal, scale: float = 1.0) -> PyTree:
    """θ_i = μ_i + scale·σ_i·z_i, z_i ~ N(0, 1) independently per parameter (Fort et al. §4.2).

    The noise is scaled by the standard deviation σ_i, not by the variance σ_i² (the known SWAG-diagonal
    slip that shrinks the spread of parameters with σ_i < 1 quadratically). `scale` > 1 widens the Gaussian
    to trace the accuracy–diversity trade-off of Fig. 6; scale = 1 is the fitted distribution.

    Args:
      key: PRNG key (vmap over S keys for S samples).
      fit: `diagonal_fit(iterates)`.
      scale: s, the factor on σ (1: the fitted Gaussian).

    Returns:
      One network's parameters, a pytree like `fit.mean`.
    """
    leaves, treedef = jax.tree.flatten(fit.mean)
    keys = jax.random.split(key, len(leaves))
    stds = treedef.flatten_up_to(fit.std)  # type: ignore[attr-defined]
    out = [m + scale * s * jax.random.normal(k, m.shape, m.dtype) for m, s, k in zip(leaves, stds, keys)]
    return jax.tree.unflatten(treedef, out)


class LowRank(NamedTuple):
    """A rank-k Gaussian N(μ, V Vᵀ) over one network's parameters.

    Attributes:
      mean: μ, a pytree of one network's shapes.
      components: leaves [k, ...]: v_1..v_k, the top principal directions of the iterates scaled by the
        standard deviation along them (v_i = (s_i/√R)·u_i for singular values s_i and unit directions u_i).
    """

    mean: PyTree
    components: PyTree


def low_rank_fit(iterates: PyTree, rank: int) -> LowRank:
    """The top-`rank` principal components of R iterates around their mean (Fort et al. §4.2, "PCA Gaussian").

    With X [R, P] the iterates flattened and centered on their mean μ, X = U S Wᵀ (thin SVD), the directions
    are the rows w_i of Wᵀ for the `rank` largest s_i and v_i = (s_i/√R)·w_i, so that Σ_i v_i v_iᵀ is the
    best rank-k approximation of the iterates' covariance (1/R) XᵀX — the same normalization as
    `diagonal_fit`: at rank R − 1 the per-parameter variances of both Gaussians coincide.

    Memory: R·P floats for the iterates plus the thin SVD's R·P; centered iterates span at most R − 1
    directions, so rank ≤ R − 1 and R = rank + 1 iterates are the fewest that support it.

    Args:
      iterates: leaves [R, ...].
      rank: k with 1 ≤ k ≤ R − 1.

    Returns:
      LowRank(mean, components with leaves [k, ...]).
    """
    r = _iterate_count(iterates)
    if not 1 <= rank <= r - 1:
        raise ValueError(
            f"rank={rank}: must lie in [1, R - 1] = [1, {r - 1}] for R={r} iterates (centered iterates span at "
            "most R - 1 directions); keep more iterates (config.trajectory.keep_last) or lower the rank"
        )
    first = jax.tree.map(lambda x: x[0].astype(jnp.float32), iterates)
    _, unravel = ravel_pytree(first)
    flat = jax.vmap(lambda tree: ravel_pytree(jax.tree.map(lambda x: x.astype(jnp.float32), tree))[0])(
        iterates
    )  # [R, P]
    mean = flat.mean(axis=0)
    _, s, wt = jnp.linalg.svd(flat - mean, full_matrices=False)  # s [R], wt [R, P], s decreasing
    components = (s[:rank, None] / jnp.sqrt(r)) * wt[:rank]  # [k, P]
    return LowRank(unravel(mean), jax.vmap(unravel)(components))


def low_rank_sample(key: jax.Array, fit: LowRank, scale: float = 1.0) -> PyTree:
    """θ = μ + scale·Σ_i z_i v_i, z ~ N(0, I_k) (Fort et al. §4.2: θ ∼ μ + Σ_i N(0^k, 1^k) v_i).

    Args:
      key: PRNG key (vmap over S keys for S samples).
      fit: `low_rank_fit(iterates, rank)`, components with leaves [k, ...].
      scale: s, the factor on the Gaussian's spread (1: the fitted Gaussian).

    Returns:
      One network's parameters, a pytree like `fit.mean`.
    """
    k = jax.tree.leaves(fit.components)[0].shape[0]
    z = jax.random.normal(key, (k,), jnp.float32)
    return jax.tree.map(lambda m, v: m + scale * jnp.tensordot(z, v, axes=1).astype(m.dtype), fit.mean, fit.components)


def random_direction(key: jax.Array, theta0: PyTree) -> PyTree:
    """A random direction v with ‖v_l‖ = ‖θ0_l‖ for every tensor l: v_l = ‖θ0_l‖·g_l/‖g_l‖, g_l ~ N(0, I).

    Scaling per tensor (as Li et al. 2018 scale directions per filter to visualize landscapes) makes t in
    θ0 + t·v a relative step, ‖θ − θ0‖_l = |t|·‖θ0_l‖ in every tensor, whatever the tensor's scale.

    Args:
      key: PRNG key; one direction per key.
      theta0: the solution's parameters, a pytree.

    Returns:
      v, a pytree like `theta0` (each leaf in its tensor's dtype).
    """
    leaves, treedef = jax.tree.flatten(theta0)
    keys = jax.random.split(key, len(leaves))
    out = []
    for x, k in zip(leaves, keys):
        g = jax.random.normal(k, x.shape, jnp.float32)
        norm_x = jnp.linalg.norm(x.astype(jnp.float32).ravel())
        out.append((g * (norm_x / jnp.maximum(jnp.linalg.norm(g.ravel()), 1e-30))).astype(x.dtype))
    return jax.tree.unflatten(treedef, out)


def random_subspace(key: jax.Array, theta0: PyTree, t) -> PyTree:
    """θ0 + t·v along the random direction v = `random_direction(key, θ0)` (Fort et al. §4.2).

    t = 0 returns θ0 exactly; one key with several t walks along one direction, several keys give several
    directions.

    Args:
      key: PRNG key of the direction.
      theta0: the solution's parameters, a pytree.
      t: scalar step along v, relative to each tensor's norm; may be traced.

    Returns:
      One network's parameters, a pytree like `theta0`.
    """
    v = random_direction(key, theta0)
    return jax.tree.map(lambda x, d: x + jnp.asarray(t, x.dtype) * d, theta0, v)


def dropout_subspace(key: jax.Array, theta0: PyTree, p_keep) -> PyTree:
    """Dropout applied to the weights: θ_i·b_i/p_keep, b_i ~ Bernoulli(p_keep) per parameter (Fort et al. §4.2).

    Every parameter of `theta0` is kept with probability p_keep and rescaled by 1/p_keep, so E[θ] = θ0
    (inverted dropout); p_keep = 1 returns θ0. Fort et al. draw p_keep at random for every sample: pass a
    traced `p_keep` under `jax.vmap` to do so.

    Args:
      key: PRNG key of the masks.
      theta0: the solution's parameters, a pytree.
      p_keep: keep probability in (0, 1]; scalar, may be traced.

    Returns:
      One network's parameters, a pytree like `theta0`.
    """
    leaves, treedef = jax.tree.flatten(theta0)
    keys = jax.random.split(key, len(leaves))
    out = [
        jnp.where(jax.random.bernoulli(k, p_keep, x.shape), x / jnp.asarray(p_keep, x.dtype), jnp.zeros_like(x))
        for x, k in zip(leaves, keys)
    ]
    return jax.tree.unflatten(treedef, out)


def accepted(accuracy, threshold: float = 0.65) -> np.ndarray:
    """Which samples §5 keeps: validation accuracy ≥ `threshold` (0.65 for Fort et al.'s CIFAR-10 models).

    Args:
      accuracy: [S] validation accuracy of each sample.
      threshold: the lowest accuracy kept.

    Returns:
      [S] bool.
    """
    return np.asarray(accuracy) >= threshold
