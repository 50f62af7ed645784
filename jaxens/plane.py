"""The radial plane through the origin and two optima (Fort et al. 2020, §4.2 Fig. 5 and App. A Fig. S1).

Fort, Hu and Lakshminarayanan, "Deep Ensembles: A Loss Landscape Perspective" (2020), visualize the 2-D
section of weight space spanned by the origin (all weights 0) and two independently trained optima θ_a, θ_b:

    θ(x, y) = x·θ_a + y·θ_b        (over the `params` collection)

in *coefficient coordinates* (x, y): (1, 0) is θ_a, (0, 1) is θ_b, (0, 0) the origin. On that plane they
plot accuracy (Fig. 5 left, Fig. S1) and the function-space similarity to each optimum, the fraction of
examples on which the point's argmax prediction equals the optimum's (Fig. 5 middle and right), together
with the two training trajectories projected onto the plane.

For plotting with distances in weight space the plane gets orthonormal coordinates (u, v) (`Frame`,
`to_uv`, `from_uv`): e1 = θ_a/‖θ_a‖ and e2 = the normalized component of θ_b orthogonal to e1 (Gram–Schmidt),
so θ_a sits at (‖θ_a‖, 0) and θ_b at (θ_b·e1, ‖θ_b − (θ_b·e1)e1‖). `project` maps any parameter pytree
(a trajectory checkpoint, a subspace sample) to its least-squares coefficient coordinates, its (u, v) and its
distance from the plane.

`radial_plane` evaluates a grid of points in ONE jitted function: vmapped chunks of points, `lax.map` over the
chunks. BatchNorm statistics are recomputed at every point on training batches
(docs/definitions.md#batchnorm-statistics, `landscape.recompute_batch_stats`, on by default).

Everything here is written for ONE network per optimum (one member's variables); select members outside.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxens import landscape, metrics

PyTree = Any
ApplyFn = Callable[..., Any]


class Frame(NamedTuple):
    """Orthonormal coordinates of the plane span{θ_a, θ_b} (Gram–Schmidt, e1 along θ_a).

    A point x·θ_a + y·θ_b has u = x·norm_a + y·b_along and v = y·b_perp (`to_uv`).

    Attributes:
      norm_a: [] ‖θ_a‖.
      b_along: [] θ_b·e1, e1 = θ_a/‖θ_a‖.
      b_perp: [] ‖θ_b − (θ_b·e1)e1‖ (0 when θ_b is parallel to θ_a: the plane is degenerate).
    """

    norm_a: jax.Array
    b_along: jax.Array
    b_perp: jax.Array


class Projection(NamedTuple):
    """Where a parameter pytree lies relative to the plane (`project`); a leading axis S under `jax.vmap`.

    Attributes:
      coords: [2] least-squares coefficient coordinates (x, y): x·θ_a + y·θ_b is the point of the plane
        closest to the parameters.
      uv: [2] the same point in orthonormal coordinates (u, v) (distances in weight space).
      distance: [] Euclidean distance of the parameters from the plane.
    """

    coords: jax.Array
    uv: jax.Array
    distance: jax.Array


def point(params_a: PyTree, params_b: PyTree, x, y) -> PyTree:
    """The point θ(x, y) = x·θ_a + y·θ_b of the plane through the origin, θ_a and θ_b, leafwise.

    Fort et al. §4.2, Fig. 5 (docs/definitions.md#radial-plane-low-loss-tunnel-and-radial-cut).

    Written as x·a + y·b, so (1, 0) gives exactly `params_a`, (0, 1) exactly `params_b` and (0, 0) all zeros
    (as float values: a −0.0 leaf entry may come back as +0.0). Each leaf keeps the dtype of `params_a`'s.

    Args:
      params_a, params_b: pytrees of the same structure and leaf shapes (float leaves).
      x, y: scalar coefficients (any real values; may be traced).

    Returns:
      A pytree like `params_a`.
    """
    return jax.tree.map(lambda a, b: (x * a + y * b).astype(jnp.result_type(a)), params_a, params_b)


def grid(x_range, y_range, num) -> np.ndarray:
    """A rectangular grid of 2-D points, e.g. coefficient coordinates for `radial_plane`.

    Point i·nx + j is (xs[j], ys[i]), xs = linspace(*x_range, nx), ys = linspace(*y_range, ny): x varies
    fastest, so `values.reshape(ny, nx)` is an image with rows along y (for `imshow(origin='lower')`,
    `contourf(xs, ys, ...)`).

    Args:
      x_range, y_range: (low, high), both included.
      num: points per axis, an int (both axes) or a pair (nx, ny), each ≥ 2.

    Returns:
      [nx·ny, 2] float32.
    """
    nx, ny = (num, num) if np.ndim(num) == 0 else tuple(num)
    if int(nx) < 2 or int(ny) < 2:
        raise ValueError(f"num={num!r}: need at least 2 points per axis")
    for name, r in (("x_range", x_range), ("y_range", y_range)):
        if np.shape(r) != (2,):
            raise ValueError(f"{name}={r!r}: expected (low, high)")
    xs = np.linspace(x_range[0], x_range[1], int(nx))
    ys = np.linspace(y_range[0], y_range[1], int(ny))
    gx, gy = np.meshgrid(xs, ys)  # [ny, nx] each
    return np.stack([gx.ravel(), gy.ravel()], axis=-1).astype(np.float32)


def _dot(tree_a: PyTree, tree_b: PyTree) -> jax.Array:
    """Σ over leaves of Σ a·b, in at least float32."""
    total = jnp.zeros((), jnp.float32)
    for a, b in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b)):
        dtype = jnp.promote_types(jnp.result_type(a), jnp.float32)
        total = total + jnp.sum(a.astype(dtype) * b.astype(dtype))
    return total


def _axpy(alpha, x: PyTree, y: PyTree) -> PyTree:
    """y + α·x leafwise (in at least float32)."""
    return jax.tree.map(lambda u, w: w + alpha * u, x, y)


def _basis(params_a: PyTree, params_b: PyTree) -> tuple[Frame, PyTree, PyTree]:
    """The frame and the unit vectors e1, e2 as pytrees (float32 at least)."""
    f32 = lambda t: jax.tree.map(lambda v: v.astype(jnp.promote_types(jnp.result_type(v), jnp.float32)), t)  # noqa: E731
    a, b = f32(params_a), f32(params_b)
    norm_a = jnp.sqrt(_dot(a, a))
    e1 = jax.tree.map(lambda v: v / norm_a, a)
    b_along = _dot(b, e1)
    b_orth = _axpy(-b_along, e1, b)  # θ_b − (θ_b·e1)e1, computed explicitly (no cancellation in ‖·‖)
    b_perp = jnp.sqrt(_dot(b_orth, b_orth))
    e2 = jax.tree.map(lambda v: v / b_perp, b_orth)
    return Frame(norm_a, b_along, b_perp), e1, e2


def _check_pair(tree_a: PyTree, tree_b: PyTree, name_a: str, name_b: str) -> None:
    """Same pytree structure and the same leaf shapes, else a ValueError naming both arguments."""
    if jax.tree.structure(tree_a) != jax.tree.structure(tree_b):  # type: ignore[operator]
        raise ValueError(f"{name_a} and {name_b}: different pytree structures (not the same architecture?)")
    flat_a = jax.tree_util.tree_flatten_with_path(tree_a)[0]
    for (path, a), b in zip(flat_a, jax.tree.leaves(tree_b)):
        if np.shape(a) != np.shape(b):
            raise ValueError(
                f"{name_a} and {name_b}: leaf {jax.tree_util.keystr(path)} has shape {np.shape(a)} in {name_a} "
                f"and {np.shape(b)} in {name_b}"
            )
    if not jax.tree.leaves(tree_a):
        raise ValueError(f"{name_a}: the pytree has no leaves")


def frame(params_a: PyTree, params_b: PyTree) -> Frame:
    """The orthonormal frame of the plane through the origin, θ_a and θ_b (Gram–Schmidt, e1 = θ_a/‖θ_a‖).

    Pure and jit-able. A degenerate plane (θ_a = 0, or θ_b parallel to θ_a) gives non-finite or zero
    `b_perp`; `radial_plane` checks for it.

    Args:
      params_a, params_b: the two networks' `params` pytrees (same structure and leaf shapes).

    Returns:
      `Frame` (three float32 scalars).
    """
    _check_pair(params_a, params_b, "params_a", "params_b")
    return _basis(params_a, params_b)[0]


def to_uv(coords, plane_frame: Frame) -> jax.Array:
    """Coefficient coordinates (x, y) → orthonormal in-plane coordinates (u, v).

    u = x·‖θ_a‖ + y·(θ_b·e1), v = y·‖θ_b⊥‖: Euclidean distances in weight space, the origin at (0, 0),
    θ_a at (‖θ_a‖, 0).

    Args:
      coords: [..., 2] coefficient coordinates.
      plane_frame: `frame(params_a, params_b)`.

    Returns:
      [..., 2] (u, v).
    """
    coords = jnp.asarray(coords, jnp.float32)
    x, y = coords[..., 0], coords[..., 1]
    return jnp.stack([x * plane_frame.norm_a + y * plane_frame.b_along, y * plane_frame.b_perp], axis=-1)


def from_uv(uv, plane_frame: Frame) -> jax.Array:
    """Orthonormal in-plane coordinates (u, v) → coefficient coordinates (x, y), the inverse of `to_uv`.

    Use it to evaluate an undistorted rectangle of the plane: `radial_plane(..., from_uv(grid(...), f), ...)`.

    Args:
      uv: [..., 2].
      plane_frame: `frame(params_a, params_b)` (non-degenerate).

    Returns:
      [..., 2] (x, y).
    """
    uv = jnp.asarray(uv, jnp.float32)
    y = uv[..., 1] / plane_frame.b_perp
    x = (uv[..., 0] - y * plane_frame.b_along) / plane_frame.norm_a
    return jnp.stack([x, y], axis=-1)


def project(params: PyTree, params_a: PyTree, params_b: PyTree) -> Projection:
    """Orthogonal projection of a parameter pytree onto the plane through 0, θ_a and θ_b.

    With e1, e2 the orthonormal basis of `frame`: u = θ·e1, v = θ·e2, the closest plane point is
    u·e1 + v·e2 = x·θ_a + y·θ_b (the least-squares solution of min ‖θ − xθ_a − yθ_b‖), and the distance is
    ‖θ − u·e1 − v·e2‖ (computed from the residual itself, not as √(‖θ‖² − u² − v²)).

    Pure and jit-able. For many points (e.g. trajectory checkpoints with leaves [S, ...]) use
    `jax.vmap(project, in_axes=(0, None, None))`: the basis is computed once.

    Args:
      params: the pytree to project (same structure and leaf shapes as `params_a`).
      params_a, params_b: the two optima's `params`.

    Returns:
      `Projection(coords [2], uv [2], distance [])`, float32.
    """
    _check_pair(params_a, params_b, "params_a", "params_b")
    _check_pair(params_a, params, "params_a", "params")
    plane_frame, e1, e2 = _basis(params_a, params_b)
    p = jax.tree.map(lambda v: v.astype(jnp.promote_types(jnp.result_type(v), jnp.float32)), params)
    u, v = _dot(p, e1), _dot(p, e2)
    residual = _axpy(-v, e2, _axpy(-u, e1, p))
    uv = jnp.stack([u, v])
    return Projection(from_uv(uv, plane_frame), uv, jnp.sqrt(_dot(residual, residual)))


# ---- Evaluating points (shared with jaxens.tunnel) ----


def _assemble(apply_fn: ApplyFn, variables_a, variables_b, params: PyTree, combine, train_x, recompute: bool):
    """One point's variables: `params`; every other collection `combine(collection_a, collection_b)`, except
    BatchNorm statistics, which are recomputed on `train_x` when `recompute` (the model has them)."""
    out = {}
    for name in variables_a:
        if name == "params":
            out[name] = params
        elif recompute and name == "batch_stats":
            out[name] = variables_a[name]  # A template: replaced by the measured statistics below.
        else:
            out[name] = combine(variables_a[name], variables_b[name])
    if recompute:
        out = landscape.recompute_batch_stats(apply_fn, out, train_x)
    return out


def _evaluate_points(apply_fn: ApplyFn, variables_at, zs, z_a, z_b, x, y, batch_size, chunk_size):
    """Error, mean NLL and agreement with the two reference points for every point z of `zs` [G, ...].

    `variables_at(z)` builds one point's variables. The reference predictions are those of `variables_at(z_a)`
    and `variables_at(z_b)` (the optima, under the same BatchNorm policy). Points run in vmapped chunks of
    `chunk_size` (None: all at once; `landscape.map_in_chunks`). Traced inside the callers' jitted functions.
    """
    logits_at = lambda z: landscape._eval_logits(apply_fn, variables_at(z), x, batch_size)  # noqa: E731  [N, C]
    ref_a, ref_b = logits_at(z_a), logits_at(z_b)  # [N, C] each

    def one(z):
        logits = logits_at(z)  # [N, C]
        return {
            "error": metrics.error(logits, y),
            "loss": metrics.nll(logits, y),
            "agreement_a": 1.0 - metrics.disagreement(logits, ref_a),
            "agreement_b": 1.0 - metrics.disagreement(logits, ref_b),
        }

    return landscape.map_in_chunks(one, zs, chunk_size)  # each [G]


def _check_data(data: landscape.PathData, recompute: bool, batch_size, data_name: str = "data") -> landscape.PathData:
    """Shapes of `data` for an evaluation; returns it without train_x when nothing is recomputed."""
    x, y = data.x, data.y
    if np.ndim(y) != 1 or np.shape(x)[:1] != np.shape(y):
        raise ValueError(
            f"{data_name}.x of shape {np.shape(x)} and {data_name}.y of shape {np.shape(y)}: expected [N, ...] and [N]"
        )
    if recompute:
        t = data.train_x
        if t is None:
            raise ValueError(
                f"{data_name}.train_x is None: recomputing BatchNorm statistics needs training batches "
                "[num_batches, B, ...] (or pass recompute_batch_stats=False)"
            )
        if np.ndim(t) < 2 or np.shape(t)[0] < 1 or np.shape(t)[2:] != np.shape(x)[1:]:
            raise ValueError(
                f"{data_name}.train_x of shape {np.shape(t)}: expected [num_batches >= 1, B, ...] with the "
                f"example shape of {data_name}.x, {np.shape(x)[1:]}"
            )
    n = np.shape(x)[0]
    if batch_size is not None and (batch_size < 1 or n % batch_size):
        raise ValueError(f"batch_size={batch_size}: must be a positive divisor of the {n} evaluation examples")
    return data if recompute else data._replace(train_x=None)  # Not needed: don't ship it to the device.


def _check_variables(variables_a, variables_b) -> None:
    for name, v in (("variables_a", variables_a), ("variables_b", variables_b)):
        if not hasattr(v, "keys") or "params" not in v:
            raise ValueError(f"{name}: expected a network's variables {{'params': ..., 'batch_stats'?: ...}}")
    _check_pair(variables_a, variables_b, "variables_a", "variables_b")


def point_variables(
    apply_fn: ApplyFn, variables_a, variables_b, coords, train_x=None, recompute_batch_stats: bool = True
):
    """The variables `radial_plane` evaluates at one plane point (x, y).

    params = x·θ_a + y·θ_b (`point`). BatchNorm statistics: recomputed for these weights on `train_x`
    (`landscape.recompute_batch_stats`; docs/definitions.md#batchnorm-statistics) when `recompute_batch_stats`
    and the model has BatchNorm; otherwise every non-params collection is combined with the same coefficients,
    x·stats_a + y·stats_b (at the optima this is their own statistics; elsewhere, and certainly for negative
    coefficients, where a combined variance can be negative, it is not the statistics of the point's network).

    Args:
      apply_fn: `model.apply` (un-jitted).
      variables_a, variables_b: the two networks' variables.
      coords: [2] coefficient coordinates (x, y); may be traced.
      train_x: [num_batches, B, ...] normalized training batches (needed when recomputing).
      recompute_batch_stats: see above.

    Returns:
      The point's variables (a dict).
    """
    coords = jnp.asarray(coords, jnp.float32)
    x, y = coords[0], coords[1]
    recompute = bool(recompute_batch_stats) and landscape._has_batch_stats(variables_a)
    if recompute and train_x is None:
        raise ValueError(
            "train_x is None: recomputing BatchNorm statistics needs training batches [num_batches, B, ...]"
        )
    params = point(variables_a["params"], variables_b["params"], x, y)
    combine = lambda a, b: point(a, b, x, y)  # noqa: E731
    return _assemble(apply_fn, variables_a, variables_b, params, combine, train_x, recompute)


def _plane(apply_fn, coords, variables_a, variables_b, data, recompute, batch_size, chunk_size):
    variables_at = lambda c: point_variables(apply_fn, variables_a, variables_b, c, data.train_x, recompute)  # noqa: E731
    z_a, z_b = jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])
    return _evaluate_points(apply_fn, variables_at, coords, z_a, z_b, data.x, data.y, batch_size, chunk_size)


_plane_jit = jax.jit(_plane, static_argnames=("apply_fn", "recompute", "batch_size", "chunk_size"))
_frame_jit = jax.jit(frame)
_to_uv_jit = jax.jit(to_uv)


def radial_plane(
    apply_fn: ApplyFn,
    variables_a,
    variables_b,
    coords,
    data: landscape.PathData,
    chunk_size: int | None = 64,
    recompute_batch_stats: bool = True,
    batch_size: int | None = None,
) -> dict[str, jax.Array]:
    """Error, loss and agreement with both optima at every point of the radial plane (Fort et al. 2020, §4.2
    Fig. 5; App. A Fig. S1).

    Per point (x, y): params x·θ_a + y·θ_b → BatchNorm statistics recomputed on `data.train_x`
    (`point_variables`) → eval-mode logits [N, C] on `data.x` → `metrics.error`, `metrics.nll` and
    agreement_a = 1 − `metrics.disagreement`(logits, logits of θ_a), the "function space similarity" of Fort
    et al. Fig. 5 (middle, right). The optima's reference predictions are the plane's own at (1, 0) and (0, 1)
    (with recomputation on: θ_a's weights with statistics recomputed on `data.train_x`, not its stored running
    averages), so agreement_a(1, 0) = agreement_b(0, 1) = 1.

    All G points run in ONE jitted call: vmapped chunks of `chunk_size` points, `lax.map` over the chunks
    (memory grows with the chunk, not with G). The compiled function is cached per (apply_fn, shapes,
    options): pass the same `apply_fn` object to reuse it.

    Args:
      apply_fn: `model.apply` of a Flax module (un-jitted), `apply_fn(variables, x, train=False)` → [N, C].
      variables_a, variables_b: the two optima's variables ({'params', 'batch_stats'?}, same structure).
      coords: [G, 2] coefficient coordinates (x, y) (e.g. `grid(...)`, or `from_uv(grid(...), frame)`).
      data: `landscape.PathData`; data.x [N, ...], data.y [N]; data.train_x [num_batches, B, ...] is required
        when recomputing statistics of a model with BatchNorm.
      chunk_size: points per vmapped chunk (None: all G at once).
      recompute_batch_stats: recompute BatchNorm statistics at every point (default; no effect without
        BatchNorm). Off: statistics are combined with the point's coefficients (see `point_variables`).
      batch_size: evaluate data.x in chunks of this many examples (must divide N); None: all at once.

    Returns:
      {'coords': [G, 2], 'uv': [G, 2] orthonormal in-plane coordinates (`to_uv`), 'error': [G],
      'loss': [G] mean NLL in nats, 'agreement_a': [G], 'agreement_b': [G]}.

    Raises:
      ValueError: structures or leaf shapes differ, the plane is degenerate (θ_b parallel to θ_a), coords is
        not [G, 2], chunk_size < 1, train_x missing when needed, or batch_size does not divide N.
    """
    _check_variables(variables_a, variables_b)
    coords = jnp.asarray(coords, jnp.float32)
    if coords.ndim != 2 or coords.shape[1] != 2 or coords.shape[0] < 1:
        raise ValueError(f"coords: expected [G >= 1, 2] coefficient coordinates, got shape {tuple(coords.shape)}")
    if chunk_size is not None and (not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1):
        raise ValueError(f"chunk_size={chunk_size!r}: expected a positive int or None")
    recompute = bool(recompute_batch_stats) and landscape._has_batch_stats(variables_a)
    data = _check_data(data, recompute, batch_size)
    plane_frame = _frame_jit(variables_a["params"], variables_b["params"])
    norm_b = float(jnp.hypot(plane_frame.b_along, plane_frame.b_perp))
    if not (
        np.isfinite(plane_frame).all() and float(plane_frame.norm_a) > 0 and float(plane_frame.b_perp) > 1e-5 * norm_b
    ):
        raise ValueError(
            "variables_a and variables_b: the params are zero or parallel, so the plane through the origin, θ_a "
            f"and θ_b is degenerate (‖θ_a‖ = {float(plane_frame.norm_a):g}, "
            f"‖θ_b⊥‖ = {float(plane_frame.b_perp):g})"
        )
    chunk_size = None if chunk_size is None else int(chunk_size)
    out = _plane_jit(
        apply_fn,
        coords,
        variables_a,
        variables_b,
        data,
        recompute=recompute,
        batch_size=batch_size,
        chunk_size=chunk_size,
    )
    return {"coords": coords, "uv": _to_uv_jit(coords, plane_frame), **out}
