"""Limit curves of the diversity–accuracy plane (Fort et al., "Deep Ensembles: A Loss Landscape Perspective", App. D).

A reference solution f* of accuracy a* (`ref_acc`) and another function f of accuracy a (`acc`) on a
C-class problem (`num_classes`); diversity d is the fraction of examples on which their predicted labels
differ (`diversity.disagreement`, Fort's d_diff). The idealized model behind every curve: f*'s wrong
predictions are spread uniformly over the C − 1 wrong classes, and so are f's.

All functions are elementwise over broadcastable arrays and jit-able. They return the un-normalized d;
divide by (1 − a) to place a curve on the normalized axis of Fort §4.3 (`diversity.normalized_disagreement`).
Argument values are checked only when they are concrete (an eager call): probabilities in [0, 1],
num_classes ≥ 2, exponent ≥ 0; under `jax.jit` they are not checked.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _float(x) -> jax.Array:
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _check(x, name: str, low: float, high: float | None = None) -> None:
    """In an eager call, every value of `x` in [low, high] (high=None: no upper bound)."""
    if isinstance(x, jax.core.Tracer):
        return
    v = np.asarray(x, dtype=np.float64)
    bad = (v < low) | (v > high) if high is not None else (v < low)
    if np.any(bad) or np.any(np.isnan(v)):
        value = v[bad | np.isnan(v)].flat[0]
        allowed = f"[{low}, {high}]" if high is not None else f"≥ {low}"
        raise ValueError(f"{name}={value}: allowed {allowed}")


def _curve_args(acc, ref_acc, num_classes) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(a, a*, C) as floats, checked in eager calls: accuracies in [0, 1], C ≥ 2."""
    _check(acc, "acc", 0.0, 1.0)
    _check(ref_acc, "ref_acc", 0.0, 1.0)
    _check(num_classes, "num_classes", 2.0)
    return _float(acc), _float(ref_acc), _float(num_classes)


def diversity_upper_limit(acc, ref_acc, num_classes) -> jax.Array:
    """Upper limit (uncorrelated predictions, the best case; Fort et al. App. D.1).

    d(a; a*, C) = (1 − a*) a + (1 − a) a* + (1 − a*)(1 − a)(C − 2)/(C − 1).

    f's correctness is independent of f*'s. They disagree where exactly one is correct ((1 − a*)a and
    (1 − a)a*), and where both are wrong but pick different wrong classes: both wrong has probability
    (1 − a*)(1 − a), and two independent uniform draws from the C − 1 wrong classes differ with probability
    (C − 2)/(C − 1). At a = 1/C (chance) the curve reaches (C − 1)/C, where it meets the lower limit.

    Args:
      acc: accuracy a of f, in [0, 1]; any shape.
      ref_acc: accuracy a* of the reference, in [0, 1]; broadcasts against acc.
      num_classes: C ≥ 2; broadcasts.

    Returns:
      d, the broadcast shape of the arguments.
    """
    a, a_ref, c = _curve_args(acc, ref_acc, num_classes)
    both_wrong = (1.0 - a_ref) * (1.0 - a)
    return (1.0 - a_ref) * a + (1.0 - a) * a_ref + both_wrong * (c - 2.0) / (c - 1.0)


def diversity_lower_limit(acc, ref_acc, num_classes) -> jax.Array:
    """Lower limit (f = f* with labels flipped at random; Fort et al. App. D.2, eq. 2).

    d(a; a*, C) = (C − 1)(a* − a) / (C a* − 1).

    Every prediction of f* flips with probability p to one of the C − 1 other labels, uniformly. Then
    d = p, and a(p) = a*(1 − p) + p (1 − a*)/(C − 1) (a flipped correct label is always wrong; a flipped
    wrong label becomes the true one with probability 1/(C − 1)). Inverting, p(a) = (C − 1)(a* − a)/(C a* − 1).

    The model covers a from a* (p = 0, d = 0) down to (1 − a*)/(C − 1) (p = 1, d = 1); outside that range
    the formula is the straight line continued. It passes through (1/C, (C − 1)/C), where it meets the
    upper limit. Undefined (division by zero) for a reference at chance, a* = 1/C.

    Args:
      acc: accuracy a of f, in [0, 1]; any shape.
      ref_acc: accuracy a* of the reference, in [0, 1]; broadcasts against acc.
      num_classes: C ≥ 2; broadcasts.

    Returns:
      d, the broadcast shape of the arguments.
    """
    a, a_ref, c = _curve_args(acc, ref_acc, num_classes)
    return (c - 1.0) * (a_ref - a) / (c * a_ref - 1.0)


