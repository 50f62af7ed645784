"""Config validation: every rule between fields, checked before any data is loaded or anything written.

`validate(config)` collects every violation (each naming the field, its value and what is allowed) and
raises one `ConfigError` listing them all. It reads the registries of datasets and models, so it knows
shapes and sizes without loading anything. `jaxens.trainer.spec.resolve` calls it first.
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections

from jaxens import coupling as coupling_lib
from jaxens import data as data_lib
from jaxens import files, optim
from jaxens import grid as grid_lib
from jaxens import models as models_lib
from jaxens import reinit as reinit_lib
from jaxens import rng as rng_lib
from jaxens import steps as steps_lib
from jaxens.config import (
    CONDITIONS,
    ENSEMBLE_METHODS,
    MEMBER_STRATEGIES,
    ON_DIVERGENCE,
    OPTIMIZERS,
    REINIT_SIDES,
    SCHEDULES,
    SPAWNING_CONDITIONS,
    STEP_LOOPS,
    ConfigError,
    get_default_config,
)


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks every field of `config` against the schema and the cross-field rules.

    Raises:
      ConfigError: listing every violation, one per line, each naming the field, its value and what is
        allowed. Nothing is computed or written before this check.
    """
    errors = _schema_errors(config, get_default_config(), "")
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))
    if grid_lib.varied(config):  # Its own rules, then every group as the standalone run it replaces.
        errors.extend(grid_lib.problems(config, validate))
        _mesh_errors(errors, config)
        if errors:
            raise ConfigError("invalid config:\n  " + "\n  ".join(errors))
        return
    _field_errors(errors, config)
    _member_lr_errors(errors, config)
    _mesh_errors(errors, config)
    info = _data_errors(errors, config)
    _cycle_errors(errors, config, info)
    _length_errors(errors, config, info)
    for name in config.ensemble.shared_streams:
        _choice(errors, "config.ensemble.shared_streams", name, tuple(rng_lib.STREAM_IDS))
    _coupling_errors(errors, config, info)
    _loss_errors(errors, config)
    _trajectory_errors(errors, config, info)
    _step_string_errors(
        errors, "config.train.checkpoint_every", config.train.checkpoint_every, config, info, "'1ep' or '500it'"
    )
    errors.extend(models_lib.config_problems(config.model, info.input_shape if info is not None else None))
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))


def _field_errors(errors: list[str], config: ml_collections.ConfigDict) -> None:
    """Choices and ranges of single fields."""
    _choice(errors, "config.ensemble.strategy", config.ensemble.strategy, ("auto", *MEMBER_STRATEGIES))
    _choice(errors, "config.train.step_loop", config.train.step_loop, STEP_LOOPS)
    _choice(errors, "config.ensemble.method", config.ensemble.method, ENSEMBLE_METHODS)
    _choice(errors, "config.optimizer.name", config.optimizer.name, OPTIMIZERS)
    _choice(errors, "config.optimizer.schedule", config.optimizer.schedule, SCHEDULES)
    _choice(errors, "config.train.on_divergence", config.train.on_divergence, ON_DIVERGENCE)
    _at_least(errors, "config.ensemble.k", config.ensemble.k, 1)
    _at_least(errors, "config.ensemble.members_per_call", config.ensemble.members_per_call, 0)
    _at_least(errors, "config.seed", config.seed, 0)
    _at_least(errors, "config.data.val_seed", config.data.val_seed, 0)
    _optimizer_errors(errors, config.optimizer)
    if config.model.dropout is not None and not 0 <= config.model.dropout < 1:
        errors.append(f"config.model.dropout={config.model.dropout!r}: must lie in [0, 1)")
    _at_least(errors, "config.model.patch_size", config.model.patch_size, 1)
    if not config.model.widths or not all(isinstance(w, int) and w >= 1 for w in config.model.widths):
        errors.append(f"config.model.widths={tuple(config.model.widths)!r}: must be positive integers")
    for field in ("batch_size", "num_epochs", "steps_per_call", "max_checkpoints"):
        _at_least(errors, f"config.train.{field}", config.train[field], 1)
    for field in ("every_epochs", "batch_size"):
        _at_least(errors, f"config.eval.{field}", config.eval[field], 1)
    if config.eval.keep_best and config.mesh.distributed:
        errors.append("config.eval.keep_best=True: not yet with config.mesh.distributed (one process only)")
    if config.eval.keep_best and not config.data.val_size:
        errors.append(
            "config.eval.keep_best=True: early stopping selects on the validation split; hold one out with "
            "config.data.val_size"
        )


