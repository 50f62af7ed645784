"""Optimizers and learning-rate schedules from the config, built with optax."""

from __future__ import annotations

import ml_collections
import optax


def make_schedule(c: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """The learning rate as a function of the optimizer's own step count.

    `constant`; `cosine` decay to 0 over `total_steps`; `piecewise`: multiplied by `decay_factor` at each
    of `boundaries` (fractions of `total_steps`), e.g. the ResNet step decay ×0.1 at 50% and 75%.
    """
    if c.schedule == "constant":
        return optax.constant_schedule(c.learning_rate)
    if c.schedule == "cosine":
        return optax.cosine_decay_schedule(c.learning_rate, decay_steps=total_steps)
    if c.schedule == "piecewise":
        return optax.piecewise_constant_schedule(
            c.learning_rate, {int(b * total_steps): c.decay_factor for b in c.boundaries}
        )
    raise ValueError(f"config.optimizer.schedule={c.schedule!r}: allowed: constant, cosine, piecewise")


def make_optimizer(c: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
    """One member's optimizer. Its state (momentum, schedule count) lives on the member axis.

    Args:
      c: `config.optimizer`.
      total_steps: steps the schedule spans.
    """
    lr = make_schedule(c, total_steps)
    if c.name == "adamw":
        return optax.adamw(lr, weight_decay=c.weight_decay)
    decay = optax.add_decayed_weights(c.weight_decay) if c.weight_decay else optax.identity()
    if c.name == "sgd":
        return optax.chain(decay, optax.sgd(lr, momentum=c.momentum or None, nesterov=c.nesterov))
    if c.name == "adam":
        return optax.chain(decay, optax.adam(lr))
    raise ValueError(f"config.optimizer.name={c.name!r}: allowed: sgd, adam, adamw")
