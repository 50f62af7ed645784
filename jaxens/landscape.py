"""Loss landscape along straight lines in weight space: interpolation, BatchNorm recomputation, error barrier.

For two networks θ_a, θ_b of the same architecture, the linear path θ(α) = (1 − α)θ_a + αθ_b is evaluated on a
grid of α in ONE jitted call vmapped over α (`linear_path`). Its error barrier
(docs/definitions.md#error-barrier; Frankle et al. 2020, "Linear Mode Connectivity and the Lottery Ticket
Hypothesis") measures how far the path rises above its endpoints (`error_barrier`, `barrier`).

BatchNorm statistics of an interpolated network are not the interpolated statistics: the running means and
variances of θ_a and θ_b describe THEIR activations, not θ(α)'s. They are therefore recomputed on training data
before evaluation (`recompute_batch_stats`, on by default; docs/definitions.md#batchnorm-statistics), as
Izmailov et al. 2018 ("Averaging Weights Leads to Wider Optima and Better Generalization") do for averaged
weights and Garipov et al. 2018 ("Loss Surfaces, Mode Connectivity, and Fast Ensembling of DNNs") along curves
between modes.

Everything here is written for ONE network (one member's variables); map over the member axis K outside.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import FrozenDict

from jaxens import metrics

PyTree = Any
Path = tuple[str, ...]
ApplyFn = Callable[..., Any]

BASELINES = ("mean", "linear")


class PathData(NamedTuple):
    """The data a linear path is evaluated on (a pytree: every field is an array, or None).

    Attributes:
      x: [N, ...] normalized evaluation inputs.
      y: [N] int labels of `x`.
      train_x: [num_batches, B, ...] normalized training batches on which BatchNorm statistics are
        recomputed (see `recompute_batch_stats`); None when nothing is recomputed (no BatchNorm, or
        `recompute_batch_stats=False`).
    """

    x: jax.Array
    y: jax.Array
    train_x: jax.Array | None = None


def interpolate(tree_a: PyTree, tree_b: PyTree, alpha) -> PyTree:
    """The point θ(α) = (1 − α)·θ_a + α·θ_b of the line through two pytrees, leafwise.

    Written as (1 − α)a + αb (not a + α(b − a)) so that α = 0 gives exactly `tree_a` and α = 1 exactly
    `tree_b`. Each leaf keeps the dtype of `tree_a`'s leaf.

    Args:
      tree_a, tree_b: pytrees of the same structure and leaf shapes (float leaves, e.g. params).
      alpha: scalar; any real value (outside [0, 1] extrapolates).

    Returns:
      A pytree like `tree_a`.
    """
    return jax.tree.map(lambda a, b: ((1 - alpha) * a + alpha * b).astype(jnp.result_type(a)), tree_a, tree_b)


def _key_name(key: Any) -> str:
    return str(getattr(key, "key", getattr(key, "name", key)))


def _has_batch_stats(variables) -> bool:
    return bool(jax.tree.leaves(variables.get("batch_stats", {})))


def _replace(variables, name: str, value):
    """`variables` with collection `name` replaced (a dict or FrozenDict of the same kind)."""
    out = {**variables, name: value}
    return FrozenDict(out) if isinstance(variables, FrozenDict) else out


def _first_arg(args, kwargs, name: str):
    return args[0] if args else kwargs[name]


def _normalizer_stats(module: nn.BatchNorm, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The (mean, biased variance) a BatchNorm layer in training mode normalizes its input x with.

    Mirrors `nn.BatchNorm`: reduction over every axis but the feature axes `module.axis` (the last one in
    jaxens), computed in at least float32, with var = E[x²] − E[x]² clipped at 0 when
    `use_fast_variance` (Flax's default) and E[(x − E[x])²] otherwise.
    """
    axis = module.axis if isinstance(module.axis, (tuple, list)) else (module.axis,)
    feature_axes = {a % x.ndim for a in axis}
    axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
    dtype = jnp.result_type(x) if module.dtype is None else module.dtype
    if getattr(module, "force_float32_reductions", True):
        dtype = jnp.promote_types(dtype, jnp.float32)
    x = x.astype(dtype)
    mean = x.mean(axes)
    if getattr(module, "use_fast_variance", True):
        var = jnp.maximum(0.0, jnp.square(x).mean(axes) - jnp.square(mean))
    else:
        var = jnp.square(x - jnp.expand_dims(mean, axes)).mean(axes)
    return mean, var


