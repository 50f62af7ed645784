"""Webb et al.'s modular loss over natural exponential families, between independent and joint training.

A member's output is the natural parameter η of its predictive distribution q(y | η) (Webb et al. §2,
Table 1): logits for a categorical target (inverse link softmax), the mean of a unit-variance Gaussian
(identity), the log-rate of a Poisson (exp). The ensemble is q(y | η̄) with the mean natural parameter
η̄ = (1/M) Σ_j η_j (eq. 2-3: the normalized geometric mean of the members). The modular loss (eq. 4, as
negative log-likelihoods eq. 7) is

    L_λ = λ · NLL(y | η̄) + (1 − λ) · (1/M) Σ_j NLL(y | η_j),

λ = 0 is independent training (with the learning rate scaled by 1/M), λ = 1 is joint training of the
ensemble as one network. λ > 1 makes the loss unbounded below (Theorem 1), so λ must lie in [0, 1].
Its gradient takes one form for every family (eq. 8):

    ∂L_λ/∂η_j = (1/M) (ŷ_j − y − λ (ŷ_j − ȳ)),   ŷ_j = μ(η_j), ȳ = μ(η̄),

per example (divided by B for the mean over a batch of B examples).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Family:
    """A natural exponential family q(y | η) = h(y) exp(η·T(y) − A(η)) (Webb et al. Table 1).

    Attributes:
      name: 'categorical', 'gaussian' or 'poisson'.
      inverse_link: μ(η) = ∇A(η), the mean (the member's prediction ŷ).
      log_normalizer: A(η), summed over the event axes of one example.
      nll: (η [..., B, *event], y [B, *target]) → [..., B], −log q(y | η) with every constant included.
      target: how a target y is given: class indices, reals or counts.
    """

    name: str
    inverse_link: Callable[[jax.Array], jax.Array]
    log_normalizer: Callable[[jax.Array], jax.Array]
    nll: Callable[[jax.Array, jax.Array], jax.Array]
    target: str


def _event_sum(x: jax.Array, event_ndim: int) -> jax.Array:
    return x.sum(axis=tuple(range(-event_ndim, 0))) if event_ndim else x


def _categorical_nll(eta, y):
    # −log softmax(η)[y] = A(η) − η_y; y [B] int, η [..., B, C].
    log_p = jax.nn.log_softmax(eta, axis=-1)
    return -jnp.take_along_axis(log_p, jnp.broadcast_to(y, log_p.shape[:-1])[..., None], axis=-1)[..., 0]


def _gaussian_nll(eta, y):
    # ½ (y − η)² + ½ log 2π per output dimension; η [..., B, *D], y [B, *D].
    event_ndim = y.ndim - 1
    return _event_sum(0.5 * jnp.square(y - eta) + 0.5 * math.log(2 * math.pi), event_ndim)


def _poisson_nll(eta, y):
    # exp(η) − y η + log y!; η = log rate [..., B, *D], y counts [B, *D].
    event_ndim = y.ndim - 1
    return _event_sum(jnp.exp(eta) - y * eta + jax.scipy.special.gammaln(y + 1.0), event_ndim)


FAMILIES = {
    "categorical": Family(
        "categorical",
        inverse_link=lambda eta: jax.nn.softmax(eta, axis=-1),
        log_normalizer=lambda eta: jax.nn.logsumexp(eta, axis=-1),
        nll=_categorical_nll,
        target="class indices [B]",
    ),
    "gaussian": Family(
        "gaussian",
        inverse_link=lambda eta: eta,
        log_normalizer=lambda eta: 0.5 * jnp.square(eta),
        nll=_gaussian_nll,
        target="real values [B] or [B, D]",
    ),
    "poisson": Family(
        "poisson",
        inverse_link=jnp.exp,
        log_normalizer=jnp.exp,
        nll=_poisson_nll,
        target="counts [B] or [B, D]",
    ),
}


def check_lam(lam: float, name: str = "lam") -> None:
    """Checks that λ lies in [0, 1] (Webb et al. §3.2, Theorem 1; docs/definitions.md#modular-loss).

    Beyond 1 the modular loss (eq. (4)) is unbounded below for M ≥ 2; below 0 it rewards a worse ensemble.

    Args:
      lam: λ, a Python number.
      name: the argument's name for the error message.

    Raises:
      ValueError: naming the argument, its value and the theorem.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(
            f"{name}={lam!r}: must lie in [0, 1]; beyond 1 the modular loss is unbounded below "
            "(Webb et al., Theorem 1), below 0 it rewards a worse ensemble"
        )


def family(name: str) -> Family:
    """The natural exponential family called `name` (Webb et al. §2, Table 1).

    Args:
      name: 'categorical', 'gaussian' or 'poisson'.

    Returns:
      The `Family` from `FAMILIES`.

    Raises:
      ValueError: naming the allowed families.
    """
    if name not in FAMILIES:
        raise ValueError(f"family={name!r}: allowed: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def _check_outputs(outputs: jax.Array, targets: jax.Array, fam: Family) -> None:
    if fam.name == "categorical":
        ok = outputs.ndim == 3 and targets.ndim == 1 and outputs.shape[1] == targets.shape[0]
        want = "outputs [M, B, C] (logits) and targets [B] (class indices)"
    else:
        ok = outputs.ndim >= 2 and outputs.shape[1:] == targets.shape
        want = f"outputs [M, B, ...] and targets [B, ...] of the same trailing shape ({fam.target})"
    if not ok:
        raise ValueError(
            f"outputs of shape {tuple(outputs.shape)} and targets of shape {tuple(targets.shape)}: expected {want}"
        )


def ensemble_natural_parameter(outputs: jax.Array) -> jax.Array:
    """The ensemble's natural parameter η̄ = (1/M) Σ_j η_j (Webb et al. eq. (3)).

    q(y | η̄) is the normalized geometric mean of the members' distributions (eq. (2)).

    Args:
      outputs: [M, B, ...] the M members' natural parameters η_j (categorical: logits [M, B, C]).

    Returns:
      [B, ...] η̄, the mean over the member axis.
    """
    return outputs.mean(axis=0)


def member_nll(outputs: jax.Array, targets: jax.Array, family_name: str) -> jax.Array:
    """Each member's mean NLL over the batch, −(1/B) Σ_b log q(y_b | η_jb).

    The independent term of Webb et al.'s modular loss (eq. (4) as NLLs, eq. (7)), before the mean over j.

    Args:
      outputs: [M, B, ...] the M members' natural parameters (categorical: logits [M, B, C]).
      targets: [B] class indices (categorical), or [B, ...] reals (gaussian) / counts (poisson).
      family_name: 'categorical', 'gaussian' or 'poisson'.

    Returns:
      [M] mean NLL of each member, in nats (every constant of −log q included).
    """
    fam = family(family_name)
    _check_outputs(outputs, targets, fam)
    return fam.nll(outputs, targets).mean(axis=-1)


def ensemble_nll(outputs: jax.Array, targets: jax.Array, family_name: str) -> jax.Array:
    """The ensemble's mean NLL over the batch, −(1/B) Σ_b log q(y_b | η̄_b), η̄ = (1/M) Σ_j η_j.

    The joint term of Webb et al.'s modular loss (eq. (4) as NLLs, eq. (7)), with η̄ of eq. (3).

    Args:
      outputs: [M, B, ...] the M members' natural parameters (categorical: logits [M, B, C]).
      targets: [B] class indices (categorical), or [B, ...] reals (gaussian) / counts (poisson).
      family_name: 'categorical', 'gaussian' or 'poisson'.

    Returns:
      [] the ensemble's mean NLL, in nats.
    """
    fam = family(family_name)
    _check_outputs(outputs, targets, fam)
    return fam.nll(ensemble_natural_parameter(outputs), targets).mean(axis=-1)


def modular_loss(outputs: jax.Array, targets: jax.Array, lam: float | jax.Array, family: str) -> jax.Array:
    """Webb et al.'s modular loss (eq. (4) written with NLLs, eq. (7)), mean over the batch.

        L_λ = λ · NLL(y | η̄) + (1 − λ) · (1/M) Σ_j NLL(y | η_j),   η̄ = (1/M) Σ_j η_j.

    Args:
      outputs: [M, B, ...] the M members' natural parameters (categorical: logits [M, B, C]).
      targets: [B] class indices (categorical), or [B, ...] reals (gaussian) / counts (poisson).
      lam: λ in [0, 1] (checked when given as a Python number; a traced λ is the caller's to check).
      family: 'categorical', 'gaussian' or 'poisson'.

    Returns:
      [] the loss L_λ in nats; its gradient in η_j is Webb et al. eq. (8) divided by B.
    """
    if isinstance(lam, (int, float)):
        check_lam(lam)
    joint = ensemble_nll(outputs, targets, family)
    independent = member_nll(outputs, targets, family).mean()
    return lam * joint + (1.0 - lam) * independent


def ambiguity(outputs: jax.Array, family_name: str) -> jax.Array:
    """The ambiguity term of Webb et al. eq. (6): (1/M) Σ_j KL(q̄ ‖ q_j), mean over the batch.

    For a natural exponential family KL(q(η̄) ‖ q(η_j)) = A(η_j) − A(η̄) − μ(η̄)·(η_j − η̄), so the term is
    (1/M) Σ_j A(η_j) − A(η̄), independent of the targets. Then L_λ = (1/M) Σ_j NLL_j − λ · ambiguity.

    Args:
      outputs: [M, B, ...] natural parameters.
      family_name: 'categorical', 'gaussian' or 'poisson'.

    Returns:
      [] the ambiguity in nats, ≥ 0 (Jensen: A is convex).
    """
    fam = family(family_name)

    def log_normalizer(eta, event_ndim):  # A summed over one example's event axes.
        if fam.name == "categorical":
            return fam.log_normalizer(eta)  # logsumexp over C already.
        return _event_sum(fam.log_normalizer(eta), event_ndim)

    event_ndim = outputs.ndim - 2
    eta_bar = ensemble_natural_parameter(outputs)
    mean_a = log_normalizer(outputs, event_ndim).mean(axis=0)  # [B]
    return (mean_a - log_normalizer(eta_bar, event_ndim)).mean()
