"""A low-loss tunnel between two optima: a polygonal chain fitted to the training loss (Fort et al. 2020,
App. A Fig. S2; Garipov et al. 2018).

The straight line between two independently trained networks crosses a high-loss region (`landscape.
linear_path`), yet low-loss paths connecting them exist (Garipov et al. 2018, "Loss Surfaces, Mode
Connectivity, and Fast Ensembling of DNNs"; Draxler et al. 2018; Fort and Jastrzebski 2019). Fort et al. 2020
(App. A, Fig. S2) build one "starting at the linear interpolation point" and minimizing the training loss,
then show that along it the loss stays low while the function changes: agreement with either optimum drops
in the middle.

Here the path is a polygonal chain with n bends (Garipov et al.'s polygonal chain):

    θ_a = φ_0 → φ_1 → … → φ_n → φ_{n+1} = θ_b

over the `params` collection, with the endpoints fixed. `chain_point(t)`, t ∈ [0, 1], runs through the n + 1
segments uniformly: segment i covers t ∈ [i/(n+1), (i+1)/(n+1)]. The bends start on the straight line,
φ_i = θ(i/(n+1)) (`init_bends`), and `fit_tunnel` minimizes E_{t~U(0,1)} L_train(chain_point(t)) with respect to
the bends only. `evaluate_path` evaluates the chain on a grid of t like `landscape.linear_path` (with zero
bends it is the linear path), with agreement to both optima as in `jaxens.plane`.

Bends are one pytree whose leaves carry a leading bend axis: leaves [n, ...].
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxens import landscape, metrics, plane

PyTree = Any
ApplyFn = Callable[..., Any]


class TunnelFit(NamedTuple):
    """The result of `fit_tunnel`.

    Attributes:
      bends: the fitted bends φ_1..φ_n, a pytree like `params` with leaves [n, ...].
      losses: [num_steps] the minibatch training loss (mean over the step's t samples) before each update.
    """

    bends: PyTree
    losses: jax.Array


def count_bends(bends: PyTree) -> int:
    """n, the number of bends: the leading axis every leaf of `bends` shares.

    Args:
      bends: a pytree with leaves [n, ...].

    Returns:
      n, a Python int.

    Raises:
      ValueError: if the leaves do not share one leading axis.
    """
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in jax.tree.leaves(bends)}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"bends: every leaf needs the same leading bend axis [n, ...], got leading sizes {sizes}")
    size = sizes.pop()
    assert size is not None  # checked above
    return int(size)


@functools.partial(jax.jit, static_argnames=("num",))
def init_bends(params_a: PyTree, params_b: PyTree, num: int) -> PyTree:
    """n bends on the straight line: φ_i = (1 − s_i)θ_a + s_i θ_b, s_i = i/(n+1), i = 1..n.

    Fort et al. 2020 App. A ("we start at the linear interpolation point"); with these bends `chain_point`
    is the linear path θ(t) (up to rounding).

    Jitted (`num` static).

    Args:
      params_a, params_b: the two optima's `params` (same structure and leaf shapes).
      num: n ≥ 0.

    Returns:
      A pytree like `params_a` with leaves [n, ...].
    """
    plane._check_pair(params_a, params_b, "params_a", "params_b")
    if num < 0:
        raise ValueError(f"num={num}: the number of bends must be ≥ 0")
    fractions = jnp.arange(1, num + 1, dtype=jnp.float32) / (num + 1)  # [n]
    return jax.vmap(lambda s: landscape.interpolate(params_a, params_b, s))(fractions)


def chain_point(params_a: PyTree, bends: PyTree, params_b: PyTree, t) -> PyTree:
    """The point at t of the polygonal chain θ_a → φ_1 → … → φ_n → θ_b (Garipov et al. 2018; Fort et al.
    App. A, Fig. S2; docs/definitions.md#radial-plane-low-loss-tunnel-and-radial-cut).

    With s = t·(n+1), segment i = min(⌊s⌋, n) and τ = s − i, the point is (1 − τ)φ_i + τφ_{i+1}
    (`landscape.interpolate`; φ_0 = θ_a, φ_{n+1} = θ_b). t = 0 gives exactly θ_a, t = 1 exactly θ_b, and
    t = i/(n+1) the bend φ_i. With zero bends it is the straight line (1 − t)θ_a + tθ_b, computed exactly as
    `landscape.interpolate` computes it. t outside [0, 1] extrapolates along the first or last segment.
    Pure, jit/vmap/grad-able (in the bends and in t).

    Args:
      params_a, params_b: the fixed endpoints (same structure and leaf shapes).
      bends: leaves [n, ...] like `params_a` (n ≥ 0).
      t: scalar; may be traced.

    Returns:
      A pytree like `params_a`.
    """
    n = count_bends(bends)
    t = jnp.asarray(t, jnp.float32)
    s = t * (n + 1)
    i = jnp.clip(jnp.floor(s), 0, n)
    tau = s - i
    i = i.astype(jnp.int32)

    if n == 0:
        return landscape.interpolate(params_a, params_b, tau)

    def leaf(a, phi, b):
        nodes = jnp.concatenate([a[None], phi.astype(a.dtype), b[None]])  # [n+2, ...]: φ_0 .. φ_{n+1}
        start = jax.lax.dynamic_index_in_dim(nodes, i, axis=0, keepdims=False)
        end = jax.lax.dynamic_index_in_dim(nodes, i + 1, axis=0, keepdims=False)
        return landscape.interpolate(start, end, tau)

    return jax.tree.map(leaf, params_a, bends, params_b)


def tunnel_loss(apply_fn: ApplyFn, variables_a, bends: PyTree, variables_b, x, y, ts, dropout_rng=None) -> jax.Array:
    """Mean over t ∈ ts of the training-mode softmax cross-entropy of `chain_point(t)` on (x, y).

    The objective of `fit_tunnel`: Garipov et al. 2018's loss averaged over t ~ U(0, 1), estimated at the
    given t. The network runs in training mode: BatchNorm normalizes with the statistics of this batch (every
    t on its own) and the mutated running averages are discarded; dropout runs with `dropout_rng` (one key
    per t) if given.
    Collections other than params (e.g. the running averages, unused in training mode) are θ_a's.

    Args:
      apply_fn: `model.apply`, `apply_fn(variables, x, train=True, mutable=['batch_stats'])` → (logits, _).
      variables_a, variables_b: the endpoints' variables (only their params define the chain).
      bends: leaves [n, ...].
      x: [B, ...] normalized inputs.
      y: [B] int labels.
      ts: [T] positions on the chain.
      dropout_rng: None or a PRNG key.

    Returns:
      [] the mean NLL in nats.
    """
    ts = jnp.atleast_1d(jnp.asarray(ts, jnp.float32))  # [T]
    keys = None if dropout_rng is None else jax.random.split(dropout_rng, ts.shape[0])

    def one(t, key):
        params = chain_point(variables_a["params"], bends, variables_b["params"], t)
        variables = {**variables_a, "params": params}
        rngs = {} if key is None else {"rngs": {"dropout": key}}
        logits, _ = apply_fn(variables, x, train=True, mutable=["batch_stats"], **rngs)  # [B, C]
        return metrics.nll(logits, y)

    if keys is None:
        return jax.vmap(lambda t: one(t, None))(ts).mean()
    return jax.vmap(one)(ts, keys).mean()


@functools.cache
def _adam(learning_rate: float) -> optax.GradientTransformation:
    """One optax.adam object per learning rate, so repeated fits reuse the compiled program."""
    return optax.adam(learning_rate)


def _fit(apply_fn, variables_a, variables_b, bends, train_x, train_y, key, tx, num_steps, batch_size, num_ts):
    n_train = train_x.shape[0]

    def step(carry, k):
        bends, opt_state = carry
        key_t, key_batch, key_dropout = jax.random.split(jax.random.fold_in(key, k), 3)
        ts = jax.random.uniform(key_t, (num_ts,))  # [T] ~ U(0, 1)
        idx = jax.random.choice(key_batch, n_train, (batch_size,), replace=False)  # [B]
        x, y = train_x[idx], train_y[idx]  # [B, ...], [B]
        loss, grads = jax.value_and_grad(
            lambda b: tunnel_loss(apply_fn, variables_a, b, variables_b, x, y, ts, key_dropout)
        )(bends)
        updates, opt_state = tx.update(grads, opt_state, bends)
        return (optax.apply_updates(bends, updates), opt_state), loss

    (bends, _), losses = jax.lax.scan(step, (bends, tx.init(bends)), jnp.arange(num_steps))
    return bends, losses  # losses [num_steps]


_fit_jit = jax.jit(_fit, static_argnames=("apply_fn", "tx", "num_steps", "batch_size", "num_ts"))


def _check_fit_args(variables_a, variables_b, train_x, train_y, num_bends, num_steps, batch_size, num_ts, bends):
    """`fit_tunnel`'s argument checks, except the bends' shapes (`_check_bends`); a ValueError names the argument."""
    plane._check_variables(variables_a, variables_b)
    if np.ndim(train_y) != 1 or np.shape(train_x)[:1] != np.shape(train_y):
        raise ValueError(
            f"train_x of shape {np.shape(train_x)} and train_y of shape {np.shape(train_y)}: expected [N, ...] and [N]"
        )
    if bends is None and num_bends < 1:
        raise ValueError(f"num_bends={num_bends}: a tunnel needs at least one bend")
    n_train = np.shape(train_y)[0]
    if not 1 <= batch_size <= n_train:
        raise ValueError(f"batch_size={batch_size}: must be in [1, {n_train}] (the training examples)")
    if num_steps < 0:
        raise ValueError(f"num_steps={num_steps}: must be ≥ 0")
    if num_ts < 1:
        raise ValueError(f"num_ts={num_ts}: must be ≥ 1")


def fit_tunnel(
    apply_fn: ApplyFn,
    variables_a,
    variables_b,
    train_x,
    train_y,
    num_bends: int,
    num_steps: int,
    key,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    optimizer: optax.GradientTransformation | None = None,
    num_ts: int = 1,
    bends: PyTree | None = None,
) -> TunnelFit:
    """Fits the bends of a low-loss polygonal chain between two fixed optima (Fort et al. 2020 App. A,
    Fig. S2; Garipov et al. 2018).

    Starts from `init_bends` (on the linear path) unless `bends` is given, then takes `num_steps` optimizer
    steps on the bends only (the endpoints never move). Step k: key_k = fold_in(key, k) → `num_ts` positions
    t ~ U(0, 1) and a minibatch of `batch_size` distinct training examples drawn uniformly → the gradient of
    `tunnel_loss` (training mode; BatchNorm uses batch statistics, mutated statistics are discarded; dropout
    with a key from key_k) w.r.t. the bends → the optimizer update. All steps run in ONE jitted `lax.scan`
    (compiled once per (apply_fn, shapes, optimizer, num_steps, batch_size, num_ts)).

    After fitting, evaluate with `evaluate_path` (which recomputes BatchNorm statistics at every point).

    Args:
      apply_fn: `model.apply` of a Flax module (un-jitted).
      variables_a, variables_b: the two optima's variables (same structure).
      train_x: [N, ...] normalized training inputs.
      train_y: [N] int labels.
      num_bends: n ≥ 1 (ignored when `bends` is given).
      num_steps: optimizer steps ≥ 0 (0 returns the initial bends).
      key: PRNG key.
      batch_size: examples per step, ≤ N.
      learning_rate: of the default optimizer, `optax.adam(learning_rate)`.
      optimizer: an optax transformation to use instead (pass the same object again to reuse the compile).
      num_ts: t samples per step (the loss is their mean).
      bends: starting bends, leaves [n, ...] (e.g. to continue a fit); default `init_bends(…, num_bends)`.

    Returns:
      `TunnelFit(bends [n, ...], losses [num_steps])`.

    Raises:
      ValueError: structures differ, bad shapes, or a count out of range (naming the argument).
    """
    _check_fit_args(variables_a, variables_b, train_x, train_y, num_bends, num_steps, batch_size, num_ts, bends)
    if bends is None:
        bends = init_bends(variables_a["params"], variables_b["params"], num_bends)
    else:
        _check_bends(bends, variables_a["params"])
    if num_steps == 0:
        return TunnelFit(bends, jnp.zeros((0,), jnp.float32))
    tx = _adam(float(learning_rate)) if optimizer is None else optimizer
    new_bends, losses = _fit_jit(
        apply_fn,
        variables_a,
        variables_b,
        bends,
        jnp.asarray(train_x),
        jnp.asarray(train_y),
        key,
        tx=tx,
        num_steps=int(num_steps),
        batch_size=int(batch_size),
        num_ts=int(num_ts),
    )
    return TunnelFit(new_bends, losses)


def _check_bends(bends: PyTree, params_a: PyTree) -> int:
    """Bends are `params_a`-shaped leaves with a leading axis n; returns n."""
    if jax.tree.structure(bends) != jax.tree.structure(params_a):  # type: ignore[operator]
        raise ValueError("bends: a different pytree structure from variables_a['params']")
    n = count_bends(bends)
    for (path, a), phi in zip(jax.tree_util.tree_flatten_with_path(params_a)[0], jax.tree.leaves(bends)):
        if np.shape(phi)[1:] != np.shape(a):
            raise ValueError(
                f"bends: leaf {jax.tree_util.keystr(path)} has shape {np.shape(phi)}, expected [n, *{np.shape(a)}]"
            )
    return n


def _path(apply_fn, ts, variables_a, bends, variables_b, data, recompute, batch_size, chunk_size):
    def variables_at(t):
        params = chain_point(variables_a["params"], bends, variables_b["params"], t)
        combine = lambda a, b: landscape.interpolate(a, b, t)  # noqa: E731
        return plane._assemble(apply_fn, variables_a, variables_b, params, combine, data.train_x, recompute)

    z_a, z_b = jnp.float32(0.0), jnp.float32(1.0)
    return plane._evaluate_points(apply_fn, variables_at, ts, z_a, z_b, data.x, data.y, batch_size, chunk_size)


_path_jit = jax.jit(_path, static_argnames=("apply_fn", "recompute", "batch_size", "chunk_size"))


def evaluate_path(
    apply_fn: ApplyFn,
    variables_a,
    bends: PyTree,
    variables_b,
    ts,
    data: landscape.PathData,
    recompute_batch_stats: bool = True,
    batch_size: int | None = None,
    chunk_size: int | None = None,
) -> dict[str, jax.Array]:
    """Error, loss and agreement with both optima along the chain, for every t in ONE jitted vmapped call.

    Per t: params `chain_point(t)` → BatchNorm statistics recomputed on `data.train_x`
    (`landscape.recompute_batch_stats`, docs/definitions.md#batchnorm-statistics; on by default) → eval-mode
    logits on `data.x` → error, mean NLL, and agreement_a/b = 1 − disagreement with the endpoints' predictions
    (the path's own at t = 0 and t = 1, under the same statistics policy, so agreement_a(0) = 1). With
    recomputation off, every non-params collection is interpolated linearly with t between θ_a's and θ_b's (the
    bends carry no statistics: meaningful for zero bends, where this is exactly `landscape.linear_path`'s rule).

    With zero bends (leaves [0, ...], e.g. `init_bends(a, b, 0)`) the chain is the linear path, so Fort et
    al.'s Fig. S2 comparison of the linear path and the tunnel uses this one function.

    Args:
      apply_fn: `model.apply` (un-jitted).
      variables_a, variables_b: the endpoints' variables.
      bends: leaves [n, ...], n ≥ 0.
      ts: [A] positions in [0, 1] (include 0 and 1 for `landscape.error_barrier`).
      data: `landscape.PathData`; train_x required when recomputing statistics of a model with BatchNorm.
      recompute_batch_stats: see above.
      batch_size: evaluate data.x in chunks of this many examples (must divide N); None: all at once.
      chunk_size: t values per vmapped chunk (`lax.map` over chunks); None: all at once.

    Returns:
      {'t': [A], 'error': [A], 'loss': [A] mean NLL, 'agreement_a': [A], 'agreement_b': [A]}.

    Raises:
      ValueError: structures or shapes differ, `ts` not [A], train_x missing when needed, or batch_size
        does not divide N.
    """
    plane._check_variables(variables_a, variables_b)
    _check_bends(bends, variables_a["params"])
    ts = jnp.asarray(ts, jnp.float32)
    if ts.ndim != 1 or ts.shape[0] < 1:
        raise ValueError(f"ts: expected [A >= 1], got shape {tuple(ts.shape)}")
    if chunk_size is not None and (not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1):
        raise ValueError(f"chunk_size={chunk_size!r}: expected a positive int or None")
    recompute = bool(recompute_batch_stats) and landscape._has_batch_stats(variables_a)
    data = plane._check_data(data, recompute, batch_size)
    chunk_size = None if chunk_size is None else int(chunk_size)
    out = _path_jit(
        apply_fn,
        ts,
        variables_a,
        bends,
        variables_b,
        data,
        recompute=recompute,
        batch_size=batch_size,
        chunk_size=chunk_size,
    )
    return {"t": ts, **out}


def _cut(apply_fn, points, variables_a, bends, variables_b, data, recompute, batch_size, chunk_size):
    def variables_at(z):  # z = (t, r): the chain's point at t, scaled by r towards the origin.
        t, r = z[0], z[1]
        params = jax.tree.map(lambda p: r * p, chain_point(variables_a["params"], bends, variables_b["params"], t))
        combine = lambda a, b: landscape.interpolate(a, b, t)  # noqa: E731
        return plane._assemble(apply_fn, variables_a, variables_b, params, combine, data.train_x, recompute)

    z_a, z_b = jnp.array([0.0, 1.0]), jnp.array([1.0, 1.0])
    return plane._evaluate_points(apply_fn, variables_at, points, z_a, z_b, data.x, data.y, batch_size, chunk_size)


_cut_jit = jax.jit(_cut, static_argnames=("apply_fn", "recompute", "batch_size", "chunk_size"))


def radial_cut(
    apply_fn: ApplyFn,
    variables_a,
    bends: PyTree,
    variables_b,
    ts,
    radii,
    data: landscape.PathData,
    recompute_batch_stats: bool = True,
    batch_size: int | None = None,
    chunk_size: int | None = 64,
) -> dict[str, jax.Array]:
    """The radial cut between the origin and the tunnel, its segments stitched side by side (Fort et al. App. A,
    Fig. S3).

    Each segment φ_i → φ_{i+1} of the chain and the origin span a triangle; its points are r·((1 − τ)φ_i + τφ_{i+1})
    for τ ∈ [0, 1] and radius r ≥ 0 (r = 1 on the segment). Placing the triangles next to each other in the
    order of the chain makes one picture over (t, r): the point at (t, r) is r·`chain_point(t)`, the bends at
    t = i/(n+1) being the radial lines between triangles. At every point, as in `evaluate_path`: error, mean
    NLL and agreement with the optima's predictions (the cut's own at (0, 1) and (1, 1)); BatchNorm statistics
    recomputed on `data.train_x` (default), else interpolated with t. With zero bends the cut is the part of
    `jaxens.plane.radial_plane`'s plane between the rays through θ_a and θ_b: (t, r) is its point
    (r(1 − t), r t).

    Args:
      apply_fn: `model.apply` (un-jitted).
      variables_a, variables_b: the optima's variables.
      bends: leaves [n, ...], n ≥ 0 (a fitted tunnel's `TunnelFit.bends`).
      ts: [T] positions along the chain in [0, 1].
      radii: [R] radii (1 = on the chain; 0 = the origin).
      data, recompute_batch_stats, batch_size: as `evaluate_path`.
      chunk_size: points per vmapped chunk (None: all T·R at once).

    Returns:
      {'t': [T], 'r': [R], 'error', 'loss', 'agreement_a', 'agreement_b': each [T, R]}.
    """
    plane._check_variables(variables_a, variables_b)
    _check_bends(bends, variables_a["params"])
    ts, radii = jnp.asarray(ts, jnp.float32), jnp.asarray(radii, jnp.float32)
    if ts.ndim != 1 or radii.ndim != 1 or ts.shape[0] < 1 or radii.shape[0] < 1:
        raise ValueError(
            f"ts and radii: expected [T >= 1] and [R >= 1], got {tuple(ts.shape)} and {tuple(radii.shape)}"
        )
    if chunk_size is not None and (not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1):
        raise ValueError(f"chunk_size={chunk_size!r}: expected a positive int or None")
    recompute = bool(recompute_batch_stats) and landscape._has_batch_stats(variables_a)
    data = plane._check_data(data, recompute, batch_size)
    points = jnp.stack(jnp.meshgrid(ts, radii, indexing="ij"), -1).reshape(-1, 2)  # [T·R, 2] (t, r)
    chunk_size = None if chunk_size is None else int(chunk_size)
    out = _cut_jit(
        apply_fn, points, variables_a, bends, variables_b, data,
        recompute=recompute, batch_size=batch_size, chunk_size=chunk_size,
    )  # fmt: skip
    shape = (ts.shape[0], radii.shape[0])
    return {"t": ts, "r": radii, **{name: value.reshape(shape) for name, value in out.items()}}
