"""The config schema: defaults for every field, and validation before any compute.

Experiment configs in `configs/` start from `get_default_config()` and override fields. The returned
ConfigDict is locked, so a typo (`config.ensemble.kk = 8`, or `--config.ensemble.kk=8` on the command
line) fails at once, naming the field. `validate` checks values and cross-field rules; it runs before any
data is loaded or anything is written to the workdir.
"""

from __future__ import annotations

from typing import Any

import ml_collections
from ml_collections import config_dict

MEMBER_STRATEGIES = ("vmap", "loop", "shard_map")  # How K members execute; config.ensemble.strategy also takes "auto".
STEP_LOOPS = ("auto", "device", "host")
OPTIMIZERS = ("sgd", "adam", "adamw", "sgmcmc")
SCHEDULES = ("constant", "cosine", "piecewise", "cyclical")
ENSEMBLE_METHODS = ("mean_prob", "mean_logit")
# Zamparo et al. §1; the first two train K members from initialization, the last two spawn from a parent.
CONDITIONS = ("no_coupling", "coupled_order", "coupled_to_t", "coupled_to_t_reset")
SPAWNING_CONDITIONS = ("coupled_to_t", "coupled_to_t_reset")
REINIT_SIDES = ("low", "high")
ON_DIVERGENCE = ("freeze", "stop")


class ConfigError(ValueError):
    """An invalid config field. The message names the field, its value and what is allowed."""


