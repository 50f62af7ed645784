"""Models by name. Every model is written for ONE member; the ensemble boundary maps it over K.

A model is a Flax module called as `model.apply(variables, x, train=...)` on a batch x [B, *input_shape]
(already normalized float32) and returns logits [B, C].
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import ml_collections

from jaxens.models.cnn import CNN1D, CNN2D
from jaxens.models.mlp import MLP

__all__ = ["CNN1D", "CNN2D", "MLP", "MODELS", "ModelSpec", "build"]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """How to build a model from the config, and which example shapes it accepts.

    Attributes:
      build: (model config, number of classes) → module.
      input_rank: rank of one example it takes ([L, C] → 2, [H, W, C] → 3); None if any (flattens).
      convolutional: whether it convolves (decides the step loop on CPU, see jaxens.ensemble).
    """

    build: Callable[[ml_collections.ConfigDict, int], nn.Module]
    input_rank: int | None
    convolutional: bool

    def accepts(self, input_shape: tuple[int, ...]) -> bool:
        return self.input_rank is None or self.input_rank == len(input_shape)


MODELS: dict[str, ModelSpec] = {
    "mlp": ModelSpec(lambda c, n: MLP(widths=tuple(c.widths), num_classes=n, dropout=c.dropout), None, False),
    "cnn1d": ModelSpec(lambda c, n: CNN1D(widths=tuple(c.widths), num_classes=n, dropout=c.dropout), 2, True),
    "cnn2d": ModelSpec(lambda c, n: CNN2D(widths=tuple(c.widths), num_classes=n, dropout=c.dropout), 3, True),
}


def build(model_config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """The module named by `model_config.name` (validate the config first)."""
    return MODELS[model_config.name].build(model_config, num_classes)