def _optimizer_errors(errors: list[str], o: ml_collections.ConfigDict) -> None:
    """config.optimizer's ranges, and what sgmcmc allows."""
    _at_least(errors, "config.optimizer.learning_rate", o.learning_rate, 0, strict=True)
    _at_least(errors, "config.optimizer.momentum", o.momentum, 0)
    _at_least(errors, "config.optimizer.weight_decay", o.weight_decay, 0)
    _at_least(errors, "config.optimizer.decay_factor", o.decay_factor, 0, strict=True)
    bounds = tuple(o.boundaries)
    if not all(0 < b < 1 for b in bounds) or any(a >= b for a, b in zip(bounds, bounds[1:])):
        errors.append(
            f"config.optimizer.boundaries={bounds!r}: must be strictly increasing fractions of the total steps, "
            "each in (0, 1)"
        )
    factors = tuple(o.decay_factors)
    if factors and (len(factors) != len(bounds) or not all(f > 0 for f in factors)):
        errors.append(
            f"config.optimizer.decay_factors={factors!r}: needs one positive multiplier per boundary of "
            f"config.optimizer.boundaries={bounds!r} (or () for config.optimizer.decay_factor at each)"
        )
    _at_least(errors, "config.optimizer.cycles", o.cycles, 1)
    _at_least(errors, "config.optimizer.temperature", o.temperature, 0)
    if not 0 <= o.exploration < 1:
        errors.append(f"config.optimizer.exploration={o.exploration!r}: must lie in [0, 1)")
    if o.name == "sgd" and not o.momentum < 1:
        errors.append(
            f"config.optimizer.momentum={o.momentum!r}: sgd needs momentum in [0, 1) (at 1 or more the "
            "velocity never decays and the updates grow without bound)"
        )
    if o.name == "sgmcmc":
        if not o.momentum < 1:
            errors.append(
                f"config.optimizer.momentum={o.momentum!r}: sgmcmc needs momentum in [0, 1) "
                "(0: SGLD; SGHMC's friction is 1 - momentum)"
            )
        if o.nesterov:
            errors.append("config.optimizer.nesterov=True: sgmcmc has no Nesterov variant; set it to False")


def _mesh_errors(errors: list[str], config: ml_collections.ConfigDict) -> None:
    """config.mesh against K (all groups together) and the batch size."""
    for field in ("member", "data"):
        _at_least(errors, f"config.mesh.{field}", config.mesh[field], 0)
    groups = grid_lib.num_groups(config)
    num_members = config.ensemble.k * groups
    if config.mesh.member > 0 and num_members % config.mesh.member:
        errors.append(
            f"config.mesh.member={config.mesh.member}: must divide the {num_members} members K (each device row "
            "holds K/member of them)"
        )
    if config.mesh.data > 0 and config.train.batch_size % config.mesh.data:
        errors.append(
            f"config.mesh.data={config.mesh.data}: must divide config.train.batch_size={config.train.batch_size} "
            "(each member's batch is split evenly over the 'data' axis)"
        )


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
            elif not all(_is(item, TUPLE_ITEMS.get(name, "any")) for item in value):
                errors.append(f"{name}={tuple(value)!r}: expected a tuple of {TUPLE_ITEMS[name]}s")
        errors.extend(_number_errors(name, value))
    return errors


# What the items of each tuple field are (config_flags takes `(0.5,nan)` for a number and a string).
TUPLE_ITEMS = {
    "config.model.widths": "integer",
    "config.coupling.t": "step string or integer",
    "config.loss.lam": "number",
    "config.optimizer.boundaries": "number",
    "config.optimizer.member_lr_scale": "number",
    "config.optimizer.decay_factors": "number",
    "config.ensemble.shared_streams": "string",
    "config.eval.shifted": "string",
    "config.eval.ood": "string",
    "config.grid.seed": "integer",
    "config.grid.learning_rate": "number",
    "config.grid.weight_decay": "number",
    "config.grid.momentum": "number",
    "config.grid.reinit_fraction": "number",
    "config.grid.reinit_side": "string",
    "config.grid.condition": "string",
}


def _is(item: Any, kind: str) -> bool:
    if isinstance(item, bool):
        return kind == "any"
    return {
        "integer": isinstance(item, int),
        "number": isinstance(item, (int, float)),
        "string": isinstance(item, str),
        "step string or integer": isinstance(item, (int, str)),
    }.get(kind, True)


