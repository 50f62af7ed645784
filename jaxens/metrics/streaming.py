"""Streaming metric accumulators: sufficient statistics summed batch by batch, metrics computed at the end.

For a large eval set, `update` adds the sums of one batch to a `State` (inside `jax.jit`), `merge` adds two
states (e.g. from different hosts or shards), and `compute` turns the sums into the metrics
(docs/definitions.md#error-nll-and-brier-score, #calibration-ece-mce-mace). Every statistic is a sum over
examples, so the result equals the full-array metric however the examples are split into batches (up to
floating-point summation order).

    state = streaming.init(batch_shape=(k,))
    update = jax.jit(streaming.update)
    for logits, labels, mask in batches:  # logits [K, B, C]; mask [B] False on padding
        state = update(state, logits, labels, mask)
    results = streaming.compute(state)  # {'error': [K], 'nll': [K], ...}

The formulas live in `classification` and `calibration`; this module only sums their per-example values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxens.metrics import calibration, checks, classification


class State(NamedTuple):
    """Sums over the examples seen so far; the leading shape [...] (e.g. [K] members) is `batch_shape`.

    Attributes:
      count: [...] int32, number of examples.
      wrong_sum: [...] int32, number misclassified by the argmax prediction.
      nll_sum: [...] float32, Σ −log p(y).
      brier_sum: [...] float32, Σ Σ_c (p_c − 1[y = c])².
      entropy_sum: [...] float32, Σ −Σ_c p_c log p_c.
      bins: `calibration.Bins` with fields [..., num_bins].
    """

    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count (public field)
    wrong_sum: jax.Array
    nll_sum: jax.Array
    brier_sum: jax.Array
    entropy_sum: jax.Array
    bins: calibration.Bins


def init(batch_shape: Sequence[int] = (), num_bins: int = 15) -> State:
    """Empty accumulator.

    Args:
      batch_shape: leading axes of the logits that will be passed to `update` ([...] of [..., B, C]), e.g.
        (K,) for K members.
      num_bins: number of equal-width calibration bins on [0, 1].

    Returns:
      A `State` of zeros.
    """
    if not isinstance(num_bins, int) or isinstance(num_bins, bool) or num_bins < 1:
        raise ValueError(f"num_bins: expected a positive int, got {num_bins!r}")
    shape = tuple(batch_shape)
    ints = jnp.zeros(shape, jnp.int32)
    floats = jnp.zeros(shape, jnp.float32)
    return State(
        count=ints,
        wrong_sum=ints,
        nll_sum=floats,
        brier_sum=floats,
        entropy_sum=floats,
        bins=calibration.Bins(
            count=jnp.zeros(shape + (num_bins,), jnp.int32),
            confidence_sum=jnp.zeros(shape + (num_bins,), jnp.float32),
            correct_sum=jnp.zeros(shape + (num_bins,), jnp.int32),
        ),
    )


def _per_example(metric: Callable[[jax.Array, jax.Array], jax.Array]) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Turns a mean-over-examples metric ([..., N, C], [N]) → [...] into its per-example values [..., N].

    The metric is applied to each example on its own (a batch of one), so its formula is reused as it is.
    """

    def one(logits, label):  # [..., C], []
        return metric(logits[..., None, :], label[None])

    return jax.vmap(one, in_axes=(-2, 0), out_axes=-1)


