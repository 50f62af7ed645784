"""The config schema: every field a run reads, with its default and what it means.

Experiment configs in `configs/` start from `get_default_config()` and override fields. The returned
ConfigDict is locked, so a typo (`config.ensemble.kk = 8`, or `--config.ensemble.kk=8` on the command
line) fails at once, naming the field. The rules between fields are checked by
`jaxens.trainer.validation.validate` and the config is resolved once into a frozen `RunSpec`
(`jaxens.trainer.spec`) before any data is loaded or anything is written.

This module also holds the names every choice field allows and `ConfigError`; it imports no JAX, so the
command line reports a bad flag without waiting for JAX to start.

Each field's comment (the lines right above it and the one after it) is its documentation: docs/configs.md
is rendered from them by `jaxens.config_reference`, and a test fails for a field without one.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import os
import traceback

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
    c.dataset = "mnist1d"  # The dataset trained on, by name (`jaxens.data.NAMES`, `jaxens/data/registry.py`).

    c.data = _data_fields()
    c.model = _model_fields()
    c.ensemble = _ensemble_fields()
    c.coupling = _coupling_fields()
    c.loss = _loss_fields()
    c.optimizer = _optimizer_fields()
    c.train = _train_fields()
    c.trajectory = _trajectory_fields()
    c.eval = _eval_fields()
    c.mesh = _mesh_fields()
    c.grid = _grid_fields()
    c.lock()
    return c


def _data_fields() -> ml_collections.ConfigDict:
    """config.data: Where the dataset comes from, the validation hold-out and the training augmentation."""
    g = ml_collections.ConfigDict()
    # Local dataset files: Fashion-MNIST IDX files, the tiny-imagenet-200 folder ('' = default location).
    g.dir = ""
    # TFDS data_dir: a local directory or a gs:// bucket ('' = `$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
    g.tfds_dir = ""
    g.download = True  # Let TFDS download and prepare a missing dataset when its hosts answer.
    # Accept dataset files whose split sizes differ from the dataset's known ones (a test fixture, a partial
    # preparation) and train on what they hold; otherwise such files are refused, naming both counts.
    g.allow_size_mismatch = False
    g.cache_dir = ""  # Where decoded or generated arrays are cached ('' = `$XDG_CACHE_HOME/jaxens`).
    g.val_size = 0  # Training examples held out as the validation split (chosen by val_seed).
    g.val_seed = 0  # Which examples are held out: the first val_size of a permutation seeded by this.
    # Hold out the split of config.seed instead of val_seed: every trial (seed) its own train/validation split,
    # and under config.grid.seed every seed's groups theirs, all in one program (Webb et al.'s trials).
    g.val_from_seed = False
    # Training augmentation: 'auto' (crop_flip for CIFAR and (Tiny-)ImageNet, crop for SVHN, none
    # otherwise), 'none', 'flip' (horizontal), 'crop' or 'crop_flip'. Evaluation sets are never augmented.
    g.augment = "auto"
    # Crops: zero pixels padded on every side before a random crop of the original size is taken.
    g.crop_padding = 4
    g.image_size = 64  # imagenet2012 only: side of the center-cropped, resized images.
    return g


def _model_fields() -> ml_collections.ConfigDict:
    """config.model: The architecture of one member (`jaxens.models`)."""
    g = ml_collections.ConfigDict()
    g.name = "mlp"  # The architecture, by name (`jaxens.models.MODELS`, `jaxens/models/__init__.py`).
    g.widths = (256, 256)  # mlp: hidden units; cnn1d/cnn2d: conv channels; input side first.
    # Normalization layers: 'batch', 'layer', 'group' or 'none'. None: the architecture's default (batch for
    # the convolutional models, none for mlp and webb_cnn, layer for vit, the only one vit accepts).
    g.norm = config_dict.placeholder(str)
    # Dropout rate in [0, 1). None: the architecture's default (0 for mlp, cnn1d, cnn2d and vit, 0.1 for the
    # Fort CNNs); the architectures without dropout (the ResNets, DenseNets, webb_cnn) refuse a value.
    g.dropout = config_dict.placeholder(float)
    g.dtype = "float32"  # Compute dtype: 'float32' or 'bfloat16' (parameters stay float32).
    g.shortcut = "A"  # resnet20/32/56: 'A' zero-padding identity, 'B' 1×1 projection.
    g.patch_size = 8  # vit only: side of the square image patches that become its tokens.
    return g


def _ensemble_fields() -> ml_collections.ConfigDict:
    """config.ensemble: How many members, how they execute and how their predictions combine."""
    g = ml_collections.ConfigDict()
    g.k = 4  # Number of members K (under a spawning condition: children per spawn time).
    # How the K members execute inside one jitted step: 'vmap', 'loop' (unrolled), 'shard_map' (members
    # sharded over the devices on a 'member' mesh axis, each device running its share as 'auto' would), or
    # 'auto': loop for convolutional models on CPU (where vmap lowers to grouped convolutions: measured
    # 2-4.5x slower, see benchmarks/member_strategies.py), vmap otherwise.
    g.strategy = "auto"
    # Members computed at once under vmap (0 = all K): a large population (config.grid) whose activations do
    # not fit runs every step and evaluation over chunks of this many members, one after another, in the same
    # program (`jaxens.members`). The state of all K stays on the device. 'loop' computes one at a time anyway.
    g.members_per_call = 0
    g.method = "mean_prob"  # Ensemble prediction: mean of probabilities or of logits.
    # PRNG streams all members share (see jaxens.rng): 'init', 'order', 'augment', 'dropout'. () = the
    # condition's: none, or under config.coupling.condition='coupled_order' ('order', 'augment'), the same
    # minibatches. Set, it names them all (coupled_order adds 'order'; only coupled_order shares 'order'),
    # e.g. ('order',) for coupled_order's examples augmented per member, or ('init',) for one initialization.
    g.shared_streams = ()
    return g


def _coupling_fields() -> ml_collections.ConfigDict:
    """config.coupling: How the members' training is coupled (Zamparo et al. §1; `jaxens.coupling`, `jaxens.spawn`)."""
    g = ml_collections.ConfigDict()
    # The coupling condition. no_coupling: independent init and order. coupled_order: independent init,
    # shared minibatches.
    # coupled_to_t: one parent trains t steps, then k children finish the T steps with their own order.
    # coupled_to_t_reset: as coupled_to_t, but the children restart optimizer and schedule and train T more.
    g.condition = "no_coupling"
    # Spawn times t, as step strings '500it', '2ep', '2ep10it' (or integers): one for a single spawn, several
    # for a sweep that trains the parent once and all spawn times' children in one program (K = |t|·k).
    g.t = ()
    g.reinit_fraction = 0.0  # Share of the parameter count re-initialized at spawn (Zamparo et al. §3).
    g.reinit_side = "low"  # Where that share is taken: 'low' from the input side, 'high' from the output side.
    # What is re-initialized whole: 'layer' (a weight-bearing module with its normalization, Zamparo §3) or
    # 'tensor' (each parameter tensor on its own, the behaviour before layers). See jaxens.reinit.
    g.reinit_unit = "layer"
    # An earlier run's workdir whose parent checkpoints to spawn from (it must have the same parent: seed,
    # data, model, optimizer, batch size and epochs). '' = train the parent in this run.
    g.parent_dir = ""
    return g