def diversity_family(p, ref_acc, num_classes, exponent) -> tuple[jax.Array, jax.Array]:
    """The one-parameter family of Fort et al. App. D.3: accuracy and diversity at flip probability p.

    Model (D.2 with two flip rates, D.3): f is f* with each prediction independently replaced by a label
    drawn uniformly from the C − 1 labels other than f*'s — with probability p₊ where f* is correct and p₋
    where f* is wrong. The four cases of D.2 become

      1. f* correct, kept:   a* (1 − p₊)          f correct, agrees;
      2. f* correct, flipped: a* p₊               f wrong,   disagrees;
      3. f* wrong, kept:     (1 − a*)(1 − p₋)     f wrong,   agrees;
      4. f* wrong, flipped:  (1 − a*) p₋          disagrees; f correct with probability 1/(C − 1)
                                                  (the true class is one of the C − 1 new labels).

    Hence

      accuracy     a(p₊, p₋; a*, C) = a* (1 − p₊) + (1 − a*) p₋ / (C − 1)     (cases 1 and 4),
      disagreement d(p₊, p₋; a*, C) = a* p₊ + (1 − a*) p₋                     (cases 2 and 4),

    and the family ties the rates by the exponent e: p₊ = p, p₋ = p^e, p ∈ [0, 1].

    The paper prints these two expressions as its eqs. (3) and (4) with the names swapped (eq. 3, called
    d_diff, is the accuracy; eq. 4, called a, is the disagreement). The assignment above is the one the
    model gives, and the only one consistent with D.2: p₊ = p₋ = p (e = 1) must give a(p) = a*(1 − p) +
    p(1 − a*)/(C − 1) and d = p, i.e. the lower limit (eq. 2), and p = 0 must give f = f* (a = a*, d = 0).

    Every curve runs from (a*, 0) at p = 0 to ((1 − a*)/(C − 1), 1) at p = 1. e = 1 is the lower limit;
    e < 1 flips wrong labels more readily than correct ones (p^e > p), the robustness of a trained solution
    (Fort's best fit to ResNet20v1 on CIFAR-100 subspace samples: e = 0.22, Fig. S6); e → ∞ (p₋ → 0) is the
    worst case where only correct labels flip, d = a* − a. jnp.power gives 0^0 = 1, so e = 0 means p₋ = 1.

    Args:
      p: flip probability p₊ of correctly classified examples, in [0, 1]; any shape.
      ref_acc: accuracy a* of the reference, in [0, 1]; broadcasts.
      num_classes: C ≥ 2; broadcasts.
      exponent: e ≥ 0; broadcasts.

    Returns:
      (accuracy, disagreement), each of the broadcast shape of the arguments.
    """
    _check(p, "p", 0.0, 1.0)
    _check(ref_acc, "ref_acc", 0.0, 1.0)
    _check(num_classes, "num_classes", 2.0)
    _check(exponent, "exponent", 0.0)
    p_plus, a_ref, c, e = _float(p), _float(ref_acc), _float(num_classes), _float(exponent)
    p_minus = jnp.power(p_plus, e)
    accuracy = a_ref * (1.0 - p_plus) + (1.0 - a_ref) * p_minus / (c - 1.0)
    disagreement = a_ref * p_plus + (1.0 - a_ref) * p_minus
    return accuracy, disagreement


def fit_family_exponent(acc, disagreement, ref_acc, num_classes, exponents=None, num_p: int = 2001) -> dict:
    """The exponent e of `diversity_family` whose curve lies closest to observed (accuracy, diversity) points
    (Fort et al. App. D.3, Fig. S6: e = 0.22 for ResNet20v1 subspace samples on CIFAR-100).

    Fort et al. do not state their fitting criterion; ours: the mean, over the points, of the squared
    Euclidean distance in the (accuracy, disagreement) plane from the point to the nearest point of the
    curve (sampled at `num_p` flip probabilities p in [0, 1]). A distance to the curve, not a vertical
    residual, since for e < 1 the curve is not a function of accuracy (it first rises above a*). The
    minimum is taken over the grid `exponents` (default: 0.01 to 10, 400 log-spaced values) and refined once
    around the best grid value.

    Args:
      acc, disagreement: [S] the points (e.g. subspace samples' test accuracy and disagreement with the base).
      ref_acc: a*, the accuracy of the reference (base) solution.
      num_classes: C.
      exponents: candidate exponents (a 1-D array, ≥ 0), or None.
      num_p: samples of p along each curve.

    Returns:
      {'exponent': best e, 'mse': its mean squared distance, 'exponents': the grid searched, 'mse_grid':
      the mean squared distance of each}.
    """
    points = np.stack([np.asarray(acc, np.float64).ravel(), np.asarray(disagreement, np.float64).ravel()], -1)
    if points.shape[0] == 0:
        raise ValueError("fit_family_exponent: no points to fit")
    p = np.linspace(0.0, 1.0, num_p)

    def mse(grid: np.ndarray) -> np.ndarray:
        a, d = diversity_family(p[None, :], ref_acc, num_classes, grid[:, None])  # [E, P] each
        curve = np.stack([np.asarray(a, np.float64), np.asarray(d, np.float64)], -1)  # [E, P, 2]
        out = np.empty(len(grid))
        for i, c in enumerate(curve):  # [S, P] distances per exponent keeps memory at S·P.
            out[i] = np.mean(np.min(np.sum((points[:, None, :] - c[None]) ** 2, -1), axis=1))
        return out

    grid = np.geomspace(0.01, 10.0, 400) if exponents is None else np.asarray(exponents, np.float64).ravel()
    _check(grid, "exponents", 0.0)
    scores = mse(grid)
    best = int(np.argmin(scores))
    low, high = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    fine = np.linspace(low, high, 41)
    fine_scores = mse(fine)
    i = int(np.argmin(fine_scores))
    exponent, error = (fine[i], fine_scores[i]) if fine_scores[i] < scores[best] else (grid[best], scores[best])
    return {"exponent": float(exponent), "mse": float(error), "exponents": grid, "mse_grid": scores}
