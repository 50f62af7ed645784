"""Models by name. Every model is written for ONE member; the ensemble boundary maps it over K.

A model is a Flax module called as `model.apply(variables, x, train=...)` on a batch x [B, *input_shape]
(already normalized float32) and returns float32 logits [B, C]. Conventions: `jaxens.models.layers`.

| name | paper | input | default norm / dropout |
|---|---|---|---|
| `mlp` | Webb (Fashion-MNIST modules), `config.model.widths` hidden units | any (flattened) | none / 0 |
| `cnn1d`, `cnn2d` | small strided CNNs, `config.model.widths` channels | [L, C] / [H, W, C] | batch / 0 |
| `resnet20`, `resnet32`, `resnet56` | ResNet v1 for 32×32 (He et al.), `config.model.shortcut` A or B | [H, W, C] | batch / – |
| `resnet50_v2` | pre-activation ResNet-50; small-input stem below 128 pixels | [H, W, C] | batch / – |
| `vit` | small ViT for 64×64 (Tiny-ImageNet), `config.model.patch_size` | [H, W, C] | layer / 0 |
| `fort_small_cnn`, `fort_medium_cnn` | Fort et al. SmallCNN (16, 32, 32), MediumCNN (64, 128, 256, 256) | [H, W, C] | batch / 0.1 |
| `webb_cnn` | Webb et al. Table 3 CIFAR CNN | [H, W, C], ≥ 27 pixels | none / – |
| `densenet100_12`, `densenet82_8`, `densenet64_6` | DenseNet-BC of Webb et al. Table 4 | [H, W, C] | batch / – |
| `densenet16_4` | DenseNet-BC depth 16, growth 4 (CPU-sized Tables 4-5) | [H, W, C] | batch / – |
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import ml_collections

from jaxens.models.cnn import StridedCNN
from jaxens.models.densenet import DenseNetBC
from jaxens.models.fort_cnn import MEDIUM_CNN, SMALL_CNN, FortCNN
from jaxens.models.layers import DTYPES, NORMS
from jaxens.models.mlp import MLP
from jaxens.models.order import forward_order, param_paths, param_sizes
from jaxens.models.resnet_cifar import SHORTCUTS, ResNetCIFAR
from jaxens.models.resnet_v2 import ResNetV2
from jaxens.models.vit import ViT
from jaxens.models.webb_cnn import WebbCNN

__all__ = [
    "DTYPES",
    "MODELS",
    "NORMS",
    "DenseNetBC",
    "FortCNN",
    "MLP",
    "ModelSpec",
    "ResNetCIFAR",
    "ResNetV2",
    "StridedCNN",
    "ViT",
    "WebbCNN",
    "build",
    "config_problems",
    "forward_order",
    "param_paths",
    "param_sizes",
]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """How to build a model from the config, and which inputs and options it takes.

    Attributes:
      make: (model config, num_classes, norm, dropout, dtype, input shape or None) → module, with norm
        and dropout already resolved.
      input_rank: rank of one example ([L, C] → 2, [H, W, C] → 3); None if any (flattens).
      convolutional: whether it convolves (decides the member strategy on CPU, see `jaxens.members`).
      host_loop_on_cpu: whether its step runs faster as one jitted call per step than inside a `while`
        loop on CPU (`jaxens.train_chunk.resolve_step_loop`): true for the convolutional models with
        stride-1 convolutions (XLA's own convolution on CPU), false for the MLP and the strided CNNs, whose
        convolutions are all im2col GEMMs there.
      norm: default normalization.
      norms: normalizations it accepts.
      dropout: default dropout rate, or None if the architecture has no dropout.
      min_side: smallest spatial side it accepts.
    """

    make: Callable[..., nn.Module]
    input_rank: int | None
    convolutional: bool
    norm: str = "batch"
    host_loop_on_cpu: bool = True
    norms: tuple[str, ...] = NORMS
    dropout: float | None = None
    min_side: int = 1

    def accepts(self, input_shape: tuple[int, ...]) -> bool:
        return self.input_rank is None or self.input_rank == len(input_shape)


def _small(input_shape) -> bool:
    """ResNet-50 v2 uses the small-input stem (3×3 conv, no max pool) below 128 pixels a side."""
    return input_shape is not None and min(input_shape[:2]) < 128


def _resnet(depth):
    return lambda c, n, norm, dropout, dtype, shape: ResNetCIFAR(depth, n, shortcut=c.shortcut, norm=norm, dtype=dtype)


def _densenet(depth, growth):
    return lambda c, n, norm, dropout, dtype, shape: DenseNetBC(depth, growth, n, norm=norm, dtype=dtype)


def _fort(channels):
    return lambda c, n, norm, dropout, dtype, shape: FortCNN(channels, n, dropout=dropout, norm=norm, dtype=dtype)


def _strided(kernel):
    return lambda c, n, norm, dropout, dtype, shape: StridedCNN(
        tuple(c.widths), n, kernel, dropout=dropout, norm=norm, dtype=dtype
    )


MODELS: dict[str, ModelSpec] = {
    "mlp": ModelSpec(
        lambda c, n, norm, dropout, dtype, shape: MLP(tuple(c.widths), n, dropout=dropout, norm=norm, dtype=dtype),
        None,
        False,
        norm="none",
        host_loop_on_cpu=False,
        dropout=0.0,
    ),
    "cnn1d": ModelSpec(_strided((5,)), 2, True, dropout=0.0, host_loop_on_cpu=False),
    "cnn2d": ModelSpec(_strided((3, 3)), 3, True, dropout=0.0, host_loop_on_cpu=False),
    "resnet20": ModelSpec(_resnet(20), 3, True),
    "resnet32": ModelSpec(_resnet(32), 3, True),
    "resnet56": ModelSpec(_resnet(56), 3, True),
    "resnet50_v2": ModelSpec(
        lambda c, n, norm, dropout, dtype, shape: ResNetV2(
            num_classes=n, norm=norm, dtype=dtype, small_inputs=_small(shape)
        ),
        3,
        True,
    ),
    "vit": ModelSpec(
        lambda c, n, norm, dropout, dtype, shape: ViT(
            n, patch_size=c.patch_size, dropout=dropout, norm=norm, dtype=dtype
        ),
        3,
        True,
        norm="layer",
        norms=("layer",),
        dropout=0.0,
    ),
    "fort_small_cnn": ModelSpec(_fort(SMALL_CNN), 3, True, dropout=0.1),
    "fort_medium_cnn": ModelSpec(_fort(MEDIUM_CNN), 3, True, dropout=0.1),
    "webb_cnn": ModelSpec(
        lambda c, n, norm, dropout, dtype, shape: WebbCNN(n, norm=norm, dtype=dtype), 3, True, norm="none", min_side=27
    ),
    "densenet100_12": ModelSpec(_densenet(100, 12), 3, True, min_side=4),
    "densenet82_8": ModelSpec(_densenet(82, 8), 3, True, min_side=4),
    "densenet64_6": ModelSpec(_densenet(64, 6), 3, True, min_side=4),
    "densenet16_4": ModelSpec(_densenet(16, 4), 3, True, min_side=4),  # CPU-sized: 2 bottleneck layers a block.
}


def config_problems(model_config: ml_collections.ConfigDict, input_shape: tuple[int, ...] | None) -> list[str]:
    """Messages for model fields that name no model or do not fit the model or the input shape."""
    name = model_config.name
    spec = MODELS.get(name)
    if spec is None:
        return [f"config.model.name={name!r}: unknown; allowed: {', '.join(MODELS)}"]
    problems = []
    if model_config.norm is not None and model_config.norm not in spec.norms:
        problems.append(f"config.model.norm={model_config.norm!r}: {name} takes {', '.join(spec.norms)}")
    if model_config.dropout is not None and spec.dropout is None:
        problems.append(f"config.model.dropout={model_config.dropout!r}: {name} has no dropout; leave it unset")
    if model_config.dtype not in DTYPES:
        problems.append(f"config.model.dtype={model_config.dtype!r}: unknown; allowed: {', '.join(DTYPES)}")
    if model_config.shortcut not in SHORTCUTS:
        problems.append(f"config.model.shortcut={model_config.shortcut!r}: allowed: {', '.join(SHORTCUTS)}")
    if input_shape is not None:
        if not spec.accepts(input_shape):
            fitting = ", ".join(n for n, s in MODELS.items() if s.accepts(input_shape))
            problems.append(
                f"config.model.name={name!r}: takes examples of rank {spec.input_rank}, but the dataset's "
                f"examples have shape {input_shape}; models for it: {fitting}"
            )
        elif spec.input_rank == 3 and min(input_shape[:2]) < spec.min_side:
            problems.append(
                f"config.model.name={name!r}: needs images of at least {spec.min_side} pixels a side, got {input_shape}"
            )
        elif name == "vit" and any(side % model_config.patch_size for side in input_shape[:2]):
            problems.append(
                f"config.model.patch_size={model_config.patch_size}: must divide the image sides {input_shape[:2]}"
            )
    return problems


def build(
    model_config: ml_collections.ConfigDict, num_classes: int, input_shape: tuple[int, ...] | None = None
) -> nn.Module:
    """The module named by `model_config.name`, with unset norm/dropout at the architecture's defaults.

    Args:
      model_config: the config's `model` group (validated).
      num_classes: C.
      input_shape: shape of one example; picks ResNet-50 v2's stem (see `_small`).
    """
    spec = MODELS[model_config.name]
    norm = model_config.norm if model_config.norm is not None else spec.norm
    dropout = model_config.dropout if model_config.dropout is not None else spec.dropout
    return spec.make(model_config, num_classes, norm, dropout, DTYPES[model_config.dtype], input_shape)
