"""Forgetting events against a pure-Python re-implementation of the definition (docs/definitions.md#forgetting-events,
Toneva et al.)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxens.metrics import forgetting


def _reference(num_examples, updates):
    """Forgetting from the definition. `updates`: list of (indices or None for all examples, correct).

    One update presents each example it names once; an example named several times in one update is
    correct in it only if all its copies are. Returns per-example presentation histories, the forgetting
    counts (correct → incorrect between consecutive presentations, counted per example over its history)
    and the events of each update.
    """
    history = [[] for _ in range(num_examples)]
    per_update = []
    for indices, correct in updates:
        if indices is None:
            indices = range(num_examples)
        this = {}
        for i, c in zip(indices, correct):
            this[int(i)] = this.get(int(i), True) and bool(c)
        events = 0
        for i, c in this.items():
            events += int(bool(history[i]) and history[i][-1] and not c)
            history[i].append(c)
        per_update.append(events)
    counts = [sum(1 for a, b in zip(h, h[1:]) if a and not b) for h in history]
    return history, np.array(counts), np.array(per_update)


def _assert_matches(state, num_examples, updates, events):
    history, want_counts, want_events = _reference(num_examples, updates)
    np.testing.assert_array_equal(forgetting.counts(state), want_counts)
    np.testing.assert_array_equal(np.asarray(events).reshape(-1), want_events)
    np.testing.assert_array_equal(state.presentations, [len(h) for h in history])
    np.testing.assert_array_equal(state.learned, [any(h) for h in history])
    np.testing.assert_array_equal(
        state.last_correct, [int(h[-1]) if h else forgetting.NEVER_PRESENTED for h in history]
    )


def _run(state, updates):
    events = []
    for indices, correct in updates:
        if indices is None:
            state, e = forgetting.update_all(state, jnp.asarray(correct))
        else:
            state, e = forgetting.update(state, jnp.asarray(indices), jnp.asarray(correct))
        events.append(int(e))
    return state, events


def test_hand_computed_evaluations():
    # Columns are examples, rows consecutive evaluations of all four.
    seq = np.array(
        [
            [1, 0, 0, 1],
            [0, 0, 0, 1],
            [1, 1, 0, 1],
            [0, 1, 0, 1],
        ],
        bool,
    )
    state, events = _run(forgetting.init(4), [(None, row) for row in seq])
    assert events == [0, 1, 0, 1]
    np.testing.assert_array_equal(forgetting.counts(state), [2, 0, 0, 0])  # 1,0,1,0 → 2; 0,0,1,1 → 0.
    np.testing.assert_array_equal(state.learned, [True, True, False, True])
    np.testing.assert_array_equal(forgetting.counts(state, never_learned=jnp.inf), [2, 0, np.inf, 0])
    assert forgetting.counts(state).dtype == jnp.int32
    assert forgetting.counts(state, never_learned=jnp.inf).dtype == jnp.float32
    assert int(forgetting.total(state)) == 2
    assert int(forgetting.num_forgotten(state)) == 1
    np.testing.assert_array_equal(forgetting.unforgettable(state), [False, True, False, True])
    np.testing.assert_array_equal(state.presentations, [4, 4, 4, 4])


def test_hand_computed_minibatches():
    # Example 0: 0, 0, 1 → no event, learned. Example 1: 1, 0 → 1 event. Example 2: never presented.
    state = forgetting.init(3)
    state, e1 = forgetting.update(state, jnp.array([0, 1]), jnp.array([False, True]))
    state, e2 = forgetting.update(state, jnp.array([0]), jnp.array([False]))
    state, e3 = forgetting.update(state, jnp.array([1, 0]), jnp.array([False, True]))
    assert [int(e1), int(e2), int(e3)] == [0, 0, 1]
    np.testing.assert_array_equal(forgetting.counts(state), [0, 1, 0])
    np.testing.assert_array_equal(state.learned, [True, True, False])
    np.testing.assert_array_equal(state.presentations, [3, 2, 0])
    np.testing.assert_array_equal(state.last_correct, [1, 0, forgetting.NEVER_PRESENTED])
    # Never presented keeps 0 under never_learned; presented-but-never-correct gets the value.
    state, _ = forgetting.update(state, jnp.array([2]), jnp.array([False]))
    np.testing.assert_array_equal(forgetting.counts(state, never_learned=-1), [0, 1, -1])
    fresh = forgetting.init(3)
    np.testing.assert_array_equal(forgetting.counts(fresh, never_learned=jnp.inf), [0, 0, 0])


def test_first_presentation_is_never_an_event():
    state, events = forgetting.update_all(forgetting.init(5), jnp.zeros(5, bool))
    assert int(events) == 0 and int(forgetting.total(state)) == 0


def test_duplicates_in_one_minibatch_are_one_presentation_correct_only_if_all_copies_are():
    state = forgetting.init(4)
    state, _ = forgetting.update(state, jnp.array([3, 1]), jnp.array([True, True]))
    # Index 3 twice: one copy wrong → one presentation, incorrect → one event. Index 1 twice, both right.
    state, events = forgetting.update(state, jnp.array([3, 1, 3, 1]), jnp.array([True, True, False, True]))
    assert int(events) == 1
    np.testing.assert_array_equal(forgetting.counts(state), [0, 0, 0, 1])
    np.testing.assert_array_equal(state.presentations, [0, 2, 0, 2])
    np.testing.assert_array_equal(state.last_correct, [-1, 1, -1, 0])


def test_random_minibatches_against_reference():
    rng = np.random.default_rng(0)
    n, b = 23, 7
    updates = []
    for _ in range(40):  # Sampling with replacement: duplicates within a minibatch do occur.
        updates.append((rng.integers(0, n, size=b), rng.random(b) < 0.6))
    for epoch in range(3):  # Epoch permutations, the trainer's order: no duplicates.
        order = rng.permutation(n)
        for s in range(n // b):
            updates.append((order[s * b : (s + 1) * b], rng.random(b) < 0.3 + 0.2 * epoch))
    update = jax.jit(forgetting.update)
    state, events = forgetting.init(n), []
    for indices, correct in updates:
        state, e = update(state, indices, correct)
        events.append(int(e))
    _assert_matches(state, n, updates, events)
    assert any(len(set(i.tolist())) < b for i, _ in updates[:40])


def test_random_evaluations_against_reference():
    rng = np.random.default_rng(1)
    n = 31
    p = rng.random(n)  # Per-example difficulty, so some examples are rarely or never correct.
    updates = [(None, rng.random(n) < p) for _ in range(25)]
    state, events = _run(forgetting.init(n), updates)
    _assert_matches(state, n, updates, events)


def test_jit_and_scan_equal_eager():
    rng = np.random.default_rng(2)
    n, b, steps = 17, 5, 12
    indices = rng.integers(0, n, size=(steps, b))
    correct = rng.random((steps, b)) < 0.5
    eager, eager_events = _run(forgetting.init(n), list(zip(indices, correct)))

    @jax.jit
    def scanned(indices, correct):
        def body(state, batch):
            return forgetting.update(state, *batch)

        return jax.lax.scan(body, forgetting.init(n), (indices, correct))

    state, events = scanned(indices, correct)
    jax.tree.map(np.testing.assert_array_equal, state, eager)
    np.testing.assert_array_equal(events, eager_events)

    evals = rng.random((6, n)) < 0.5
    eager, eager_events = _run(forgetting.init(n), [(None, c) for c in evals])
    state, jit_events = forgetting.init(n), []
    for c in evals:
        state, e = jax.jit(forgetting.update_all)(state, c)
        jit_events.append(int(e))
    jax.tree.map(np.testing.assert_array_equal, state, eager)
    assert jit_events == eager_events
    assert int(jax.jit(forgetting.total)(state)) == int(forgetting.total(eager))


def test_vmap_over_members_equals_loop():
    rng = np.random.default_rng(3)
    k, n, b, steps = 3, 13, 6, 10
    indices = rng.integers(0, n, size=(steps, k, b))  # [steps, K, B]: each member its own data order.
    correct = rng.random((steps, k, b)) < 0.5
    evals = rng.random((4, k, n)) < 0.5  # [evals, K, N]

    states = jax.vmap(lambda: forgetting.init(n), axis_size=k)()
    assert states.forgotten.shape == (k, n)
    update = jax.jit(jax.vmap(forgetting.update))
    update_all = jax.jit(jax.vmap(forgetting.update_all))
    vmap_events = []
    for t in range(steps):
        states, e = update(states, indices[t], correct[t])
        assert e.shape == (k,)
        vmap_events.append(np.asarray(e))
    for c in evals:
        states, e = update_all(states, c)
        vmap_events.append(np.asarray(e))

    for m in range(k):
        updates = [(indices[t, m], correct[t, m]) for t in range(steps)] + [(None, c[m]) for c in evals]
        state, events = _run(forgetting.init(n), updates)
        jax.tree.map(lambda x, y: np.testing.assert_array_equal(x[m], y), states, state)
        np.testing.assert_array_equal([e[m] for e in vmap_events], events)
        _assert_matches(state, n, updates, events)
    np.testing.assert_array_equal(
        forgetting.total(states), [int(forgetting.total(jax.tree.map(lambda x: x[m], states))) for m in range(k)]
    )
    assert forgetting.counts(states, never_learned=jnp.inf).shape == (k, n)


def test_out_of_range_indices_ignored_under_jit():
    state = forgetting.init(4)
    state, _ = forgetting.update(state, jnp.array([0, 1]), jnp.array([True, True]))
    state, events = jax.jit(forgetting.update)(state, jnp.array([0, 4, -1, 1]), jnp.array([False, False, False, True]))
    assert int(events) == 1
    np.testing.assert_array_equal(state.presentations, [2, 2, 0, 0])


def test_argument_errors_named():
    state = forgetting.init(4)
    with pytest.raises(ValueError, match="outside"):
        forgetting.update(state, jnp.array([0, 4]), jnp.array([True, True]))
    with pytest.raises(ValueError, match="outside"):
        forgetting.update(state, jnp.array([-1]), jnp.array([True]))
    with pytest.raises(ValueError, match="does not match indices"):
        forgetting.update(state, jnp.array([0, 1]), jnp.array([True]))
    with pytest.raises(ValueError, match="indices"):
        forgetting.update(state, jnp.array([0.0, 1.0]), jnp.array([True, True]))
    with pytest.raises(ValueError, match="correct: expected bool"):
        forgetting.update(state, jnp.array([0]), jnp.array([0.7]))
    with pytest.raises(ValueError, match="N = 4"):
        forgetting.update_all(state, jnp.ones(5, bool))
    stacked = jax.vmap(lambda: forgetting.init(4), axis_size=2)()
    with pytest.raises(ValueError, match="jax.vmap"):
        forgetting.update_all(stacked, jnp.ones((2, 4), bool))
    with pytest.raises(ValueError, match="num_examples"):
        forgetting.init(-1)


# Fixed shapes (N = 6, B = 4) keep the property tests on one compiled program.
_N, _B = 6, 4
_jit_update = jax.jit(forgetting.update)
_jit_update_all = jax.jit(forgetting.update_all)

_minibatch = st.tuples(
    st.lists(st.integers(0, _N - 1), min_size=_B, max_size=_B), st.lists(st.booleans(), min_size=_B, max_size=_B)
)
_evaluation = st.tuples(st.none(), st.lists(st.booleans(), min_size=_N, max_size=_N))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(_minibatch, _evaluation), max_size=16))
def test_properties(updates):
    state, events = forgetting.init(_N), []
    for indices, correct in updates:
        if indices is None:
            state, e = _jit_update_all(state, np.array(correct, bool))
        else:
            state, e = _jit_update(state, np.array(indices, np.int32), np.array(correct, bool))
        events.append(int(e))
    c = np.asarray(forgetting.counts(state))
    presentations = np.asarray(state.presentations)
    assert (c >= 0).all()
    assert (c <= presentations // 2).all()  # Each event needs a correct presentation before it.
    assert (~np.asarray(state.learned) <= (c == 0)).all()  # Forgotten implies learned.
    assert sum(events) == int(forgetting.total(state)) == int(c.sum())
    assert (presentations <= len(updates)).all()
    _assert_matches(state, _N, updates, events)
    with_inf = np.asarray(forgetting.counts(state, never_learned=jnp.inf))
    never = (presentations > 0) & ~np.asarray(state.learned)
    assert np.isinf(with_inf[never]).all() and (with_inf[~never] == c[~never]).all()
