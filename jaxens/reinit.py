"""Layer re-initialization at spawn (Zamparo et al. §3): which layers (or tensors) a child re-draws.

Zamparo et al. re-initialize a fraction of a partially trained network's *layers*, from the input side
('low') or from the output side ('high'). The unit of that choice is either

- `'layer'` (the definition; `layers`, `group_layers`): a weight-bearing module (Dense, Conv, an embedding,
  a whole attention module) with its normalization modules: the one that normalizes its output in
  post-normalized models (Conv → BN), the one in front of it in pre-normalized ones (BN → ReLU → Conv,
  LN → attention); or
- `'tensor'` (`tensor_units`, `mask`): every parameter tensor on its own (the earlier behaviour).

Units are ordered along the forward pass (`jaxens.models.forward_order`). `select` takes whole units from
the chosen side until the chosen fraction of the parameter *count* is covered (so it may cover a little
more than the fraction, never less). The selected tensors get fresh initializer draws; under the layer
unit the BatchNorm running statistics of the selected layers restart too (`stats_mask`), so a re-drawn
layer is exactly a freshly initialized one. See docs/definitions.md#re-initialization. Apart from
`layers` and `units` (which trace the model, shapes only), all functions are pure and work on any params
pytree of one member.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxens.config import REINIT_SIDES as SIDES
from jaxens.models.order import forward_order, param_paths, param_sizes

UNITS = ("layer", "tensor")
PyTree = Any
Path = tuple[str, ...]

# Modules whose parameters only rescale and shift a normalized activation: they join a layer.
NORM_MODULES: tuple[type, ...] = (nn.BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
# Modules that are one layer with every parameter below them (attention's q, k, v and output projections
# act together, in parallel rather than one after another).
WHOLE_MODULES: tuple[type, ...] = (nn.MultiHeadDotProductAttention,)


@dataclasses.dataclass(frozen=True)
class Unit:
    """One unit of re-initialization: a layer, or (under the tensor unit) a single tensor.

    Attributes:
      name: the layer's weight-bearing module path joined by '/' (e.g. 'stage2_block1/shortcut_conv'), or
        the tensor's path (e.g. 'dense0/kernel').
      tensors: its parameter tensors' paths, in forward order.
      modules: its modules' paths, in forward order; their BatchNorm running statistics restart with it
        (none for a tensor: the tensor unit keeps every statistic).
    """

    name: str
    tensors: tuple[Path, ...]
    modules: tuple[Path, ...] = ()


def _trace_modules(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[dict[Path, type], dict[Path, Path | None]]:
    """Each called module's class, and for each normalization module the module whose output it takes as is.

    One forward pass is traced (shapes only). A module's output is identified by the array object it
    returns, so only a direct hand-over counts: a norm fed by `relu(conv(x))`, `x + attn(x)` or a
    concatenation has no producer (None).
    """
    kinds: dict[Path, type] = {}
    producer: dict[int, Path] = {}  # id(output array) → the innermost module that returned it.
    normalizes: dict[Path, Path | None] = {}
    alive: list[Any] = []  # Keeps every recorded output alive, so no id is reused during the trace.

    def record(next_fun, args, kwargs, context):
        path = tuple(context.module.path)
        if context.method_name != "__call__" or path in kinds:
            return next_fun(*args, **kwargs)
        kinds[path] = type(context.module)
        if isinstance(context.module, NORM_MODULES):
            x = args[0] if args else next(iter(kwargs.values()), None)
            normalizes[path] = producer.get(id(x))
        out = next_fun(*args, **kwargs)
        producer.setdefault(id(out), path)  # A container returning its child's output keeps the child.
        alive.append(out)
        return out

    key = jax.random.PRNGKey(0)
    with nn.intercept_methods(record):
        jax.eval_shape(
            lambda: model.init({"params": key, "dropout": key}, jnp.zeros((1, *input_shape), jnp.float32), train=False)
        )  # One example [1, *input_shape]; eval mode, as `forward_order` traces it.
    return kinds, normalizes


def group_layers(order: Sequence[Path], kinds: dict[Path, type], normalizes: dict[Path, Path | None]) -> list[Unit]:
    """Groups parameter tensors into layers (Zamparo et al. §3), in forward order; pure.

    A layer is one weight-bearing module (any module owning parameters that is not a normalization; a
    `WHOLE_MODULES` module such as attention with everything below it) and its normalization modules:

    - post-normalized models (Conv → BN, Dense → LN; every normalization takes a layer's output as is):
      a normalization joins the layer whose output it normalizes;
    - pre-normalized models (pre-activation ResNet, DenseNet, pre-LN ViT; some normalization reads a
      residual sum or a concatenation): every normalization joins the next layer in forward order, the
      BN → ReLU → Conv unit of those architectures (and the LN → sublayer unit of pre-LN transformers);
    - a normalization with no such layer is a layer of its own.

    Args:
      order: every tensor's path, input side first (`jaxens.models.forward_order`).
      kinds: each module path's class (modules not listed count as weight-bearing).
      normalizes: for normalization modules, the module whose output they take as is, or None.

    Returns:
      The layers in the forward order of their weight-bearing module, each tensor in exactly one.
    """

    def owner(module: Path) -> Path:  # The outermost enclosing whole module (attention), else itself.
        whole = (module[:i] for i in range(1, len(module)) if issubclass(kinds.get(module[:i], object), WHOLE_MODULES))
        return next(whole, module)

    def is_norm(module: Path) -> bool:
        return issubclass(kinds.get(module, object), NORM_MODULES)

    owners = list(dict.fromkeys(owner(p[:-1]) for p in order))  # Modules by their first tensor's position.
    weights = {m for m in owners if not is_norm(m)}
    norms = [m for m in owners if is_norm(m)]
    producer: dict[Path, Path | None] = {}  # A normalization → the layer whose output it takes as is.
    for n in norms:
        source = normalizes.get(n)
        producer[n] = owner(source) if source is not None and owner(source) in weights else None
    # Pre-normalized (pre-activation, pre-LN): some normalization reads a residual sum or a concatenation.
    pre = any(p is None for p in producer.values())
    members = {m: [m] for m in owners if m in weights}  # A layer's weight-bearing module → its modules.
    for n in norms:
        following = next((m for m in owners[owners.index(n) + 1 :] if m in weights), None)
        target = following if pre and following is not None else producer[n]
        members.setdefault(n if target is None else target, []).append(n)  # With neither: a layer of its own.
    position = {m: i for i, m in enumerate(owners)}
    units = []
    for head in sorted(members, key=position.__getitem__):
        modules = set(members[head])
        units.append(
            Unit(
                name="/".join(head),
                tensors=tuple(p for p in order if owner(p[:-1]) in modules),
                modules=tuple(sorted(modules, key=position.__getitem__)),
            )
        )
    return units


def layers(model: nn.Module, input_shape: Sequence[int]) -> list[Unit]:
    """The model's layers in forward order (`group_layers` on one traced forward pass).

    Args:
      model: a model of `jaxens.models` (one member).
      input_shape: one example's shape.

    Returns:
      The `Unit`s of the layers (Zamparo et al. §3; docs/definitions.md#re-initialization), input side first.
    """
    input_shape = tuple(input_shape)
    kinds, normalizes = _trace_modules(model, input_shape)
    return group_layers(forward_order(model, input_shape), kinds, normalizes)


def tensor_units(order: Sequence[Path]) -> list[Unit]:
    """Every tensor a unit of its own, in `order` (the tensor unit; no running statistics restart).

    Args:
      order: every tensor's path, input side first (`jaxens.models.forward_order`).

    Returns:
      One `Unit` per path, named by the path joined with '/', with no modules.
    """
    return [Unit(name="/".join(p), tensors=(tuple(p),)) for p in order]


def units(model: nn.Module, input_shape: Sequence[int], unit: str) -> list[Unit]:
    """The units of `unit` ('layer' or 'tensor') of the model, in forward order.

    Args:
      model: a model of `jaxens.models` (one member).
      input_shape: one example's shape.
      unit: 'layer' (`layers`) or 'tensor' (`tensor_units` of the forward order).

    Returns:
      The units, input side first.
    """
    if unit not in UNITS:
        raise ValueError(f"unit={unit!r}: allowed: {', '.join(UNITS)}")
    if unit == "layer":
        return layers(model, input_shape)
    return tensor_units(forward_order(model, tuple(input_shape)))


def select(params: PyTree, chosen_from: Sequence[Unit], fraction: float, side: str) -> list[Unit]:
    """The units to re-initialize: the shortest run of whole units from `side` covering `fraction`.

    Zamparo et al. §3 re-initialize a fraction of the layers from the input ('low') or the output ('high')
    side; docs/definitions.md#re-initialization, step 3.

    Args:
      params: one member's parameters (any pytree of dicts; only shapes are read).
      chosen_from: the units in forward order (`units`); together they hold every tensor exactly once.
      fraction: in [0, 1], the share of the parameter count to cover.
      side: 'low' (from the input) or 'high' (from the output).

    Returns:
      The selected units, nearest to `side` first: their sizes sum to at least `fraction` of all
      parameters, and without the last one they would not (none for fraction 0, all for fraction 1).
    """
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction={fraction!r}: must lie in [0, 1]")
    if side not in SIDES:
        raise ValueError(f"side={side!r}: allowed: {', '.join(SIDES)}")
    listed = [p for u in chosen_from for p in u.tensors]
    if sorted(listed) != sorted(param_paths(params)):
        raise ValueError("order does not list every parameter tensor of params exactly once")
    sizes = [sum(param_sizes(params, u.tensors)) for u in chosen_from]
    total = sum(sizes)
    seq = list(zip(chosen_from, sizes))
    chosen, covered = [], 0
    for u, size in seq if side == "low" else reversed(seq):
        if covered >= fraction * total:
            break
        chosen.append(u)
        covered += size
    return chosen


def mask_of(params: PyTree, chosen: Sequence[Unit]) -> PyTree:
    """A pytree of Python bools with the structure of `params`: True for the tensors of `chosen`.

    Args:
      params: one member's parameters (only the structure is read).
      chosen: the units to re-initialize (`select`).

    Returns:
      The mask, one bool per tensor of `params`.
    """
    picked = {p for u in chosen for p in u.tensors}
    return jax.tree.unflatten(jax.tree.structure(params), [p in picked for p in param_paths(params)])


def stats_mask(batch_stats: PyTree, modules: Collection[Path]) -> PyTree:
    """Booleans over `batch_stats` ({'norm0': {'mean', 'var'}, ...}): True for the statistics of `modules`
    (or of modules below them), which restart at their initial values (mean 0, var 1) with their layer.

    Args:
      batch_stats: one member's BatchNorm running statistics (only the structure is read).
      modules: module paths, e.g. the chosen units' `Unit.modules`.

    Returns:
      A pytree of Python bools with the structure of `batch_stats`.
    """
    owned = lambda path: any(path[: len(m)] == tuple(m) for m in modules)  # noqa: E731
    return jax.tree.unflatten(jax.tree.structure(batch_stats), [owned(p[:-1]) for p in param_paths(batch_stats)])


def mask(params: PyTree, order: Sequence[Path], fraction: float, side: str) -> PyTree:
    """Which tensors to re-initialize under the tensor unit: a pytree of Python bools shaped as `params`.

    Args:
      params: one member's parameters (any pytree of dicts; only shapes are read).
      order: every tensor's path, input side first (`jaxens.models.forward_order`).
      fraction: in [0, 1], the share of the parameter count to cover.
      side: 'low' (from the input) or 'high' (from the output).

    Returns:
      Booleans, True for the tensors to re-initialize: the shortest run of whole tensors from `side`
      whose sizes sum to at least `fraction` of all parameters (none for fraction 0).
    """
    return mask_of(params, select(params, tensor_units(order), fraction, side))


def covered_fraction(params: PyTree, tensor_mask: PyTree) -> float:
    """Share of the parameter count that `tensor_mask` selects.

    Args:
      params: one member's parameters (only shapes are read).
      tensor_mask: bools with the structure of `params` (`mask_of`, `mask`).

    Returns:
      Σ sizes of the selected tensors / Σ sizes of all tensors, a float in [0, 1].
    """
    sizes = [math.prod(x.shape) for x in jax.tree.leaves(params)]
    picked = [s for s, m in zip(sizes, jax.tree.leaves(tensor_mask)) if m]
    return sum(picked) / sum(sizes)


def reinitialize(params: PyTree, fresh: PyTree, tensor_mask: PyTree) -> PyTree:
    """`fresh` where the mask is True, `params` elsewhere (tensor by tensor; a pure function).

    Args:
      params: the current values, a pytree (any leading axes, e.g. the children's [k, ...]).
      fresh: fresh initializer draws with the structure and shapes of `params`.
      tensor_mask: a Python bool per tensor, with the structure of `params`.

    Returns:
      A pytree like `params`.
    """
    return jax.tree.map(lambda p, f, m: f if m else p, params, fresh, tensor_mask)


def changed(params_a: PyTree, params_b: PyTree) -> PyTree:
    """Per tensor, whether two parameter pytrees differ anywhere (for tests and inspection).

    Args:
      params_a: a parameter pytree.
      params_b: a pytree of the same structure and leaf shapes.

    Returns:
      A pytree of Python bools, True for the tensors with at least one different entry.
    """
    return jax.tree.map(lambda a, b: bool(jnp.any(a != b)), params_a, params_b)
