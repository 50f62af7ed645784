"""Forgetting events (Toneva et al.), tracked per example for one member, as Zamparo et al. use them.

Definition (docs/definitions.md#forgetting-events; Toneva et al., "An Empirical Study of Example Forgetting
during Deep Neural Network Learning", 2019): a *forgetting event* of an example happens when its 0-1 correctness
(argmax prediction equals the label) goes from correct to incorrect between two consecutive presentations of
that example. An example's *forgetting count* (Toneva's forgetting statistic) is its number of forgetting
events.

- Train-side (Toneva): the presentations of an example are the minibatches in which it appears, and its
  correctness is the one the training forward pass gave for that minibatch (`update`). Since an example is
  only observed when it is sampled, the count is a lower bound on how often it was forgotten (Zamparo et
  al., footnote 1).
- Test-side (Zamparo et al., "Functional diversity dynamics", Fig. 1g/h): the presentations are consecutive
  evaluations of the whole test set (`update_all`, e.g. once per epoch). Fig. 1g plots the events of each
  evaluation (the second value `update_all` returns); Fig. 1h the cumulative events since coupling
  (`total` of a tracker started at the spawn, or the running sum of the per-evaluation events).

Duplicates within one minibatch: the minibatch is ONE presentation of the example (presentations are the
minibatches in which it appears), and the example counts as correct in it only if every copy of it is
correct (the 0-1 loss of the presentation is the largest 0-1 loss of its copies). Copies in one minibatch
are seen by the same parameters, so no forgetting event can happen between them. The trainer's epoch
permutations never repeat an index within a minibatch; this matters for sampling with replacement.

Examples that are presented but never correct have no forgetting event; Toneva et al. count them as
forgotten infinitely often, which `counts(state, never_learned=jnp.inf)` gives.

Everything here is written for ONE member and is pure and jit-able; a leading member axis K is handled by
`jax.vmap`:

    states = jax.vmap(lambda: forgetting.init(n), axis_size=k)()           # leaves [K, N]
    states, events = jax.vmap(forgetting.update)(states, indices, correct)   # indices, correct [K, B]
    # events: [K] forgetting events of each member in this minibatch.
    states, events = jax.vmap(forgetting.update_all)(states, test_correct)  # test_correct [K, N]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

NEVER_PRESENTED = -1
"""Value of `ForgettingState.last_correct` for an example that has not been presented yet."""


@struct.dataclass
class ForgettingState:
    """Forgetting tracker of one member over N examples.

    Attributes:
      last_correct: [N] int8, correctness at the latest presentation: 1 correct, 0 incorrect,
        `NEVER_PRESENTED` (−1) before the first presentation.
      forgotten: [N] int32, forgetting events so far (correct → incorrect between consecutive presentations).
      learned: [N] bool, correct at one presentation at least.
      presentations: [N] int32, presentations so far.
    """

    last_correct: jax.Array
    forgotten: jax.Array
    learned: jax.Array
    presentations: jax.Array

    @property
    def num_examples(self) -> int:
        """N, the number of examples tracked (the last axis of the leaves), a Python int."""
        return int(self.last_correct.shape[-1])


def init(num_examples: int) -> ForgettingState:
    """A tracker for `num_examples` examples, none presented yet.

    Args:
      num_examples: N, a Python int (static under `jax.jit`).

    Returns:
      ForgettingState with leaves [N].
    """
    if int(num_examples) < 0:
        raise ValueError(f"num_examples: expected >= 0, got {num_examples}")
    n = int(num_examples)
    return ForgettingState(
        last_correct=jnp.full((n,), NEVER_PRESENTED, jnp.int8),
        forgotten=jnp.zeros((n,), jnp.int32),
        learned=jnp.zeros((n,), jnp.bool_),
        presentations=jnp.zeros((n,), jnp.int32),
    )


def update(state: ForgettingState, indices: jax.Array, correct: jax.Array) -> tuple[ForgettingState, jax.Array]:
    """Records one training minibatch (train-side forgetting, Toneva et al.).

    Each example whose index appears in `indices` is presented once; an example that appears several times
    in the minibatch is still presented once, and counts as correct only if all its copies are correct.
    A forgetting event is counted for each presented example that was correct at its previous presentation
    and is incorrect now. Costs O(N + B).

    Args:
      state: one member's tracker, leaves [N].
      indices: [B] int, example indices in [0, N). Checked in an eager call; under `jax.jit` (values
        unknown) entries with an index outside [0, N) are ignored.
      correct: [B] bool (or 0/1 integers), whether the member's argmax prediction for `indices[b]` was the
        label, e.g. `jnp.argmax(logits, -1) == labels[indices]` from the training forward pass.

    Returns:
      (new state, [] int32 number of forgetting events in this minibatch).
    """
    _check_state(state)
    n = state.num_examples
    indices = jnp.asarray(indices)
    correct = _as_bool(correct, "correct")
    if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"indices: expected [B] integer example indices, got {indices.dtype} {tuple(indices.shape)}")
    if correct.shape != indices.shape:
        raise ValueError(
            f"correct of shape {tuple(correct.shape)} does not match indices of shape {tuple(indices.shape)}"
        )
    if not isinstance(indices, jax.core.Tracer) and indices.shape[0]:
        low, high = int(np.min(indices)), int(np.max(indices))
        if low < 0 or high >= n:
            raise ValueError(f"indices: index {low if low < 0 else high} outside [0, {n}) (N = state.num_examples)")
    # Out-of-range indices (only possible under jit) go to N, which mode='drop' discards.
    idx = jnp.where((indices >= 0) & (indices < n), indices, n)  # [B]
    seen = jnp.zeros((n,), jnp.bool_).at[idx].set(True, mode="drop")  # [N]
    batch_correct = jnp.ones((n,), jnp.bool_).at[idx].min(correct, mode="drop")  # [N], AND over copies
    return _observe(state, seen, batch_correct)


def update_all(state: ForgettingState, correct: jax.Array) -> tuple[ForgettingState, jax.Array]:
    """Records one evaluation of every example (test-side forgetting, Zamparo et al. Fig. 1g/h).

    Every example is presented; a forgetting event is counted for each example that was correct at the
    previous evaluation and is incorrect now.

    Args:
      state: one member's tracker, leaves [N].
      correct: [N] bool (or 0/1 integers), `jnp.argmax(logits, -1) == labels` of this evaluation.

    Returns:
      (new state, [] int32 number of forgetting events in this evaluation).
    """
    _check_state(state)
    correct = _as_bool(correct, "correct")
    if correct.shape != state.last_correct.shape:
        raise ValueError(
            f"correct of shape {tuple(correct.shape)} does not match the tracker of {state.num_examples} "
            f"examples: expected [N] with N = {state.num_examples}"
        )
    return _observe(state, jnp.ones_like(correct), correct)


def counts(state: ForgettingState, never_learned=None) -> jax.Array:
    """Forgetting count of each example (Toneva's forgetting statistic).

    Args:
      state: tracker, leaves [..., N].
      never_learned: None, or the value given to examples that were presented but never correct (Toneva et
        al. treat them as maximally forgettable: `jnp.inf`). Examples never presented keep count 0 either way
        (mask them with `state.presentations > 0`).

    Returns:
      [..., N] int32 counts, or float32 when `never_learned` is given.
    """
    if never_learned is None:
        return state.forgotten
    never = (state.presentations > 0) & ~state.learned
    return jnp.where(never, jnp.asarray(never_learned, jnp.float32), state.forgotten.astype(jnp.float32))


def total(state: ForgettingState) -> jax.Array:
    """Forgetting events summed over examples (Zamparo Fig. 1h: cumulative events since the tracker started).

    Args:
      state: tracker, leaves [..., N].

    Returns:
      [...] int32.
    """
    return jnp.sum(state.forgotten, axis=-1, dtype=jnp.int32)


def num_forgotten(state: ForgettingState) -> jax.Array:
    """Number of examples forgotten at least once.

    Args:
      state: tracker, leaves [..., N].

    Returns:
      [...] int32.
    """
    return jnp.sum(state.forgotten > 0, axis=-1, dtype=jnp.int32)


def unforgettable(state: ForgettingState) -> jax.Array:
    """Toneva's unforgettable examples: learned (correct at some presentation) and never forgotten.

    Args:
      state: tracker, leaves [..., N].

    Returns:
      [..., N] bool.
    """
    return state.learned & (state.forgotten == 0)


def _observe(state: ForgettingState, seen: jax.Array, correct: jax.Array) -> tuple[ForgettingState, jax.Array]:
    """Presents the examples where `seen` [N] with correctness `correct` [N] (ignored where not seen)."""
    events = seen & (state.last_correct == 1) & ~correct  # [N]
    new = ForgettingState(
        last_correct=jnp.where(seen, correct.astype(jnp.int8), state.last_correct),
        forgotten=state.forgotten + events.astype(jnp.int32),
        learned=state.learned | (seen & correct),
        presentations=state.presentations + seen.astype(jnp.int32),
    )
    return new, jnp.sum(events, dtype=jnp.int32)


def _as_bool(x, name: str) -> jax.Array:
    x = jnp.asarray(x)
    if x.dtype != jnp.bool_ and not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{name}: expected bool (or 0/1 integers), got dtype {x.dtype}")
    return x.astype(jnp.bool_)


def _check_state(state: ForgettingState) -> None:
    if state.last_correct.ndim != 1:
        raise ValueError(
            f"state: expected one member's tracker with leaves [N], got shape {tuple(state.last_correct.shape)}; "
            "map a leading member axis with jax.vmap"
        )