def _loss_fields() -> ml_collections.ConfigDict:
    """config.loss: Webb et al.'s modular loss (`jaxens.losses`)."""
    g = ml_collections.ConfigDict()
    # lam = (): every member minimizes its own NLL (the usual ensemble). One or more λ in [0, 1]: each λ
    # trains its own group of k members jointly with
    # L_λ = λ·NLL(ensemble) + (1 − λ)·mean NLL of the members, all groups side by side (K = |lam|·k) on one
    # shared minibatch (config.coupling.condition='coupled_order'). The trainer minimizes k·L_λ, so that
    # λ = 0 is independent training at the configured learning rate (eq. 7 itself scales it by 1/k).
    g.lam = ()
    g.family = "categorical"  # The likelihood family; the trainer trains classifiers, so only 'categorical'.
    return g


def _optimizer_fields() -> ml_collections.ConfigDict:
    """config.optimizer: One member's optimizer and learning-rate schedule (`jaxens.optim`)."""
    g = ml_collections.ConfigDict()
    g.name = "sgd"  # The optimizer: sgd (with momentum), adam, adamw or sgmcmc (cyclical SG-MCMC, see below).
    # The peak learning rate, where the schedule starts (and every cyclical cycle restarts).
    g.learning_rate = 0.1
    g.momentum = 0.9  # sgd: in [0, 1) (0 = none); sgmcmc: 0 is SGLD, in (0, 1) SGHMC. adam, adamw: unused.
    g.nesterov = False  # sgd only: Nesterov momentum.
    # L2 added to the gradient (sgd, adam, sgmcmc: its Gaussian prior); decoupled for adamw.
    g.weight_decay = 0.0
    # The learning rate over the T steps: 'constant', 'cosine' (decays to 0), 'piecewise' (multiplied at the
    # boundaries below) or 'cyclical' (cosine cycles, see cycles).
    g.schedule = "constant"
    g.boundaries = (0.5, 0.75)  # piecewise: fractions of the total steps where lr decays.
    g.decay_factor = 0.1  # piecewise: lr multiplier at each boundary.
    # piecewise: one multiplier per boundary instead (() = decay_factor at each), e.g. the Keras CIFAR-10
    # ResNet example's (0.1, 0.1, 0.1, 0.5): lr × 0.1, 0.01, 0.001, 0.0005.
    g.decay_factors = ()
    # cyclical: cosine cycles over the T steps, each restarting at learning_rate (Zhang et al. 2020 eq. 1;
    # with sgd: cyclical SGD / snapshot ensembles). sgmcmc: its exploration/sampling stages follow these
    # cycles whatever the schedule. Samples: the weights at each cycle end (jaxens.optim.cycle_ends).
    g.cycles = 1
    # sgmcmc: T of the posterior p(θ|D)^(1/T) it samples; its sampling steps add Langevin noise of std
    # sqrt(2·lr·(1 − momentum)·T/N) (N training examples). 0 adds no noise.
    g.temperature = 1.0
    # sgmcmc (cyclical SG-MCMC, Zhang et al. 2020; `jaxens.optim.sgmcmc`): β in [0, 1), the share at the start
    # of every cycle that is plain SGD (exploration); the rest of the cycle samples, adding Langevin noise.
    g.exploration = 0.8
    # cSG-MCMC samples per cycle: the weights at the ends of the cycle's last n epochs (Zhang et al. keep 3),
    # read by the analyses (jaxens.optim.sample_steps); config.trajectory.every must snapshot them.
    g.samples_per_cycle = 1
    # Per-member learning-rate multipliers, one per member of a group (k values; () = all 1): member m's
    # updates are scaled by member_lr_scale[m] (sgd, adam, adamw). E.g. ensembles over learning rates.
    g.member_lr_scale = ()
    return g