def _batch_statistics(apply_fn: ApplyFn, variables, x: jax.Array, dropout_key) -> dict[Path, dict[str, jax.Array]]:
    """{BatchNorm layer path: {'mean', 'var'}} normalized with on one training batch x [B, ...].

    Runs one training-mode forward pass with an interceptor on module calls that records the input of
    every `nn.BatchNorm.__call__` and (when `dropout_key` is None) makes every `nn.Dropout` the identity.
    """
    observed: dict[Path, dict[str, jax.Array]] = {}

    def observe(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        if isinstance(module, nn.BatchNorm):
            path = tuple(module.path)
            use_ra = kwargs.get("use_running_average", args[1] if len(args) > 1 else None)
            if (module.use_running_average if use_ra is None else use_ra) or kwargs.get("mask") is not None:
                raise ValueError(
                    f"BatchNorm layer {'/'.join(path)}: uses running averages or a mask in training mode; "
                    "recompute_batch_stats supports layers that normalize with full batch statistics only"
                )
            if path in observed:
                raise ValueError(
                    f"BatchNorm layer {'/'.join(path)} is called more than once per forward pass; its "
                    "training-mode statistics are not one pair (mean, var)"
                )
            mean, var = _normalizer_stats(module, _first_arg(args, kwargs, "x"))
            observed[path] = {"mean": mean, "var": var}
        elif isinstance(module, nn.Dropout) and dropout_key is None:
            return _first_arg(args, kwargs, "inputs")
        return next_fun(*args, **kwargs)

    rngs = {} if dropout_key is None else {"rngs": {"dropout": dropout_key}}
    with nn.intercept_methods(observe):
        apply_fn(variables, x, train=True, mutable=["batch_stats"], **rngs)
    return observed


def recompute_batch_stats(apply_fn: ApplyFn, variables, train_batches: jax.Array, dropout_rng=None):
    """`variables` with BatchNorm statistics measured for these weights on the given training batches.

    Definition (docs/definitions.md#batchnorm-statistics). For BatchNorm layer l, let h_l^(j) [B, ..., C]
    be the layer's input when the network `variables` runs in training mode on batch j of `train_batches`
    (every earlier BatchNorm layer normalizing with the statistics of that same batch, exactly as in a
    training step). The layer normalizes batch j with

        μ_l^(j) = mean of h_l^(j) over all axes but the feature (last) axis      # [C]
        σ²_l^(j) = mean of (h_l^(j) − μ_l^(j))² over the same axes (biased)        # [C]

    and the new statistics are the means over the J batches:

        mean_l = (1/J) Σ_j μ_l^(j),    var_l = (1/J) Σ_j σ²_l^(j).

    This is the average of what each layer normalized with, the quantity its running averages estimate
    whatever their momentum; it is not the pooled variance of all J·B activations (which would add the
    variance of the batch means). μ and σ² are computed as `nn.BatchNorm` computes them (float32 at least;
    Flax's fast variance E[h²] − E[h]², clipped at 0, unless the layer sets `use_fast_variance=False`).

    Mechanism: `flax.linen.intercept_methods` observes the input of every `nn.BatchNorm.__call__` during the
    training-mode pass; the layer's momentum plays no part. The batches run one after another (`lax.map`);
    the function is pure and jit/vmap-able.

    Dropout: with `dropout_rng` None (default) every `nn.Dropout` is the identity during the pass, so the
    statistics are deterministic and describe the evaluation-time (dropout-free) activations. Given a key,
    dropout runs as in training, batch j with key fold_in(dropout_rng, j).

    Args:
      apply_fn: `model.apply` of a Flax module (not jitted: the interceptor must see the module calls),
        called as `apply_fn(variables, x, train=True, mutable=['batch_stats'], [rngs=...])`.
      variables: one network's variables {'params', 'batch_stats'?, ...}.
      train_batches: [num_batches, B, ...] normalized training inputs.
      dropout_rng: None (dropout off) or a PRNG key for dropout.

    Returns:
      `variables` with 'batch_stats' replaced by a tree of the same structure, shapes and dtypes holding
      {'mean': mean_l, 'var': var_l} per layer; `variables` itself, unchanged, if it has no BatchNorm
      statistics.

    Raises:
      ValueError: no batches, or the BatchNorm layers observed do not match `variables['batch_stats']`.
    """
    if not _has_batch_stats(variables):
        return variables
    if train_batches is None or train_batches.ndim < 2 or train_batches.shape[0] < 1:
        shape = None if train_batches is None else tuple(train_batches.shape)
        raise ValueError(f"train_batches: expected [num_batches >= 1, B, ...] training inputs, got {shape}")

    def one_batch(args):
        x, j = args
        key = None if dropout_rng is None else jax.random.fold_in(dropout_rng, j)
        return _batch_statistics(apply_fn, variables, x, key)

    num_batches = train_batches.shape[0]
    per_batch = jax.lax.map(one_batch, (train_batches, jnp.arange(num_batches)))  # leaves [J, C]
    observed = jax.tree.map(lambda s: s.mean(axis=0), per_batch)

    old = variables["batch_stats"]
    stored = {tuple(_key_name(k) for k in p[:-1]) for p, _ in jax.tree_util.tree_flatten_with_path(old)[0]}
    if stored != set(observed):
        names = lambda paths: sorted("/".join(p) for p in paths)  # noqa: E731
        raise ValueError(
            "BatchNorm layers seen in the training-mode pass do not match variables['batch_stats']: "
            f"only stored {names(stored - set(observed))}, only seen {names(set(observed) - stored)} "
            "(is apply_fn jitted? pass the module's un-jitted apply)"
        )

    def new_leaf(path, leaf):
        names = tuple(_key_name(k) for k in path)
        value = observed[names[:-1]][names[-1]]
        if value.size != leaf.size:
            raise ValueError(f"batch_stats/{'/'.join(names)}: stored shape {leaf.shape}, measured {value.shape}")
        return value.reshape(leaf.shape).astype(leaf.dtype)

    return _replace(variables, "batch_stats", jax.tree_util.tree_map_with_path(new_leaf, old))


def _eval_logits(apply_fn: ApplyFn, variables, x: jax.Array, batch_size: int | None) -> jax.Array:
    """Eval-mode logits [N, C] of x [N, ...], in chunks of `batch_size` examples if given."""
    if batch_size is None or batch_size >= x.shape[0]:
        return apply_fn(variables, x, train=False)
    chunks = x.reshape((x.shape[0] // batch_size, batch_size, *x.shape[1:]))  # [N/b, b, ...]
    logits = jax.lax.map(lambda xb: apply_fn(variables, xb, train=False), chunks)  # [N/b, b, C]
    return logits.reshape((x.shape[0], logits.shape[-1]))


def _path_point(apply_fn, alpha, variables_a, variables_b, data: PathData, recompute: bool, batch_size):
    """Error and mean NLL of θ(α) on data.x (one α; vmapped by `_path`)."""
    if recompute and _has_batch_stats(variables_a):
        # Interpolated statistics would be overwritten: interpolate everything else, then measure.
        rest_a = {k: v for k, v in variables_a.items() if k != "batch_stats"}
        rest_b = {k: v for k, v in variables_b.items() if k != "batch_stats"}
        variables = {**interpolate(rest_a, rest_b, alpha), "batch_stats": variables_a["batch_stats"]}
        assert data.train_x is not None  # `linear_path` checks it when recomputing
        variables = recompute_batch_stats(apply_fn, variables, data.train_x)
    else:
        variables = interpolate(variables_a, variables_b, alpha)
    logits = _eval_logits(apply_fn, variables, data.x, batch_size)  # [N, C]
    return {"error": metrics.error(logits, data.y), "loss": metrics.nll(logits, data.y)}


def _path(apply_fn, alphas, variables_a, variables_b, data, recompute, batch_size):
    point = lambda a: _path_point(apply_fn, a, variables_a, variables_b, data, recompute, batch_size)  # noqa: E731
    return jax.vmap(point)(alphas)  # each [A]


_path_jit = jax.jit(_path, static_argnames=("apply_fn", "recompute", "batch_size"))


def linear_path(
    apply_fn: ApplyFn,
    variables_a,
    variables_b,
    alphas,
    data: PathData,
    recompute_batch_stats: bool = True,
    batch_size: int | None = None,
) -> dict[str, jax.Array]:
    """Error and loss of θ(α) = (1 − α)θ_a + αθ_b for every α, in ONE jitted call vmapped over α.

    Per α: interpolate the parameters (and the BatchNorm statistics when not recomputing them) → optionally
    recompute the BatchNorm statistics on `data.train_x` (`recompute_batch_stats`;
    docs/definitions.md#batchnorm-statistics) → evaluate in eval mode on `data.x` with `jaxens.metrics.error`
    and `jaxens.metrics.nll`.

    The compiled function is cached per (apply_fn, shapes, options): pass the same `apply_fn` object (e.g.
    `model.apply` of one module) to reuse it. Memory grows with A (all α run at once).

    Args:
      apply_fn: `model.apply` of a Flax module (un-jitted), `apply_fn(variables, x, train=False)` → logits [N, C].
      variables_a, variables_b: the two networks' variables, same structure ({'params', 'batch_stats'?}).
      alphas: [A] interpolation coefficients (include 0 and 1 for `error_barrier`).
      data: `PathData`; `train_x` is required when recomputing statistics of a model with BatchNorm.
      recompute_batch_stats: recompute BatchNorm statistics at every α (default; no effect without BatchNorm).
      batch_size: evaluate data.x in chunks of this many examples (must divide N); None: all at once.

    Returns:
      {'alpha': [A], 'error': [A] in [0, 1], 'loss': [A] mean NLL in nats}.

    Raises:
      ValueError: structures differ, `train_x` missing when needed, or `batch_size` does not divide N.
    """
    if jax.tree.structure(variables_a) != jax.tree.structure(variables_b):  # type: ignore[operator]
        raise ValueError("variables_a and variables_b: different pytree structures (not the same architecture?)")
    alphas = jnp.asarray(alphas, jnp.float32)
    if alphas.ndim != 1:
        raise ValueError(f"alphas: expected [A], got shape {tuple(alphas.shape)}")
    recompute = bool(recompute_batch_stats) and _has_batch_stats(variables_a)
    if recompute and data.train_x is None:
        raise ValueError(
            "data.train_x is None: recomputing BatchNorm statistics needs training batches [num_batches, B, ...] "
            "(or pass recompute_batch_stats=False)"
        )
    n = data.x.shape[0]
    if batch_size is not None and (batch_size < 1 or n % batch_size):
        raise ValueError(f"batch_size={batch_size}: must be a positive divisor of the {n} evaluation examples")
    if not recompute:
        data = data._replace(train_x=None)  # Not needed: don't ship it to the device.
    out = _path_jit(apply_fn, alphas, variables_a, variables_b, data, recompute=recompute, batch_size=batch_size)
    return {"alpha": alphas, **out}


def _endpoint(alphas: np.ndarray, value: float) -> int:
    hits = np.flatnonzero(np.isclose(alphas, value, rtol=0.0, atol=1e-6))
    if hits.size == 0:
        raise ValueError(
            f"alphas must include {value:g} (the endpoints θ_a at α=0 and θ_b at α=1), got {alphas.tolist()}"
        )
    return int(hits[0])


def error_barrier(errors, alphas, baseline: str = "mean") -> jax.Array:
    """Error barrier of a linear path (docs/definitions.md#error-barrier; Frankle et al. 2020, "Linear Mode
    Connectivity and the Lottery Ticket Hypothesis").

    With err(α) the error of θ(α) = (1 − α)θ_a + αθ_b on a grid that includes α = 0 and α = 1:

        'mean':    B = max_α err(α) − ½(err(0) + err(1))
        'linear':  B = max_α [err(α) − ((1 − α)err(0) + α·err(1))]

    Both are ≥ 0 (the endpoints are on the grid); B ≈ 0 means the two networks are linearly mode connected.
    Works for any per-α quantity, e.g. the path's 'loss' for a loss barrier.

    Args:
      errors: [..., A] err(α) for each α (leading axes, e.g. members, are kept). May be traced.
      alphas: [A] the α of each column, concrete (not traced), in any order.
      baseline: 'mean' or 'linear'.

    Returns:
      [...] the barrier.

    Raises:
      ValueError: unknown baseline, shapes differ, or 0 or 1 missing from `alphas`.
    """
    if baseline not in BASELINES:
        raise ValueError(f"baseline={baseline!r}: allowed: {', '.join(BASELINES)}")
    alphas_np = np.asarray(alphas, np.float64)
    errors = jnp.asarray(errors)
    if alphas_np.ndim != 1 or errors.ndim < 1 or errors.shape[-1] != alphas_np.shape[0]:
        raise ValueError(
            f"errors of shape {tuple(errors.shape)} and alphas of shape {alphas_np.shape}: expected [..., A] and [A]"
        )
    err0 = errors[..., _endpoint(alphas_np, 0.0)]  # [...]
    err1 = errors[..., _endpoint(alphas_np, 1.0)]  # [...]
    if baseline == "mean":
        return errors.max(axis=-1) - 0.5 * (err0 + err1)
    a = jnp.asarray(alphas_np, errors.dtype)  # [A]
    line = (1 - a) * err0[..., None] + a * err1[..., None]  # [..., A]
    return jnp.max(errors - line, axis=-1)


def barrier(
    apply_fn: ApplyFn,
    variables_a,
    variables_b,
    data: PathData,
    num_alphas: int = 11,
    baseline: str = "mean",
    recompute_batch_stats: bool = True,
    batch_size: int | None = None,
) -> dict[str, jax.Array]:
    """`linear_path` on `num_alphas` evenly spaced α in [0, 1] (endpoints included) and its error barrier.

    The barrier between two networks of Zamparo et al. §3, Fig. 3 (Frankle et al. 2020;
    docs/definitions.md#error-barrier).

    Args:
      apply_fn, variables_a, variables_b, data, recompute_batch_stats, batch_size: as in `linear_path`.
      num_alphas: grid size A ≥ 2.
      baseline: 'mean' or 'linear' (see `error_barrier`).

    Returns:
      The path {'alpha': [A], 'error': [A], 'loss': [A]} plus 'barrier': the scalar error barrier.
    """
    if num_alphas < 2:
        raise ValueError(f"num_alphas={num_alphas}: need at least 2 (the endpoints)")
    if baseline not in BASELINES:
        raise ValueError(f"baseline={baseline!r}: allowed: {', '.join(BASELINES)}")
    alphas = np.linspace(0.0, 1.0, num_alphas, dtype=np.float32)
    path = linear_path(apply_fn, variables_a, variables_b, alphas, data, recompute_batch_stats, batch_size)
    return {**path, "barrier": error_barrier(path["error"], alphas, baseline)}


def map_in_chunks(fn: Callable, xs, chunk_size: int | None):
    """`fn` mapped over the leading axis G of the pytree `xs`, `chunk_size` elements at a time.

    Each chunk is vmapped and the chunks run one after another (`lax.map`), so memory grows with the chunk,
    not with G. G is padded to a multiple of the chunk with copies of the last element, whose results are
    dropped. Traced inside the caller's jitted function.

    Args:
      fn: a function of one element (leaves without the leading axis) returning a pytree.
      xs: a pytree whose leaves share the leading axis G ≥ 1.
      chunk_size: elements per vmapped chunk; None: all G at once.

    Returns:
      `fn`'s results stacked on a leading axis G.
    """
    g = jax.tree.leaves(xs)[0].shape[0]
    chunk = g if chunk_size is None else min(chunk_size, g)
    pad = -g % chunk
    if pad:
        xs = jax.tree.map(lambda v: jnp.concatenate([v, jnp.repeat(v[-1:], pad, axis=0)]), xs)
    chunks = jax.tree.map(lambda v: v.reshape((-1, chunk, *v.shape[1:])), xs)  # [G/chunk, chunk, ...]
    out = jax.lax.map(jax.vmap(fn), chunks)  # [G/chunk, chunk, ...]
    return jax.tree.map(lambda v: v.reshape((-1, *v.shape[2:]))[:g], out)


def _predict_points(apply_fn, variables, x, train_x, chunk_size: int, batch_size):
    def one(point):
        if train_x is not None:
            point = recompute_batch_stats(apply_fn, point, train_x)
        return _eval_logits(apply_fn, point, x, batch_size)  # [N, C]

    return map_in_chunks(one, variables, chunk_size)  # [P, N, C]


_predict_points_jit = jax.jit(_predict_points, static_argnames=("apply_fn", "chunk_size", "batch_size"))


def predict_points(
    apply_fn: ApplyFn,
    variables,
    x: jax.Array,
    train_x: jax.Array | None = None,
    chunk_size: int = 8,
    batch_size: int | None = None,
) -> jax.Array:
    """Eval-mode logits of P networks stacked on a leading axis, in ONE jitted call.

    The P networks run `chunk_size` at a time (vmapped), the chunks one after another (`lax.map`), so memory
    grows with `chunk_size`, not P. For new weights (subspace samples, averages, interpolations) pass `train_x`:
    every network's BatchNorm statistics are then recomputed on those training batches first
    (`recompute_batch_stats`; docs/definitions.md#batchnorm-statistics); snapshots of trained networks keep
    their own.

    Args:
      apply_fn: `model.apply` of a Flax module (un-jitted).
      variables: {'params': leaves [P, ...], 'batch_stats'?: leaves [P, ...]}.
      x: [N, ...] normalized inputs.
      train_x: None, or [num_batches, B, ...] normalized training batches to recompute BatchNorm statistics
        on (ignored for models without BatchNorm).
      chunk_size: networks evaluated together.
      batch_size: evaluate x in chunks of this many examples (must divide N); None: all at once.

    Returns:
      [P, N, C] logits.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size}: must be >= 1")
    leading = {v.shape[0] if v.ndim else None for v in jax.tree.leaves(variables)}
    if len(leading) != 1 or None in leading:
        raise ValueError(
            f"variables: every leaf needs the same leading axis P, got leading sizes {sorted(map(str, leading))}"
        )
    n = x.shape[0]
    if batch_size is not None and (batch_size < 1 or n % batch_size):
        raise ValueError(f"batch_size={batch_size}: must be a positive divisor of the {n} inputs")
    if not _has_batch_stats(variables):
        train_x = None
    return _predict_points_jit(apply_fn, variables, x, train_x, chunk_size=chunk_size, batch_size=batch_size)
