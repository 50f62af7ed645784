"""The arrays of one run: training split, validation split, test split, per-channel statistics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


@struct.dataclass
class Dataset:
    """A classification dataset as arrays (a pytree: pass it to jitted functions, never close over it).

    Images stay uint8 until `normalize` runs on device, after augmentation.

    Attributes:
      name: registry name.
      train_x: [N, *input_shape] uint8 images or float32 features.
      train_y: [N] int32 labels.
      val_x, val_y: the held-out validation split, [N_val, ...] ([0, ...] when none is held out).
      test_x, test_y: the test split, [N_test, ...].
      num_classes: C.
      scale: multiplies raw values first (1/255 for uint8 images, 1 for features).
      mean, std: per-channel statistics of the scaled training inputs, broadcastable to one example.
    """

    name: str = struct.field(pytree_node=False)
    train_x: jax.Array | np.ndarray
    train_y: jax.Array | np.ndarray
    val_x: jax.Array | np.ndarray
    val_y: jax.Array | np.ndarray
    test_x: jax.Array | np.ndarray
    test_y: jax.Array | np.ndarray
    num_classes: int = struct.field(pytree_node=False)
    scale: float = struct.field(pytree_node=False)
    mean: jax.Array | np.ndarray
    std: jax.Array | np.ndarray

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @property
    def num_train(self) -> int:
        return int(self.train_x.shape[0])

    def to_device(self) -> Dataset:
        """The same dataset with every array placed on the default device (done once per run)."""
        return jax.device_put(self)

    def normalize(self, x: jax.Array) -> jax.Array:
        """Raw inputs [..., *input_shape] → float32, standardized per channel."""
        return (x.astype(jnp.float32) * self.scale - self.mean) / self.std


@struct.dataclass
class EvalSet:
    """An extra evaluation set, normalized with the training set's statistics.

    Attributes:
      x: [N, *input_shape] raw inputs.
      y: [N] int32 labels (meaningless for the training task when `kind` is 'ood').
      kind: 'shifted' (same classes, shifted inputs: error and NLL are reported) or 'ood' (other
        classes: predictive entropy and confidence are reported).
    """

    x: jax.Array | np.ndarray
    y: jax.Array | np.ndarray
    kind: str = struct.field(pytree_node=False)


def validation_indices(num_train: int, val_size: int, seed: int) -> np.ndarray:
    """The training examples held out for validation: sorted, distinct, a function of (N, size, seed).

    Contract: `sort(numpy.random.default_rng(seed).permutation(N)[:val_size])`.
    """
    return np.sort(np.random.default_rng(seed).permutation(num_train)[:val_size])


def channel_stats(x: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of `x * scale` over all axes but the last.

    Accumulates in float64 over chunks of examples, so no float copy of the whole set is made.
    """
    total = np.zeros(x.shape[-1], np.float64)
    total_sq = np.zeros(x.shape[-1], np.float64)
    axes = tuple(range(x.ndim - 1))
    for start in range(0, len(x), 4096):
        chunk = x[start : start + 4096].astype(np.float64) * scale
        total += chunk.sum(axis=axes)
        total_sq += np.square(chunk).sum(axis=axes)
    count = x.size // x.shape[-1]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return mean.astype(np.float32), std.astype(np.float32)


def from_arrays(name: str, arrays: dict, num_classes: int, val_size: int = 0, val_seed: int = 0) -> Dataset:
    """A `Dataset` from host arrays {train_x, train_y, test_x, test_y}, holding out `val_size` examples.

    Statistics come from the training examples that remain after the hold-out. Inputs without a channel
    axis beyond the example shape are expected to carry one already (e.g. [N, 28, 28, 1]).
    """
    train_x, train_y = arrays["train_x"], np.asarray(arrays["train_y"], np.int32)
    held_out = validation_indices(len(train_x), val_size, val_seed)
    val_x, val_y = train_x[held_out], train_y[held_out]
    if val_size:
        keep = np.ones(len(train_x), bool)
        keep[held_out] = False
        train_x, train_y = train_x[keep], train_y[keep]
    scale = 1.0 / 255.0 if train_x.dtype == np.uint8 else 1.0
    mean, std = channel_stats(train_x, scale)
    return Dataset(
        name=name,
        train_x=train_x,
        train_y=train_y,
        val_x=val_x,
        val_y=val_y,
        test_x=arrays["test_x"],
        test_y=np.asarray(arrays["test_y"], np.int32),
        num_classes=num_classes,
        scale=scale,
        mean=mean,
        std=std,
    )
