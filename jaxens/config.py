"""The config schema: defaults for every field, and validation before any compute.

Experiment configs in `configs/` start from `get_default_config()` and override fields. The returned
ConfigDict is locked, so a typo (`config.ensemble.kk = 8`, or `--config.ensemble.kk=8` on the command
line) fails at once, naming the field. `validate` checks values and cross-field rules; it runs before any
data is loaded or anything is written to the workdir.
"""

from __future__ import annotations

from typing import Any

import ml_collections

MEMBER_STRATEGIES = ("vmap", "loop")
STEP_LOOPS = ("auto", "device", "host")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "piecewise")
ENSEMBLE_METHODS = ("mean_prob", "mean_logit")


class ConfigError(ValueError):
    """An invalid config field. The message names the field, its value and what is allowed."""


def get_default_config() -> ml_collections.ConfigDict:
    """Every field a run reads, with its default. Configs override these; none may add fields."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # Root of every PRNG stream of the run.
    c.dataset = "mnist1d"  # A name from jaxens.data.DATASETS.

    c.data = ml_collections.ConfigDict()
    c.data.dir = ""  # Where local dataset files live ('' = the dataset's default location).
    c.data.cache_dir = ""  # Where generated datasets are cached ('' = $XDG_CACHE_HOME/jaxens).

    c.model = ml_collections.ConfigDict()
    c.model.name = "mlp"  # A name from jaxens.models.MODELS.
    c.model.widths = (256, 256)  # Hidden units (MLP) or conv channels (CNNs), input side first.
    c.model.dropout = 0.0

    c.ensemble = ml_collections.ConfigDict()
    c.ensemble.k = 4  # Number of members K.
    c.ensemble.strategy = "vmap"  # How the K members execute inside one jitted step.
    c.ensemble.method = "mean_prob"  # Ensemble prediction: mean of probabilities or of logits.

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.1
    c.optimizer.momentum = 0.9  # SGD only.
    c.optimizer.nesterov = False  # SGD only.
    c.optimizer.weight_decay = 0.0  # L2 added to the gradient (sgd, adam); decoupled for adamw.
    c.optimizer.schedule = "constant"
    c.optimizer.boundaries = (0.5, 0.75)  # piecewise: fractions of the total steps where lr decays.
    c.optimizer.decay_factor = 0.1  # piecewise: lr multiplier at each boundary.

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 128
    c.train.num_epochs = 10
    c.train.steps_per_call = 100  # Steps between progress updates; capped at epoch ends.
    # Where the loop over steps runs: 'device' (a while loop in one jitted call), 'host' (one jitted
    # call per step, dispatched without waiting), 'auto' (host on CPU, device elsewhere).
    c.train.step_loop = "auto"
    c.train.eval_every_epochs = 1
    c.train.eval_batch_size = 1000
    c.train.checkpoint_every_epochs = 1
    c.train.max_checkpoints = 2

    c.lock()
    return c


def unknown_fields(paths: list[str]) -> list[str]:
    """Messages for dotted paths like 'config.ensemble.kk' that name no field of the schema."""
    schema = get_default_config()
    problems = []
    for path in paths:
        node, parts = schema, path.split(".")[1:]
        for i, part in enumerate(parts):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                where = ".".join(["config", *parts[:i]])
                allowed = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else "none"
                problems.append(f"--{path}: unknown config field {part!r}; fields of {where}: {allowed}")
                break
            node = node[part]
    return problems


def _schema_errors(config: Any, schema: ml_collections.ConfigDict, prefix: str) -> list[str]:
    errors = []
    if not isinstance(config, ml_collections.ConfigDict):
        return [f"config.{prefix.rstrip('.')}: expected a group of fields, got {config!r}"]
    for key in config.keys():
        if key not in schema:
            allowed = ", ".join(sorted(schema.keys()))
            errors.append(f"config.{prefix}{key}: unknown field; fields here are: {allowed}")
    for key, default in schema.items():
        name = f"config.{prefix}{key}"
        if key not in config:
            errors.append(f"{name}: missing")
            continue
        value = config[key]
        if isinstance(default, ml_collections.ConfigDict):
            errors.extend(_schema_errors(value, default, f"{prefix}{key}."))
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                errors.append(f"{name}={value!r}: expected true or false")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                errors.append(f"{name}={value!r}: expected an integer")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                errors.append(f"{name}={value!r}: expected a number")
        elif isinstance(default, str):
            if not isinstance(value, str):
                errors.append(f"{name}={value!r}: expected a string")
        elif isinstance(default, tuple):
            if not isinstance(value, (tuple, list)):
                errors.append(f"{name}={value!r}: expected a tuple")
    return errors


def _choice(errors: list[str], name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        errors.append(f"{name}={value!r}: unknown; allowed: {', '.join(allowed)}")


def _at_least(errors: list[str], name: str, value: Any, low: float, *, strict: bool = False) -> None:
    if strict and not value > low:
        errors.append(f"{name}={value!r}: must be > {low}")
    elif not strict and not value >= low:
        errors.append(f"{name}={value!r}: must be >= {low}")


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks every field of `config` against the schema and the cross-field rules.

    Raises:
      ConfigError: listing every violation, one per line, each naming the field, its value and what is
        allowed. Nothing is computed or written before this check.
    """
    # Imported here: the registries import flax/jax modules, the schema itself does not need them.
    from jaxens import data as data_lib
    from jaxens import models as models_lib

    errors = _schema_errors(config, get_default_config(), "")
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))

    _choice(errors, "config.dataset", config.dataset, tuple(data_lib.DATASETS))
    _choice(errors, "config.model.name", config.model.name, tuple(models_lib.MODELS))
    _choice(errors, "config.ensemble.strategy", config.ensemble.strategy, MEMBER_STRATEGIES)
    _choice(errors, "config.train.step_loop", config.train.step_loop, STEP_LOOPS)
    _choice(errors, "config.ensemble.method", config.ensemble.method, ENSEMBLE_METHODS)
    _choice(errors, "config.optimizer.name", config.optimizer.name, OPTIMIZERS)
    _choice(errors, "config.optimizer.schedule", config.optimizer.schedule, SCHEDULES)

    _at_least(errors, "config.ensemble.k", config.ensemble.k, 1)
    _at_least(errors, "config.optimizer.learning_rate", config.optimizer.learning_rate, 0, strict=True)
    _at_least(errors, "config.optimizer.momentum", config.optimizer.momentum, 0)
    _at_least(errors, "config.optimizer.weight_decay", config.optimizer.weight_decay, 0)
    _at_least(errors, "config.optimizer.decay_factor", config.optimizer.decay_factor, 0, strict=True)
    if not all(0 < b < 1 for b in config.optimizer.boundaries) or list(config.optimizer.boundaries) != sorted(
        config.optimizer.boundaries
    ):
        errors.append(
            f"config.optimizer.boundaries={tuple(config.optimizer.boundaries)!r}: "
            "must be increasing fractions of the total steps, each in (0, 1)"
        )
    if not 0 <= config.model.dropout < 1:
        errors.append(f"config.model.dropout={config.model.dropout!r}: must lie in [0, 1)")
    if not config.model.widths or not all(isinstance(w, int) and w >= 1 for w in config.model.widths):
        errors.append(f"config.model.widths={tuple(config.model.widths)!r}: must be positive integers")
    for field in (
        "batch_size",
        "num_epochs",
        "steps_per_call",
        "eval_every_epochs",
        "eval_batch_size",
        "checkpoint_every_epochs",
        "max_checkpoints",
    ):
        _at_least(errors, f"config.train.{field}", config.train[field], 1)

    info = data_lib.DATASETS.get(config.dataset)
    if info is not None:
        if config.train.batch_size > info.num_train:
            errors.append(
                f"config.train.batch_size={config.train.batch_size}: larger than the "
                f"{info.num_train} training examples of {config.dataset}"
            )
        spec = models_lib.MODELS.get(config.model.name)
        if spec is not None and not spec.accepts(info.input_shape):
            fitting = ", ".join(n for n, s in models_lib.MODELS.items() if s.accepts(info.input_shape))
            errors.append(
                f"config.model.name={config.model.name!r}: takes examples of rank {spec.input_rank}, but "
                f"{config.dataset} examples have shape {info.input_shape}; models for it: {fitting}"
            )
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))
