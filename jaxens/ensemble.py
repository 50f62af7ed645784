"""The stacked ensemble: K members in one pytree, one jitted training step for all of them.

Per-member code (`member_train_step`, `member_logits`) is written for ONE member and mapped over the
leading member axis K once, by `map_members`, with the configured strategy:

- `vmap`: `jax.vmap` over K. Vectorizes well for MLPs; on CPU a conv with batched kernels lowers to a
  grouped convolution, which can be slower than a loop.
- `loop`: a Python loop over the K members inside the jitted function (K copies of the member step in
  one XLA program), stacking the results.
- `shard_map/<within>`: `jax.shard_map` manual over the 'member' axis of the run's mesh
  (`jaxens.sharding`): each row of M devices runs its K/M members with `within` ('vmap' or 'loop'), the
  'data' axis left to XLA's partitioner. The config value 'shard_map' resolves `within` as 'auto' does
  (`resolve_strategy`). On CPU, `XLA_FLAGS=--xla_force_host_platform_device_count=D` (or
  `jax_num_cpu_devices`) gives D host devices.

Every strategy runs on the mesh the state is sharded over (members on 'member', each member's minibatch
split over 'data'); under 'vmap' XLA's partitioner shards the mapped axis itself.

All compute the same numbers (tested). A training step maps the members twice: their gradients
(`member_gradients`), then their optimizer updates (`update_members`).

Divergence: every step checks, on the device, that each member's loss and gradients are finite. A member
whose are not keeps its state from before that step from then on (frozen) and records the step in
`EnsembleState.diverged`; the others train on unaffected (their numbers do not depend on it). The host
reads the flags when it pauses anyway (evaluation, checkpoints), never per step. The selects that freeze
a member run only in steps where some member does not step (`update_members`).

Optimizer noise (SG-MCMC, `jaxens.optim.sgmcmc`) is drawn per member and per step from the member's
dropout stream; the derivation is a contract (`noise_key`). Every optimizer's `update` receives it as the
extra argument `noise_key=` and all but `sgmcmc` ignore it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import PartitionSpec as P

from jaxens import data as data_lib
from jaxens import progress
from jaxens import rng as rng_lib
from jaxens import sharding as sharding_lib
from jaxens.config import MEMBER_STRATEGIES, STEP_LOOPS

PyTree = Any


@struct.dataclass
class EnsembleState:
    """Everything that evolves during training; every leaf has the leading member axis K.

    Attributes:
      step: [K] int32, optimizer steps each member has taken.
      params: leaves [K, ...].
      batch_stats: leaves [K, ...], per-member BatchNorm statistics ({} for models without BatchNorm).
      opt_state: leaves [K, ...] (momentum, schedule counts, ...).
      rngs: the members' PRNG streams, each [K, 2].
      diverged: [K] int32, the step whose update turned the member's loss or state non-finite (the member
        is frozen at its state before that step), or -1.
    """

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: PyTree
    rngs: rng_lib.Streams
    diverged: jax.Array

    @property
    def k(self) -> int:
        return int(self.step.shape[0])


class _Replicas:
    """Shared arrays (the dataset, evaluation inputs) replicated on a mesh, once per source object and mesh."""

    def __init__(self):
        self._recent: list[tuple[Any, jax.sharding.Mesh, Any]] = []  # (source object, mesh, its copy there)

    def __call__(self, tree, mesh: jax.sharding.Mesh):
        for source, source_mesh, placed in self._recent:
            if source is tree and source_mesh == mesh:
                return placed
        placed = sharding_lib.put_shared(tree, mesh)
        self._recent = [*self._recent[-3:], (tree, mesh, placed)]  # A few recent ones (train, eval sets).
        return placed


def is_sharded(strategy: str) -> bool:
    """Whether `strategy` (resolved) runs the members under `jax.shard_map` over the mesh's 'member' axis."""
    return strategy.startswith("shard_map/")


def placement_mesh(state: EnsembleState) -> jax.sharding.Mesh:
    """The mesh a call runs the members on: the one their state is sharded over, or a one-device mesh on
    the device it lives on (a fresh or host-made state)."""
    mesh = sharding_lib.mesh_of(state.step)
    if mesh is not None:
        return mesh
    devices = getattr(state.step, "devices", None)
    return sharding_lib.single_device_mesh(next(iter(devices())) if devices else None)


