"""Calibration metrics: Brier score, binned top-label calibration errors (ECE, MCE, MACE), confusion matrix.

Definitions (docs/definitions.md#calibration-ece-mce-mace): top-label confidence max_c p_c, `num_bins`
equal-width bins on [0, 1] (15 by default), bin index min(floor(conf · B), B − 1) so that confidence exactly 1.0
falls in the last bin.

The binned metrics are computed in two steps: `calibration_bins` reduces the examples to per-bin sufficient
statistics (`Bins`), and `ece_from_bins` / `mce_from_bins` / `mace_from_bins` turn those into the metric.
Bin statistics add up over disjoint sets of examples, so `jaxens.metrics.streaming` accumulates them batch
by batch and calls the same `*_from_bins` functions.

For no examples at all (every bin empty) the binned metrics are NaN, like a mean over no examples.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxens.metrics import checks, classification


class Bins(NamedTuple):
    """Per-bin sufficient statistics of top-label calibration, each [..., B] for B bins.

    Attributes:
      count: int32, number of examples whose confidence falls in the bin (n_b).
      confidence_sum: float, sum of their confidences (n_b · conf_b).
      correct_sum: int32, how many of them are classified correctly (n_b · acc_b).
    """

    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count (public field)
    confidence_sum: jax.Array
    correct_sum: jax.Array


def _check_num_bins(num_bins) -> None:
    if not isinstance(num_bins, int) or isinstance(num_bins, bool) or num_bins < 1:
        raise ValueError(f"num_bins: expected a positive int, got {num_bins!r}")


def bin_index(confidence: jax.Array, num_bins: int) -> jax.Array:
    """Equal-width bin of each confidence on [0, 1]: min(floor(conf · B), B − 1), so 1.0 is in the last bin.

    Args:
      confidence: [...] values in [0, 1].
      num_bins: B ≥ 1.

    Returns:
      [...] int32 in [0, B).
    """
    _check_num_bins(num_bins)
    index = jnp.floor(confidence * num_bins).astype(jnp.int32)
    return jnp.clip(index, 0, num_bins - 1)


def bins_from_predictions(
    confidence: jax.Array, correct: jax.Array, num_bins: int = 15, mask: jax.Array | None = None
) -> Bins:
    """Bin statistics of per-example confidences and correctness.

    Args:
      confidence: [..., N] top-label confidence in [0, 1].
      correct: [..., N] bool (or broadcastable to `confidence`), whether the top label is the true one.
      num_bins: B, the number of equal-width bins on [0, 1].
      mask: optional [N] bool; examples where it is False are left out (padding of a partial batch).

    Returns:
      `Bins` with fields [..., B].
    """
    _check_num_bins(num_bins)
    confidence = confidence.astype(jnp.result_type(confidence.dtype, jnp.float32))
    correct = jnp.broadcast_to(correct, confidence.shape)
    in_bin = bin_index(confidence, num_bins)[..., None] == jnp.arange(num_bins)  # [..., N, B]
    if mask is not None:
        in_bin = in_bin & mask[:, None]
    return Bins(
        count=jnp.sum(in_bin, axis=-2, dtype=jnp.int32),
        confidence_sum=jnp.sum(jnp.where(in_bin, confidence[..., None], 0.0), axis=-2),
        correct_sum=jnp.sum(in_bin & correct[..., None], axis=-2, dtype=jnp.int32),
    )


def calibration_bins(logits: jax.Array, labels: jax.Array, num_bins: int = 15) -> Bins:
    """Top-label calibration statistics in `num_bins` equal-width confidence bins on [0, 1].

    Confidence is max_c p_c with p = softmax(logits); an example is correct when argmax_c p_c = y. Its bin is
    min(floor(conf · B), B − 1) (confidence 1.0 goes to the last bin). Per bin b: n_b examples, their
    confidence sum and their number correct (Naeini et al., 2015; Guo et al., 2017).

    Args:
      logits: [..., N, C].
      labels: [N] int.
      num_bins: B ≥ 1.

    Returns:
      `Bins(count, confidence_sum, correct_sum)`, each [..., B].
    """
    checks.logits_labels(logits, labels)
    conf = classification.confidence(logits)  # [..., N]
    correct = jnp.argmax(logits, axis=-1) == labels  # [..., N]
    return bins_from_predictions(conf, correct, num_bins)


def _total_and_gaps(bins: Bins):
    """N = Σ_b n_b [...], |acc_b − conf_b| per bin [..., B] (0 for an empty bin), and which bins are non-empty."""
    total = jnp.sum(bins.count, axis=-1)  # [...]
    nonempty = bins.count > 0  # [..., B]
    abs_diff = jnp.abs(bins.correct_sum - bins.confidence_sum)  # n_b |acc_b − conf_b|, [..., B]
    gaps = abs_diff / jnp.maximum(bins.count, 1)  # [..., B]
    return total, gaps, nonempty


def ece_from_bins(bins: Bins) -> jax.Array:
    """Expected calibration error ECE = Σ_b (n_b / N) |acc_b − conf_b| (Naeini et al., 2015; Guo et al., 2017).

    Computed as (1/N) Σ_b |Σ_{i∈b} 1[correct_i] − Σ_{i∈b} conf_i|, which needs no division by n_b, so empty
    bins contribute exactly 0.

    Args:
      bins: `Bins` with fields [..., B].

    Returns:
      [...] ECE in [0, 1]; NaN if there are no examples.
    """
    total = jnp.sum(bins.count, axis=-1)
    abs_diff = jnp.abs(bins.correct_sum - bins.confidence_sum)  # [..., B]
    return jnp.sum(abs_diff, axis=-1) / total


def mce_from_bins(bins: Bins) -> jax.Array:
    """Maximum calibration error MCE = max over non-empty bins of |acc_b − conf_b| (Naeini et al., 2015).

    Args:
      bins: `Bins` with fields [..., B].

    Returns:
      [...] MCE in [0, 1]; NaN if there are no examples.
    """
    total, gaps, nonempty = _total_and_gaps(bins)
    mce = jnp.max(jnp.where(nonempty, gaps, 0.0), axis=-1)
    return jnp.where(total > 0, mce, jnp.nan)


def mace_from_bins(bins: Bins) -> jax.Array:
    """Mean average calibration error MACE = unweighted mean over non-empty bins of |acc_b − conf_b|.

    The calibration measure of Zamparo et al. ("The Dynamics of Functional Diversity throughout Neural
    Network Training", citing Naeini et al., 2015): unlike ECE, every non-empty bin counts equally, however
    few examples it holds. Empty bins are left out of both the sum and the number of bins.

    Args:
      bins: `Bins` with fields [..., B].

    Returns:
      [...] MACE in [0, 1]; NaN if there are no examples.
    """
    _, gaps, nonempty = _total_and_gaps(bins)
    num_nonempty = jnp.sum(nonempty, axis=-1)  # [...]
    return jnp.sum(jnp.where(nonempty, gaps, 0.0), axis=-1) / num_nonempty


def ece(logits: jax.Array, labels: jax.Array, num_bins: int = 15) -> jax.Array:
    """Expected calibration error of softmax(logits); see `calibration_bins` and `ece_from_bins`.

    ECE = Σ_b (n_b / N) |acc_b − conf_b| (Naeini et al., 2015; docs/definitions.md#calibration-ece-mce-mace).

    Args:
      logits: [..., N, C].
      labels: [N] int.
      num_bins: B, the number of equal-width confidence bins.

    Returns:
      [...] ECE in [0, 1].
    """
    return ece_from_bins(calibration_bins(logits, labels, num_bins))


def mce(logits: jax.Array, labels: jax.Array, num_bins: int = 15) -> jax.Array:
    """Maximum calibration error of softmax(logits); see `calibration_bins` and `mce_from_bins`.

    MCE = max over non-empty bins of |acc_b − conf_b| (Naeini et al., 2015;
    docs/definitions.md#calibration-ece-mce-mace).

    Args:
      logits: [..., N, C].
      labels: [N] int.
      num_bins: B, the number of equal-width confidence bins.

    Returns:
      [...] MCE in [0, 1].
    """
    return mce_from_bins(calibration_bins(logits, labels, num_bins))


def mace(logits: jax.Array, labels: jax.Array, num_bins: int = 15) -> jax.Array:
    """Mean average calibration error (Zamparo et al.) of softmax(logits); see `mace_from_bins`.

    Args:
      logits: [..., N, C].
      labels: [N] int.
      num_bins: B, the number of equal-width confidence bins.

    Returns:
      [...] MACE in [0, 1].
    """
    return mace_from_bins(calibration_bins(logits, labels, num_bins))


def brier_per_example(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Brier score of each example, Σ_c (p_c − 1[y = c])², p = softmax(logits) (Brier, 1950).

    Args:
      logits: [..., N, C].
      labels: [N] int.

    Returns:
      [..., N] values in [0, 2].
    """
    checks.logits_labels(logits, labels)
    p = jax.nn.softmax(logits, axis=-1)  # [..., N, C]
    target = jax.nn.one_hot(labels, logits.shape[-1], dtype=p.dtype)  # [N, C]
    return jnp.sum(jnp.square(p - target), axis=-1)


def brier(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Brier score (Brier, 1950), mean over examples of Σ_c (p_c − 1[y = c])², p = softmax(logits).

    Summed over classes, not divided by C, as in Fort et al. §3 (docs/definitions.md#error-nll-and-brier-score).

    Args:
      logits: [..., N, C].
      labels: [N] int.

    Returns:
      [...] mean Brier score in [0, 2].
    """
    return jnp.mean(brier_per_example(logits, labels), axis=-1)


def confusion_matrix(logits: jax.Array, labels: jax.Array, num_classes: int | None = None) -> jax.Array:
    """Confusion matrix of the argmax prediction: entry [t, p] counts examples of true class t predicted as p.

    As in Webb et al. Fig. 10 (docs/definitions.md#calibration-ece-mce-mace).

    Args:
      logits: [..., N, C].
      labels: [N] int.
      num_classes: C; must equal logits.shape[-1] (None: take it from the logits).

    Returns:
      [..., C, C] int32 counts, rows = true class, columns = predicted class; each row sums to the number of
      examples of that class.
    """
    checks.logits_labels(logits, labels)
    num_logit_classes = logits.shape[-1]
    if num_classes is None:
        num_classes = num_logit_classes
    if num_classes != num_logit_classes:
        raise ValueError(
            f"num_classes={num_classes!r} does not match logits of shape {tuple(logits.shape)} "
            f"(C = logits.shape[-1] = {num_logit_classes})"
        )
    true = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32)  # [N, C]
    predicted = jax.nn.one_hot(jnp.argmax(logits, axis=-1), num_classes, dtype=jnp.int32)  # [..., N, C]
    return jnp.einsum("nt,...np->...tp", true, predicted, preferred_element_type=jnp.int32)
