"""Accuracy-type metrics and the ensemble prediction."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxens.metrics import checks


def ensemble_log_probs(member_logits: jax.Array, method: str = "mean_prob") -> jax.Array:
    """Log-probabilities of the ensemble prediction.

    `mean_prob` (Zamparo, Fort): p(y|x) = (1/K) Σ_m p_m(y|x), computed as logsumexp_m log p_m − log K.
    `mean_logit` (Webb): p(y|x) = softmax((1/K) Σ_m z_m), the normalized geometric mean of the p_m.

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

    Args:
      logits: [..., N, C]. labels: [N] int.

    Returns:
      [...] error in [0, 1].
    """
    checks.logits_labels(logits, labels)
    return 1.0 - jnp.mean(jnp.argmax(logits, axis=-1) == labels, axis=-1)


def nll(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Negative log-likelihood −(1/N) Σ_n log p(y_n|x_n), p = softmax(logits).

    Args:
      logits: [..., N, C]. labels: [N] int.

    Returns:
      [...] mean NLL in nats.
    """
    checks.logits_labels(logits, labels)
    log_p = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(log_p, jnp.broadcast_to(labels, log_p.shape[:-1])[..., None], axis=-1)
    return -jnp.mean(picked[..., 0], axis=-1)


def entropy(logits: jax.Array) -> jax.Array:
    """Predictive entropy per example, H = −Σ_c p_c log p_c in nats, p = softmax(logits).

    Args:
      logits: [..., N, C].

    Returns:
      [..., N].
    """
    log_p = jax.nn.log_softmax(logits, axis=-1)
    p = jnp.exp(log_p)
    return -jnp.sum(jnp.where(p > 0, p * log_p, 0.0), axis=-1)  # 0 · log 0 = 0 for classes at −inf.


def confidence(logits: jax.Array) -> jax.Array:
    """Probability of the predicted class per example, max_c p_c.

    Args:
      logits: [..., N, C].

    Returns:
      [..., N].
    """
    return jnp.exp(jnp.max(jax.nn.log_softmax(logits, axis=-1), axis=-1))