def map_members(
    fn: Callable, strategy: str, in_axes: Sequence[int | None], mesh: jax.sharding.Mesh | None = None
) -> Callable:
    """Maps a one-member function over the leading member axis K of the arguments with `in_axes` 0.

    Args:
      fn: a function of one member's arguments; returns a pytree.
      strategy: 'vmap', 'loop', or 'shard_map/vmap' / 'shard_map/loop' (manual over the 'member' axis of
        `mesh`, each device row mapping its K/M members with the part after the slash; 'data' stays
        automatic, so arguments sharded on it stay sharded).
      in_axes: per positional argument, 0 (has the member axis) or None (shared by all members).
      mesh: the ('member', 'data') mesh the call runs on (`jaxens.sharding`); required by 'shard_map/*'.
        Under 'vmap', sharding constraints inside `fn` get 'member' on the mapped axis.

    Returns:
      A function of the stacked arguments returning the stacked results (leading axis K).
    """
    in_axes = tuple(in_axes)
    if is_sharded(strategy):
        if mesh is None:
            raise ValueError(f"strategy={strategy!r} needs the mesh to shard the members over")
        within = map_members(fn, strategy.removeprefix("shard_map/"), in_axes)
        specs = tuple(P(sharding_lib.MEMBER) if ax == 0 else P() for ax in in_axes)
        # Every output leaf has the member axis; shared inputs are replicated over the member rows.
        return jax.shard_map(
            within, mesh=mesh, in_specs=specs, out_specs=P(sharding_lib.MEMBER), axis_names={sharding_lib.MEMBER}
        )
    if strategy == "vmap":
        return jax.vmap(fn, in_axes=in_axes, spmd_axis_name=None if mesh is None else sharding_lib.MEMBER)
    if strategy != "loop":
        raise ValueError(f"strategy={strategy!r}: allowed: vmap, loop, shard_map/vmap, shard_map/loop")

    def looped(*args):
        k = _members_of(args, in_axes)
        outs = []
        for m in range(k):
            member_args = [jax.tree.map(lambda x: x[m], a) if ax == 0 else a for a, ax in zip(args, in_axes)]
            outs.append(fn(*member_args))
        return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

    return looped


def _members_of(args, in_axes) -> int:
    """K: the leading axis of the first leaf of the first argument with the member axis."""
    return jax.tree.leaves(next(a for a, ax in zip(args, in_axes) if ax == 0))[0].shape[0]


def init_member(model: nn.Module, tx: optax.GradientTransformation, init_key: jax.Array, input_shape):
    """One member's (params, batch_stats, opt_state) from its init key."""
    variables = model.init({"params": init_key}, jnp.zeros((1, *input_shape), jnp.float32), train=False)
    params = variables["params"]
    return params, variables.get("batch_stats", {}), tx.init(params)


def init_ensemble(
    model: nn.Module, tx: optax.GradientTransformation, streams: rng_lib.Streams, input_shape
) -> EnsembleState:
    """K members, member m initialized from `streams.init[m]`, all at step 0."""
    k = streams.init.shape[0]
    params, batch_stats, opt_state = jax.jit(jax.vmap(lambda key: init_member(model, tx, key, input_shape)))(
        streams.init
    )
    return EnsembleState(
        step=jnp.zeros((k,), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=opt_state,
        rngs=streams,
        diverged=jnp.full((k,), -1, jnp.int32),
    )


NOISE_FOLD = 1  # Folded into a member's per-step dropout key to give its optimizer-noise key.


def noise_key(dropout_stream: jax.Array, step: jax.Array) -> jax.Array:
    """The key of a member's optimizer noise (SG-MCMC's ξ) at its step `step` (before the update).

    Contract (tests re-derive it):

        dropout_key(step) = fold_in(dropout_stream, step)            # what the model's dropout uses
        noise_key(step)   = fold_in(dropout_key(step), NOISE_FOLD)   # NOISE_FOLD = 1

    So the noise follows the dropout stream: members with independent dropout streams draw independent
    noise, members sharing it (config.ensemble.shared_streams=('dropout',)) the same, and a resumed run
    draws the same noise. It differs from the dropout key itself; Flax's dropout layers use
    fold_in(dropout_key(step), h) with h a 32-bit SHA-1 hash of the layer path and call count, which equals
    NOISE_FOLD only with probability 2^-32 per layer.

    Args:
      dropout_stream: one member's dropout stream key [2] (`state.rngs.dropout`).
      step: the member's step (`state.step`), a scalar.
    """
    return jax.random.fold_in(jax.random.fold_in(dropout_stream, step), NOISE_FOLD)


def member_loss(model: nn.Module, params, batch_stats, x, y, dropout_key):
    """Mean softmax cross-entropy of one member on a batch x [B, ...], y [B] in training mode.

    Returns:
      (loss, (logits [B, C], new batch_stats)).
    """
    variables = {"params": params}
    if batch_stats:
        variables["batch_stats"] = batch_stats
        logits, updates = model.apply(variables, x, train=True, rngs={"dropout": dropout_key}, mutable=["batch_stats"])
        new_stats = updates["batch_stats"]
    else:
        logits = model.apply(variables, x, train=True, rngs={"dropout": dropout_key})
        new_stats = batch_stats
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, (logits, new_stats)


def _all_finite(tree) -> jax.Array:
    """True iff every float in `tree` is finite (a scalar; integer leaves are skipped)."""
    checks = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(checks)) if checks else jnp.bool_(True)


