"""Layer re-initialization at spawn (Zamparo et al. §3): layers as units, the tensor unit kept, BatchNorm
statistics restarted with their layer, and the share actually re-drawn reported by the run."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import small_config

from jaxens import config as config_lib
from jaxens import ensemble as ensemble_lib
from jaxens import models, optim, run
from jaxens import reinit as reinit_lib
from jaxens import rng as rng_lib
from jaxens import spawn as spawn_lib
from jaxens.models.order import get_path, param_paths

FRACTIONS = (0.0, 1e-4, 0.01, 0.05, 0.1, 0.25, 0.5, 0.9, 1.0)


def _old_mask(params, order, fraction, side):
    """`jaxens.reinit.mask` as it was before layers (its selection verbatim): the tensor-unit reference."""
    sizes = [math.prod(get_path(params, p).shape) for p in order]
    total = sum(sizes)
    chosen, covered = set(), 0
    for path, size in zip(order if side == "low" else reversed(order), sizes if side == "low" else reversed(sizes)):
        if covered >= fraction * total:
            break
        chosen.add(tuple(path))
        covered += size
    return jax.tree.unflatten(jax.tree.structure(params), [p in chosen for p in param_paths(params)])


def _shapes(model, input_shape):
    """One member's variables as shapes: {'params': ..., 'batch_stats': ...} (no compute)."""
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *input_shape)), train=False))


def _chosen(tree_mask):
    return {p for p in param_paths(tree_mask) if get_path(tree_mask, p)}


@pytest.fixture(scope="module")
def mlp():
    """Zamparo's MLP 40-64×6-10: (model, input shape, params shapes)."""
    model = models.MLP((64,) * 6, 10)
    return model, (40,), _shapes(model, (40,))["params"]


# 40·64 + 64 = 2,624 (dense0) + 5 · (64·64 + 64) = 20,800 (dense1..dense5) + 64·10 + 10 = 650 (head).
MLP_TOTAL = 2_624 + 20_800 + 650


@pytest.fixture(scope="module")
def resnet20_b():
    """ResNet-20 with projection shortcuts (B) and BatchNorm: (model, input shape, variables shapes)."""
    model = models.build(
        small_config(**{"dataset": "cifar10", "model.name": "resnet20", "model.shortcut": "B"}).model, 10
    )
    return model, (32, 32, 3), _shapes(model, (32, 32, 3))


def test_mlp_low_tenth_redraws_the_first_layer_kernel_and_bias(mlp):
    model, shape, params = mlp
    assert sum(math.prod(x.shape) for x in jax.tree.leaves(params)) == MLP_TOTAL == 24_074
    # 10% is 2,407.4 parameters: the first kernel alone (2,560) covers it, so the tensor unit stops there
    # and leaves dense0's bias; the layer unit takes the whole first layer.
    layer = spawn_lib.reinit_for(model, shape, params, 0.1, "low")
    assert _chosen(layer.mask) == {("dense0", "kernel"), ("dense0", "bias")}
    assert layer.chosen == ("dense0",) and layer.stats_modules == (("dense0",),)
    assert layer.covered == pytest.approx((40 * 64 + 64) / 24_074)
    assert reinit_lib.covered_fraction(params, layer.mask) == pytest.approx(2_624 / 24_074)
    tensor = spawn_lib.reinit_for(model, shape, params, 0.1, "low", unit="tensor")
    assert _chosen(tensor.mask) == {("dense0", "kernel")} and tensor.covered == pytest.approx(2_560 / 24_074)
    assert layer.describe() == (
        "re-initializing 1 layer from the low side, 10.90% of the parameters: dense0"  # 2,624 / 24,074.
    )


