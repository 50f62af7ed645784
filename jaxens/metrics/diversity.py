"""Function-space diversity of ensemble members: KL, Jensen-Shannon and disagreement.

Definitions: docs/definitions.md#kl-divergences-and-member-diversity, #jensen-shannon-divergence and
#disagreement-and-normalized-disagreement.

Inputs are logits (unnormalized log-probabilities) [..., N, C]; every function normalizes them with
`log_softmax` and works on log-probabilities, so nothing overflows or takes the log of an underflowed
probability. A class whose logit is −inf has probability 0 and contributes 0 · log 0 = 0 to a KL sum.
Per-example quantities are averaged over the N examples (means, never sums).

Shapes are checked at trace time: two logits arguments must share N and C (and broadcastable leading
axes), labels must be [N]; a mismatch raises a ValueError naming the arguments.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxens.metrics import checks, classification


def _pair(a: jax.Array, b: jax.Array, name_a: str, name_b: str) -> None:
    """`a` and `b` are [..., N, C] with the same N and C and broadcastable leading axes."""
    checks.same_shape(a, b, name_a, name_b)
    try:
        np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        raise ValueError(
            f"{name_a} of shape {tuple(a.shape)} and {name_b} of shape {tuple(b.shape)}: leading axes "
            f"{tuple(a.shape[:-2])} and {tuple(b.shape[:-2])} do not broadcast"
        ) from None


def _stacked(member_logits: jax.Array, name: str = "member_logits", min_members: int = 1) -> None:
    """Exactly [K, N, C] with K ≥ `min_members` (pairwise functions take one ensemble; vmap for more)."""
    checks.members(member_logits, name)
    if member_logits.ndim != 3:
        raise ValueError(
            f"{name}: expected [K, N, C] (one ensemble; jax.vmap over further leading axes), "
            f"got shape {tuple(member_logits.shape)}"
        )
    if member_logits.shape[0] < min_members:
        raise ValueError(f"{name}: needs K ≥ {min_members} members, got shape {tuple(member_logits.shape)}")


def _xlogratio(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
    """Elementwise p (log p − log q) with 0 · log(0/q) = 0 (a class of probability 0 under p adds nothing)."""
    p = jnp.exp(log_p)
    return jnp.where(p > 0, p * (log_p - log_q), 0.0)


def _jeffreys_terms(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
    """Elementwise (p − q)(log p − log q) ≥ 0; its sum over classes is KL(p‖q) + KL(q‖p).

    Every term is non-negative (log is increasing) and the expression is exactly symmetric in p and q,
    so the symmetric KL computed from it is ≥ 0 and symmetric in floating point too. Where p = q = 0 the
    term is 0.
    """
    p, q = jnp.exp(log_p), jnp.exp(log_q)
    return jnp.where((p > 0) | (q > 0), (p - q) * (log_p - log_q), 0.0)


def kl(logits_p: jax.Array, logits_q: jax.Array) -> jax.Array:
    """Per-example Kullback-Leibler divergence KL(p‖q) = Σ_c p_c (log p_c − log q_c).

    p = softmax(logits_p), q = softmax(logits_q); computed from log_softmax
    (docs/definitions.md#kl-divergences-and-member-diversity). Used for
    function-space similarity by Fort et al., "Deep Ensembles: A Loss Landscape Perspective", §4.3 and §5.

    Args:
      logits_p: [..., N, C] logits of p.
      logits_q: [..., N, C] logits of q (same N and C; leading axes broadcast against logits_p's).

    Returns:
      [..., N] KL(p‖q) in nats per example, ≥ 0 (inf where q_c = 0 < p_c).

    Raises:
      ValueError: at trace time, if N or C differ or the leading axes do not broadcast.
    """
    _pair(logits_p, logits_q, "logits_p", "logits_q")
    log_p = jax.nn.log_softmax(logits_p, axis=-1)  # [..., N, C]
    log_q = jax.nn.log_softmax(logits_q, axis=-1)  # [..., N, C]
    return jnp.sum(_xlogratio(log_p, log_q), axis=-1)  # [..., N]


def symmetric_kl(logits_p: jax.Array, logits_q: jax.Array) -> jax.Array:
    """Symmetric KL (Jeffreys divergence) KL(p‖q) + KL(q‖p), mean over examples.

    Per example KL(p‖q) + KL(q‖p) = Σ_c (p_c − q_c)(log p_c − log q_c); this form is used because each
    term is ≥ 0 and exactly symmetric under p ↔ q, so the result is too, in floating point. Zamparo et al. §2
    (Fig. 1e, f); docs/definitions.md#kl-divergences-and-member-diversity.

    Args:
      logits_p: [..., N, C] logits of p.
      logits_q: [..., N, C] logits of q (same N and C; leading axes broadcast).

    Returns:
      [...] mean over the N examples of the symmetric KL, in nats.

    Raises:
      ValueError: at trace time, if N or C differ or the leading axes do not broadcast.
    """
    _pair(logits_p, logits_q, "logits_p", "logits_q")
    log_p = jax.nn.log_softmax(logits_p, axis=-1)  # [..., N, C]
    log_q = jax.nn.log_softmax(logits_q, axis=-1)  # [..., N, C]
    return jnp.mean(jnp.sum(_jeffreys_terms(log_p, log_q), axis=-1), axis=-1)  # [...]


def pairwise_symmetric_kl(member_logits: jax.Array) -> jax.Array:
    """Symmetric KL between every pair of members: S_ij = mean_n [KL(p_i‖p_j) + KL(p_j‖p_i)].

    Zamparo et al. §2 (docs/definitions.md#kl-divergences-and-member-diversity). Rows are computed one member
    at a time (`lax.map`), so memory stays O(K·N·C) rather than O(K²·N·C).

    Args:
      member_logits: [K, N, C] logits of K members (jax.vmap over further leading axes).

    Returns:
      [K, K] symmetric matrix with zero diagonal, in nats.

    Raises:
      ValueError: at trace time, if member_logits is not [K, N, C].
    """
    _stacked(member_logits)
    log_p = jax.nn.log_softmax(member_logits, axis=-1)  # [K, N, C]

    def row(log_p_i):  # [N, C] → [K]
        return jnp.mean(jnp.sum(_jeffreys_terms(log_p_i[None], log_p), axis=-1), axis=-1)

    s = jax.lax.map(row, log_p)  # [K, K]
    # Exactly symmetric (the elementwise terms are, but a reduction order could differ between rows).
    return 0.5 * (s + s.T)


def member_diversity(member_logits: jax.Array) -> jax.Array:
    """Member diversity: mean symmetric KL over the K(K−1)/2 member pairs i < j
    (docs/definitions.md#kl-divergences-and-member-diversity).

    (2 / (K(K−1))) Σ_{i<j} mean_n [KL(p_i‖p_j) + KL(p_j‖p_i)].

    Computed in O(K·N·C), not over the K² pairs: per example, KL(p‖q) + KL(q‖p) = Σ_c (p_c − q_c)(l_c − m_c)
    with l = log p, m = log q, and summing over all ordered pairs with the logs centred on their member mean
    l̄ = (1/K) Σ_i l_i (which changes no difference l_i − l_j) gives
    Σ_{i<j} = K Σ_i Σ_c p_ic (l_ic − l̄_c), so the mean over pairs is (2/(K−1)) Σ_i Σ_c p_ic (l_ic − l̄_c).
    A class some member gives probability 0 while another does not makes the divergence +inf, as it is.

    Args:
      member_logits: [K, N, C] logits of K ≥ 2 members.

    Returns:
      [] mean pairwise symmetric KL in nats.

    Raises:
      ValueError: at trace time, if member_logits is not [K, N, C] with K ≥ 2.
    """
    _stacked(member_logits, min_members=2)
    k = member_logits.shape[0]
    log_p = jax.nn.log_softmax(member_logits, axis=-1)  # [K, N, C]
    p = jnp.exp(log_p)
    centred = log_p - log_p.mean(axis=0)  # [K, N, C]
    terms = jnp.where(p > 0, p * centred, 0.0)
    return 2.0 / (k - 1) * jnp.sum(terms, axis=(0, 2)).mean()


def ensemble_kl(member_logits_a: jax.Array, member_logits_b: jax.Array, method: str = "mean_prob") -> jax.Array:
    """KL between two ensembles: the symmetric KL between their ensemble predictions
    (docs/definitions.md#kl-divergences-and-member-diversity).

    mean_n [KL(p̄_a‖p̄_b) + KL(p̄_b‖p̄_a)], where p̄ is the ensemble prediction of
    `classification.ensemble_log_probs` (`mean_prob`: mean of member probabilities; `mean_logit`:
    softmax of mean logits).

    Args:
      member_logits_a: [Ka, N, C] logits of the first ensemble's members.
      member_logits_b: [Kb, N, C] logits of the second ensemble's members (Kb may differ from Ka).
      method: 'mean_prob' or 'mean_logit', used for both ensembles.

    Returns:
      [] mean symmetric KL in nats.

    Raises:
      ValueError: at trace time, if either is not [K, N, C], N or C differ, or method is unknown.
    """
    _stacked(member_logits_a, "member_logits_a")
    _stacked(member_logits_b, "member_logits_b")
    checks.same_shape(member_logits_a, member_logits_b, "member_logits_a", "member_logits_b")
    log_a = classification.ensemble_log_probs(member_logits_a, method)  # [N, C]
    log_b = classification.ensemble_log_probs(member_logits_b, method)  # [N, C]
    return symmetric_kl(log_a, log_b)


def js_divergence(member_logits: jax.Array) -> jax.Array:
    """Jensen-Shannon divergence of K members as Fort et al. define it, mean over examples.

    JS = mean_n Σ_m KL(p_m‖p̄),  p̄ = (1/K) Σ_m p_m  — the formula of Fort et al., "Deep Ensembles: A Loss
    Landscape Perspective", §5 (the quantity of their Fig. 9, right), averaged over examples
    (docs/definitions.md#jensen-shannon-divergence).

    Note the sum over members: this is K times the usual equal-weight generalized Jensen-Shannon
    divergence (1/K) Σ_m KL(p_m‖p̄) = H(p̄) − (1/K) Σ_m H(p_m), which is bounded by log K; the value here
    is bounded by K log K (for K = 2: 2 log 2, twice the textbook JS(p₁, p₂)). Divide by K for the
    textbook normalization. p̄ is computed in log space (logsumexp over members).

    Args:
      member_logits: [K, N, C] logits of K members.

    Returns:
      [] JS divergence in nats, ≥ 0; 0 iff all members predict the same distribution.

    Raises:
      ValueError: at trace time, if member_logits is not [K, N, C].
    """
    _stacked(member_logits)
    log_p = jax.nn.log_softmax(member_logits, axis=-1)  # [K, N, C]
    log_mean = classification.ensemble_log_probs(member_logits, "mean_prob")  # [N, C]
    per_example = jnp.sum(_xlogratio(log_p, log_mean[None]), axis=(0, 2))  # [N]
    return jnp.mean(per_example)


def disagreement(logits_a: jax.Array, logits_b: jax.Array) -> jax.Array:
    """Fraction of examples on which the argmax predictions differ: (1/N) Σ_n [f_a(x_n) ≠ f_b(x_n)].

    Fort et al., "Deep Ensembles: A Loss Landscape Perspective", §4.1 (and d_diff of §4.3). Ties in the
    argmax go to the lowest class index.

    Args:
      logits_a: [..., N, C].
      logits_b: [..., N, C] (same N and C; leading axes broadcast).

    Returns:
      [...] disagreement in [0, 1].

    Raises:
      ValueError: at trace time, if N or C differ or the leading axes do not broadcast.
    """
    _pair(logits_a, logits_b, "logits_a", "logits_b")
    differ = jnp.argmax(logits_a, axis=-1) != jnp.argmax(logits_b, axis=-1)  # [..., N]
    return jnp.mean(differ, axis=-1)


def pairwise_disagreement(member_logits: jax.Array) -> jax.Array:
    """Disagreement between every pair of members: D_ij = (1/N) Σ_n [f_i(x_n) ≠ f_j(x_n)].

    Fort et al. §4.1 (docs/definitions.md#disagreement-and-normalized-disagreement); see `disagreement`.

    Args:
      member_logits: [K, N, C] logits of K members (jax.vmap over further leading axes).

    Returns:
      [K, K] symmetric matrix with zero diagonal, entries in [0, 1].

    Raises:
      ValueError: at trace time, if member_logits is not [K, N, C].
    """
    _stacked(member_logits)
    pred = jnp.argmax(member_logits, axis=-1)  # [K, N]
    return jnp.mean(pred[:, None, :] != pred[None, :, :], axis=-1)  # [K, K]


def normalized_disagreement(ref_logits: jax.Array, logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Normalized diversity of Fort et al. §4.3: disagreement with the reference / (1 − accuracy of f).

    d_diff(f*, f) / (1 − a) = [(1/N) Σ_n [f*(x_n) ≠ f(x_n)]] / [(1/N) Σ_n [f(x_n) ≠ y_n]], where f* is the
    reference solution (`ref_logits`) and f the sampled function (`logits`) of accuracy a ("Deep
    Ensembles: A Loss Landscape Perspective", §4.3, diversity–accuracy plane). The normalization is by
    the sampled function's error, not the reference's. A sampled function with zero error gives
    d / 0: inf, or nan when it also agrees with the reference everywhere.

    Args:
      ref_logits: [..., N, C] logits of the reference solution f*.
      logits: [..., N, C] logits of the sampled function f (same N and C; leading axes broadcast).
      labels: [N] int true labels.

    Returns:
      [...] normalized disagreement (≥ 0; values above 1 are possible).

    Raises:
      ValueError: at trace time, if N or C differ, labels are not [N], or the leading axes do not broadcast.
    """
    _pair(ref_logits, logits, "ref_logits", "logits")
    checks.logits_labels(logits, labels, "logits", "labels")
    return disagreement(ref_logits, logits) / classification.error(logits, labels)
