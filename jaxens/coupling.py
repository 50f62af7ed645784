"""The coupling conditions of Zamparo et al. §1, as a plan of who trains what, from when, until when.

T is the number of training steps of a run (`train.num_epochs` epochs). With k = `ensemble.k`:

- `no_coupling`: k members from independent initializations, each with its own data order, T steps.
- `coupled_order`: as no_coupling, but all members see the same minibatches ("share the same
  mini-batches"): the same examples (the `order` stream) with the same augmentation (the `augment`
  stream); dropout stays per member. A non-empty `ensemble.shared_streams` names the shared streams
  instead (with `order` always among them), e.g. ('order',) for the same examples augmented per member.
- `coupled_to_t`: one parent trains t steps; k children spawned from it (`jaxens.spawn.spawn`: same
  parameters, BatchNorm statistics, optimizer state and schedule position) finish the remaining T − t
  steps with their own data order, augmentation and dropout. t = 0 shares only the initialization.
- `coupled_to_t_reset` ("extended training"): as coupled_to_t, but at t the children's optimizer state
  and learning-rate schedule restart and each trains T more steps (T + t in all).

Several spawn times make a sweep: the parent trains once, up to the largest t, and the children of every
spawn time train together as one stacked state of K = |t|·k members, group g (spawn time t_g) holding
members g·k … g·k + k − 1. Each member keeps its own step counter (which also drives its data position)
and stops updating at its end step.

The children of spawn time t draw their streams from `jaxens.spawn.spawn_key(seed, t)`, so a sweep member
equals the member of a single-spawn run with the same seed and t.

A grid (`jaxens.grid`, config.grid) multiplies the groups: seeds, optimizer hyperparameters, conditions and
re-initializations. Every distinct parent (seed × hyperparameters) then trains in one stacked parent phase
and spawns its own children; groups without a parent start from initialization beside them. The definitions are in
docs/definitions.md#coupling-conditions; the spawn itself is `jaxens.spawn`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxens import grid as grid_lib
from jaxens import members as members_lib
from jaxens import rng as rng_lib
from jaxens import steps as steps_lib
from jaxens.config import SPAWNING_CONDITIONS


def spawn_time_problems(times: tuple, condition: str, steps_per_epoch: int, total_steps: int) -> list[str]:
    """Messages for spawn times that do not parse, repeat, or fall outside what the condition allows."""
    problems, steps = [], []
    for text in times:
        try:
            steps.append(steps_lib.parse(text, steps_per_epoch))
        except ValueError as e:
            problems.append(f"config.coupling.t: {e}")
    if problems:
        return problems
    if len(set(steps)) != len(steps):
        problems.append(f"config.coupling.t={tuple(times)!r}: spawn times repeat (in steps: {steps})")
    limit = total_steps if condition == "coupled_to_t_reset" else total_steps - 1
    late = [text for text, s in zip(times, steps) if s > limit]
    if late:
        rule = "<= T" if condition == "coupled_to_t_reset" else "< T (children need steps left to train)"
        problems.append(
            f"config.coupling.t: {', '.join(map(repr, late))} past the end: {condition} needs t {rule}, "
            f"T = {total_steps} steps ({steps_per_epoch} per epoch)"
        )
    return problems


@dataclasses.dataclass(frozen=True)
class Group:
    """One group of k members: what the run of its settings alone would train (`jaxens.grid`).

    Attributes:
      seed: the root of its streams (config.seed, or its config.grid.seed value).
      condition: its coupling condition.
      t: its spawn step (None without a parent); t_label: the spawn time as configured.
      lam: its λ (None without the modular loss).
      shared_streams: the streams its members share.
      hyper: ((name, value), ...) the optimizer hyperparameters the grid varies (`jaxens.grid.HYPERPARAMETERS`),
        held per member in the optimizer's state; () without.
      reinit_fraction, reinit_side: its re-initialization at the spawn.
      values: ((grid field, value), ...) naming the group in the grid; () without a grid.
    """

    seed: int
    condition: str
    t: int | None = None
    t_label: str | None = None
    lam: float | None = None
    shared_streams: tuple[str, ...] = ()
    hyper: tuple[tuple[str, float], ...] = ()
    reinit_fraction: float = 0.0
    reinit_side: str = "low"
    values: tuple[tuple[str, Any], ...] = ()

    @property
    def spawning(self) -> bool:
        return self.t is not None

    @property
    def reset(self) -> bool:
        return self.condition == "coupled_to_t_reset"

    @property
    def parent(self) -> tuple | None:
        """What decides its parent (seed and hyperparameters), or None without one."""
        return (self.seed, self.hyper) if self.spawning else None

    def parent_values(self) -> tuple[tuple[str, Any], ...]:
        """The grid values that name its parent."""
        return tuple((n, v) for n, v in self.values if n in grid_lib.PARENT_FIELDS)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a run trains: its groups of k members (group g: members g·k … g·k + k − 1), from when, until when.

    Attributes:
      condition: config.coupling.condition (a grid of conditions gives each group its own).
      k: members per group (children per spawn time).
      total_steps: T.
      groups: every group, in member order.
    """

    condition: str
    k: int
    total_steps: int
    groups: tuple[Group, ...]

    @property
    def spawning(self) -> bool:
        return any(g.spawning for g in self.groups)

    @property
    def spawn_steps(self) -> tuple[int, ...]:
        """The sorted spawn steps of every parent (each parent is saved at each)."""
        return tuple(sorted({g.t for g in self.groups if g.t is not None}))

    @property
    def spawn_labels(self) -> tuple[str, ...]:
        """The spawn times as configured, in the order of `spawn_steps`."""
        labels = {g.t: g.t_label for g in self.groups if g.t is not None}
        return tuple(str(labels[t]) for t in self.spawn_steps)

    @property
    def parents(self) -> tuple[Group, ...]:
        """One group standing for each distinct parent (seed × hyperparameters), in member order."""
        seen: dict = {}
        for g in self.groups:
            if g.spawning and g.parent not in seen:
                seen[g.parent] = g
        return tuple(seen.values())

    def parent_index(self, group: Group) -> int:
        return [p.parent for p in self.parents].index(group.parent)

    @property
    def reset(self) -> bool:
        return any(g.reset for g in self.groups)

    @property
    def lams(self) -> tuple[float, ...]:
        """Each group's λ (() without the modular loss): the joint step's groups."""
        return tuple(float(g.lam) for g in self.groups if g.lam is not None)

    @property
    def num_groups(self) -> int:
        return len(self.groups)

    @property
    def num_members(self) -> int:
        """K, all groups together."""
        return self.num_groups * self.k

    @property
    def gridded(self) -> bool:
        return bool(self.groups[0].values)

    def group_streams(self, group: Group) -> rng_lib.Streams:
        """The streams of a group trained from initialization: members 0..k-1 of its seed (so every group of
        a λ or hyperparameter grid has the same k initializations as the run of its settings alone)."""
        return rng_lib.member_streams(group.seed, self.k, group.shared_streams)

    def streams(self, groups: tuple[Group, ...] | None = None) -> rng_lib.Streams:
        """The streams of `groups` (default: all) trained from initialization (`group_streams`), stacked."""
        return members_lib.concatenate([self.group_streams(g) for g in (self.groups if groups is None else groups)])

    def member_hyper(self, groups: tuple[Group, ...] | None = None, k: int | None = None) -> dict | None:
        """{hyperparameter: [k·len(groups)] float32} of the members of `groups` (default: all; k members each,
        default `self.k`), or None without per-member hyperparameters."""
        groups = self.groups if groups is None else groups
        if not groups or not groups[0].hyper:
            return None
        per = self.k if k is None else k
        names = [n for n, _ in groups[0].hyper]
        return {n: np.repeat(np.asarray([dict(g.hyper)[n] for g in groups], np.float32), per) for n in names}

    def parent_streams(self) -> rng_lib.Streams:
        """The streams of the parents (`parents`, one member each): member 0 of each one's seed."""
        return members_lib.concatenate([rng_lib.member_streams(p.seed, 1) for p in self.parents])

    def group_spawn_steps(self) -> tuple[int | None, ...]:
        """Each group's spawn step (None without a parent)."""
        return tuple(g.t for g in self.groups)

    def group_lams(self) -> tuple[float | None, ...]:
        """Each group's λ (None without the modular loss)."""
        return tuple(g.lam for g in self.groups)

    def group_keys(self) -> list[tuple]:
        """Each group's identity in the records: (t, λ, grid values or None)."""
        return [(g.t, g.lam, dict(g.values) if g.values else None) for g in self.groups]

    def start_steps(self) -> np.ndarray:
        """[K] the step each member starts the members' phase at (its group's t, or 0)."""
        return np.repeat(np.asarray([g.t or 0 for g in self.groups], np.int64), self.k)

    def end_steps(self) -> np.ndarray:
        """[K] the step each member stops at: T, or t + T under coupled_to_t_reset."""
        return np.repeat(
            np.asarray([(g.t or 0) + self.total_steps if g.reset else self.total_steps for g in self.groups]),
            self.k,
        ).astype(np.int64)

    def member_names(self) -> list[str]:
        """[K] how messages name each member: 'member m', with its group when there are several."""
        names = []
        for g in self.groups:
            for m in range(self.k):
                if self.num_groups == 1:
                    names.append(f"member {m}")
                elif g.values:
                    names.append(f"member {m} of the group {grid_lib.label(g.values, g.t_label, g.lam)}")
                elif g.lam is not None:
                    names.append(f"member {m} of the λ={g.lam:g} group")
                else:
                    names.append(f"member {m} of the children spawned at t={g.t_label}")
        return names

    def ticks(self) -> int:
        """Lockstep steps of the members' phase: until the member with the most steps to go finishes."""
        return int((self.end_steps() - self.start_steps()).max())