@pytest.mark.parametrize("fraction", FRACTIONS[1:])
def test_a_high_mask_never_takes_a_bias_without_its_kernel(mlp, fraction):
    model, shape, params = mlp
    chosen = _chosen(spawn_lib.reinit_for(model, shape, params, fraction, "high").mask)
    for module in {p[0] for p in chosen}:
        assert {(module, "kernel"), (module, "bias")} <= chosen, (fraction, module)
    assert ("head", "kernel") in chosen  # The smallest high run is the head layer (650 parameters).


def test_layers_are_runs_of_whole_layers_covering_the_fraction(mlp):
    model, shape, params = mlp
    sizes = [2_624] + [4_160] * 5 + [650]  # dense0, dense1..dense5, head.
    names = ["dense0", "dense1", "dense2", "dense3", "dense4", "dense5", "head"]
    layers = reinit_lib.layers(model, shape)
    assert [u.name for u in layers] == names
    for side in reinit_lib.SIDES:
        seq = list(zip(names, sizes)) if side == "low" else list(zip(names, sizes))[::-1]
        for fraction in FRACTIONS:
            chosen = [u.name for u in reinit_lib.select(params, layers, fraction, side)]
            n = next(i for i in range(len(seq) + 1) if sum(s for _, s in seq[:i]) >= fraction * MLP_TOTAL)
            assert chosen == [name for name, _ in seq[:n]], (side, fraction)


@pytest.mark.parametrize("side", reinit_lib.SIDES)
@pytest.mark.parametrize("fraction", FRACTIONS)
def test_the_tensor_unit_reproduces_the_old_masks(mlp, resnet20_b, side, fraction):
    for model, shape, params in (mlp, (resnet20_b[0], resnet20_b[1], resnet20_b[2]["params"])):
        order = models.forward_order(model, shape)
        old = _old_mask(params, order, fraction, side)
        assert reinit_lib.mask(params, order, fraction, side) == old
        built = spawn_lib.reinit_for(model, shape, params, fraction, side, unit="tensor")
        assert (built.mask if built is not None else _old_mask(params, order, 0.0, side)) == old
        if built is not None:
            assert built.stats_modules == ()  # The tensor unit keeps every running statistic, as before.


@pytest.mark.parametrize("unit", reinit_lib.UNITS)
@pytest.mark.parametrize("side", reinit_lib.SIDES)
def test_fraction_one_covers_everything_and_zero_nothing(resnet20_b, unit, side):
    model, shape, variables = resnet20_b
    params = variables["params"]
    every = spawn_lib.reinit_for(model, shape, params, 1.0, side, unit)
    assert all(jax.tree.leaves(every.mask)) and every.covered == 1.0
    if unit == "layer":
        assert all(jax.tree.leaves(reinit_lib.stats_mask(variables["batch_stats"], every.stats_modules)))
    assert spawn_lib.reinit_for(model, shape, params, 0.0, side, unit) is None
    assert reinit_lib.select(params, reinit_lib.units(model, shape, unit), 0.0, side) == []


def test_resnet20_layers_hold_their_batchnorm_and_the_projection_is_a_layer(resnet20_b):
    model, shape, variables = resnet20_b
    layers = {u.name: u for u in reinit_lib.layers(model, shape)}
    assert len(layers) == 19 + 2 + 1  # 19 convolutions, 2 projection shortcuts, the head.
    assert layers["stem_conv"].tensors == (("stem_conv", "kernel"), ("stem_norm", "scale"), ("stem_norm", "bias"))
    block = ("stage2_block1",)
    assert layers["stage2_block1/shortcut_conv"].tensors == tuple(
        (*block, m, t) for m, t in (("shortcut_conv", "kernel"), ("shortcut_norm", "scale"), ("shortcut_norm", "bias"))
    )
    assert layers["stage2_block1/conv2"].modules == ((*block, "conv2"), (*block, "norm2"))
    assert layers["head"].tensors == (("head", "kernel"), ("head", "bias"))
    # Low, 0.1% of 272,474 parameters: the stem (432 + 32), its BatchNorm's statistics with it.
    reinit = spawn_lib.reinit_for(model, shape, variables["params"], 0.001, "low")
    assert reinit.chosen == ("stem_conv",) and reinit.covered == pytest.approx(464 / 272_474)
    restart = reinit_lib.stats_mask(variables["batch_stats"], reinit.stats_modules)
    assert _chosen(restart) == {("stem_norm", "mean"), ("stem_norm", "var")}


