"""Streaming accumulators: batch by batch (with padding masked out) equals the full-array metrics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_logits
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxens.metrics import calibration, classification, streaming

NAMES = ("error", "nll", "brier", "entropy", "ece", "mce", "mace")


# ----- NumPy reference, written from the definitions of docs/definitions.md -----


def _np_metrics_1(logits, labels, num_bins):
    """One member [N, C]: every metric of `streaming.compute` from its formula, in float64."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    n = len(labels)
    rows = np.arange(n)
    pred = p.argmax(-1)
    conf = p.max(-1)
    onehot = np.eye(p.shape[-1])[labels]
    out = {
        "error": np.mean(pred != labels),
        "nll": -np.mean(np.log(p[rows, labels])),
        "brier": np.mean(((p - onehot) ** 2).sum(-1)),
        "entropy": np.mean(-(p * np.log(p)).sum(-1)),
    }
    bin_of = np.minimum(np.floor(conf * num_bins).astype(int), num_bins - 1)
    gaps, sizes = [], []
    for b in range(num_bins):
        members = bin_of == b
        if members.any():
            gaps.append(abs(np.mean(pred[members] == labels[members]) - np.mean(conf[members])))
            sizes.append(members.sum())
    gaps, sizes = np.array(gaps), np.array(sizes)
    out["ece"] = np.sum(sizes / n * gaps)
    out["mce"] = np.max(gaps)
    out["mace"] = np.mean(gaps)
    return out


def _full_array(logits, labels, num_bins):
    """The non-streaming kernels on all examples at once."""
    bins = calibration.calibration_bins(logits, labels, num_bins)
    return {
        "error": classification.error(logits, labels),
        "nll": classification.nll(logits, labels),
        "brier": calibration.brier(logits, labels),
        "entropy": classification.entropy(logits).mean(-1),
        "ece": calibration.ece_from_bins(bins),
        "mce": calibration.mce_from_bins(bins),
        "mace": calibration.mace_from_bins(bins),
    }


def _assert_metrics_close(got, want, rtol=1e-5, atol=1e-6):
    assert set(got) == set(NAMES)
    for name in NAMES:
        np.testing.assert_allclose(got[name], want[name], rtol=rtol, atol=atol, err_msg=name)


# ----- Against the reference -----


def test_against_numpy_with_member_axis():
    logits, labels = random_logits(0, (3, 230, 6))
    state = streaming.init(batch_shape=(3,), num_bins=15)
    for start in range(0, 230, 64):  # Batches of 64, 64, 64, 38 without masks.
        state = streaming.update(state, logits[:, start : start + 64], labels[start : start + 64])
    got = streaming.compute(state)
    for name in NAMES:
        assert got[name].shape == (3,)
    want = [_np_metrics_1(logits[m], labels, 15) for m in range(3)]
    _assert_metrics_close(got, {name: [w[name] for w in want] for name in NAMES})
    np.testing.assert_array_equal(state.count, [230] * 3)
    np.testing.assert_array_equal(state.bins.count.sum(-1), [230] * 3)


def test_single_member_and_members_agree():
    logits, labels = random_logits(1, (2, 50, 4))
    stacked = streaming.compute(streaming.update(streaming.init((2,), 10), logits, labels))
    for m in range(2):
        single = streaming.compute(streaming.update(streaming.init((), 10), logits[m], labels))
        for name in NAMES:
            assert single[name].shape == ()
            np.testing.assert_allclose(single[name], stacked[name][m], rtol=1e-6, err_msg=name)
        _assert_metrics_close(single, _np_metrics_1(logits[m], labels, 10))


def test_padding_is_ignored_whatever_it_holds():
    logits, labels = random_logits(2, (2, 20, 5))
    # A last batch of 7 real examples padded to 12 with garbage: NaN and inf logits, labels out of range.
    pad_logits = np.full((2, 5, 5), np.nan, np.float32)
    pad_logits[:, 0] = np.inf
    batch_logits = np.concatenate([logits[:, 13:], pad_logits], axis=1)
    batch_labels = np.concatenate([labels[13:], [-1, 99, 0, 5, -7]]).astype(np.int32)
    mask = np.arange(12) < 7
    state = streaming.init((2,))
    state = streaming.update(state, logits[:, :13], labels[:13])
    for update in (streaming.update, jax.jit(streaming.update)):
        got = streaming.compute(update(state, batch_logits, batch_labels, mask))
        _assert_metrics_close(got, _full_array(logits, labels, 15))


# ----- Batching invariance -----


