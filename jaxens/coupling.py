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
equals the member of a single-spawn run with the same seed and t. The definitions are in
docs/definitions.md#coupling-conditions; the spawn itself is `jaxens.spawn`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxens import rng as rng_lib
from jaxens import steps as steps_lib
from jaxens.config import SPAWNING_CONDITIONS


def num_groups(condition: str, spawn_times, lams) -> int:
    """Groups of k members a run trains: one per spawn time under a spawning condition, one per λ, else one."""
    return max(len(spawn_times) if condition in SPAWNING_CONDITIONS else 0, len(lams), 1)


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
class Plan:
    """What a run trains under its condition.

    Attributes:
      condition: one of `jaxens.config.CONDITIONS`.
      k: members per group (children per spawn time).
      total_steps: T.
      spawn_steps: sorted spawn times in steps; () without a parent.
      spawn_labels: the spawn times as configured, in the order of `spawn_steps`.
      shared_streams: streams the members of one group share.
      lams: Webb et al.'s λ of each group (() without the modular loss); a group per λ.
    """

    condition: str
    k: int
    total_steps: int
    spawn_steps: tuple[int, ...]
    spawn_labels: tuple[str, ...]
    shared_streams: tuple[str, ...]
    lams: tuple[float, ...] = ()

    @property
    def spawning(self) -> bool:
        return bool(self.spawn_steps)

    @property
    def reset(self) -> bool:
        return self.condition == "coupled_to_t_reset"

    @property
    def num_groups(self) -> int:
        return num_groups(self.condition, self.spawn_steps, self.lams)

    @property
    def num_members(self) -> int:
        """K, all groups together."""
        return self.num_groups * self.k

    def member_streams(self, seed: int) -> rng_lib.Streams:
        """The streams of a run without parent: members 0..K-1 of the seed, sharing `shared_streams`.

        Under the modular loss every λ group takes the streams of members 0..k-1 (the same k
        initializations for every λ), so a group of a λ sweep equals a run with that λ alone.
        """
        if not self.lams:
            return rng_lib.member_streams(seed, self.num_members, self.shared_streams)
        streams = rng_lib.member_streams(seed, self.k, self.shared_streams)
        return jax.tree.map(lambda x: jnp.tile(x, (self.num_groups, 1)), streams)

    def group_spawn_steps(self) -> tuple[int | None, ...]:
        """Each group's spawn step (None without a parent)."""
        return self.spawn_steps or (None,) * self.num_groups

    def group_lams(self) -> tuple[float | None, ...]:
        """Each group's λ (None without the modular loss)."""
        return tuple(float(lam) for lam in self.lams) or (None,) * self.num_groups

    def start_steps(self) -> np.ndarray:
        """[K] the step each member starts the members' phase at (its group's t)."""
        return np.repeat(np.asarray(self.spawn_steps or (0,) * self.num_groups, np.int64), self.k)

    def end_steps(self) -> np.ndarray:
        """[K] the step each member stops at: T, or t + T under coupled_to_t_reset."""
        return self.start_steps() + self.total_steps if self.reset else np.full(self.num_members, self.total_steps)

    def member_names(self) -> list[str]:
        """[K] how messages name each member: 'member m', with its group when there are several."""
        names = []
        for g, (t, lam) in enumerate(zip(self.group_spawn_steps(), self.group_lams())):
            for m in range(self.k):
                if lam is not None and self.num_groups > 1:
                    names.append(f"member {m} of the λ={lam:g} group")
                elif t is not None and self.num_groups > 1:
                    names.append(f"member {m} of the children spawned at t={self.spawn_labels[g]}")
                else:
                    names.append(f"member {m}")
        return names

    def ticks(self) -> int:
        """Lockstep steps of the members' phase: until the member with the most steps to go finishes."""
        return int((self.end_steps() - self.start_steps()).max())


# What coupled_order's members share by default: the minibatch, examples and augmentation (Zamparo et al. §1).
COUPLED_ORDER_SHARES = ("order", "augment")


def make_plan(
    condition: str,
    k: int,
    total_steps: int,
    steps_per_epoch: int,
    spawn_times: tuple = (),
    shared_streams: tuple[str, ...] = (),
    lams: tuple[float, ...] = (),
) -> Plan:
    """The plan of a run (see `Plan`) from its validated settings.

    Args:
      condition: config.coupling.condition.
      k: config.ensemble.k.
      total_steps: T.
      steps_per_epoch: S, to read the spawn times.
      spawn_times: config.coupling.t, step strings (`jaxens.steps`); read only under a spawning condition.
      shared_streams: config.ensemble.shared_streams; under coupled_order () means `COUPLED_ORDER_SHARES`,
        and 'order' is always added.
      lams: config.loss.lam.
    """
    shared = tuple(shared_streams)
    if condition == "coupled_order":
        shared = tuple(dict.fromkeys(("order", *(shared or COUPLED_ORDER_SHARES))))
    steps: tuple[int, ...] = ()
    labels: tuple[str, ...] = ()
    if condition in SPAWNING_CONDITIONS:
        pairs = sorted((steps_lib.parse(t, steps_per_epoch), str(t)) for t in spawn_times)
        steps, labels = tuple(s for s, _ in pairs), tuple(label for _, label in pairs)
    return Plan(
        condition=condition,
        k=k,
        total_steps=total_steps,
        spawn_steps=steps,
        spawn_labels=labels,
        shared_streams=shared,
        lams=tuple(lams),
    )


# Config fields that decide the parent's training: runs that agree on them have the same parent.
PARENT_FIELDS = (
    "seed",
    "dataset",
    "data.val_size",
    "data.val_seed",
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
    """The PARENT_FIELDS of a config given as a plain dict (`jaxens.workdir.config_to_dict`)."""
    out = {}
    for path in PARENT_FIELDS:
        node: dict | None = config
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node = {k: v for k, v in node.items() if f"{path}.{k}" not in CHILD_ONLY_FIELDS}
        out[path] = node
    return out
