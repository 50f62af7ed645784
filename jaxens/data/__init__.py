"""Datasets by name: host arrays in, device arrays and per-member minibatch orders out.

`DATASETS` maps a name to static facts (shapes, sizes) that config validation uses without loading
anything; `load(config)` returns a `Dataset` of numpy arrays; `Dataset.to_device()` moves it once to the
accelerator, where batches are index gathers (see `jaxens.data.order`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import struct

from jaxens.data import idx
from jaxens.data import mnist1d as mnist1d_lib
from jaxens.data.order import batch_indices, epoch_orders, steps_per_epoch

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetInfo",
    "batch_indices",
    "epoch_orders",
    "load",
    "steps_per_epoch",
]


@struct.dataclass
class Dataset:
    """A classification dataset as arrays (a pytree: pass it to jitted functions, never close over it).

    Images stay uint8 until `normalize` runs on device.

    Attributes:
      name: registry name.
      train_x: [N, *input_shape] uint8 images or float32 features.
      train_y: [N] int32 labels.
      test_x, test_y: the same for the test split, [N_test, ...].
      num_classes: C.
      scale: multiplies raw values first (1/255 for uint8 images, 1 for features).
      mean, std: per-channel statistics of the scaled training inputs, broadcastable to one example.
    """

    name: str = struct.field(pytree_node=False)
    train_x: jax.Array | np.ndarray
    train_y: jax.Array | np.ndarray
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

    def to_device(self) -> "Dataset":
        """The same dataset with every array placed on the default device (done once per run)."""
        return jax.device_put(self)

    def normalize(self, x: jax.Array) -> jax.Array:
        """Raw inputs [..., *input_shape] → float32, standardized per channel."""
        return (x.astype(jnp.float32) * self.scale - self.mean) / self.std


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What is known about a dataset before loading it (used by config validation)."""

    input_shape: tuple[int, ...]
    num_classes: int
    num_train: int
    num_test: int
    loader: Callable[[ml_collections.ConfigDict], Dataset]


def _with_stats(name, train_x, train_y, test_x, test_y, num_classes) -> Dataset:
    scale = 1.0 / 255.0 if train_x.dtype == np.uint8 else 1.0
    # Per-channel statistics over every axis but the last (channels last).
    axes = tuple(range(train_x.ndim - 1))
    scaled = train_x.astype(np.float64) * scale
    mean = scaled.mean(axis=axes).astype(np.float32)
    std = scaled.std(axis=axes).astype(np.float32)
    return Dataset(
        name=name,
        train_x=train_x,
        train_y=train_y.astype(np.int32),
        test_x=test_x,
        test_y=test_y.astype(np.int32),
        num_classes=num_classes,
        scale=scale,
        mean=mean,
        std=std,
    )


def _load_fashion_mnist(config: ml_collections.ConfigDict) -> Dataset:
    directory = config.data.dir or idx.FASHION_MNIST_DIR
    (train_x, train_y), (test_x, test_y) = idx.load_mnist_format(directory, "fashion_mnist")
    return _with_stats("fashion_mnist", train_x[..., None], train_y, test_x[..., None], test_y, 10)


def _load_mnist1d(config: ml_collections.ConfigDict) -> Dataset:
    d = mnist1d_lib.load(config.data.cache_dir or None)
    return _with_stats("mnist1d", d["x"][..., None], d["y"], d["x_test"][..., None], d["y_test"], 10)


DATASETS: dict[str, DatasetInfo] = {
    "mnist1d": DatasetInfo((40, 1), 10, 4000, 1000, _load_mnist1d),
    "fashion_mnist": DatasetInfo((28, 28, 1), 10, 60000, 10000, _load_fashion_mnist),
}


def load(config: ml_collections.ConfigDict) -> Dataset:
    """Loads `config.dataset` as host arrays (validate the config first)."""
    info = DATASETS[config.dataset]
    dataset = info.loader(config)
    if dataset.input_shape != info.input_shape or dataset.num_train != info.num_train:
        raise ValueError(
            f"dataset {config.dataset!r}: loaded train shape {dataset.train_x.shape}, "
            f"expected {info.num_train} examples of shape {info.input_shape}"
        )
    return dataset