def _train_fields() -> ml_collections.ConfigDict:
    """config.train: Batch size, length, the step loop, checkpoints and what happens on divergence."""
    g = ml_collections.ConfigDict()
    g.batch_size = 128  # B: examples in one member's minibatch per step (an epoch is N // B steps).
    # Epochs of a member's training, T = num_epochs epochs of steps (coupled_to_t_reset children train T
    # more after their spawn time).
    g.num_epochs = 10
    # Steps between progress updates (capped at epoch ends); also the most steps a SIGTERM waits for.
    g.steps_per_call = 100
    # Where the loop over steps runs: 'device' (a while loop in one jitted call), 'host' (one jitted
    # call per step, dispatched without waiting), 'auto' (host on CPU for models with stride-1
    # convolutions, device otherwise).
    g.step_loop = "auto"
    # Checkpoints of the members (and of the parent, which is also saved at every spawn time), as a step
    # string: '1ep', '5ep', '500it'. SIGTERM or SIGINT also saves at once and exits (code 128 + signal).
    g.checkpoint_every = "1ep"
    g.max_checkpoints = 2  # Checkpoints kept, the latest ones (a rerun falls back past a corrupt latest one).
    # A member whose loss or gradients turn non-finite is always frozen at its state before that step and
    # reported ('freeze': the others train on; 'stop': the run stops, exit code 3). Either way the run stops
    # once no member is left training.
    g.on_divergence = "freeze"
    return g


