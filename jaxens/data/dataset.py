"""The arrays of one run: training split, validation split, test split, per-channel statistics; or, for a grid
whose seeds each hold out their own validation split (config.data.val_from_seed), V such views of one pool."""

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
      views: None, or V hold-outs of one training pool (`Views`). Then train_x, train_y are the pool [P, ...]
        (every training example, none held out), val_x, val_y are [V, N_val, ...] and mean, std [V, ...]:
        view v is the data of the run whose hold-out is the v-th, and `view(v)` is that run's `Dataset`.
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
    views: Views | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @property
    def num_train(self) -> int:
        """N: the training examples of a run (of each view)."""
        return int(self.train_x.shape[0] if self.views is None else self.views.train_index.shape[1])

    @property
    def num_views(self) -> int:
        """V: 1, or the number of hold-outs of a pool."""
        return 1 if self.views is None else int(self.views.train_index.shape[0])

    def train_examples(self, idx: jax.Array, view: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Raw training examples `idx` [B] (indices into the N training examples of `view`): (x [B, ...], y [B])."""
        rows = idx if self.views is None else self.views.train_index[view][idx]
        return self.train_x[rows], self.train_y[rows]

    def view(self, v: int) -> Dataset:
        """The `Dataset` of view v alone: exactly what a run holding out the v-th split loads (itself without views)."""
        if self.views is None:
            if v != 0:
                raise IndexError(f"view {v}: this dataset has one view")
            return self
        rows = self.views.train_index[v]
        return self.replace(  # type: ignore[attr-defined]
            train_x=self.train_x[rows],
            train_y=self.train_y[rows],
            val_x=self.val_x[v],
            val_y=self.val_y[v],
            mean=self.mean[v],
            std=self.std[v],
            views=None,
        )

    def to_device(self) -> Dataset:
        """The same dataset with every array placed on the default device (done once per run)."""
        return jax.device_put(self)

    def normalize(self, x: jax.Array, view: jax.Array | None = None) -> jax.Array:
        """Raw inputs [..., *input_shape] → float32, standardized per channel (with view `view`'s statistics)."""
        if self.views is None:
            return (x.astype(jnp.float32) * self.scale - self.mean) / self.std
        if view is None:
            raise ValueError("this dataset holds several views (config.data.val_from_seed): say whose statistics")
        return (x.astype(jnp.float32) * self.scale - self.mean[view]) / self.std[view]


@struct.dataclass
class Views:
    """Which pool rows each of V hold-outs trains on (`Dataset.views`).

    Attributes:
      train_index: [V, N] int32, the training examples of view v as rows of the pool, ascending (the order a
        run of that hold-out alone keeps them in).
    """

    train_index: jax.Array | np.ndarray


def member_views(k: int, num_views: int) -> jax.Array:
    """[K] the view of each of K members: V equal consecutive blocks (a grid's seeds are its outermost field)."""
    return jnp.arange(k) * num_views // k


@struct.dataclass
class EvalSet:
    """An extra evaluation set, normalized with the training set's statistics.

    Attributes:
      x: [N, *input_shape] raw inputs.
      y: [N] int32 labels (meaningless for the training task when `kind` is 'ood').
      kind: 'shifted' (same classes, shifted inputs: error and NLL are reported) or 'ood' (other
        classes: predictive entropy and confidence are reported); 'test' and 'val' for a run's own splits.
      per_view: x is [V, N, ...] and y [V, N], one set per view of a dataset with V (`Dataset.views`): the
        validation splits of a grid whose seeds hold out their own.
    """

    x: jax.Array | np.ndarray
    y: jax.Array | np.ndarray
    kind: str = struct.field(pytree_node=False)
    per_view: bool = struct.field(pytree_node=False, default=False)


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


def held_out_and_kept(num_train: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(the validation rows `validation_indices`, the training rows that remain), both ascending."""
    held = validation_indices(num_train, val_size, seed)
    keep = np.ones(num_train, bool)
    keep[held] = False
    return held, np.flatnonzero(keep)


def from_arrays(
    name: str, arrays: dict, num_classes: int, val_size: int = 0, val_seed: int | tuple[int, ...] = 0
) -> Dataset:
    """A `Dataset` from host arrays {train_x, train_y, test_x, test_y}, holding out `val_size` examples.

    Statistics come from the training examples that remain after the hold-out. Inputs without a channel
    axis beyond the example shape are expected to carry one already (e.g. [N, 28, 28, 1]). With a tuple of
    V > 1 seeds, the dataset holds V views of the whole training split, view v holding out `val_size`
    examples chosen by seed v (`Dataset.views`); one seed in a tuple is that seed.
    """
    seeds = val_seed if isinstance(val_seed, tuple) else (val_seed,)
    pool_x, pool_y = arrays["train_x"], np.asarray(arrays["train_y"], np.int32)
    scale = 1.0 / 255.0 if pool_x.dtype == np.uint8 else 1.0
    rows, val_x, val_y, means, stds = [], [], [], [], []
    for seed in seeds:  # One view after another: one copy of a view's training examples at a time.
        held, kept = held_out_and_kept(len(pool_x), val_size, seed)
        rows.append(kept.astype(np.int32))
        val_x.append(pool_x[held])
        val_y.append(pool_y[held])
        mean, std = channel_stats(pool_x[kept] if val_size else pool_x, scale)
        means.append(mean)
        stds.append(std)
    common = dict(
        name=name,
        test_x=arrays["test_x"],
        test_y=np.asarray(arrays["test_y"], np.int32),
        num_classes=num_classes,
        scale=scale,
    )
    if len(seeds) == 1:
        train_x, train_y = (pool_x[rows[0]], pool_y[rows[0]]) if val_size else (pool_x, pool_y)
        return Dataset(
            train_x=train_x, train_y=train_y, val_x=val_x[0], val_y=val_y[0], mean=means[0], std=stds[0], **common
        )
    return Dataset(
        train_x=pool_x,
        train_y=pool_y,
        val_x=np.stack(val_x),
        val_y=np.stack(val_y),
        mean=np.stack(means),
        std=np.stack(stds),
        views=Views(train_index=np.stack(rows)),
        **common,
    )