def member_update(
    tx: optax.GradientTransformation,
    state: EnsembleState,
    grads,
    batch_stats,
    metrics: dict,
    noise_key: jax.Array,
    lr_scale: jax.Array | None = None,
    active: jax.Array | None = None,
    check_finite: bool = True,
):
    """ONE member's optimizer update, under the divergence check.

    The member takes its step if it is `active` (default: yes), has not diverged before, and its loss
    (`metrics['loss']`) and gradients are finite: then params += update (times `lr_scale`), and the new
    optimizer state and BatchNorm statistics replace the old ones. Otherwise everything stays as it was;
    a member that was active but whose loss or gradients were not finite records its step in `diverged`
    and is frozen from then on (a select between the new and the old state). `check_finite=False` skips
    the check (every active member steps).

    Returns:
      (state, metrics): metrics zeroed for a member that did not step, plus 'steps' (1 or 0).
    """
    take, trying = step_flags(state, grads, metrics, active, check_finite)
    return apply_update(tx, state, grads, batch_stats, metrics, noise_key, lr_scale, take, trying)


def step_flags(state: EnsembleState, grads, metrics: dict, active=None, check_finite: bool = True):
    """ONE member's (take, trying) booleans: whether it takes this step, and whether it tries to (active and
    not diverged before); trying but not taking means its loss or gradients are not finite."""
    trying = state.diverged < 0 if active is None else (state.diverged < 0) & active
    if not check_finite:
        return (jnp.bool_(True) if active is None else active), trying
    return trying & _all_finite((metrics["loss"], grads)), trying


def apply_update(
    tx: optax.GradientTransformation,
    state: EnsembleState,
    grads,
    batch_stats,
    metrics: dict,
    noise_key: jax.Array,
    lr_scale: jax.Array | None,
    take: jax.Array,
    trying: jax.Array,
    select: bool = True,
):
    """ONE member's update given its `step_flags` (see `member_update`). `select=False` applies it as if
    `take` were true, skipping the selects over the state: the caller has checked that it is."""
    tx = optax.with_extra_args_support(tx)  # A plain transform ignores the noise key.
    updates, opt_state = tx.update(grads, state.opt_state, state.params, noise_key=noise_key)
    updates = _scaled(updates, lr_scale)
    params = jax.tree.map(lambda p, u: jnp.asarray(p + u).astype(p.dtype), state.params, updates)
    if select:  # The new values are computed as without the select, so a member that steps gets the same bits.
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(take, a, b), new, old)  # noqa: E731
        params, batch_stats = keep(params, state.params), keep(batch_stats, state.batch_stats)
        opt_state = keep(opt_state, state.opt_state)
    new_state = state.replace(  # type: ignore[attr-defined]  # flax struct.dataclass
        step=state.step + take.astype(state.step.dtype),
        params=params,
        batch_stats=batch_stats,
        opt_state=opt_state,
        diverged=jnp.where(trying & ~take, state.step, state.diverged),
    )
    metrics = {**metrics, "steps": jnp.ones_like(metrics["loss"])}
    return new_state, jax.tree.map(lambda v: jnp.where(take, v, jnp.zeros_like(v)), metrics)