def _trajectory_fields() -> ml_collections.ConfigDict:
    """config.trajectory: Snapshots of the members' weights along training (Fort et al. §4; `jaxens.trajectory`).

    Several analyses read them: the trajectory similarity figures, and the Gaussian samplers and weight
    averaging of `jaxens.subspace`.
    """
    g = ml_collections.ConfigDict()
    # Snapshot period, a step string '1ep' or '50it' ('' = no snapshots): the params and BatchNorm
    # statistics of all K members, saved to workdir/trajectory/ at the start, at every multiple of it and at
    # the end of training.
    g.every = ""
    # r > 0 keeps only the r most recent snapshots on disk (what the diagonal / low-rank Gaussian samplers
    # and weight averaging of `jaxens.subspace` need); 0 keeps them all (for trajectory similarity figures).
    g.keep_last = 0
    return g


def _eval_fields() -> ml_collections.ConfigDict:
    """config.eval: Evaluation cadence and extra evaluation sets."""
    g = ml_collections.ConfigDict()
    # Epochs between evaluations of every member and ensemble on the test set (and the validation split and
    # the extra sets below), recorded in metrics.jsonl; the end of training is always evaluated.
    g.every_epochs = 1
    g.batch_size = 1000  # Examples per forward pass when evaluating: a memory and speed setting.
    # Distribution-shifted test sets, by dataset name: the training set's classes, reported like the test set
    # (error, NLL, ...), e.g. 'cifar10_corrupted/fog_3'.
    g.shifted = ()
    # Out-of-distribution sets, by dataset name: other classes, reported by predictive entropy and
    # confidence, e.g. 'svhn_cropped'.
    g.ood = ()
    # Early stopping (Webb et al.): keep each group's members as they were at the group's evaluation with the
    # lowest ensemble validation error (the first such) in workdir/best/, for analyses (run.restore(best=True)).
    # Needs config.data.val_size > 0.
    g.keep_best = False
    # Train-side forgetting events (Toneva et al., docs/definitions.md#forgetting-events): every member's
    # per-example tracker over the training split, updated inside each step from its training forward pass,
    # checkpointed with the state (children inherit their parent's); summary.json reports it per member.
    # Costs O(N) per member and step, and 10 bytes per training example and member.
    g.forgetting = False
    return g


def _mesh_fields() -> ml_collections.ConfigDict:
    """config.mesh: Devices (`jaxens.sharding`): placement only, never part of what a run computes.

    The devices form a mesh with axes 'member' and 'data'. A run resumes on another mesh (its checkpoints
    restore onto any device count), and these fields do not make it a different run.
    """
    g = ml_collections.ConfigDict()
    # Devices on the 'member' axis, over which the stacked members are sharded (it must divide K).
    # 0: automatic, gcd(K, devices ÷ data): every device on 'member' when K allows.
    g.member = 0
    # Devices on the 'data' axis, over which each member's minibatch is split (it must divide the batch
    # size). 0: automatic, the most of the devices left by 'member' that divide the batch size.
    g.data = 0
    # Multi-host (a Cloud TPU pod slice, several GPU hosts): start JAX's distributed runtime first, in every
    # process (docs/scale_out.md). Each process then runs its devices' share; process 0 writes the results.
    g.distributed = False
    # Split the training set's examples over all devices instead of a copy on each (for training sets too
    # large for one device's memory; each process then places only its devices' rows). Batches are gathered
    # across devices: an all-reduce of the K·B drawn examples per step. The examples must divide evenly.
    g.shard_train = False
    return g


