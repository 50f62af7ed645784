"""Trajectory snapshots written by real runs, and the similarity analyses of Fort et al. §4.1."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import small_config

from jaxens import config as config_lib
from jaxens import ensemble, metrics, optim, rng, run, trajectory


@pytest.fixture(scope="module")
def snapshot_run(tmp_path_factory):
    """MNIST-1D, K=3, 2 epochs of 8 steps, snapshots every 4 steps (all kept)."""
    workdir = tmp_path_factory.mktemp("traj")
    config = small_config(**{"trajectory.every": "4it"})
    run.train_and_evaluate(config, str(workdir))
    return workdir


def test_snapshots_at_every_multiple_and_the_last_equals_the_final_checkpoint(snapshot_run):
    assert trajectory.steps(str(snapshot_run)) == [0, 4, 8, 12, 16]
    traj = trajectory.load(str(snapshot_run))
    np.testing.assert_array_equal(traj.steps, [0, 4, 8, 12, 16])
    restored = run.restore(str(snapshot_run))
    assert restored.step == 16
    for a, b in zip(jax.tree.leaves(traj.params), jax.tree.leaves(restored.state.params)):
        assert a.shape == (5, *b.shape)  # [S, K, ...]
        np.testing.assert_array_equal(a[-1], np.asarray(b))
    p0, _ = traj.member(0)
    assert jax.tree.leaves(p0)[0].shape[0] == 5
    # Tick 0 is the initialization: the members' init keys re-derive it.
    init = ensemble.init_ensemble(
        restored.model,
        optim.make_optimizer(restored.config.optimizer, 16),
        rng.member_streams(restored.config.seed, 3),
        restored.dataset.input_shape,
    )
    for a, b in zip(jax.tree.leaves(traj.params), jax.tree.leaves(init.params)):
        np.testing.assert_array_equal(a[0], np.asarray(b))
    assert trajectory.load(str(snapshot_run), last=2).steps.tolist() == [12, 16]
    with pytest.raises(ValueError, match=r"no snapshots at ticks \[5\]"):
        trajectory.load(str(snapshot_run), at=[5])


def test_similarity_matrices_against_numpy(snapshot_run):
    traj = trajectory.load(str(snapshot_run))
    restored = run.restore(str(snapshot_run))
    points = trajectory.flatten_points(traj.params)  # [S·K, ...]
    x = restored.dataset.normalize(restored.dataset.test_x[:300])
    logits = jax.vmap(lambda p: restored.model.apply({"params": p}, x, train=False))(points)  # [P, N, C]
    sim = trajectory.similarity(points, logits)
    flat = np.concatenate([np.asarray(v, np.float64).reshape(5 * 3, -1) for v in jax.tree.leaves(points)], 1)
    unit = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    np.testing.assert_allclose(sim["cosine"], unit @ unit.T, atol=1e-5)
    labels = np.asarray(logits).argmax(-1)  # [P, N]
    np.testing.assert_allclose(sim["disagreement"], (labels[:, None] != labels[None]).mean(-1), atol=1e-6)
    # Snapshot-major flattening: point s·K + m is member m at snapshot s.
    np.testing.assert_array_equal(
        np.asarray(jax.tree.leaves(points)[0][3 + 1]), np.asarray(jax.tree.leaves(traj.params)[0][1, 1])
    )
    emb = trajectory.tsne(logits, seed=0)
    assert emb.shape == (15, 2) and np.isfinite(emb).all()


def test_keep_last_bounds_the_snapshots_on_disk(tmp_path):
    config = small_config(**{"trajectory.every": "2it", "trajectory.keep_last": 3, "ensemble.k": 1})
    run.train_and_evaluate(config, str(tmp_path))
    assert trajectory.steps(str(tmp_path)) == [12, 14, 16]


def test_members_predictions_from_snapshots_match_the_predictor(snapshot_run):
    restored = run.restore(str(snapshot_run))
    traj = trajectory.load(str(snapshot_run), last=1)
    state = restored.state.replace(params=jax.tree.map(lambda x: x[0], traj.params))
    x = restored.dataset.test_x[:200]
    logits = ensemble.Predictor(restored.model, 100, "vmap")(state, x, restored.dataset)
    want = ensemble.Predictor(restored.model, 100, "vmap")(restored.state, x, restored.dataset)
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(want))
    assert float(metrics.error(logits[0], restored.dataset.test_y[:200])) < 0.9


@pytest.mark.parametrize(
    "every, keep_last, message",
    [("abc", 0, r"config.trajectory.every='abc'"), ("0it", 0, "at least one step"), ("1ep", -1, "keep_last=-1")],
)
def test_invalid_trajectory_fields_name_the_field(every, keep_last, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        small_config(**{"trajectory.every": every, "trajectory.keep_last": keep_last})
