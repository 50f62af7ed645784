"""Pure metric kernels (definitions: DESIGN §4). Inputs are logits [..., N, C] and labels [N].

Every function works on one member's logits and under `jax.jit`; a leading member axis is handled by
`jax.vmap` (or by the function itself where it says so).
"""

from jaxens.metrics.classification import confidence, ensemble_log_probs, entropy, error, nll

__all__ = ["confidence", "ensemble_log_probs", "entropy", "error", "nll"]
