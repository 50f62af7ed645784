"""Snapshots of the members' weights along training, and the similarity analyses of Fort et al. §4.1–4.2.

A run with `config.trajectory.every` set saves, at the start of the members' phase (tick 0: initialization,
or the moment of spawning), at every multiple of that many steps and at the end, the params and BatchNorm statistics of all K members as ONE file with the member axis kept
(`DIR/trajectory/step_<tick>.npz`, leaves [K, ...]): one device-to-host copy per snapshot, nothing held on
the device between snapshots. `config.trajectory.keep_last = r` keeps only the r most recent files, so the
subspace samplers (`jaxens.subspace`), which need the last iterates only, cost r·K·|θ| floats of disk.

Under a spawning condition the file name is the members' *tick* (steps since the spawn); without a parent,
tick = step. Snapshot files are written atomically; a resumed run rewrites the snapshots after its
checkpoint with the same values (training is deterministic given the checkpoint).

Analyses, for P points in weight space stacked on a leading axis (e.g. S snapshots × K members flattened):

  similarity(params [P, ...], logits [P, N, C])  → weight cosine [P, P] (Fig. 2a, 3) and prediction
                                                    disagreement [P, P] (Fig. 2b, 3)
  tsne(logits [P, N, C])                          → [P, 2] t-SNE of flattened softmax outputs (Fig. 2c, 4)
"""

from __future__ import annotations

import io
import os
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxens import metrics
from jaxens import workdir as workdir_lib

PyTree = Any
DIR = "trajectory"
_FILE = re.compile(r"^step_(\d+)\.npz$")


class Trajectory(NamedTuple):
    """Snapshots of K members at S steps.

    Attributes:
      steps: [S] int, the tick of each snapshot, increasing.
      params: leaves [S, K, ...].
      batch_stats: leaves [S, K, ...] ({} for models without BatchNorm).
    """

    steps: np.ndarray
    params: PyTree
    batch_stats: PyTree

    def member(self, m: int) -> tuple[PyTree, PyTree]:
        """Member m's (params, batch_stats) along the trajectory, leaves [S, ...]."""
        pick = lambda x: x[:, m]  # noqa: E731
        return jax.tree.map(pick, self.params), jax.tree.map(pick, self.batch_stats)


def _path(workdir: str, step: int) -> str:
    return os.path.join(workdir, DIR, f"step_{step:09d}.npz")


def steps(workdir: str) -> list[int]:
    """The ticks of the snapshots saved in `workdir`, increasing ([] when none)."""
    directory = os.path.join(workdir, DIR)
    if not os.path.isdir(directory):
        return []
    return sorted(int(m.group(1)) for name in os.listdir(directory) if (m := _FILE.match(name)))


def save(workdir: str, step: int, params: PyTree, batch_stats: PyTree, keep_last: int = 0) -> None:
    """Writes one snapshot of all K members (leaves [K, ...]) atomically; with keep_last = r > 0, deletes
    all but the r most recent snapshots afterwards."""
    flat = {
        f"params/{k}": np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(params), sep="/").items()
    }
    stats = traverse_util.flatten_dict(jax.device_get(batch_stats) or {}, sep="/")
    flat.update({f"batch_stats/{k}": np.asarray(v) for k, v in stats.items()})
    buffer = io.BytesIO()
    np.savez(buffer, **flat)  # type: ignore[arg-type]
    os.makedirs(os.path.join(workdir, DIR), exist_ok=True)
    workdir_lib.write_bytes_atomic(_path(workdir, step), buffer.getvalue())
    if keep_last > 0:
        for old in steps(workdir)[:-keep_last]:
            os.unlink(_path(workdir, old))


def _read(workdir: str, step: int) -> tuple[dict, dict]:
    with np.load(_path(workdir, step)) as f:
        flat = {name: f[name] for name in f.files}
    trees = {}
    for collection in ("params", "batch_stats"):
        prefix = collection + "/"
        part = {k[len(prefix) :]: v for k, v in flat.items() if k.startswith(prefix)}
        trees[collection] = traverse_util.unflatten_dict(part, sep="/") if part else {}
    return trees["params"], trees["batch_stats"]


def load(workdir: str, at: list[int] | None = None, last: int | None = None) -> Trajectory:
    """The snapshots saved in `workdir` (all, those at the ticks `at`, or the `last` few) as one Trajectory.

    Raises:
      ValueError: no snapshots there, or a requested tick was not saved.
    """
    saved = steps(workdir)
    if not saved:
        raise ValueError(f"{workdir}: no trajectory snapshots (train with config.trajectory.every set, e.g. '1ep')")
    chosen = saved if at is None else list(at)
    missing = sorted(set(chosen) - set(saved))
    if missing:
        raise ValueError(f"{workdir}: no snapshots at ticks {missing}; saved: {saved}")
    if last is not None:
        if last < 1:
            raise ValueError(f"last={last}: must be >= 1")
        chosen = chosen[-last:]
    snapshots = [_read(workdir, s) for s in chosen]
    stack = lambda *xs: np.stack(xs)  # noqa: E731
    params = jax.tree.map(stack, *[p for p, _ in snapshots])
    batch_stats = jax.tree.map(stack, *[b for _, b in snapshots]) if snapshots[0][1] else {}
    return Trajectory(np.asarray(chosen), params, batch_stats)


def flatten_points(tree: PyTree) -> PyTree:
    """Leaves [S, K, ...] → [S·K, ...] (snapshot-major: point s·K + m is member m at snapshot s)."""
    return jax.tree.map(lambda x: x.reshape((-1, *x.shape[2:])), tree)


@jax.jit
def similarity(params: PyTree, logits: jax.Array) -> dict[str, jax.Array]:
    """Weight-space and function-space similarity of P networks (Fort et al. §4.1, Fig. 2a/b and 3).

    Args:
      params: leaves [P, ...], the P networks' parameters.
      logits: [P, N, C] their predictions on the same N inputs.

    Returns:
      {'cosine': [P, P] cos(θ_i, θ_j) over all parameters flattened, 'disagreement': [P, P] the fraction of
      the N inputs on which the argmax predictions of i and j differ}.
    """
    return {
        "cosine": metrics.pairwise_cosine_similarity(params),
        "disagreement": metrics.pairwise_disagreement(logits),
    }


def tsne(logits, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """2-D t-SNE (scikit-learn) of P networks' predictions, each its softmax outputs [N, C] flattened to one
    vector of N·C numbers (Fort et al. §4.1, Fig. 2c and 4).

    Args:
      logits: [P, N, C] predictions of P ≥ 3 networks on the same inputs.
      perplexity: t-SNE perplexity, lowered to (P − 1)/3 when P is small (it must stay below P).
      seed: the embedding's random state.

    Returns:
      [P, 2] float64 coordinates.
    """
    from sklearn.manifold import TSNE

    logits = np.asarray(logits)
    if logits.ndim != 3 or logits.shape[0] < 3:
        raise ValueError(f"logits: expected [P >= 3, N, C], got shape {logits.shape}")
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1), np.float64)
    points = probs.reshape(probs.shape[0], -1)
    perplexity = min(perplexity, (points.shape[0] - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points)