def update_members(
    tx: optax.GradientTransformation,
    strategy: str,
    state: EnsembleState,
    grads,
    batch_stats,
    metrics: dict,
    lr_scales: jax.Array | None = None,
    ends: jax.Array | None = None,
    check_finite: bool = True,
    mesh: jax.sharding.Mesh | None = None,
):
    """All K members' `member_update`s (leaves [K, ...]), with the selects only when they are needed.

    When every member takes its step (the usual case: all active, finite, none diverged), a `lax.cond`
    runs the update without the selects over the state; they cost as much as the optimizer itself
    (measured: a 784-1024-10 MLP step 6.8 ms with them, 4.5 ms without). The numbers are the same.

    Args:
      metrics: {'loss', 'error'} [K] each member's metrics on its batch.
      lr_scales: [K] learning-rate multipliers, or None.
      ends: [K] the step each member stops at (it is inactive from there), or None.
      mesh: the mesh of a sharded strategy (see `map_members`).
    """
    active = None if ends is None else state.step < ends
    take, trying = jax.vmap(
        lambda st, g, m, a: step_flags(st, g, m, a, check_finite), in_axes=(0, 0, 0, None if active is None else 0)
    )(state, grads, metrics, active)  # [K], [K]
    noise_keys = jax.vmap(noise_key)(state.rngs.dropout, state.step)  # [K, 2]
    args = (state, grads, batch_stats, metrics, noise_keys, lr_scales, take, trying)
    in_axes = (0, 0, 0, 0, 0, None if lr_scales is None else 0, 0, 0)

    def apply(select: bool):
        fn = lambda st, g, bs, m, nk, sc, tk, tr: apply_update(tx, st, g, bs, m, nk, sc, tk, tr, select)  # noqa: E731
        return lambda: map_members(fn, strategy, in_axes, mesh)(*args)

    if not check_finite and active is None:
        return apply(select=False)()
    return jax.lax.cond(jnp.all(take), apply(select=False), apply(select=True))


def member_gradients(model: nn.Module, state: EnsembleState, x: jax.Array, y: jax.Array):
    """ONE member's gradients of its loss on a normalized batch x [B, ...], y [B] (dropout from
    fold_in(dropout, step)).

    Returns:
      (grads, new batch_stats, {'loss', 'error'} scalars).
    """
    dropout_key = jax.random.fold_in(state.rngs.dropout, state.step)
    grad_fn = jax.value_and_grad(member_loss, argnums=1, has_aux=True)
    (loss, (logits, batch_stats)), grads = grad_fn(model, state.params, state.batch_stats, x, y, dropout_key)
    return grads, batch_stats, {"loss": loss, "error": jnp.mean(jnp.argmax(logits, -1) != y)}


def _scaled(updates, lr_scale):
    """Updates times a member's learning-rate multiplier (None: unchanged)."""
    return updates if lr_scale is None else jax.tree.map(lambda u: u * lr_scale.astype(u.dtype), updates)


def member_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    state: EnsembleState,
    order: jax.Array,
    dataset: data_lib.Dataset,
    batch_size: int,
    augment: str = "none",
    padding: int = 4,
    lr_scale: jax.Array | None = None,
    active: jax.Array | None = None,
    check_finite: bool = True,
):
    """One SGD step of ONE member (its `state` leaves carry no member axis).

    The batch is `jaxens.data.member_batch` of the member's order and augmentation streams at its
    current step (an on-device gather, augmented on device); dropout draws from fold_in(dropout, step), and
    the optimizer gets `noise_key(dropout, step)` as its extra argument `noise_key` (read by sgmcmc only).
    The update goes through `member_update` (the divergence check).

    Args:
      state: one member's state.
      order: [N] the member's permutation for its current epoch.
      dataset: on-device dataset, shared by all members.
      batch_size: B.
      augment, padding: the training augmentation (see `jaxens.data.augment`).
      lr_scale: a scalar multiplying the optimizer's update (the member's learning-rate multiplier for
        sgd, adam and adamw), or None.
      active: whether the member steps (False once it reached its end step), or None for yes.
      check_finite: see `member_update`.

    Returns:
      (new state, {'loss', 'error', 'steps'} scalars) for the batch before the update.
    """
    x, y = data_lib.member_batch(
        dataset, order, state.rngs.augment, state.step, batch_size=batch_size, augment=augment, padding=padding
    )  # [B, ...], [B]
    return member_step_on_batch(model, tx, state, x, y, lr_scale, active, check_finite)


def member_step_on_batch(
    model: nn.Module,
    tx: optax.GradientTransformation,
    state: EnsembleState,
    x: jax.Array,
    y: jax.Array,
    lr_scale: jax.Array | None = None,
    active: jax.Array | None = None,
    check_finite: bool = True,
):
    """`member_train_step` on a given normalized batch x [B, ...], y [B] (ONE member)."""
    grads, batch_stats, metrics = member_gradients(model, state, x, y)
    return member_update(
        tx,
        state,
        grads,
        batch_stats,
        metrics,
        noise_key(state.rngs.dropout, state.step),
        lr_scale,
        active,
        check_finite,
    )