def update(state: State, logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> State:
    """Adds one batch of examples to the sums.

    Args:
      state: accumulator with batch shape [...].
      logits: [..., B, C].
      labels: [B] int. Where `mask` is False the label is ignored (padding may hold any integer).
      mask: optional [B] bool; False marks padded examples (e.g. of a last partial batch), which are left out.

    Returns:
      The new `State`.

    Raises:
      ValueError: if the shapes of `logits`, `labels`, `mask` and `state` do not fit together.
    """
    batch_shape = tuple(state.count.shape)
    if logits.ndim < 2 or tuple(logits.shape[:-2]) != batch_shape:
        raise ValueError(
            f"logits of shape {tuple(logits.shape)} do not match state of batch shape {batch_shape}: "
            f"expected {batch_shape + ('B', 'C')}"
        )
    if mask is not None:
        if mask.shape != labels.shape[:1] or mask.ndim != 1 or labels.ndim != 1:
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not match labels of shape {tuple(labels.shape)}: "
                "expected both [B]"
            )
        mask = mask.astype(bool)
        labels = jnp.where(mask, labels, 0)  # Padding labels → class 0, so any integer may pad.
    checks.logits_labels(logits, labels)
    return _accumulate(state, logits, labels, mask)


@jax.jit
def _accumulate(state: State, logits: jax.Array, labels: jax.Array, mask: jax.Array | None) -> State:
    """`update` after its argument checks; jitted so that an eager call runs as one compiled program."""
    num_bins = state.bins.count.shape[-1]

    def masked_sum(x):  # [..., B] → [...]; where(), not a product, so NaN/inf in padding stays out.
        return jnp.sum(x if mask is None else jnp.where(mask, x, 0.0), axis=-1)

    conf = classification.confidence(logits)  # [..., B]
    correct = jnp.argmax(logits, axis=-1) == labels  # [..., B]
    bins = calibration.bins_from_predictions(conf, correct, num_bins, mask)  # [..., num_bins]
    count = jnp.sum(bins.count, axis=-1)  # [...]
    delta = State(
        count=count,
        wrong_sum=count - jnp.sum(bins.correct_sum, axis=-1),
        nll_sum=masked_sum(_per_example(classification.nll)(logits, labels)),
        brier_sum=masked_sum(calibration.brier_per_example(logits, labels)),
        entropy_sum=masked_sum(classification.entropy(logits)),
        bins=bins,
    )
    return jax.tree.map(lambda s, d: s + d.astype(s.dtype), state, delta)


def merge(a: State, b: State) -> State:
    """Sums of two disjoint sets of examples (same batch shape and number of bins).

    Args:
      a: accumulator with batch shape [...] and fields as in `State` (e.g. [K] for K members).
      b: accumulator of the same batch shape and number of bins, over other examples (another host or shard).

    Returns:
      A `State` whose every sum is a's plus b's, as if all examples had been added to one accumulator.

    Raises:
      ValueError: if the two states have different shapes.
    """
    shapes_a = [x.shape for x in jax.tree.leaves(a)]
    shapes_b = [x.shape for x in jax.tree.leaves(b)]
    if shapes_a != shapes_b:
        raise ValueError(
            f"a and b: states of different shapes (batch shape, num_bins): a {tuple(a.bins.count.shape)}, "
            f"b {tuple(b.bins.count.shape)}"
        )
    return jax.tree.map(jnp.add, a, b)


@jax.jit
def compute(state: State) -> dict[str, jax.Array]:
    """Metrics of all examples added so far, each [...]; NaN when no example was added. Jitted.

    Definitions: docs/definitions.md#error-nll-and-brier-score and #calibration-ece-mce-mace.

    Args:
      state: accumulator with batch shape [...] (e.g. [K] for K members), from `init`, `update` and `merge`.

    Returns:
      dict with 'error' (1 − accuracy), 'nll' (mean −log p(y)), 'brier' (mean Brier score), 'entropy' (mean
      predictive entropy), and the calibration errors 'ece', 'mce', 'mace' of `calibration`.
    """
    n = state.count.astype(jnp.float32)
    return {
        "error": state.wrong_sum / n,
        "nll": state.nll_sum / n,
        "brier": state.brier_sum / n,
        "entropy": state.entropy_sum / n,
        "ece": calibration.ece_from_bins(state.bins),
        "mce": calibration.mce_from_bins(state.bins),
        "mace": calibration.mace_from_bins(state.bins),
    }
