"""A member's training batch at step s: a pure function of (its order key, its augmentation key, s).

    epoch     = s // S                                     (S = N // B steps per epoch)
    order     = permutation(fold_in(order_key, epoch), N)  (computed once per epoch: `epoch_orders`)
    indices   = order[(s mod S)·B : (s mod S)·B + B]
    x, y      = normalize(augment(fold_in(augment_key, s), train_x[indices])), train_y[indices]

Everything happens on the device: the batch is an index gather into the on-device training set and
augmentation runs inside the jitted step, so no step waits on the host.
"""

from __future__ import annotations

import jax

from jaxens.data import augment as augment_lib
from jaxens.data.dataset import Dataset
from jaxens.data.order import batch_indices, steps_per_epoch


def member_batch(
    dataset: Dataset,
    order: jax.Array,
    augment_key: jax.Array,
    step: jax.Array,
    *,
    batch_size: int,
    augment: str = "none",
    padding: int = 4,
) -> tuple[jax.Array, jax.Array]:
    """One member's batch for `step`, given the permutation of its current epoch.

    Args:
      dataset: the on-device dataset (shared by all members).
      order: [N] the member's permutation for epoch `step // S`.
      augment_key: the member's augmentation stream; step s draws from fold_in(augment_key, s).
      step: the member's step.
      batch_size: B.
      augment: 'none', 'flip', 'crop' or 'crop_flip' (see `jaxens.data.augment`).
      padding: crop padding in pixels.

    Returns:
      (x [B, *input_shape] float32 normalized, y [B] int32).
    """
    idx = batch_indices_at(order, step, batch_size, dataset.num_train)  # [B]
    return batch_examples(dataset, idx, augment_key, step, augment, padding)


def batch_indices_at(order: jax.Array, step: jax.Array, batch_size: int, num_train: int) -> jax.Array:
    """The [B] example indices of `step` in its epoch's permutation `order` [N] (S = N // B steps per epoch)."""
    return batch_indices(order, step, batch_size, steps_per_epoch(num_train, batch_size))


def batch_examples(
    dataset: Dataset,
    idx: jax.Array,
    augment_key: jax.Array,
    step: jax.Array,
    augment: str = "none",
    padding: int = 4,
    view: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The examples `idx` [B] (of view `view`'s training set, `Dataset.views`) gathered on the device, augmented
    with fold_in(augment_key, step) and normalized: (x [B, ...] float32, y [B])."""
    x, y = dataset.train_examples(idx, view)  # [B, ...] raw, [B]
    if augment != "none":
        x = augment_lib.augment_images(augment, jax.random.fold_in(augment_key, step), x, padding)
    return dataset.normalize(x, view), y


def batch_at_step(
    dataset: Dataset, order_key: jax.Array, augment_key: jax.Array, step: int, **kwargs
) -> tuple[jax.Array, jax.Array]:
    """The same batch as `member_batch`, from the member's keys and the step alone (the definition).

    Recomputes the epoch's permutation, so it is for tests and inspection; the trainer computes each
    permutation once per epoch.
    """
    epoch = step // steps_per_epoch(dataset.num_train, kwargs["batch_size"])
    order = jax.random.permutation(jax.random.fold_in(order_key, epoch), dataset.num_train)
    return member_batch(dataset, order, augment_key, step, **kwargs)  # type: ignore[arg-type]  # an int step works too