def joint_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    strategy: str,
    state: EnsembleState,
    orders: jax.Array,
    dataset: data_lib.Dataset,
    batch_size: int,
    lams: jax.Array,
    augment: str = "none",
    padding: int = 4,
    lr_scales: jax.Array | None = None,
    check_finite: bool = True,
    mesh: jax.sharding.Mesh | None = None,
):
    """One SGD step of all K members under Webb et al.'s modular loss, G groups of k = K/G members.

    Every member sees member 0's minibatch (its order and augmentation streams at the members' step: the
    largest, so that a frozen diverged member does not hold the others back); dropout stays per member.
    The step minimizes Σ_g k·L_λg over the groups' logits [G, k, B, C] (`jaxens.losses`), so the
    gradient reaching member j of group g is k·∂L_λg/∂η_j = ŷ_j − y − λ_g(ŷ_j − ȳ_g) (eq. 8 times k): λ = 0
    is independent training at the optimizer's learning rate. The optimizer then updates each member
    (`member_update`, with the member's own NLL, gradients and `noise_key(dropout, step)`). A group shares
    one loss, so a member whose logits turn non-finite takes its group's gradients with it.

    Args:
      state: the K members' state (leaves [K, ...]).
      orders: [K, N] the members' epoch permutations (row 0 is used).
      lams: [G] each group's λ.
      lr_scales: [K] multipliers of each member's update, or None.
      mesh: the ('member', 'data') mesh the step runs on, or None (see `map_members`). With the members
        sharded over devices, what crosses them is the batch's B indices, the groups' mean logits
        [G, B, C] and [K]-sized flags: no parameter-sized gradient (Webb et al. §3.3).

    Returns:
      (new state, {'loss': [K] each member's own NLL on the batch, 'error': [K], 'steps': [K]}).
    """
    from jaxens import losses  # A leaf module; imported here to keep this module's imports light.

    x, y = first_member_batch(dataset, state, orders, batch_size, augment, padding, mesh)  # [B, ...], [B]
    dropout_keys = jax.vmap(jax.random.fold_in)(state.rngs.dropout, state.step)  # [K, 2]
    forward = map_members(
        lambda p, s, key, x, y: member_loss(model, p, s, x, y, key)[1], strategy, (0, 0, 0, None, None), mesh
    )  # → (logits [K, B, C], batch_stats [K, ...])
    k = state.k // lams.shape[0]

    def total(params):
        logits, stats = forward(params, state.batch_stats, dropout_keys, x, y)
        grouped = logits.reshape(lams.shape[0], k, *logits.shape[1:])  # [G, k, B, C]
        per_group = jax.vmap(lambda o, lam: losses.modular_loss(o, y, lam, "categorical"))(grouped, lams)
        return k * per_group.sum(), (logits, stats)

    (_, (logits, batch_stats)), grads = jax.value_and_grad(total, has_aux=True)(state.params)
    metrics = {
        "loss": losses.member_nll(logits, y, "categorical"),  # [K]
        "error": jnp.mean(jnp.argmax(logits, -1) != y, axis=-1),
    }
    return update_members(tx, strategy, state, grads, batch_stats, metrics, lr_scales, None, check_finite, mesh)


def first_member_batch(dataset, state: EnsembleState, orders, batch_size: int, augment: str, padding: int, mesh=None):
    """The minibatch all members share: member 0's order and augmentation streams at the members' largest
    step (so that a frozen diverged member does not hold the others back).

    The [B] indices are sliced from every member's order row where it lives, then member 0's are taken:
    with the members sharded over devices only B indices cross them, not member 0's [N] permutation.
    Under `mesh` the batch is split over its 'data' axis.

    Returns:
      (x [B, ...] normalized, y [B]).
    """
    step = state.step.max()
    spe = data_lib.steps_per_epoch(dataset.num_train, batch_size)
    idx = jax.vmap(lambda order: data_lib.batch_indices(order, step, batch_size, spe))(orders)[0]  # [B]
    x = dataset.train_x[idx]  # [B, ...] raw
    if augment != "none":
        x = data_lib.augment_images(augment, jax.random.fold_in(state.rngs.augment[0], step), x, padding)
    x, y = dataset.normalize(x), dataset.train_y[idx]
    return (x, y) if mesh is None else sharding_lib.constrain_batch((x, y), mesh, member_axis=False)


def shared_batch_of(shared_streams: tuple[str, ...], augment: str, spawning: bool) -> bool:
    """Whether all members of a run see the same minibatch at every step: a shared order, no augmentation
    or a shared augmentation stream, and one group trained from initialization (not spawned children)."""
    return not spawning and "order" in shared_streams and (augment == "none" or "augment" in shared_streams)


