"""ONE member's training step, and the λ step that couples a group's members through their mean logits.

`member_train_step` is the step the trainer runs: `jaxens.train_chunk.TrainChunk` maps it over the K
stacked members with `jaxens.members.map_members` (one map, whatever the strategy) and loops it over the
steps of a chunk. For one member (its state leaves carry no member axis) at its step s:

    x, y        = its minibatch at s (`jaxens.data.member_batch`: order and augmentation streams)
    dropout key = fold_in(dropout stream, s);  optimizer noise key = `noise_key(dropout stream, s)`
    grads       = ∇ mean softmax cross-entropy (`member_gradients`)
    state       = `member_update`: the optimizer's update, under the divergence check
    forgetting  = `record_forgetting`: with a tracker (config.eval.forgetting), the batch is one presentation
                  of its examples, with the correctness of this forward pass

Divergence: with `check_finite`, the step checks, on the device, that the member's loss and gradients are
finite. A member whose are not keeps its state from before that step from then on (frozen; a select between
the new and the old state) and records the step in `EnsembleState.diverged`; the other members train on
unaffected (their numbers do not depend on it). The trainer runs this checked step only for chunks whose end
failed the cheaper verification (`jaxens.train_chunk.TrainChunk`, divergence_check='chunk').

Optimizer noise (SG-MCMC, `jaxens.optim.sgmcmc`) is drawn per member and per step from the member's dropout
stream; the derivation is a contract (`noise_key`). Every optimizer's `update` receives it as the extra
argument `noise_key=` and all but `sgmcmc` ignore it.

Webb et al.'s modular loss couples the members of a group, so it cannot be a one-member step:
`joint_train_step` takes the gradients of the groups' loss over all K members' logits, then applies
`member_update` to each member (mapped once).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxens import data as data_lib
from jaxens import losses
from jaxens import sharding as sharding_lib
from jaxens.ensemble import EnsembleState
from jaxens.members import map_members
from jaxens.metrics import forgetting as forgetting_lib

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


def member_loss(model, params, batch_stats, x, y, dropout_key):
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


def member_gradients(model, state: EnsembleState, x: jax.Array, y: jax.Array):
    """ONE member's gradients of its loss on a normalized batch x [B, ...], y [B] (dropout from
    fold_in(dropout, step)).

    Returns:
      (grads, new batch_stats, {'loss', 'error'} scalars, [B] bool: the training forward pass's argmax
      equals the label, the correctness forgetting events are counted from).
    """
    dropout_key = jax.random.fold_in(state.rngs.dropout, state.step)
    grad_fn = jax.value_and_grad(member_loss, argnums=1, has_aux=True)
    (loss, (logits, batch_stats)), grads = grad_fn(model, state.params, state.batch_stats, x, y, dropout_key)
    correct = jnp.argmax(logits, -1) == y  # [B]
    return grads, batch_stats, {"loss": loss, "error": jnp.mean(~correct)}, correct


def record_forgetting(state: EnsembleState, indices: jax.Array, correct: jax.Array, took: jax.Array) -> EnsembleState:
    """ONE member's train-side forgetting tracker after a step (Toneva et al.; docs/definitions.md#forgetting-events).

    The step's minibatch is a presentation of its examples `indices` [B] with the correctness `correct` [B]
    of the step's training forward pass (the parameters before the update, dropout and augmentation as
    trained). A member that did not take the step (finished, frozen after diverging) was not presented
    anything. Without a tracker (`state.forgetting` None) the state is returned as it is.
    """
    if state.forgetting is None:
        return state
    tracked, _ = forgetting_lib.update(state.forgetting, indices, correct)
    tracked = jax.tree.map(lambda new, old: jnp.where(took, new, old), tracked, state.forgetting)
    return state.replace(forgetting=tracked)  # type: ignore[attr-defined]  # flax struct.dataclass


def all_finite(tree) -> jax.Array:
    """True iff every float in `tree` is finite (a scalar; integer leaves are skipped)."""
    checks = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(checks)) if checks else jnp.bool_(True)


def step_flags(state: EnsembleState, grads, metrics: dict, active=None, check_finite: bool = True):
    """ONE member's (take, trying) booleans: whether it takes this step, and whether it tries to (active and
    not diverged before); trying but not taking means its loss or gradients are not finite."""
    trying = state.diverged < 0 if active is None else (state.diverged < 0) & active
    if not check_finite:
        return (jnp.bool_(True) if active is None else active), trying
    return trying & all_finite((metrics["loss"], grads)), trying


def _apply_update(tx, state: EnsembleState, grads, batch_stats, metrics: dict, lr_scale, take, trying, select: bool):
    """ONE member's update given its `step_flags`. `select=False` applies it as if `take` were true, skipping
    the selects over the state (only when `take` is statically true)."""
    tx = optax.with_extra_args_support(tx)  # A plain transform ignores the noise key.
    key = noise_key(state.rngs.dropout, state.step)
    updates, opt_state = tx.update(grads, state.opt_state, state.params, noise_key=key)
    if lr_scale is not None:  # The member's learning-rate multiplier.
        updates = jax.tree.map(lambda u: u * lr_scale.astype(u.dtype), updates)
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


def member_update(
    tx: optax.GradientTransformation,
    state: EnsembleState,
    grads,
    batch_stats,
    metrics: dict,
    lr_scale: jax.Array | None = None,
    active: jax.Array | None = None,
    check_finite: bool = True,
):
    """ONE member's optimizer update, under the divergence check.

    The member takes its step if it is `active` (default: yes), has not diverged before, and its loss
    (`metrics['loss']`) and gradients are finite: then params += update (times `lr_scale`), and the new
    optimizer state and BatchNorm statistics replace the old ones; the optimizer gets
    `noise_key(dropout, step)` as its extra argument. Otherwise everything stays as it was; a member that
    was active but whose loss or gradients were not finite records its step in `diverged` and is frozen
    from then on. `check_finite=False` skips the check (every active member steps).

    Returns:
      (state, metrics): metrics zeroed for a member that did not step, plus 'steps' (1 or 0).
    """
    take, trying = step_flags(state, grads, metrics, active, check_finite)
    select = check_finite or active is not None  # Whether some member may not step.
    return _apply_update(tx, state, grads, batch_stats, metrics, lr_scale, take, trying, select)


def member_step_on_batch(
    model,
    tx: optax.GradientTransformation,
    state: EnsembleState,
    x: jax.Array,
    y: jax.Array,
    lr_scale: jax.Array | None = None,
    active: jax.Array | None = None,
    check_finite: bool = True,
    indices: jax.Array | None = None,
):
    """`member_train_step` on a given normalized batch x [B, ...], y [B] (ONE member); `indices` [B] are the
    batch's example indices, which a member with a forgetting tracker needs (`record_forgetting`)."""
    grads, batch_stats, metrics, correct = member_gradients(model, state, x, y)
    new_state, metrics = member_update(tx, state, grads, batch_stats, metrics, lr_scale, active, check_finite)
    if state.forgetting is not None:
        if indices is None:
            raise ValueError("this member tracks forgetting events: pass the batch's example indices")
        new_state = record_forgetting(new_state, indices, correct, metrics["steps"] > 0)
    return new_state, metrics


