"""config.data.val_from_seed: every seed of a grid holds out its own validation split, in one program.

Webb et al.'s trials are random train/validation splits. With config.grid.seed and config.data.val_from_seed each
seed's groups train on their own examples of one pool (`jaxens.data.Dataset.views`), normalize with their own
statistics and are evaluated and early-stopped on their own validation split: each group must equal the run of
its seed alone, which loads the data with config.data.val_seed = that seed.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from conftest import small_config

from jaxens import data as data_lib
from jaxens import grid, run
from jaxens.config import ConfigError
from jaxens.trainer import validation

K = 2
VAL = 500


def _trials_config(**overrides):
    values = {"ensemble.k": K, "train.num_epochs": 1, "data.val_size": VAL, "data.val_from_seed": True}
    config = small_config(**{**values, "eval.keep_best": True, **overrides})
    config.grid.seed = (0, 1)
    return config


def _members(state, groups):
    return jax.tree.map(lambda a: np.asarray(a)[groups.start * K : groups.stop * K], state.params)


def test_views_hold_out_each_seeds_split_of_one_pool_with_its_own_statistics():
    source = data_lib.Source.from_config(_trials_config())
    assert (source.val_seed, source.val_seeds) == (0, (0, 1))
    pooled = data_lib.load(source)
    raw = data_lib.load(data_lib.Source(name="mnist1d"))  # Nothing held out: the pool.
    assert pooled.num_views == 2 and pooled.num_train == 4000 - VAL
    np.testing.assert_array_equal(pooled.train_x, raw.train_x)
    for v, seed in enumerate((0, 1)):
        # The contract, re-derived: the first VAL of numpy's permutation seeded by the seed, sorted.
        held = np.sort(np.random.default_rng(seed).permutation(4000)[:VAL])
        kept = np.setdiff1d(np.arange(4000), held)
        view = pooled.view(v)
        np.testing.assert_array_equal(view.val_x, raw.train_x[held])
        np.testing.assert_array_equal(view.train_x, raw.train_x[kept])
        kept_x = raw.train_x[kept].astype(np.float64)  # [N, 40, 1]: statistics per channel (the last axis).
        np.testing.assert_allclose(view.mean, kept_x.mean((0, 1)), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(view.std, kept_x.std((0, 1)), rtol=1e-4)
        x, y = pooled.train_examples(np.array([0, 7, 3499]), v)
        np.testing.assert_array_equal(x, raw.train_x[kept[[0, 7, 3499]]])
        np.testing.assert_array_equal(y, raw.train_y[kept[[0, 7, 3499]]])
    assert not np.array_equal(pooled.mean[0], pooled.mean[1])
    with pytest.raises(ValueError, match="say whose statistics"):
        pooled.normalize(pooled.train_x[:2])


def test_a_grid_of_trials_with_their_own_splits_equals_each_trial_alone_bitwise(tmp_path):
    # Spawning too: the parents of both seeds train stacked, each on its own split.
    config = _trials_config(**{"coupling.t": ("4it",)})
    config.ensemble.strategy = "loop"
    config.grid.condition = ("no_coupling", "coupled_to_t")
    summary = run.train_and_evaluate(config, str(tmp_path / "grid"))
    settings = grid.settings(config)
    assert [dict(s.values)["seed"] for s in settings] == [0, 0, 1, 1]
    for seed in (1,):  # The second trial: its data is not the first view's.
        mine = run.restore(str(tmp_path / "grid"), best=True, seed=seed)
        assert mine.dataset.views is None and mine.plan.num_groups == 2 and mine.config.seed == seed
        for i in (0, 1):
            g = 2 * seed + i
            alone_dir = str(tmp_path / f"alone{g}")
            alone = run.train_and_evaluate(grid.group_config(config, settings[g]), alone_dir)
            assert alone_dir and grid.group_config(config, settings[g]).seed == seed
            theirs = run.restore(alone_dir, best=True)
            ours, group = summary["groups"][g], alone["groups"][0]
            # The validation metrics, the early-stopped evaluation and the test metrics, all bitwise.
            assert (ours["eval"], ours["at_best_val"], ours["test"]) == (
                group["eval"],
                group["at_best_val"],
                group["test"],
            )
            for a, b in zip(
                jax.tree.leaves(_members(mine.state, range(i, i + 1))), jax.tree.leaves(theirs.state.params)
            ):
                np.testing.assert_array_equal(a, b)
            # (The tick counts the members' phase, which the grid starts at step 0 and a spawned run alone at t.)
            assert [mine.best[str(i)][f] for f in ("step", "val_error")] == [
                theirs.best["0"][f] for f in ("step", "val_error")
            ]
        for a, b in zip(jax.tree.leaves(mine.dataset), jax.tree.leaves(theirs.dataset)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ConfigError, match=r"seed=5 is not one of the run's config.grid.seed=\(0, 1\)"):
        run.restore(str(tmp_path / "grid"), seed=5)


def test_lambda_trials_share_one_batch_per_seed_from_their_own_split(tmp_path):
    # Webb et al.'s setting: per seed one shared minibatch (coupled_order) of the seed's own training examples.
    config = _trials_config(**{"coupling.condition": "coupled_order", "optimizer.learning_rate": 0.1})
    config.loss.lam = (0.0, 0.9)
    summary = run.train_and_evaluate(config, str(tmp_path / "grid"))
    settings = grid.settings(config)
    state = run.restore(str(tmp_path / "grid")).state
    for g in (1, 2):  # Seed 0 at λ = 0.9, seed 1 at λ = 0.
        alone = run.train_and_evaluate(grid.group_config(config, settings[g]), str(tmp_path / f"alone{g}"))
        theirs = run.restore(str(tmp_path / f"alone{g}")).state.params
        # Under vmap the grid's modular losses are one computation over its groups: float rounding.
        for a, b in zip(jax.tree.leaves(_members(state, range(g, g + 1))), jax.tree.leaves(theirs)):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
        ours = summary["groups"][g]["eval"]["val"]
        np.testing.assert_allclose(ours["ensemble_nll"], alone["groups"][0]["eval"]["val"]["ensemble_nll"], rtol=1e-5)


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"data.val_size": 0}, r"config.data.val_from_seed=True: .* needs config.data.val_size > 0 \(it is 0\)"),
        ({"data.val_seed": 3}, r"config.data.val_from_seed=True: .*val_seed left at 0 \(it is 3\)"),
        (
            {"mesh.shard_train": True},
            r"config.mesh.shard_train=True with config.data.val_from_seed and config.grid.seed",
        ),
    ],
)
def test_bad_trial_settings_are_refused_naming_the_fields(overrides, pattern):
    config = _trials_config()
    for path, value in overrides.items():
        group, field = path.split(".")
        config[group][field] = value
    with pytest.raises(ConfigError, match=pattern):
        validation.validate(config)


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_the_predictor_normalizes_each_block_of_members_with_its_views_statistics(strategy):
    from jaxens import ensemble, models, optim, rng

    config = _trials_config()
    pooled = data_lib.load(config)
    model = models.build(config.model, 10, pooled.input_shape)
    tx = optim.make_optimizer(config.optimizer, 10)
    state = ensemble.init_ensemble(model, tx, rng.member_streams(0, 4), pooled.input_shape)  # 2 members per view.
    predictor = ensemble.Predictor(model, 128, strategy)
    test = np.asarray(predictor(state, pooled.test_x[:300], pooled))  # [4, 300, C]
    val = np.asarray(predictor(state, pooled.val_x, pooled, per_view=True))  # [4, VAL, C]
    # Under vmap, XLA may pick another matmul kernel for 2 members than for 4 (it does on AVX-512 CPUs):
    # equal to float rounding there; another view's statistics would be off by far more.
    same = (
        np.testing.assert_array_equal
        if strategy == "loop"
        else functools.partial(np.testing.assert_allclose, rtol=0, atol=1e-5)
    )
    for v in (0, 1):
        block = jax.tree.map(lambda a, v=v: a[2 * v : 2 * v + 2], state)
        alone = pooled.view(v)
        same(test[2 * v : 2 * v + 2], predictor(block, alone.test_x[:300], alone))
        same(val[2 * v : 2 * v + 2], predictor(block, alone.val_x, alone))
    one = jax.tree.map(lambda a: a[:3], state)
    with pytest.raises(ValueError, match="3 members cannot form the 2 blocks"):
        predictor(one, pooled.test_x, pooled)
