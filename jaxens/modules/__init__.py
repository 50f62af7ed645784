"""Analyses of an ensemble's modules, after Webb et al., "Joint Training of Neural Network Ensembles", §4.

Webb et al. call ensemble members *modules*. Every function here is a pure function of the M modules'
outputs on a fixed set of examples, logits `member_logits` [M, N, C] of a classification ensemble, and
integer labels [N]:

  removal_curve        Fig. 4 (§4.1 "Robustness"): ensemble test error with n randomly chosen modules dropped.
  one_vs_all_f1,       Fig. 5 (§4.1 "Module Specialization"): F1 of sub-ensembles on one-vs-all problems, and
  subensemble_f1,      specialist sub-ensembles chosen on a validation set, compared with random ones.
  select_specialists
  entropy_statistics   Table 6 (§4.3): entropy of each module's predicted class distribution.
  dominance            Fig. 7 (§4.2 "Module Dominance"): module errors against the ensemble's.

They live in the submodules `removal` (Fig. 4), `specialists` (Fig. 5) and `module_dominance` (Table 6,
Fig. 7), and are all re-exported here: `jaxens.modules.removal_curve` etc.

Combining a subset of modules. A sub-ensemble (or the ensemble left after removing modules) predicts like the
full ensemble does (`jaxens.metrics.ensemble_log_probs`; docs/definitions.md#ensemble-prediction), over its
own modules only. The default `method='mean_logit'` is Webb's combination: the softmax of the mean logits,
i.e. the prediction of the mean natural parameter (a normalized geometric mean of the module distributions);
`method='mean_prob'` averages the module probabilities instead. For speed, a subset's mean is a weighted sum
over all M modules with weight 1/s on each of its s modules and 0 elsewhere (one matrix product for a batch of
subsets, [S, M] × [M, N·C], rather than gathering [S, s, N, C]); under 'mean_prob' the mean is formed in
probability space, so a mean probability below the smallest float32 normal has log-probability −inf, which no
argmax or thresholded decision notices.

Errors are 1 − accuracy of the argmax, means over examples (docs/definitions.md#error-nll-and-brier-score);
argmax ties go to the lowest class. Shapes are checked when traced and values (labels, indices, classes) when
they are concrete (an eager call); a bad argument raises a ValueError naming it. Standard deviations are
population ones (ddof = 0).
"""

from jaxens.modules.module_dominance import Dominance, EntropyStatistics, Summary, dominance, entropy_statistics
from jaxens.modules.removal import RemovalCurve, removal_curve
from jaxens.modules.specialists import Specialists, one_vs_all_f1, select_specialists, subensemble_f1

__all__ = [
    "Dominance",
    "EntropyStatistics",
    "RemovalCurve",
    "Specialists",
    "Summary",
    "dominance",
    "entropy_statistics",
    "one_vs_all_f1",
    "removal_curve",
    "select_specialists",
    "subensemble_f1",
]