# What coupled_order's members share by default: the minibatch, examples and augmentation (Zamparo et al. §1).
COUPLED_ORDER_SHARES = ("order", "augment")


def shared_streams_of(condition: str, shared_streams: tuple[str, ...]) -> tuple[str, ...]:
    """The streams a group's members share: config.ensemble.shared_streams; under coupled_order () means
    `COUPLED_ORDER_SHARES`, and 'order' is always added."""
    shared = tuple(shared_streams)
    if condition == "coupled_order":
        shared = tuple(dict.fromkeys(("order", *(shared or COUPLED_ORDER_SHARES))))
    return shared


def make_plan(config, steps_per_epoch: int) -> Plan:
    """The plan of a validated config: its groups (`jaxens.grid.settings`) with their settings resolved."""
    total = steps_per_epoch * config.train.num_epochs
    # Every hyperparameter the grid varies, held for every group (one optimizer state layout).
    held = [n for n in grid_lib.HYPERPARAMETERS if n in grid_lib.varied(config)]
    groups = []
    for setting in grid_lib.settings(config):
        value = lambda name, s=setting: s.value(config, name)  # noqa: E731
        condition = value("condition")
        spawning = condition in SPAWNING_CONDITIONS
        groups.append(
            Group(
                seed=int(value("seed")),
                condition=condition,
                t=steps_lib.parse(setting.t, steps_per_epoch) if spawning else None,
                t_label=str(setting.t) if spawning else None,
                lam=setting.lam,
                shared_streams=shared_streams_of(condition, tuple(config.ensemble.shared_streams)),
                hyper=tuple((n, float(value(n))) for n in held),
                reinit_fraction=float(value("reinit_fraction")) if spawning else 0.0,
                reinit_side=str(value("reinit_side")),
                values=setting.values,
            )
        )
    # Within each setting of the other fields, spawn times in increasing order (a sweep's children stack so).
    first: dict[tuple, int] = {}
    for i, g in enumerate(groups):
        first.setdefault(g.values, i)
    groups = [g for _, g in sorted(enumerate(groups), key=lambda p: (first[p[1].values], p[1].t or 0, p[0]))]
    return Plan(condition=config.coupling.condition, k=config.ensemble.k, total_steps=total, groups=tuple(groups))


# Config fields that decide the parent's training: runs that agree on them have the same parent.
PARENT_FIELDS = (
    "seed",
    "dataset",
    "data.val_size",
    "data.val_seed",
    "data.val_from_seed",
    "data.augment",
    "data.crop_padding",
    "data.image_size",
    "model",
    "optimizer",
    "train.batch_size",
    "train.num_epochs",
    "eval.forgetting",  # The parent's state carries the trackers or not.
)


# Fields inside PARENT_FIELDS that only the children read.
CHILD_ONLY_FIELDS = ("optimizer.member_lr_scale",)


def parent_fields(config: dict) -> dict:
    """The PARENT_FIELDS of a config given as a plain dict (`jaxens.workdir.config_to_dict`), with the grid
    fields that decide parents when the grid varies them."""
    out = {}
    for name in grid_lib.PARENT_FIELDS:
        values = (config.get("grid") or {}).get(name)
        if values:
            out[f"grid.{name}"] = values
    for path in PARENT_FIELDS:
        node: dict | None = config
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node = {k: v for k, v in node.items() if f"{path}.{k}" not in CHILD_ONLY_FIELDS}
        out[path] = node
    return out