def get_default_config() -> ml_collections.ConfigDict:
    """Every field a run reads, with its default. Configs override these; none may add fields."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # Root of every PRNG stream of the run.
    c.dataset = "mnist1d"  # A name from jaxens.data.NAMES (the table in jaxens/data/registry.py).

    c.data = ml_collections.ConfigDict()
    # Local dataset files: Fashion-MNIST IDX files, the tiny-imagenet-200 folder ('' = default location).
    c.data.dir = ""
    # TFDS data_dir: a local directory or a gs:// bucket ('' = $TFDS_DATA_DIR or ~/tensorflow_datasets).
    c.data.tfds_dir = ""
    c.data.download = True  # Let TFDS download and prepare a missing dataset when its hosts answer.
    c.data.cache_dir = ""  # Where decoded or generated arrays are cached ('' = $XDG_CACHE_HOME/jaxens).
    c.data.val_size = 0  # Training examples held out as the validation split (chosen by val_seed).
    c.data.val_seed = 0
    # Training augmentation: 'auto' (crop_flip for CIFAR and (Tiny-)ImageNet, crop for SVHN, none
    # otherwise), 'none', 'flip', 'crop' or 'crop_flip'. Crops pad by crop_padding zero pixels.
    c.data.augment = "auto"
    c.data.crop_padding = 4
    c.data.image_size = 64  # imagenet2012 only: side of the center-cropped, resized images.

    c.model = ml_collections.ConfigDict()
    c.model.name = "mlp"  # A name from jaxens.models.MODELS (the table in jaxens/models/__init__.py).
    c.model.widths = (256, 256)  # mlp: hidden units; cnn1d/cnn2d: conv channels; input side first.
    # Unset (None): the architecture's default (see the table); set to override.
    c.model.norm = config_dict.placeholder(str)  # 'batch', 'layer', 'group' or 'none'.
    c.model.dropout = config_dict.placeholder(float)
    c.model.dtype = "float32"  # Compute dtype: 'float32' or 'bfloat16' (parameters stay float32).
    c.model.shortcut = "A"  # resnet20/32/56: 'A' zero-padding identity, 'B' 1×1 projection.
    c.model.patch_size = 8  # vit only.

    c.ensemble = ml_collections.ConfigDict()
    c.ensemble.k = 4  # Number of members K (under a spawning condition: children per spawn time).
    # How the K members execute inside one jitted step: 'vmap', 'loop' (unrolled), 'shard_map' (members
    # sharded over the devices on a 'member' mesh axis, each device running its share as 'auto' would), or
    # 'auto': loop for convolutional models on CPU (where vmap lowers to grouped convolutions: measured
    # 2-4.5x slower, see benchmarks/member_strategies.py), vmap otherwise.
    c.ensemble.strategy = "auto"
    c.ensemble.method = "mean_prob"  # Ensemble prediction: mean of probabilities or of logits.
    # Extra PRNG streams all members share (see jaxens.rng), e.g. ('augment',) on top of coupled_order's
    # shared order. 'order' itself is shared by config.coupling.condition='coupled_order' only.
    c.ensemble.shared_streams = ()

    # How the members' training is coupled (Zamparo et al. §1; see jaxens.coupling).
    c.coupling = ml_collections.ConfigDict()
    # no_coupling: independent init and order. coupled_order: independent init, shared minibatches.
    # coupled_to_t: one parent trains t steps, then k children finish the T steps with their own order.
    # coupled_to_t_reset: as coupled_to_t, but the children restart optimizer and schedule and train T more.
    c.coupling.condition = "no_coupling"
    # Spawn times t, as step strings '500it', '2ep', '2ep10it' (or integers): one for a single spawn, several
    # for a sweep that trains the parent once and all spawn times' children in one program (K = |t|·k).
    c.coupling.t = ()
    c.coupling.reinit_fraction = 0.0  # Share of the parameter count re-initialized at spawn (§3).
    c.coupling.reinit_side = "low"  # 'low': tensors from the input side; 'high': from the output side.
    # An earlier run's workdir whose parent checkpoints to spawn from (it must have the same parent: seed,
    # data, model, optimizer, batch size and epochs). '' = train the parent in this run.
    c.coupling.parent_dir = ""

    # Webb et al.'s modular loss (jaxens.losses). lam = (): every member minimizes its own NLL (the usual
    # ensemble). One or more λ in [0, 1]: each λ trains its own group of k members jointly with
    # L_λ = λ·NLL(ensemble) + (1 − λ)·mean NLL of the members, all groups side by side (K = |lam|·k) on one
    # shared minibatch (config.coupling.condition='coupled_order'). The trainer minimizes k·L_λ, so that
    # λ = 0 is independent training at the configured learning rate (eq. 7 itself scales it by 1/k).
    c.loss = ml_collections.ConfigDict()
    c.loss.lam = ()
    c.loss.family = "categorical"  # The trainer's datasets are classification: the categorical family.

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.1
    c.optimizer.momentum = 0.9  # sgd; sgmcmc: 0 is SGLD, in (0, 1) SGHMC.
    c.optimizer.nesterov = False  # sgd only.
    # L2 added to the gradient (sgd, adam, sgmcmc: its Gaussian prior); decoupled for adamw.
    c.optimizer.weight_decay = 0.0
    c.optimizer.schedule = "constant"  # constant, cosine, piecewise or cyclical.
    c.optimizer.boundaries = (0.5, 0.75)  # piecewise: fractions of the total steps where lr decays.
    c.optimizer.decay_factor = 0.1  # piecewise: lr multiplier at each boundary.
    # cyclical: cosine cycles over the T steps, each restarting at learning_rate (Zhang et al. 2020 eq. 1;
    # with sgd: cyclical SGD / snapshot ensembles). sgmcmc: its exploration/sampling stages follow these
    # cycles whatever the schedule. Samples: the weights at each cycle end (jaxens.optim.cycle_ends).
    c.optimizer.cycles = 1
    # sgmcmc (cyclical SG-MCMC, Zhang et al. 2020; jaxens.optim.sgmcmc): the first `exploration` share of
    # every cycle is plain SGD, the rest adds Langevin noise of std sqrt(2·lr·(1 − momentum)·temperature/N).
    c.optimizer.temperature = 1.0  # sgmcmc: T of the posterior p(θ|D)^(1/T); 0 adds no noise.
    c.optimizer.exploration = 0.8  # sgmcmc: β in [0, 1), the exploration share of each cycle.
    # Per-member learning-rate multipliers, one per member of a group (k values; () = all 1): member m's
    # updates are scaled by member_lr_scale[m] (sgd, adam, adamw). E.g. ensembles over learning rates.
    c.optimizer.member_lr_scale = ()

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 128
    c.train.num_epochs = 10
    # Steps between progress updates (capped at epoch ends); also the most steps a SIGTERM waits for.
    c.train.steps_per_call = 100
    # Where the loop over steps runs: 'device' (a while loop in one jitted call), 'host' (one jitted
    # call per step, dispatched without waiting), 'auto' (host on CPU, device elsewhere).
    c.train.step_loop = "auto"
    # Checkpoints of the members (and of the parent, which is also saved at every spawn time), as a step
    # string: '1ep', '5ep', '500it'. SIGTERM or SIGINT also saves at once and exits (code 128 + signal).
    c.train.checkpoint_every = "1ep"
    c.train.max_checkpoints = 2  # The latest ones kept (a rerun falls back past a corrupt latest one).
    # A member whose loss or gradients turn non-finite is always frozen at its state before that step and
    # reported ('freeze': the others train on; 'stop': the run stops, exit code 3). Either way the run stops
    # once no member is left training.
    c.train.on_divergence = "freeze"

    # Snapshots of the members' weights along training (Fort et al. §4; jaxens.trajectory): params and
    # BatchNorm statistics of all K members, saved to workdir/trajectory/ at the start, at every multiple
    # of `every` (a step string '1ep' or '50it'; '' = none) and at the end of training. keep_last = r > 0
    # keeps only the r most recent snapshots on disk (what the diagonal / low-rank Gaussian samplers and
    # weight averaging of jaxens.subspace need); 0 keeps them all (for trajectory similarity figures).
    c.trajectory = ml_collections.ConfigDict()
    c.trajectory.every = ""
    c.trajectory.keep_last = 0

    c.eval = ml_collections.ConfigDict()
    c.eval.every_epochs = 1
    c.eval.batch_size = 1000
    # Extra test sets, by dataset name. shifted: same classes as the training set (error, NLL), e.g.
    # 'cifar10_corrupted/fog_3'. ood: other classes (predictive entropy, confidence), e.g. 'svhn_cropped'.
    c.eval.shifted = ()
    c.eval.ood = ()

    # Devices (jaxens.sharding): a mesh with axes 'member' (the stacked members are sharded over it) and
    # 'data' (each member's minibatch is split over it). 0 = automatic: every device on 'member' when K
    # allows (member = gcd(K, devices)), the rest on 'data'. Placement only: a run resumes on another mesh
    # (its checkpoints restore onto any device count) and these fields do not make it a different run.
    c.mesh = ml_collections.ConfigDict()
    c.mesh.member = 0
    c.mesh.data = 0
    # Multi-host (a Cloud TPU pod slice, several GPU hosts): start JAX's distributed runtime first, in every
    # process (see the README). Each process then runs its devices' share; process 0 writes the results.
    c.mesh.distributed = False
    # Split the training set's examples over all devices instead of a copy on each (for training sets too
    # large for one device's memory; each process then places only its devices' rows). Batches are gathered
    # across devices: an all-reduce of the K·B drawn examples per step. The examples must divide evenly.
    c.mesh.shard_train = False

    c.lock()
    return c


def packaged_configs_dir() -> str:
    """The directory of the configs installed with jaxens (the repository's configs/, as `jaxens.configs`)."""
    import importlib.util
    import os

    spec = importlib.util.find_spec("jaxens.configs")
    if spec is not None and spec.submodule_search_locations:
        return list(spec.submodule_search_locations)[0]
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")  # A source tree.


def resolve_path(path: str) -> str:
    """A config file's path: `path` itself when it exists, else the installed config of that file name.

    So `--config=configs/mnist1d_spawn.py` works in a clone and, after `pip install`, from any directory
    (as do `--config=mnist1d_spawn.py` and `--config=mnist1d_spawn`).

    Raises:
      ConfigError: neither exists (the message lists the installed configs).
    """
    import os

    if os.path.isfile(path):
        return path
    name, directory = os.path.basename(path), packaged_configs_dir()
    packaged = os.path.join(directory, name if name.endswith(".py") else name + ".py")
    if os.path.isfile(packaged):
        return packaged
    names = sorted(f[:-3] for f in os.listdir(directory) if f.endswith(".py") and f[0] != "_")
    raise ConfigError(f"--config={path}: no such file, nor an installed config of that name ({', '.join(names)})")


def load_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config()` (or `get_config(arg)`) of a config file, loaded by path as `--config=path[:arg]` loads it
    (`path` resolved by `resolve_path`)."""
    import importlib.util
    import os

    path = resolve_path(path)
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"--config={path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config() if arg is None else module.get_config(arg)


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
    """`config` with each 'group.field=value' applied in place, as `--config.group.field=value` would
    (value parsed as a Python literal, else taken as a string): for experiment scripts' `--set` flags.

    Raises:
      ConfigError: an item is not field=value, or names no field (the message lists the unknown ones).
    """
    import ast

    for item in overrides:
        path, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"{item!r}: expected group.field=value")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        node = config
        *groups, field = path.split(".")
        try:
            for g in groups:
                node = node[g]
            node[field] = value
        except (KeyError, AttributeError, TypeError) as e:
            problems = unknown_fields([f"config.{path}"]) or [f"{item!r}: {e}"]
            raise ConfigError("; ".join(problems)) from None
    return config


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
    from jaxens import models as models_lib
    from jaxens import rng as rng_lib

    errors = _schema_errors(config, get_default_config(), "")
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))

    _choice(errors, "config.ensemble.strategy", config.ensemble.strategy, ("auto", *MEMBER_STRATEGIES))
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
    _at_least(errors, "config.optimizer.cycles", config.optimizer.cycles, 1)
    _at_least(errors, "config.optimizer.temperature", config.optimizer.temperature, 0)
    if not 0 <= config.optimizer.exploration < 1:
        errors.append(f"config.optimizer.exploration={config.optimizer.exploration!r}: must lie in [0, 1)")
    if config.optimizer.name == "sgmcmc":
        if not config.optimizer.momentum < 1:
            errors.append(
                f"config.optimizer.momentum={config.optimizer.momentum!r}: sgmcmc needs momentum in [0, 1) "
                "(0: SGLD; SGHMC's friction is 1 - momentum)"
            )
        if config.optimizer.nesterov:
            errors.append("config.optimizer.nesterov=True: sgmcmc has no Nesterov variant; set it to False")
    if config.model.dropout is not None and not 0 <= config.model.dropout < 1:
        errors.append(f"config.model.dropout={config.model.dropout!r}: must lie in [0, 1)")
    _at_least(errors, "config.model.patch_size", config.model.patch_size, 1)
    if not config.model.widths or not all(isinstance(w, int) and w >= 1 for w in config.model.widths):
        errors.append(f"config.model.widths={tuple(config.model.widths)!r}: must be positive integers")
    for field in ("batch_size", "num_epochs", "steps_per_call", "max_checkpoints"):
        _at_least(errors, f"config.train.{field}", config.train[field], 1)
    _choice(errors, "config.train.on_divergence", config.train.on_divergence, ON_DIVERGENCE)
    _member_lr_errors(errors, config)
    for field in ("every_epochs", "batch_size"):
        _at_least(errors, f"config.eval.{field}", config.eval[field], 1)
    for field in ("member", "data"):
        _at_least(errors, f"config.mesh.{field}", config.mesh[field], 0)
    spawn_times = len(config.coupling.t) if config.coupling.condition in SPAWNING_CONDITIONS else 0
    num_members = config.ensemble.k * max(spawn_times, len(config.loss.lam), 1)  # K, all groups together.
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
    info = _data_errors(errors, config)
    _cycle_errors(errors, config, info)
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
    """A step string (`jaxens.spawn.parse_steps`) that parses to at least one step."""
    from jaxens import spawn as spawn_lib

    if not isinstance(value, str) or not value:
        errors.append(f"{name}={value!r}: expected a step string such as {example}")
        return
    if (
        info is None
        or not info.num_train
        or not isinstance(config.train.batch_size, int)
        or config.train.batch_size < 1
    ):
        return  # Steps per epoch unknown; the other errors say why.
    try:
        steps = spawn_lib.parse_steps(value, _steps_per_epoch(config, info))
    except ValueError as e:
        errors.append(f"{name}={value!r}: {e}")
        return
    if steps < 1:
        errors.append(f"{name}={value!r}: must be at least one step, e.g. {example}")


def _cycle_errors(errors: list[str], config: ml_collections.ConfigDict, info) -> None:
    """config.optimizer.cycles against a member's T steps, and sgmcmc's sampling stage (needs T)."""
    from jaxens import optim

    o = config.optimizer
    if o.schedule != "cyclical" and o.name != "sgmcmc":
        return  # cycles is not read.
    if info is None or not info.num_train or config.train.batch_size < 1 or config.train.num_epochs < 1:
        return  # T is unknown; the other errors say why.
    if not isinstance(o.cycles, int) or o.cycles < 1 or not 0 <= o.exploration < 1:
        return  # Reported above.
    spe = _steps_per_epoch(config, info)
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
    if o.name == "sgmcmc" and o.temperature and optim.first_sampling_offset(total, o.cycles, o.exploration) >= length:
        errors.append(
            f"config.optimizer.exploration={o.exploration!r}: a cycle of {length} steps (T = {total}, "
            f"config.optimizer.cycles={o.cycles}) has no step with r(k) = mod(k, {length})/{length} >= "
            f"{o.exploration}, so sgmcmc would never sample; lower it to at most {(length - 1) / length:.4g} "
            "or use fewer cycles"
        )


def steps_per_epoch(config: ml_collections.ConfigDict) -> int:
    """A member's steps per epoch under a validated config, known before any data is loaded."""
    from jaxens import data as data_lib

    info = data_lib.dataset_info(config.dataset, config.data)
    if info is None:
        raise ConfigError(f"config.dataset={config.dataset!r}: unknown dataset; allowed: {', '.join(data_lib.NAMES)}")
    return _steps_per_epoch(config, info)


def _steps_per_epoch(config: ml_collections.ConfigDict, info) -> int:
    """A member's steps per epoch: the training examples left after the validation hold-out, per batch."""
    from jaxens import data as data_lib

    return data_lib.steps_per_epoch(info.num_train - config.data.val_size, config.train.batch_size)


def _data_errors(errors: list[str], config: ml_collections.ConfigDict):
    """Dataset, split, augmentation and evaluation-set rules; returns the dataset's info (None if unknown)."""
    from jaxens import data as data_lib

    d = config.data
    _at_least(errors, "config.data.val_size", d.val_size, 0)
    _at_least(errors, "config.data.crop_padding", d.crop_padding, 0)
    _at_least(errors, "config.data.image_size", d.image_size, 8)
    _choice(errors, "config.data.augment", d.augment, ("auto", *data_lib.AUGMENTATIONS))
    info = data_lib.dataset_info(config.dataset, d)
    if info is None:
        errors.append(data_lib.registry.unknown_name_message("config.dataset", config.dataset))
        return None
    if not info.num_train:
        errors.append(
            f"config.dataset={config.dataset!r}: an evaluation-only dataset (it has a test split only); "
            "train on cifar10 and list it in config.eval.shifted"
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
            other = data_lib.dataset_info(name, d) if isinstance(name, str) else None
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
    from jaxens import coupling as coupling_lib

    c = config.coupling
    _choice(errors, "config.coupling.condition", c.condition, CONDITIONS)
    _choice(errors, "config.coupling.reinit_side", c.reinit_side, REINIT_SIDES)
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
    spe = _steps_per_epoch(config, info)
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