def member_train_step(
    model,
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
    view: jax.Array | None = None,
):
    """One SGD step of ONE member (its `state` leaves carry no member axis): the step the trainer maps.

    The batch is `jaxens.data.member_batch` of the member's order and augmentation streams at its current
    step (an on-device gather, augmented on device), split over the 'data' axis of the mesh in context
    (`jax.set_mesh`; nothing without one); dropout draws from fold_in(dropout, step); the update goes
    through `member_update` (the divergence check, the optimizer's noise key).

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
      view: the member's view of a dataset with several (`jaxens.data.Dataset.views`), or None.

    Returns:
      (new state, {'loss', 'error', 'steps'} scalars) for the batch before the update.
    """
    idx = data_lib.batch_indices_at(order, state.step, batch_size, dataset.num_train)  # [B]
    x, y = data_lib.batch_examples(dataset, idx, state.rngs.augment, state.step, augment, padding, view)
    x, y = sharding_lib.constrain_batch((x, y))
    return member_step_on_batch(model, tx, state, x, y, lr_scale, active, check_finite, idx)


def shared_batch(dataset, state: EnsembleState, orders, batch_size: int, augment: str, padding: int, sources: int = 1):
    """The minibatch all members share (coupled order with shared augmentation, or λ groups): member 0's
    order and augmentation streams at the members' largest step (so that a frozen diverged member does
    not hold the others back).

    The [B] indices are sliced from every member's order row where it lives, then member 0's are taken:
    with the members sharded over devices only B indices cross them, not member 0's [N] permutation. The
    batch is split over the 'data' axis of the mesh in context.

    With `sources` S > 1 (a grid's seeds), the K members form S consecutive blocks of K/S, and each block
    shares the batch of its first member at the block's largest step, from its own view of a dataset with
    S views (each seed's hold-out: `jaxens.data.Dataset.views`).

    Returns:
      (x [B, ...] normalized, y [B], the examples' indices [B]); with S > 1 each with a leading [S].
    """
    if sources > 1:
        block = state.k // sources
        steps = jnp.repeat(state.step.reshape(sources, block).max(1), block)  # [K]: each block's largest step.
        at = lambda order, step: data_lib.batch_indices_at(order, step, batch_size, dataset.num_train)  # noqa: E731
        idx = map_members(at, "vmap", (0, 0))(orders, steps)[::block]  # [S, B]
        views = jnp.arange(sources) if dataset.views is not None else None  # Block s is seed s: its view.
        gather = lambda i, key, step, v: data_lib.batch_examples(dataset, i, key, step, augment, padding, v)  # noqa: E731
        in_axes = (0, 0, 0, None if views is None else 0)
        x, y = map_members(gather, "vmap", in_axes)(
            idx, state.rngs.augment[::block], steps[::block], views
        )  # [S, B, ...]
        return x, y, idx
    step = state.step.max()
    idx = map_members(lambda order: data_lib.batch_indices_at(order, step, batch_size, dataset.num_train), "vmap", (0,))
    idx = idx(orders)[0]  # [B]
    x, y = data_lib.batch_examples(dataset, idx, state.rngs.augment[0], step, augment, padding)
    return (*sharding_lib.constrain_batch((x, y)), idx)


