"""Accuracy-type metrics and the ensemble prediction."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxens.metrics import checks


def ensemble_log_probs(member_logits: jax.Array, method: str = "mean_prob") -> jax.Array:
    """Log-probabilities of the ensemble prediction (docs/definitions.md#ensemble-prediction).

    `mean_prob` (Zamparo, Fort): p(y|x) = (1/K) Σ_m p_m(y|x), computed as logsumexp_m log p_m − log K.
    `mean_logit` (Webb et al. eq. (2)-(3)): p(y|x) = softmax((1/K) Σ_m z_m), the normalized geometric mean of
    the p_m.

    Args:
      member_logits: [K, N, C] unnormalized log-probabilities of K members.
      method: 'mean_prob' or 'mean_logit'.

    Returns:
      [N, C] normalized log-probabilities.
    """
    checks.members(member_logits)
    if method == "mean_prob":
        log_p = jax.nn.log_softmax(member_logits, axis=-1)
        return jax.nn.logsumexp(log_p, axis=0) - jnp.log(member_logits.shape[0])
    if method == "mean_logit":
        return jax.nn.log_softmax(member_logits.mean(axis=0), axis=-1)
    raise ValueError(f"method={method!r}: allowed: 'mean_prob', 'mean_logit'")


def error(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Error = 1 − accuracy of the argmax prediction, mean over examples.

    error = (1/N) Σ_n 1[argmax_c z_nc ≠ y_n], argmax ties to the lowest class
    (docs/definitions.md#error-nll-and-brier-score).

    Args:
      logits: [..., N, C].
      labels: [N] int.

    Returns:
      [...] error in [0, 1].
    """
    checks.logits_labels(logits, labels)
    return 1.0 - jnp.mean(jnp.argmax(logits, axis=-1) == labels, axis=-1)


def nll(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Negative log-likelihood −(1/N) Σ_n log p(y_n|x_n), p = softmax(logits).

    Definition: docs/definitions.md#error-nll-and-brier-score.

    Args:
      logits: [..., N, C].
      labels: [N] int.

    Returns:
      [...] mean NLL in nats.
    """
    checks.logits_labels(logits, labels)
    log_p = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(log_p, jnp.broadcast_to(labels, log_p.shape[:-1])[..., None], axis=-1)
    return -jnp.mean(picked[..., 0], axis=-1)


def entropy(logits: jax.Array) -> jax.Array:
    """Predictive entropy per example, H = −Σ_c p_c log p_c in nats, p = softmax(logits).

    Definition: docs/definitions.md#error-nll-and-brier-score (0 · log 0 = 0); Webb et al. Table 6 summarizes it.

    Args:
      logits: [..., N, C].

    Returns:
      [..., N].
    """
    log_p = jax.nn.log_softmax(logits, axis=-1)
    p = jnp.exp(log_p)
    return -jnp.sum(jnp.where(p > 0, p * log_p, 0.0), axis=-1)  # 0 · log 0 = 0 for classes at −inf.


def confidence(logits: jax.Array) -> jax.Array:
    """Probability of the predicted class per example, max_c p_c = 1 / Σ_c exp(z_c − max_c' z_c').

    Computed as one division rather than exp(max log_softmax): the max terms of the sum are exactly 1, so j
    exactly tied top logits give 1/j correctly rounded, not one ulp low (which moved 1/3 = 5/15 into the
    bin below, docs/definitions.md#calibration-ece-mce-mace).

    Args:
      logits: [..., N, C].

    Returns:
      [..., N].
    """
    z_max = jnp.max(logits, axis=-1, keepdims=True)  # [..., N, 1]
    # exp(0) = 1 exactly, so the sum is j + (the rest) exactly for j tied top classes. A row with no finite
    # max (all −inf, or +inf) gives NaN here, as softmax does.
    return 1.0 / jnp.sum(jnp.exp(logits - z_max), axis=-1)
