"""The one place that turns a dataset name into arrays on the device and minibatches for K members.

- `registry`: names → `DatasetInfo` (shapes and sizes known before loading, for config validation) and
  loaders (offline files, scikit-learn, MNIST-1D generation, TFDS via `tfds.data_source`, Tiny-ImageNet).
- `dataset`: the `Dataset` pytree (train / validation / test splits, per-channel statistics) and
  `EvalSet`s (shifted and out-of-distribution test sets).
- `order`, `batch`, `augment`: per-member minibatches, each a pure function of the member's keys and
  step, gathered and augmented on the device.
"""

from jaxens.data.augment import AUGMENTATIONS, augment_images
from jaxens.data.batch import batch_at_step, batch_examples, batch_indices_at, member_batch
from jaxens.data.dataset import (
    Dataset,
    EvalSet,
    Views,
    channel_stats,
    from_arrays,
    member_views,
    validation_indices,
)
from jaxens.data.errors import DatasetError
from jaxens.data.order import batch_indices, epoch_orders, spawn_epoch_orders, steps_per_epoch
from jaxens.data.registry import (
    CIFAR10_CORRUPTIONS,
    NAMES,
    DatasetInfo,
    Source,
    config_info,
    dataset_info,
    load,
    load_eval_sets,
    resolve_augment,
    source_info,
)

__all__ = [
    "AUGMENTATIONS",
    "CIFAR10_CORRUPTIONS",
    "NAMES",
    "Source",
    "Dataset",
    "DatasetError",
    "DatasetInfo",
    "EvalSet",
    "Views",
    "augment_images",
    "batch_at_step",
    "batch_examples",
    "batch_indices",
    "batch_indices_at",
    "channel_stats",
    "config_info",
    "dataset_info",
    "epoch_orders",
    "spawn_epoch_orders",
    "from_arrays",
    "load",
    "load_eval_sets",
    "member_batch",
    "member_views",
    "resolve_augment",
    "source_info",
    "steps_per_epoch",
    "validation_indices",
]
