"""Training steps as values: '2ep10it', '500it', '3ep' or a plain count, read once, compared and printed back.

A run names moments of training (spawn times, checkpoint and snapshot cadences) in epochs and iterations.
Before the data is known, a step string is only *syntax*: `Steps.parse('2ep10it')` checks it and keeps
its parts. Once the steps per epoch S are known, `Steps.at(S)` gives a `Step`, an absolute step count that
compares, hashes and prints as epochs and iterations:

    >>> t = Steps.parse('2ep10it').at(50)
    >>> int(t), t.epoch, t.iteration, str(t)
    (110, 2, 10, '2ep10it')
    >>> Steps.parse(500).at(50) > t
    True

An integer n is n iterations. This module imports nothing but the standard library.
"""

from __future__ import annotations

import dataclasses
import functools
import re

_PATTERN = re.compile(r"^(?:(\d+)ep)?(?:(\d+)it)?$")
FORMS = "a step string like '500it', '2ep' or '2ep10it', or a step count"


@dataclasses.dataclass(frozen=True)
class Steps:
    """A length of training as written: `epochs` epochs plus `iterations` steps (S unknown yet)."""

    epochs: int = 0
    iterations: int = 0

    @classmethod
    def parse(cls, text: str | int) -> Steps:
        """'2ep10it' → Steps(2, 10), '500it' → Steps(0, 500), '3ep' → Steps(3, 0), 7 → Steps(0, 7).

        Raises:
          ValueError: naming the value and the accepted forms.
        """
        if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
            return cls(0, text)
        match = _PATTERN.match(text.strip()) if isinstance(text, str) else None
        if not match or not any(match.groups()):
            raise ValueError(f"{text!r}: expected {FORMS}")
        epochs, iterations = (int(g) if g else 0 for g in match.groups())
        return cls(epochs, iterations)

    def at(self, steps_per_epoch: int) -> Step:
        """The absolute step with S = `steps_per_epoch`: epochs·S + iterations."""
        return Step(self.epochs * steps_per_epoch + self.iterations, steps_per_epoch)

    def __str__(self) -> str:
        return _format(self.epochs, self.iterations)


@functools.total_ordering
@dataclasses.dataclass(frozen=True)
class Step:
    """An absolute training step `count` of a run with `steps_per_epoch` S steps per epoch.

    Steps of one run (the same S) compare and sort by their count; `int(step)` is the count and
    `str(step)` its canonical string ('2ep10it', '3ep', '10it', '0it').
    """

    count: int
    steps_per_epoch: int

    def __post_init__(self):
        if self.count < 0 or self.steps_per_epoch < 1:
            raise ValueError(
                f"Step(count={self.count}, steps_per_epoch={self.steps_per_epoch}): needs count ≥ 0, S ≥ 1"
            )

    @property
    def epoch(self) -> int:
        return self.count // self.steps_per_epoch

    @property
    def iteration(self) -> int:
        """Steps into the current epoch."""
        return self.count % self.steps_per_epoch

    def __int__(self) -> int:
        return self.count

    def __index__(self) -> int:
        return self.count

    def __lt__(self, other: Step) -> bool:
        if not isinstance(other, Step):
            return NotImplemented
        if other.steps_per_epoch != self.steps_per_epoch:
            raise ValueError(f"{self!r} and {other!r}: steps of runs with different steps per epoch")
        return self.count < other.count

    def __str__(self) -> str:
        return _format(self.epoch, self.iteration)


def _format(epochs: int, iterations: int) -> str:
    if epochs and iterations:
        return f"{epochs}ep{iterations}it"
    return f"{epochs}ep" if epochs else f"{iterations}it"


def parse(text: str | int, steps_per_epoch: int) -> int:
    """The step count of a step string for S steps per epoch: '2ep10it' → 2·S + 10 (see `Steps.parse`)."""
    return Steps.parse(text).at(steps_per_epoch).count


def every(period: int, last: int) -> list[int]:
    """Every multiple of `period` in (0, last], and `last` itself, sorted ([] for period 0: never)."""
    return sorted(set(range(period, last + 1, period)) | {last}) if period > 0 else []