# Every integer field is a count, a size or a seed: none is negative, and all fit the int32 arrays and
# schedules they end up in (seeds the 64-bit ones of the PRNG and of numpy).
MAX_INT = 2**31 - 1
MAX_SEED = 2**63 - 1
SEED_FIELDS = ("config.seed", "config.data.val_seed", "config.grid.seed")


def _number_errors(name: str, value: Any) -> list[str]:
    """A float that is not finite, or an integer out of range, in a field or among a tuple's items."""
    items = value if isinstance(value, (tuple, list)) else (value,)
    high = MAX_SEED if name in SEED_FIELDS else MAX_INT
    errors = []
    for item in items:
        if isinstance(item, float) and not math.isfinite(item):
            errors.append(f"{name}={value!r}: every number must be finite")
        elif isinstance(item, int) and not isinstance(item, bool) and not -high - 1 <= item <= high:
            errors.append(f"{name}={value!r}: integers here must lie within ±{high} (2**{high.bit_length()} - 1)")
        else:
            continue
        break
    return errors


def _choice(errors: list[str], name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        errors.append(f"{name}={value!r}: unknown; allowed: {', '.join(allowed)}")


def _at_least(errors: list[str], name: str, value: Any, low: float, *, strict: bool = False) -> None:
    if strict and not value > low:
        errors.append(f"{name}={value!r}: must be > {low}")
    elif not strict and not value >= low:
        errors.append(f"{name}={value!r}: must be >= {low}")


def _member_lr_errors(errors: list[str], config: ml_collections.ConfigDict) -> None:
    """One positive learning-rate multiplier per member of a group, for the optimizers it scales."""
    scales = tuple(config.optimizer.member_lr_scale)
    field = f"config.optimizer.member_lr_scale={scales!r}"
    if not scales:
        return
    if not all(isinstance(s, (int, float)) and not isinstance(s, bool) and s > 0 for s in scales):
        errors.append(f"{field}: must be positive numbers")
    k = config.ensemble.k
    if isinstance(k, int) and len(scales) != k:
        errors.append(f"{field}: needs one multiplier per member of a group, config.ensemble.k={k}; got {len(scales)}")
    if config.optimizer.name == "sgmcmc":
        errors.append(
            f"{field}: sgmcmc's Langevin noise scales with the square root of the learning rate, not with "
            "these multipliers; allowed with sgd, adam, adamw"
        )


def _step_string_errors(errors: list[str], name: str, value, config, info, example: str) -> None:
    """A step string (`jaxens.steps`) that parses to at least one step."""
    if not isinstance(value, str) or not value:
        errors.append(f"{name}={value!r}: expected a step string such as {example}")
        return
    if _unknown_steps_per_epoch(config, info):
        return  # The other errors say why.
    try:
        steps = steps_lib.parse(value, steps_per_epoch(config, info))
    except ValueError as e:
        errors.append(f"{name}={value!r}: {e}")
        return
    if steps < 1:
        errors.append(f"{name}={value!r}: must be at least one step, e.g. {example}")


def _unknown_steps_per_epoch(config: ml_collections.ConfigDict, info) -> bool:
    """Whether S cannot be computed (no dataset, no training split, or a batch size out of range)."""
    if info is None or not info.num_train or not 1 <= config.train.batch_size:
        return True
    return not 0 <= config.data.val_size < info.num_train or steps_per_epoch(config, info) < 1


def _length_errors(errors: list[str], config: ml_collections.ConfigDict, info) -> None:
    """A member's T steps (2T for coupled_to_t_reset's children) fit the int32 step counters."""
    if _unknown_steps_per_epoch(config, info) or config.train.num_epochs < 1:
        return
    spe = steps_per_epoch(config, info)
    longest = spe * config.train.num_epochs * (2 if config.coupling.condition == "coupled_to_t_reset" else 1)
    if longest > MAX_INT:
        errors.append(
            f"config.train.num_epochs={config.train.num_epochs}: {longest} steps ({spe} per epoch) do not fit the "
            f"int32 step counters; allowed: at most {MAX_INT} steps"
        )


def _cycle_errors(errors: list[str], config: ml_collections.ConfigDict, info) -> None:
    """config.optimizer.cycles against a member's T steps, and sgmcmc's sampling stage (needs T)."""
    o = config.optimizer
    if o.schedule != "cyclical" and o.name != "sgmcmc":
        return  # cycles is not read.
    if _unknown_steps_per_epoch(config, info) or config.train.num_epochs < 1:
        return  # T is unknown; the other errors say why.
    if not isinstance(o.cycles, int) or o.cycles < 1 or not 0 <= o.exploration < 1:
        return  # Reported above.
    spe = steps_per_epoch(config, info)
    total = spe * config.train.num_epochs
    if total < 1:
        return
    if o.cycles > total:
        errors.append(
            f"config.optimizer.cycles={o.cycles}: more cycles than the T = {total} training steps "
            f"({spe} per epoch × {config.train.num_epochs} epochs); allowed: 1 to {total}"
        )
        return
    length = optim.cycle_length(total, o.cycles)
    try:
        optim.sample_steps(total, o.cycles, o.samples_per_cycle, spe)
    except ValueError as e:
        errors.append(f"{e} (the ends of its last epochs, {spe} steps each); allowed: 1 to {(length - 1) // spe + 1}")
    if o.name == "sgmcmc" and o.temperature and optim.first_sampling_offset(total, o.cycles, o.exploration) >= length:
        errors.append(
            f"config.optimizer.exploration={o.exploration!r}: a cycle of {length} steps (T = {total}, "
            f"config.optimizer.cycles={o.cycles}) has no step with r(k) = mod(k, {length})/{length} >= "
            f"{o.exploration}, so sgmcmc would never sample; lower it to at most {(length - 1) / length:.4g} "
            "or use fewer cycles"
        )


def steps_per_epoch(config: ml_collections.ConfigDict, info: data_lib.DatasetInfo) -> int:
    """A member's steps per epoch S: the training examples left after the validation hold-out, per batch."""
    return data_lib.steps_per_epoch(info.num_train - config.data.val_size, config.train.batch_size)


def _data_errors(errors: list[str], config: ml_collections.ConfigDict):
    """Dataset, split, augmentation and evaluation-set rules; returns the dataset's info (None if unknown)."""
    d = config.data
    _at_least(errors, "config.data.val_size", d.val_size, 0)
    _at_least(errors, "config.data.crop_padding", d.crop_padding, 0)
    _at_least(errors, "config.data.image_size", d.image_size, 8)
    _choice(errors, "config.data.augment", d.augment, ("auto", *data_lib.AUGMENTATIONS))
    if problem := files.not_a_directory(d.cache_dir):
        errors.append(f"config.data.cache_dir={d.cache_dir!r}: {problem}; give a directory ('' for the default)")
    if d.val_from_seed and (d.val_size <= 0 or d.val_seed):
        errors.append(
            f"config.data.val_from_seed=True: holds out config.seed's split, so it needs config.data.val_size > 0 "
            f"(it is {d.val_size}) and config.data.val_seed left at 0 (it is {d.val_seed})"
        )
    info = data_lib.config_info(config)
    if info is None:
        errors.append(data_lib.registry.unknown_name_message("config.dataset", config.dataset))
        return None
    if not info.num_train:
        errors.append(
            f"config.dataset={config.dataset!r}: an evaluation-only dataset (it has a test split only); "
            f"train on {info.labels} and list it in config.eval.shifted"
        )
        return info
    if config.dataset == "tiny_imagenet" and not d.dir:
        errors.append(
            "config.data.dir='': tiny_imagenet reads the unzipped tiny-imagenet-200 folder "
            "(http://cs231n.stanford.edu/tiny-imagenet-200.zip); set config.data.dir to it"
        )
    remaining = info.num_train - d.val_size
    if d.val_size >= info.num_train:
        errors.append(
            f"config.data.val_size={d.val_size}: must be < the {info.num_train} training examples of {config.dataset}"
        )
    elif config.train.batch_size > remaining:
        errors.append(
            f"config.train.batch_size={config.train.batch_size}: larger than the {remaining} training examples "
            f"of {config.dataset}"
            + (f" left after holding out config.data.val_size={d.val_size}" if d.val_size else "")
        )
    if d.augment in data_lib.AUGMENTATIONS and d.augment != "none" and len(info.input_shape) != 3:
        errors.append(
            f"config.data.augment={d.augment!r}: needs images [H, W, C], but {config.dataset} examples have "
            f"shape {info.input_shape}; use 'none'"
        )
    for kind, names in (("shifted", config.eval.shifted), ("ood", config.eval.ood)):
        for name in names:
            field = f"config.eval.{kind}"
            other = data_lib.dataset_info(name, d.image_size) if isinstance(name, str) else None
            if other is None:
                errors.append(data_lib.registry.unknown_name_message(field, name))
            elif other.input_shape != info.input_shape:
                errors.append(
                    f"{field}: {name!r} has examples of shape {other.input_shape}, the model takes "
                    f"{info.input_shape} ({config.dataset})"
                )
            elif kind == "shifted" and other.labels != info.labels:
                errors.append(
                    f"{field}: {name!r} has the classes of {other.labels}, not those of {config.dataset}; "
                    "list it in config.eval.ood instead"
                )
    return info


def _coupling_errors(errors: list[str], config: ml_collections.ConfigDict, info) -> None:
    """The condition, its spawn times (which need the steps per epoch) and re-initialization."""
    c = config.coupling
    _choice(errors, "config.coupling.condition", c.condition, CONDITIONS)
    _choice(errors, "config.coupling.reinit_side", c.reinit_side, REINIT_SIDES)
    _choice(errors, "config.coupling.reinit_unit", c.reinit_unit, reinit_lib.UNITS)
    if not 0 <= c.reinit_fraction <= 1:
        errors.append(f"config.coupling.reinit_fraction={c.reinit_fraction!r}: must lie in [0, 1]")
    if "order" in config.ensemble.shared_streams and c.condition != "coupled_order":
        errors.append(
            f"config.ensemble.shared_streams={tuple(config.ensemble.shared_streams)!r}: sharing 'order' is the "
            f"coupled_order condition; set config.coupling.condition='coupled_order' "
            f"(not {c.condition!r}) and leave 'order' out"
        )
    if c.condition not in CONDITIONS:
        return
    spawning = c.condition in SPAWNING_CONDITIONS
    if not spawning:
        if c.reinit_fraction:
            errors.append(
                f"config.coupling.reinit_fraction={c.reinit_fraction!r}: re-initialization happens at spawn; "
                f"set config.coupling.condition to one of {', '.join(SPAWNING_CONDITIONS)}"
            )
        if c.parent_dir:
            errors.append(
                f"config.coupling.parent_dir={c.parent_dir!r}: {c.condition} has no parent; set "
                f"config.coupling.condition to one of {', '.join(SPAWNING_CONDITIONS)}"
            )
        return  # config.coupling.t is not read (a spawn config overridden to a baseline condition).
    if not c.t:
        errors.append(f"config.coupling.t=(): {c.condition} needs spawn times, e.g. ('2ep',) or ('0it', '1ep', '5ep')")
        return
    if info is None or not info.num_train or errors:
        return  # The steps per epoch are unknown; the other errors come first.
    spe = steps_per_epoch(config, info)
    errors.extend(coupling_lib.spawn_time_problems(tuple(c.t), c.condition, spe, spe * config.train.num_epochs))


def _loss_errors(errors: list[str], config: ml_collections.ConfigDict) -> None:
    """λ values (Webb et al. Theorem 1), the family, and what a modular loss needs of the coupling."""
    lams = tuple(config.loss.lam)
    if config.loss.family != "categorical":
        errors.append(
            f"config.loss.family={config.loss.family!r}: the trainer trains classifiers (allowed: categorical); "
            "the gaussian and poisson families are in jaxens.losses (see experiments/webb_regression.py)"
        )
    for lam in lams:
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0 <= lam <= 1:
            errors.append(
                f"config.loss.lam: {lam!r} must be a number in [0, 1]; beyond 1 the modular loss is unbounded "
                "below (Webb et al., Theorem 1)"
            )
    if len(set(lams)) != len(lams):
        errors.append(f"config.loss.lam={lams!r}: values repeat")
    if not lams:
        return
    if config.coupling.condition in SPAWNING_CONDITIONS:
        errors.append(
            f"config.loss.lam={lams!r} with config.coupling.condition={config.coupling.condition!r}: the modular "
            "loss trains members from initialization; use coupled_order"
        )
    elif config.coupling.condition != "coupled_order":
        errors.append(
            f"config.loss.lam={lams!r}: the modular loss couples the members of a group through one shared "
            f"minibatch (Webb et al.), so it needs config.coupling.condition='coupled_order' "
            f"(not {config.coupling.condition!r})"
        )


def _trajectory_errors(errors: list[str], config: ml_collections.ConfigDict, info) -> None:
    """The snapshot cadence parses and fits in the members' training ('' = no snapshots)."""
    t = config.trajectory
    _at_least(errors, "config.trajectory.keep_last", t.keep_last, 0)
    if isinstance(t.every, str) and not t.every:
        return
    _step_string_errors(errors, "config.trajectory.every", t.every, config, info, "'1ep' or '50it' ('' for none)")