def per_member(batch, k: int):
    """A grid's per-block shared batch ([S, ...] each, `shared_batch`) repeated for its K members: [K, ...]."""
    return jax.tree.map(lambda a: jnp.repeat(a, k // a.shape[0], axis=0), batch)


def shared_batch_of(shared_streams: tuple[str, ...], augment: str, spawning: bool) -> bool:
    """Whether all members of a run see the same minibatch at every step: a shared order, no augmentation
    or a shared augmentation stream, and one group trained from initialization (not spawned children)."""
    return not spawning and "order" in shared_streams and (augment == "none" or "augment" in shared_streams)


def joint_train_step(
    model,
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
    sources: int = 1,
):
    """One SGD step of all K members under Webb et al.'s modular loss, G groups of k = K/G members.

    Every member sees the `shared_batch`; dropout stays per member. The step minimizes Σ_g k·L_λg over the
    groups' logits [G, k, B, C] (`jaxens.losses`), so the gradient reaching member j of group g is
    k·∂L_λg/∂η_j = ŷ_j − y − λ_g(ŷ_j − ȳ_g) (eq. 8 times k; docs/definitions.md#modular-loss): λ = 0 is
    independent training at the optimizer's learning rate. Each member is then updated by `member_update`
    with its own NLL and gradients. A group shares one loss, so a member whose logits turn non-finite
    takes its group's gradients with it.

    Args:
      state: the K members' state (leaves [K, ...]).
      orders: [K, N] the members' epoch permutations (row 0 is used).
      lams: [G] each group's λ.
      lr_scales: [K] multipliers of each member's update, or None.
      mesh: the ('member', 'data') mesh the step runs on, or None (see `map_members`). With the members
        sharded over devices, what crosses them is the batch's B indices, the groups' mean logits
        [G, B, C] and [K]-sized flags: no parameter-sized gradient (Webb et al. §3.3).
      sources: the number of shared batches (`shared_batch`; a grid's seeds, each a block of whole groups).

    Returns:
      (new state, {'loss': [K] each member's own NLL on the batch, 'error': [K], 'steps': [K]}).
    """
    x, y, idx = shared_batch(dataset, state, orders, batch_size, augment, padding, sources)  # [B, ...], [B], [B]
    num_groups = lams.shape[0]
    k = state.k // num_groups
    batch_axis = None  # One batch for all members; or (sources > 1) one per member, repeated from its block's.
    if sources > 1:
        x, y, idx = per_member((x, y, idx), state.k)  # [K, B, ...], [K, B], [K, B]
        batch_axis = 0

    def member_forward(params, batch_stats, dropout, step, x, y):
        return member_loss(model, params, batch_stats, x, y, jax.random.fold_in(dropout, step))[1]

    forward = map_members(member_forward, strategy, (0, 0, 0, 0, batch_axis, batch_axis), mesh)
    labels = y if sources == 1 else y[::k]  # [B], or [G, B] each group's

    def total(params):
        logits, stats = forward(params, state.batch_stats, state.rngs.dropout, state.step, x, y)  # [K, B, C]
        grouped = logits.reshape(num_groups, k, *logits.shape[1:])  # [G, k, B, C]
        loss = lambda o, y_g, lam: losses.modular_loss(o, y_g, lam, "categorical")  # noqa: E731
        per_group = jax.vmap(loss, (0, None if sources == 1 else 0, 0))(grouped, labels, lams)  # [G]
        return k * per_group.sum(), (logits, stats)

    (_, (logits, batch_stats)), grads = jax.value_and_grad(total, has_aux=True)(state.params)
    if sources == 1:
        nll = losses.member_nll(logits, y, "categorical")  # [K]
    else:
        own_nll = lambda o, t: losses.member_nll(o[None], t, "categorical")[0]  # noqa: E731
        nll = map_members(own_nll, "vmap", (0, 0), mesh)(logits, y)  # [K]
    metrics = {
        "loss": nll,
        "error": jnp.mean(jnp.argmax(logits, -1) != y, axis=-1),
    }
    correct = jnp.argmax(logits, -1) == y  # [K, B]

    def update(st, g, bs, m, scale, correct, idx):
        new, m = member_update(tx, st, g, bs, m, scale, None, check_finite)
        return record_forgetting(new, idx, correct, m["steps"] > 0), m

    lr_axis = None if lr_scales is None else 0
    mapped = map_members(update, strategy, (0, 0, 0, 0, lr_axis, 0, batch_axis), mesh)
    return mapped(state, grads, batch_stats, metrics, lr_scales, correct, idx)