def _grid_fields() -> ml_collections.ConfigDict:
    """config.grid: The population axis (`jaxens.grid`): settings that vary per group of k members in ONE program.

    Each field, a tuple of values, varies its scalar twin (config.seed, config.optimizer.learning_rate, ...)
    per group; the groups are the cartesian product of every grid field with config.coupling.t and
    config.loss.lam, k members each, all on one member axis (one compilation per phase). () = not varied.
    A grid field and its twin cannot both be set. A group equals the run of its settings alone.
    """
    g = ml_collections.ConfigDict()
    g.seed = ()  # Values of config.seed, e.g. (0, 1, 2): one set of groups per seed.
    g.learning_rate = ()  # Values of config.optimizer.learning_rate (sgd, adam, adamw).
    g.weight_decay = ()  # Values of config.optimizer.weight_decay (sgd, adam, adamw).
    g.momentum = ()  # Values of config.optimizer.momentum (sgd).
    g.reinit_fraction = ()  # Values of config.coupling.reinit_fraction (spawning conditions).
    g.reinit_side = ()  # Values of config.coupling.reinit_side.
    # Values of config.coupling.condition, e.g. ('no_coupling', 'coupled_to_t', 'coupled_to_t_reset'); spawn
    # times and re-initialization apply to the spawning conditions' groups only.
    g.condition = ()
    # The most members one program holds (0 = all): a larger population runs as consecutive parts, each one run
    # of at most this many members in DIR/part<i>of<n>, one after another (`jaxens.grid.split`); the parts split
    # the seeds and optimizer hyperparameters, never a parent's groups. For a state that does not fit at once.
    g.members_per_run = 0
    return g


def packaged_configs_dir() -> str:
    """The directory of the configs installed with jaxens (the repository's configs/, as `jaxens.configs`)."""
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
    (`path` resolved by `resolve_path`).

    Raises:
      ConfigError: the file does not exist, does not compile, has no `get_config`, takes `arg` when its
        `get_config` has no parameter (or the reverse), or raises while loading: the message names the file
        and line instead of a traceback.
    """
    path = resolve_path(path)
    flag = f"--config={path}" + (f":{arg}" if arg is not None else "")
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{flag}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"{flag}: a syntax error at line {e.lineno}: {e.msg}") from None
    except Exception as e:
        raise ConfigError(f"{flag}: importing it raised {_raised(e, path)}") from None
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(f"{flag}: defines no get_config() returning the config")
    params = inspect.signature(get_config).parameters
    if arg is not None and not params:
        raise ConfigError(f"{flag}: its get_config() takes no argument; drop ':{arg}'")
    if arg is None and any(p.default is p.empty and p.kind != p.VAR_POSITIONAL for p in params.values()):
        raise ConfigError(f"{flag}: its get_config({', '.join(params)}) needs an argument: --config={path}:VALUE")
    try:
        return get_config() if arg is None else get_config(arg)
    except Exception as e:
        raise ConfigError(f"{flag}: get_config() raised {_raised(e, path)}") from None


def _raised(error: Exception, path: str) -> str:
    """'ValueError: ... (line N of PATH)': the error and the innermost line of `path` it passed through."""
    lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__) if frame.filename == path]
    where = f" (line {lines[-1]} of {path})" if lines else ""
    return f"{type(error).__name__}: {error}{where}"


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
    """`config` with each 'group.field=value' applied in place, as `--config.group.field=value` would
    (value parsed as a Python literal, else taken as a string): for experiment scripts' `--set` flags.

    Raises:
      ConfigError: an item is not field=value, or names no field (the message lists the unknown ones).
    """
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
        if len(parts) == 2 and parts[0] == "grid" and parts[1] not in schema.grid:
            problems.append(
                f"--{path}: {parts[1]!r} cannot vary per group of config.grid (fields there: "
                f"{', '.join(sorted(schema.grid.keys()))}): the groups of one run share one stacked state, so "
                "nothing that changes array shapes or the data (model, widths, k, batch size, dataset, epochs) can "
                "differ between them; run one program per value (an experiments/ script or jaxens.sweep)"
            )
            continue
        for i, part in enumerate(parts):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                where = ".".join(["config", *parts[:i]])
                allowed = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else "none"
                problems.append(f"--{path}: unknown config field {part!r}; fields of {where}: {allowed}")
                break
            node = node[part]
    return problems