def test_pre_normalized_models_group_each_norm_with_the_layer_after_it():
    """ResNet-50 v2 (BN → ReLU → conv), DenseNet-BC (the same) and the pre-LN ViT, by hand."""
    v2 = {u.name: u.modules for u in reinit_lib.layers(models.ResNetV2(10, small_inputs=True), (32, 32, 3))}
    assert v2["stem_conv"] == (("stem_conv",),)
    b = "stage2_block2"
    assert v2[f"{b}/conv1"] == ((b, "norm1"), (b, "conv1")) and v2[f"{b}/conv2"] == ((b, "norm2"), (b, "conv2"))
    b = "stage2_block1"  # A projection block: its first norm feeds the shortcut, called first, and conv1.
    assert v2[f"{b}/shortcut"] == ((b, "norm1"), (b, "shortcut")) and v2[f"{b}/conv1"] == ((b, "conv1"),)
    assert v2["head"] == (("final_norm",), ("head",)) and len(v2) == 1 + 16 * 3 + 4 + 1
    dense = {u.name: u.modules for u in reinit_lib.layers(models.DenseNetBC(64, 6, 10), (32, 32, 3))}
    assert dense["conv0"] == (("conv0",),)
    assert dense["block1_layer1_conv1"] == (("block1_layer1_norm1",), ("block1_layer1_conv1",))
    assert dense["block1_layer1_conv2"] == (("block1_layer1_norm2",), ("block1_layer1_conv2",))
    assert dense["trans1_conv"] == (("trans1_norm",), ("trans1_conv",))
    assert dense["fc"] == (("norm_final",), ("fc",))
    vit = reinit_lib.layers(models.ViT(10, patch_size=16, norm="layer"), (64, 64, 3))
    names = [u.name for u in vit]
    assert names[:5] == ["patch_embed", "embed", "block0/attn", "block0/mlp_in", "block0/mlp_out"]
    attn = vit[2]
    assert attn.modules == (("block0", "norm1"), ("block0", "attn"))  # q, k, v and out projections: one layer.
    assert {p[-2] for p in attn.tensors} == {"norm1", "query", "key", "value", "out"} and len(attn.tensors) == 10
    assert vit[3].modules == (("block0", "norm2"), ("block0", "mlp_in"))
    assert vit[-1].modules == (("final_norm",), ("head",))


@pytest.mark.parametrize(
    "name, shape, norm",
    [
        ("mlp", (40, 1), "batch"),
        ("cnn1d", (40, 1), "group"),
        ("cnn2d", (16, 16, 3), "layer"),
        ("resnet20", (32, 32, 3), "none"),
        ("fort_small_cnn", (32, 32, 3), None),
        ("webb_cnn", (32, 32, 3), None),
    ],
)
def test_every_tensor_is_in_one_layer_and_every_norm_follows_a_weight(name, shape, norm):
    c = config_lib.get_default_config().model
    c.name, c.norm = name, norm
    model = models.build(c, 10, shape)
    order = models.forward_order(model, shape)
    layers = reinit_lib.layers(model, shape)
    assert sorted(p for u in layers for p in u.tensors) == sorted(order)
    for u in layers:  # Post-normalized models: the weight-bearing module first, its norm right after it.
        assert u.tensors[0][-1] == "kernel" and u.modules[0] == u.tensors[0][:-1] and len(u.modules) <= 2


