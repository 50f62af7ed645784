"""The population axis (config.grid): groups of k members that differ in seeds, hyperparameters or spawning
condition, trained side by side in ONE program, each equal to the run of its own settings alone.

`config.grid.<field> = (v1, v2, ...)` varies the scalar config field it names (its *twin*, `FIELDS`) per
group. The groups are the cartesian product, outermost first, of: seed, learning_rate, weight_decay,
momentum (the fields that decide a spawning condition's parent), condition, reinit_fraction, reinit_side,
then config.coupling.t and config.loss.lam. Spawn times and re-initialization apply to the groups of a
spawning condition only (a no_coupling group has no parent to spawn from), so they do not multiply the
others. Group g holds members g·k … g·k + k − 1.

    settings(config)       # [Setting]: each group's grid values, spawn time and λ, in member order
    group_config(config, s)  # the config of the run a group replaces (the grid emptied, the twins set)

Validation checks every group's config as the standalone run it is (`jaxens.trainer.validation`), and the
tests train a group's config alone and compare. Fields that change array shapes (widths, batch size,
dataset, k) cannot vary here: their runs cannot share one stacked state.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Callable
from typing import Any

import ml_collections

from jaxens.config import SPAWNING_CONDITIONS, ConfigError, get_default_config

# Grid field → its twin, the scalar config field it varies, in the product's order (outermost first).
FIELDS = {
    "seed": "seed",
    "learning_rate": "optimizer.learning_rate",
    "weight_decay": "optimizer.weight_decay",
    "momentum": "optimizer.momentum",
    "condition": "coupling.condition",
    "reinit_fraction": "coupling.reinit_fraction",
    "reinit_side": "coupling.reinit_side",
}
PARENT_FIELDS = ("seed", "learning_rate", "weight_decay", "momentum")  # They act before a spawn.
HYPERPARAMETERS = ("learning_rate", "weight_decay", "momentum")  # Per member, in the optimizer's state.
SPAWN_FIELDS = ("reinit_fraction", "reinit_side")  # Read at a spawn only.
# How labels (TensorBoard runs, the report) name the fields.
SHORT = {
    "seed": "seed",
    "learning_rate": "lr",
    "weight_decay": "wd",
    "momentum": "momentum",
    "condition": "condition",
    "reinit_fraction": "reinit",
    "reinit_side": "side",
}


def get(config, path: str) -> Any:
    """The value of a dotted field path ('optimizer.learning_rate') of a ConfigDict or a plain dict."""
    node = config
    for part in path.split("."):
        node = node[part]
    return node


def _set(config: ml_collections.ConfigDict, path: str, value: Any) -> None:
    *groups, field = path.split(".")
    node = config
    for part in groups:
        node = node[part]
    node[field] = value


def varied(config) -> tuple[str, ...]:
    """The grid fields `config` varies (non-empty tuples), in the product's order."""
    grid = config["grid"] if "grid" in config else {}
    return tuple(name for name in FIELDS if name in grid and len(grid[name]))


def twins_set(config) -> list[tuple[str, str, Any]]:
    """(grid field, twin path, twin value) for every grid field whose twin is also set (not its default)."""
    defaults = get_default_config()
    return [
        (name, FIELDS[name], get(config, FIELDS[name]))
        for name in varied(config)
        if get(config, FIELDS[name]) != get(defaults, FIELDS[name])
    ]


@dataclasses.dataclass(frozen=True)
class Setting:
    """One group's place in the grid.

    Attributes:
      values: ((grid field, value), ...) of the fields the grid varies (spawn-only fields left out for a
        group without parent); () without a grid.
      t: its spawn time as configured (a step string or integer), or None without a parent.
      lam: its λ, or None without the modular loss.
    """

    values: tuple[tuple[str, Any], ...]
    t: Any
    lam: float | None

    def value(self, config, name: str) -> Any:
        """The group's value of grid field `name` (its grid value, else the twin's)."""
        return dict(self.values).get(name, get(config, FIELDS[name]))


def settings(config) -> list[Setting]:
    """Every group of the run, in member order (see the module docstring); one group without grid, t or λ."""
    names = varied(config)
    out: list[Setting] = []
    seen: set[tuple] = set()
    for combo in itertools.product(*(tuple(config["grid"][n]) for n in names)):
        values = dict(zip(names, combo))
        condition = values.get("condition", get(config, "coupling.condition"))
        spawning = condition in SPAWNING_CONDITIONS
        if not spawning:  # Re-initialization happens at a spawn: such a group has none.
            values = {n: v for n, v in values.items() if n not in SPAWN_FIELDS}
        key = tuple(values.items())
        if key in seen:
            continue
        seen.add(key)
        times = tuple(get(config, "coupling.t")) if spawning else (None,)
        lams = tuple(float(lam) for lam in get(config, "loss.lam")) or (None,)
        out.extend(Setting(key, t, lam) for t in times for lam in lams)
    return out


def num_groups(config) -> int:
    """The number of groups of k members (`settings`), without building them all for a plain run."""
    return len(settings(config))


def group_config(config: ml_collections.ConfigDict, setting: Setting) -> ml_collections.ConfigDict:
    """The config of the standalone run a group replaces: the grid emptied, each varied twin set to the group's
    value, config.coupling.t its one spawn time (() without a parent) and config.loss.lam its one λ."""
    single = copy.deepcopy(config)
    for name in FIELDS:
        single.grid[name] = ()
    for name, value in setting.values:
        _set(single, FIELDS[name], value)
    if varied(config):  # A grid's group without a parent trains no spawn times.
        single.coupling.t = () if setting.t is None else (setting.t,)
    elif setting.t is not None:
        single.coupling.t = (setting.t,)
    single.loss.lam = () if setting.lam is None else (setting.lam,)
    return single