def resolve_strategy(
    strategy: str, convolutional: bool, backend: str | None = None, num_devices: int | None = None
) -> str:
    """The member strategy to build with: 'vmap', 'loop', 'shard_map/vmap' or 'shard_map/loop'.

    Within a device, convolutional models on CPU run as an unrolled loop and everything else under vmap:
    on a 2-core CPU (`benchmarks/member_strategies.py`, batch 128 per member) vmap of conv members ran
    1.1-1.25x (small strided CNN, im2col convolutions, K = 4-16) and 5.9-7.2x (ResNet-20, whose stride-1
    convolutions vmap into grouped convolutions, K = 4-16) slower than the loop, while for an MLP the two
    were within 10% either way. 'auto' shards the members with `shard_map/<within>` when the mesh's 'member'
    axis has more than one device row, else runs `<within>` (each member still split over 'data'). A 2-core CPU
    split into 2 XLA devices gained little from it: MLP 0.97-1.20x, small CNN 0.78-0.98x the one-device
    speed at K = 4-16. 'shard_map' always shards (over one device if that is all there is).

    Args:
      strategy: config.ensemble.strategy: 'auto', or one of MEMBER_STRATEGIES.
      convolutional: whether the model convolves.
      backend: defaults to JAX's default backend.
      num_devices: the devices on the mesh's 'member' axis (default: the backend's device count).
    """
    if strategy not in ("auto", *MEMBER_STRATEGIES):
        raise ValueError(f"strategy={strategy!r}: allowed: auto, {', '.join(MEMBER_STRATEGIES)}")
    backend = backend or jax.default_backend()
    within = "loop" if backend == "cpu" and convolutional else "vmap"
    if strategy == "shard_map" or (strategy == "auto" and (num_devices or jax.device_count(backend)) > 1):
        return f"shard_map/{within}"
    return within if strategy == "auto" else strategy


def resolve_step_loop(step_loop: str, convolutional: bool, backend: str | None = None) -> str:
    """'auto' → 'host' for convolutional models on CPU, 'device' otherwise.

    Measured on a 2-core CPU (jax 0.10.2): a conv member step inside a `while` loop body ran 4.7x (1-D CNN)
    to 11x (2-D CNN) slower than the same step as its own jitted call, while an MLP ran 1.3x faster.
    """
    if step_loop not in STEP_LOOPS:
        raise ValueError(f"step_loop={step_loop!r}: allowed: {', '.join(STEP_LOOPS)}")
    if step_loop == "auto":
        on_cpu = (backend or jax.default_backend()) == "cpu"
        return "host" if on_cpu and convolutional else "device"
    return step_loop