def test_spawn_restarts_the_chosen_layers_batchnorm_statistics():
    config = small_config(**{"dataset": "digits", "model.name": "cnn2d", "model.widths": (8, 16), "ensemble.k": 1})
    model = models.build(config.model, 10)
    tx = optim.make_optimizer(config.optimizer, 100)
    parent = ensemble_lib.init_ensemble(model, tx, rng_lib.member_streams(0, 1), (8, 8, 1))
    # A trained-looking parent: every parameter 0.5, running means 0.3 and variances 2.
    parent = parent.replace(
        params=jax.tree.map(lambda x: jnp.full_like(x, 0.5), parent.params),
        batch_stats={
            m: {"mean": jnp.full_like(s["mean"], 0.3), "var": 2 * s["var"]} for m, s in parent.batch_stats.items()
        },
    )
    one = jax.tree.map(lambda x: x[0], parent.params)
    # conv0 (3·3·1·8 = 72) with norm0 (8 + 8) is 88 of 72 + 16 + 1,152 + 32 + 170 = 1,442 parameters.
    reinit = spawn_lib.reinit_for(model, (8, 8, 1), one, 0.05, "low")
    assert reinit.chosen == ("conv0",) and reinit.covered == pytest.approx(88 / 1_442)
    children = spawn_lib.spawn(parent, 2, jax.random.PRNGKey(0), tx=tx, reinit=reinit)
    stats, params = children.batch_stats, children.params
    np.testing.assert_array_equal(stats["norm0"]["mean"], 0.0)
    np.testing.assert_array_equal(stats["norm0"]["var"], 1.0)
    np.testing.assert_array_equal(stats["norm1"]["mean"], np.float32(0.3))  # Not chosen: kept.
    np.testing.assert_array_equal(stats["norm1"]["var"], 2.0)
    np.testing.assert_array_equal(params["norm0"]["scale"], 1.0)  # Fresh: scale 1, offset 0.
    np.testing.assert_array_equal(params["norm0"]["bias"], 0.0)
    assert not np.array_equal(params["conv0"]["kernel"][0], params["conv0"]["kernel"][1])  # A draw per child.
    for module in ("norm1", "conv1", "head"):
        for leaf in jax.tree.leaves(params[module]):
            np.testing.assert_array_equal(leaf, 0.5)
    # The tensor unit, as before, keeps every statistic.
    tensor = spawn_lib.reinit_for(model, (8, 8, 1), one, 0.05, "low", unit="tensor")
    kept = spawn_lib.spawn(parent, 2, jax.random.PRNGKey(0), tx=tx, reinit=tensor).batch_stats
    np.testing.assert_array_equal(kept["norm0"]["mean"], np.float32(0.3))


def test_reinit_unit_is_validated_by_name():
    spawning = {"coupling.condition": "coupled_to_t", "coupling.t": (0,), "coupling.reinit_fraction": 0.5}
    with pytest.raises(
        config_lib.ConfigError, match=r"config.coupling.reinit_unit='block': unknown; allowed: layer, tensor"
    ):
        small_config(**spawning, **{"coupling.reinit_unit": "block"})
    assert config_lib.get_default_config().coupling.reinit_unit == "layer"
    with pytest.raises(ValueError, match="unit='block'"):
        reinit_lib.units(models.MLP((4,), 2), (3,), "block")


def test_the_run_reports_the_share_redrawn(tmp_path, capsys):
    config = small_config(
        **{
            "coupling.condition": "coupled_to_t",
            "coupling.t": ("1ep",),
            "coupling.reinit_fraction": 0.1,
            "ensemble.k": 2,
            "model.widths": (16,),
        }
    )
    run.train_and_evaluate(config, str(tmp_path / "run"))
    # MLP 40-16-10: 656 + 170 = 826 parameters; 10% (82.6) is the first layer, 656.
    expected = f"spawn: re-initializing 1 layer from the low side, {656 / 826:.2%} of the parameters: dense0"
    assert expected in capsys.readouterr().out
