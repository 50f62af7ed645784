"""Pure metric kernels (definitions: docs/definitions.md). Inputs are logits [..., N, C] and integer labels [N].

"Logits" are unnormalized log-probabilities, so an ensemble's log-probabilities (`ensemble_log_probs`) are
valid logits too. Every function works on one member's logits and under `jax.jit`; a leading member axis is
handled by broadcasting (`[K, N, C]` in, `[K]` out) or, for functions of member sets, taken as `[K, N, C]`.

  classification: ensemble_log_probs, error, nll, entropy, confidence
  calibration:    brier, ece, mce, mace (15 bins by default), calibration_bins, confusion_matrix
  diversity:      kl, symmetric_kl, pairwise_symmetric_kl, member_diversity, ensemble_kl, js_divergence,
                  disagreement, pairwise_disagreement, normalized_disagreement
  weights:        cosine_similarity, pairwise_cosine_similarity (pytrees)
  limits:         diversity_upper_limit, diversity_lower_limit, diversity_family, fit_family_exponent
                  (Fort et al. App. D, Fig. S6)
  forgetting:     a pure tracker of forgetting events (Toneva et al.), `metrics.forgetting.init/update/...`
  streaming:      batch-by-batch accumulators, `metrics.streaming.init/update/merge/compute`
"""

from jaxens.metrics import forgetting, streaming
from jaxens.metrics.calibration import Bins, brier, calibration_bins, confusion_matrix, ece, mace, mce
from jaxens.metrics.classification import confidence, ensemble_log_probs, entropy, error, nll
from jaxens.metrics.diversity import (
    disagreement,
    ensemble_kl,
    js_divergence,
    kl,
    member_diversity,
    normalized_disagreement,
    pairwise_disagreement,
    pairwise_symmetric_kl,
    symmetric_kl,
)
from jaxens.metrics.limits import (
    diversity_family,
    diversity_lower_limit,
    diversity_upper_limit,
    fit_family_exponent,
)
from jaxens.metrics.weights import cosine_similarity, pairwise_cosine_similarity

__all__ = [
    "Bins",
    "brier",
    "calibration_bins",
    "confidence",
    "confusion_matrix",
    "cosine_similarity",
    "disagreement",
    "diversity_family",
    "fit_family_exponent",
    "diversity_lower_limit",
    "diversity_upper_limit",
    "ece",
    "ensemble_kl",
    "ensemble_log_probs",
    "entropy",
    "error",
    "forgetting",
    "js_divergence",
    "kl",
    "mace",
    "mce",
    "member_diversity",
    "nll",
    "normalized_disagreement",
    "pairwise_cosine_similarity",
    "pairwise_disagreement",
    "pairwise_symmetric_kl",
    "streaming",
    "symmetric_kl",
]