class TrainChunk:
    """Runs `num_steps` training steps of all K members: `(state, orders, dataset, num_steps, ends=None,
    lr_scales=None) -> (state, sums)`.

    `orders` [K, N] are the members' current epoch permutations. The input state is donated. `sums` holds
    [K] metric arrays summed over the chunk's steps, with 'steps' counting the steps each member took
    (divide by it), left on device: no host synchronization happens inside a chunk.

    `ends` (optional, [K] int32 on device): member m stops updating once its step reaches `ends[m]` (its
    state is carried unchanged and it adds 0 to `sums`). Members of a spawn sweep finish at different
    steps; without `ends` every member takes every step.

    `lr_scales` (optional, [K] float32 on device): each member's learning-rate multiplier (default 1).

    Every step runs the divergence check (`member_update`): a member whose loss or new state is non-finite
    is frozen and its step recorded in `state.diverged`. `check_finite=False` leaves it out (for
    `benchmarks/divergence_check.py`, which measures what it costs).

    `step_loop`: 'device' runs the steps in a `while` loop inside one jitted call,
    `num_steps` traced, so every chunk length shares one compilation; 'host' dispatches one jitted call per
    step from Python (asynchronously: the host never waits for the device between steps). Resolve 'auto'
    with `resolve_step_loop` first.

    `augment`/`padding` select the on-device training augmentation ('none' by default).

    `lams` (Webb et al.'s λ per group, a tuple): train with the modular loss (`joint_train_step`) instead
    of each member on its own NLL; the K members form len(lams) groups.

    `shared_batch`: every member's minibatch is the same (shared order, and no augmentation or a shared
    augmentation stream: `shared_batch_of`), so it is gathered once, from member 0's streams, and fed to all
    members unbatched — one [B, D] input instead of K copies. Equal to the per-member path up to float
    rounding (the matmuls differ in shape).

    `trace_count` counts traces of the jitted function (one per phase is expected).

    Placement: the steps run on the mesh the state is sharded over (`jaxens.sharding`; a one-device mesh
    for a state on one device), and the new state stays there. Each member's minibatch is split over the
    mesh's 'data' axis; `orders`, `ends` and `lr_scales` are sharded with the members and the dataset
    replicated (once per dataset object and mesh).
    """

    def __init__(
        self,
        model: nn.Module,
        tx: optax.GradientTransformation,
        batch_size: int,
        strategy: str,
        step_loop: str,
        augment: str = "none",
        padding: int = 4,
        lams: tuple[float, ...] = (),
        check_finite: bool = True,
        shared_batch: bool = False,
    ):
        if step_loop not in ("device", "host"):
            raise ValueError(f"step_loop={step_loop!r}: allowed: device, host")
        self.trace_count = 0
        self.step_loop = step_loop
        self._replicas = _Replicas()
        batch_kwargs = dict(batch_size=batch_size, augment=augment, padding=padding)

        def update(state, grads, batch_stats, metrics, ends, lr_scales, mesh):
            # A finished member (step ≥ end) keeps its state and adds nothing, as a diverged one does.
            return update_members(tx, strategy, state, grads, batch_stats, metrics, lr_scales, ends, check_finite, mesh)

        if lams:
            lam_array = np.asarray(lams, np.float32)

            def step_all(state, orders, dataset, ends, lr_scales, mesh):
                del ends  # Every group trains the same steps.
                return joint_train_step(
                    model, tx, strategy, state, orders, dataset, batch_size, jnp.asarray(lam_array), augment,
                    padding, lr_scales, check_finite, mesh,
                )  # fmt: skip
        elif shared_batch:

            def step_all(state, orders, dataset, ends, lr_scales, mesh):
                # Gathered once, from member 0's streams, and fed to every member unbatched.
                x, y = first_member_batch(dataset, state, orders, batch_size, augment, padding, mesh)  # [B, ...]
                # (Shared arrays go in as arguments: a sharded strategy must not close over them.)
                member = functools.partial(member_gradients, model)
                gradients = map_members(member, strategy, (0, None, None), mesh)(state, x, y)
                return update(state, *gradients, ends, lr_scales, mesh)
        else:

            def step_all(state, orders, dataset, ends, lr_scales, mesh):
                # Every member's batch (its order and augmentation streams at its step), split over 'data'.
                x, y = jax.vmap(
                    lambda order, key, step: data_lib.member_batch(dataset, order, key, step, **batch_kwargs)
                )(orders, state.rngs.augment, state.step)  # [K, B, ...], [K, B]
                x, y = sharding_lib.constrain_batch((x, y), mesh, member_axis=True)
                member = functools.partial(member_gradients, model)
                gradients = map_members(member, strategy, (0, 0, 0), mesh)(state, x, y)
                return update(state, *gradients, ends, lr_scales, mesh)

        def step(state: EnsembleState, sums: dict, orders, dataset: data_lib.Dataset, ends, lr_scales, mesh):
            state, metrics = step_all(state, orders, dataset, ends, lr_scales, mesh)
            # The state keeps its placement: members on 'member', replicated over 'data'.
            state = jax.lax.with_sharding_constraint(state, sharding_lib.members(mesh))
            return state, jax.tree.map(jnp.add, sums, metrics)

        def chunk(state, orders, dataset, num_steps: jax.Array, ends, lr_scales, mesh):
            self.trace_count += 1
            return jax.lax.fori_loop(
                0,
                num_steps,
                lambda _, carry: step(carry[0], carry[1], orders, dataset, ends, lr_scales, mesh),
                (state, _zero_sums(state)),
            )

        def counted_step(*args, mesh):
            self.trace_count += 1
            return step(*args, mesh)

        self._chunk = jax.jit(chunk, donate_argnums=0, static_argnames="mesh")
        self._step = jax.jit(counted_step, donate_argnums=(0, 1), static_argnames="mesh")

    def place(self, state, orders, dataset, ends=None, lr_scales=None):
        """(mesh, and the arguments placed on it) for a call on `state` (see the class docstring)."""
        mesh = placement_mesh(state)
        state, orders, ends, lr_scales = sharding_lib.put_members((state, orders, ends, lr_scales), mesh)
        return mesh, state, orders, self._replicas(dataset, mesh), ends, lr_scales

    def __call__(self, state, orders, dataset, num_steps: int, ends: jax.Array | None = None, lr_scales=None):
        mesh, state, orders, dataset, ends, lr_scales = self.place(state, orders, dataset, ends, lr_scales)
        if self.step_loop == "device":
            # One explicit scalar transfer per chunk; the steps themselves never touch the host.
            steps = sharding_lib.put_replicated(np.int32(num_steps), mesh)
            return self._chunk(state, orders, dataset, steps, ends, lr_scales, mesh=mesh)
        # Made on the device (nothing crosses from the host per step), placed as the steps' sums will be.
        sums = jax.device_put(_zero_sums_jit(state), sharding_lib.members(mesh))
        for _ in range(num_steps):
            state, sums = self._step(state, sums, orders, dataset, ends, lr_scales, mesh=mesh)
        return state, sums

    def lower_step(self, state, orders, dataset, ends=None, lr_scales=None) -> jax.stages.Lowered:
        """One training step lowered for these arguments' placement (to inspect its HLO: collectives,
        FLOPs, memory); runs nothing and leaves the arguments as they are."""
        mesh, state, orders, dataset, ends, lr_scales = self.place(state, orders, dataset, ends, lr_scales)
        sums = jax.eval_shape(_zero_sums, state)
        sums = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_lib.members(mesh)), sums)
        count = self.trace_count
        lowered = self._step.lower(state, sums, orders, dataset, ends, lr_scales, mesh=mesh)
        self.trace_count = count  # Not a training trace.
        return lowered


