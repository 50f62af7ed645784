"""The coupling conditions of Zamparo et al. §1, as a plan of who trains what, from when, until when.

T is the number of training steps of a run (`train.num_epochs` epochs). With k = `ensemble.k`:

- `no_coupling`: k members from independent initializations, each with its own data order, T steps.
- `coupled_order`: as no_coupling, but all members see the same minibatches (the `order` stream is
  shared; augmentation and dropout stay per member unless `ensemble.shared_streams` shares them).
- `coupled_to_t`: one parent trains t steps; k children spawned from it (`jaxens.spawn.spawn`: same
  parameters, BatchNorm statistics, optimizer state and schedule position) finish the remaining T − t
  steps with their own data order, augmentation and dropout. t = 0 shares only the initialization.
- `coupled_to_t_reset` ("extended training"): as coupled_to_t, but at t the children's optimizer state
  and learning-rate schedule restart and each trains T more steps (T + t in all).

Several spawn times make a sweep: the parent trains once, up to the largest t, and the children of every
spawn time train together as one stacked state of K = |t|·k members, group g (spawn time t_g) holding
members g·k … g·k + k − 1. Each member keeps its own step counter (which also drives its data position)
and stops updating at its end step.

The children of spawn time t draw their streams from `spawn_key(seed, t)` (see `jaxens.rng`), so a sweep
member equals the member of a single-spawn run with the same seed and t.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxens import rng as rng_lib
from jaxens.config import SPAWNING_CONDITIONS

# fold_in data of the spawn domain: the largest uint32, a member index no run reaches.
_SPAWN_DOMAIN = 2**32 - 1


def spawn_key(seed: int, t: int) -> jax.Array:
    """The key the children of spawn step t draw their streams from: fold_in(fold_in(PRNGKey(seed), 2³²−1), t)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), _SPAWN_DOMAIN), t)


def spawn_time_problems(times: tuple, condition: str, steps_per_epoch: int, total_steps: int) -> list[str]:
    """Messages for spawn times that do not parse, repeat, or fall outside what the condition allows."""
    from jaxens.spawn import parse_steps

    problems, steps = [], []
    for text in times:
        try:
            steps.append(parse_steps(text, steps_per_epoch))
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
        return max(len(self.spawn_steps), len(self.lams), 1)

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

    def ticks(self) -> int:
        """Lockstep steps of the members' phase: until the member with the most steps to go finishes."""
        return int((self.end_steps() - self.start_steps()).max())


def plan(config: ml_collections.ConfigDict, steps_per_epoch: int) -> Plan:
    """The run's plan from a validated config."""
    from jaxens.spawn import parse_steps

    c = config.coupling
    shared = tuple(config.ensemble.shared_streams)
    if c.condition == "coupled_order" and "order" not in shared:
        shared = ("order", *shared)
    steps: tuple[int, ...] = ()
    labels: tuple[str, ...] = ()
    if c.condition in SPAWNING_CONDITIONS:
        pairs = sorted((parse_steps(t, steps_per_epoch), str(t)) for t in c.t)
        steps, labels = tuple(s for s, _ in pairs), tuple(label for _, label in pairs)
    return Plan(
        condition=c.condition,
        k=config.ensemble.k,
        total_steps=steps_per_epoch * config.train.num_epochs,
        spawn_steps=steps,
        spawn_labels=labels,
        shared_streams=shared,
        lams=tuple(config.loss.lam),
    )


def spawn_groups(parents: dict, p: Plan, seed: int, tx, reinit=None):
    """The k children of every spawn time t of the plan, stacked in spawn-step order (K = |t|·k).

    Args:
      parents: {t: the one-member parent state at step t} for every t in `p.spawn_steps`.
      p: the plan (its condition decides whether the optimizer restarts).
      seed: the run's seed; group t's streams are `spawn.child_streams(spawn_key(seed, t), k, shared)`.
      tx: the optimizer (restarted under coupled_to_t_reset; re-initialized tensors' slots restart).
      reinit: a `jaxens.spawn.Reinit`, or None.

    Returns:
      The children's state, every leaf [|t|·k, ...]; group g holds members g·k … g·k + k − 1.
    """
    from jaxens import spawn as spawn_lib

    groups = []
    for t in p.spawn_steps:
        key = spawn_key(seed, t)
        streams = spawn_lib.child_streams(key, p.k, p.shared_streams)
        groups.append(
            spawn_lib.spawn(parents[t], p.k, key, reset_optimizer=p.reset, tx=tx, reinit=reinit, streams=streams)
        )
    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *groups)


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