def split(config: ml_collections.ConfigDict, members: int) -> dict[str, ml_collections.ConfigDict]:
    """The grid as consecutive parts of at most `members` members (config.grid.members_per_run), each a grid of its
    own: part name → config; {} when the whole population fits (or `members` is 0).

    Parts split the fields of `PARENT_FIELDS` only, outermost first, so no parent trains twice: fields outside
    the split depth keep all their values, the fields above it one value each, and the field at it a chunk of
    its values. The parts' groups, in order, are the grid's groups in member order.

    Raises:
      ConfigError: the groups of one parent's settings alone hold more than `members` members.
    """
    total = num_groups(config) * config.ensemble.k
    if not members or total <= members:
        return {}
    names = [n for n in varied(config) if n in PARENT_FIELDS]
    values = [tuple(config.grid[n]) for n in names]
    per_value, depth = total, -1  # Members under one value of every field down to the split depth.
    for i, options in enumerate(values):
        per_value //= len(options)
        if per_value <= members:
            depth = i
            break
    if depth < 0:
        fixed = ", ".join(f"config.grid.{n}" for n in names) or "no field of config.grid that can be split"
        raise ConfigError(
            f"config.grid.members_per_run={members}: the groups of one parent's settings ({fixed} fixed) hold "
            f"{per_value} members; raise it, or lower config.ensemble.k"
        )
    step = members // per_value  # Values of the split field per part.
    chunks = [values[depth][i : i + step] for i in range(0, len(values[depth]), step)]
    combos = [(*outer, chunk) for outer in itertools.product(*values[:depth]) for chunk in chunks]
    parts = {}
    for i, combo in enumerate(combos):
        part = copy.deepcopy(config)
        for name, value in zip(names, combo[:-1]):
            part.grid[name] = (value,)
        part.grid[names[depth]] = tuple(combo[-1])
        parts[f"part{i + 1}of{len(combos)}"] = part
    return parts


def ordered(names) -> list[str]:
    """Grid field names in the product's order (`FIELDS`)."""
    return sorted(names, key=list(FIELDS).index)


def label(values, t_label: str | None = None, lam: float | None = None) -> str:
    """'seed=1,lr=0.05,t=80': how TensorBoard and the report name a group ('' for none of them), from its grid
    values (a dict or (name, value) pairs, named in the product's order whatever their order here)."""
    values = dict(values)
    parts = [f"{SHORT[name]}={text(values[name])}" for name in ordered(values)]
    if t_label is not None:
        parts.append(f"t={t_label}")
    if lam is not None:
        parts.append(f"lam={lam:g}")
    return ",".join(parts)


def text(value: Any) -> str:
    """A grid value as labels and the report print it (floats as %g)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def problems(config: ml_collections.ConfigDict, validate: Callable) -> list[str]:
    """Messages for config.grid's own rules, then for every group's config as the standalone run it replaces
    (checked by `validate`, which raises `ConfigError`); each message once."""
    errors = []
    for name, twin, value in twins_set(config):
        errors.append(
            f"config.grid.{name}={tuple(config.grid[name])!r} and config.{twin}={value!r} are both set: the grid "
            f"gives each group its own {name}; leave config.{twin} at its default or drop config.grid.{name}"
        )
    for name in varied(config):
        values = tuple(config.grid[name])
        if len(set(values)) != len(values):
            errors.append(f"config.grid.{name}={values!r}: values repeat")
    hyper = [n for n in HYPERPARAMETERS if n in varied(config)]
    if hyper and config.optimizer.name == "sgmcmc":
        errors.append(
            f"config.grid.{hyper[0]}: sgmcmc's hyperparameters cannot vary per group (its noise is built from them); "
            "allowed with config.optimizer.name: sgd, adam, adamw"
        )
    if "momentum" in hyper and config.optimizer.name != "sgd":
        errors.append(
            f"config.grid.momentum: config.optimizer.name={config.optimizer.name!r} has no momentum; sgd only"
        )
    if config.coupling.parent_dir:
        errors.append(
            f"config.coupling.parent_dir={config.coupling.parent_dir!r}: not with config.grid (the grid trains its "
            "parents in one program); drop one"
        )
    if config.data.val_from_seed and "seed" in varied(config) and config.mesh.shard_train:
        errors.append(
            "config.mesh.shard_train=True with config.data.val_from_seed and config.grid.seed: each seed trains on its "
            "own examples of one pool, which is not divided over the devices; drop one"
        )
    if "condition" in varied(config) and tuple(config.loss.lam):
        errors.append(
            f"config.grid.condition with config.loss.lam={tuple(config.loss.lam)!r}: the modular loss trains under "
            "coupled_order only; drop one"
        )
    if errors:
        return errors
    found: dict[str, None] = {}  # Each group's problems, once each, in order.
    for setting in settings(config):
        single = group_config(config, setting)
        single.mesh.member = single.mesh.data = 0  # The caller checks placement for the whole population.
        try:
            validate(single)
        except ConfigError as e:
            found.update(dict.fromkeys(line.strip() for line in str(e).splitlines()[1:]))
    return [f"{message} (in config.grid's groups)" for message in found]