def _zero_sums(state: EnsembleState) -> dict:
    return {name: jnp.zeros(state.step.shape) for name in ("loss", "error", "steps")}


_zero_sums_jit = jax.jit(_zero_sums)


def member_logits(model: nn.Module, params, batch_stats, x: jax.Array) -> jax.Array:
    """One member's eval-mode logits [B, C] for normalized inputs x [B, ...]."""
    variables = {"params": params}
    if batch_stats:
        variables["batch_stats"] = batch_stats
    return model.apply(variables, x, train=False)  # type: ignore[return-value]  # no `mutable`: logits only


class Predictor:
    """Eval-mode logits of all K members on a whole split, in fixed-size batches (one compilation).

    `__call__(state, x [N, ...] raw inputs, dataset) -> [K, N, C]` logits, computed on the mesh the state
    lives on (members on 'member', each batch split over 'data') and left sharded on 'member'.
    """

    def __init__(self, model: nn.Module, batch_size: int, strategy: str):
        self.batch_size = batch_size

        def predict_batch(params, batch_stats, x_all, dataset, start, mesh):
            # The last batch repeats the final example to keep the shape; callers drop the extras.
            idx = jnp.minimum(start + jnp.arange(batch_size), x_all.shape[0] - 1)
            x = sharding_lib.constrain_batch(dataset.normalize(x_all[idx]), mesh, member_axis=False)
            apply_all = map_members(lambda p, s, x: member_logits(model, p, s, x), strategy, (0, 0, None), mesh)
            return apply_all(params, batch_stats, x)  # [K, B, C]

        self._jitted = jax.jit(predict_batch, static_argnames="mesh")
        self._replicas = _Replicas()

    def __call__(self, state: EnsembleState, x_all: jax.Array | np.ndarray, dataset: data_lib.Dataset) -> jax.Array:
        n = x_all.shape[0]
        mesh = placement_mesh(state)
        params, batch_stats = sharding_lib.put_members((state.params, state.batch_stats), mesh)
        x_all, dataset = self._replicas(x_all, mesh), self._replicas(dataset, mesh)
        starts = range(0, n, self.batch_size)
        # A bar for long evaluations on a terminal, one batch behind the dispatch (so it follows the device).
        bar = progress.bar(len(starts), desc="evaluate", unit="batch", leave=False) if len(starts) >= 50 else None
        parts = []
        for start in starts:
            start_index = sharding_lib.put_replicated(np.int32(start), mesh)
            parts.append(self._jitted(params, batch_stats, x_all, dataset, start_index, mesh=mesh))
            if bar is not None and not bar.disable:
                if len(parts) > 1:
                    parts[-2].block_until_ready()
                bar.update(1)
        if bar is not None:
            bar.close()
        return _concatenate_members(parts, n, mesh)  # [K, N, C]


@functools.partial(jax.jit, static_argnames=("n", "mesh"))
def _concatenate_members(parts, n: int, mesh):
    """Batches of logits [K, B, C] → [K, N, C] (the padding dropped), sharded on 'member'."""
    return jax.lax.with_sharding_constraint(jnp.concatenate(parts, axis=1)[:, :n], sharding_lib.members(mesh))