_K, _N, _C = 2, 29, 4  # One shape and one padded batch size, so that `update` compiles once per number of bins.
_update = jax.jit(streaming.update)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    cuts=st.lists(st.integers(1, _N - 1), max_size=5, unique=True),
    num_bins=st.sampled_from([1, 15]),
    scale=st.sampled_from([0.1, 3.0, 30.0]),
)
def test_batches_with_padded_last_batch_equal_full_array(seed, cuts, num_bins, scale):
    logits, labels = random_logits(seed, (_K, _N, _C), scale)
    edges = [0, *sorted(cuts), _N]
    state = streaming.init((_K,), num_bins)
    for lo, hi in zip(edges[:-1], edges[1:]):
        # Every batch padded to N examples (zeros, label 0) and masked, as a fixed-shape eval loop would do.
        size = hi - lo
        batch_logits = np.zeros((_K, _N, _C), np.float32)
        batch_logits[:, :size] = logits[:, lo:hi]
        batch_labels = np.zeros(_N, np.int32)
        batch_labels[:size] = labels[lo:hi]
        state = _update(state, batch_logits, batch_labels, np.arange(_N) < size)
    full_bins = calibration.calibration_bins(logits, labels, num_bins)
    np.testing.assert_array_equal(state.bins.count, full_bins.count)
    np.testing.assert_array_equal(state.bins.correct_sum, full_bins.correct_sum)
    np.testing.assert_array_equal(state.count, [_N] * _K)
    _assert_metrics_close(streaming.compute(state), _full_array(logits, labels, num_bins), rtol=2e-5, atol=2e-6)


def test_unequal_batches_without_mask_and_merge():
    logits, labels = random_logits(3, (2, 41, 3))
    edges = [0, 1, 17, 18, 41]  # Batches of 1, 16, 1 and 23 examples.
    states = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        states.append(streaming.update(streaming.init((2,), 7), logits[:, lo:hi], labels[lo:hi]))
    sequential = streaming.init((2,), 7)
    for lo, hi in zip(edges[:-1], edges[1:]):
        sequential = streaming.update(sequential, logits[:, lo:hi], labels[lo:hi])
    merged = streaming.merge(streaming.merge(states[0], states[1]), streaming.merge(states[2], states[3]))
    want = _full_array(logits, labels, 7)
    _assert_metrics_close(streaming.compute(sequential), want)
    _assert_metrics_close(streaming.compute(merged), want)
    _assert_metrics_close(jax.jit(streaming.compute)(merged), want)
    with pytest.raises(ValueError, match="a and b"):
        streaming.merge(streaming.init((2,), 7), streaming.init((2,), 15))


def test_scan_over_batches():
    # The whole eval loop inside one jitted lax.scan: state is a pytree carry of fixed shape and dtype.
    logits, labels = random_logits(4, (3, 4 * 16, 5))
    batched_logits = logits.reshape(3, 4, 16, 5).transpose(1, 0, 2, 3)  # [steps, K, B, C]
    batched_labels = labels.reshape(4, 16)

    @jax.jit
    def run(batched_logits, batched_labels):
        def body(state, batch):
            return streaming.update(state, *batch), None

        state, _ = jax.lax.scan(body, streaming.init((3,)), (batched_logits, batched_labels))
        return streaming.compute(state)

    _assert_metrics_close(run(batched_logits, batched_labels), _full_array(logits, labels, 15))


def test_empty_state_is_nan():
    got = streaming.compute(streaming.init((2,)))
    for name in NAMES:
        assert got[name].shape == (2,)
        assert np.all(np.isnan(got[name])), name


# ----- Argument errors -----


def test_shape_errors_name_arguments():
    state = streaming.init((2,))
    logits = np.zeros((2, 6, 3), np.float32)
    with pytest.raises(ValueError, match=r"labels.*logits"):
        streaming.update(state, logits, np.zeros(5, np.int32))
    with pytest.raises(ValueError, match=r"labels.*logits"):
        jax.jit(streaming.update)(state, logits, np.zeros(7, np.int32))
    with pytest.raises(ValueError, match=r"logits.*state"):
        streaming.update(state, logits[0], np.zeros(6, np.int32))
    with pytest.raises(ValueError, match=r"mask.*labels"):
        streaming.update(state, logits, np.zeros(6, np.int32), np.ones(5, bool))
    with pytest.raises(ValueError, match="labels"):
        streaming.update(state, logits, np.array([0, 1, 2, 3, 0, 0]))  # Label 3 outside [0, C) and unmasked.
    with pytest.raises(ValueError, match="num_bins"):
        streaming.init((2,), num_bins=0)


def test_state_keeps_its_dtypes():
    state = streaming.init((2,))
    new = jax.jit(streaming.update)(state, jnp.zeros((2, 4, 3), jnp.bfloat16), jnp.zeros(4, jnp.int32))
    assert jax.tree.map(lambda x: x.dtype, new) == jax.tree.map(lambda x: x.dtype, state)
