"""The model zoo: parameter counts by hand, forward/backward of every model under the ensemble vmap,
forward order of parameters, and config errors."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import small_config

from jaxens import config as config_lib
from jaxens import ensemble as ensemble_lib
from jaxens import models, train_step


def _count(model, input_shape):
    variables = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *input_shape), jnp.float32), train=False)
    )
    return sum(math.prod(x.shape) for x in jax.tree.leaves(variables["params"]))


def _model_config(name, **fields):
    c = config_lib.get_default_config().model
    c.unlock()
    c.name = name
    for k, v in fields.items():
        c[k] = v
    return c


def _resnet_cifar_count(depth, shortcut, classes=10):
    """He et al.'s CIFAR ResNet v1 counted from its description: 3×3 convs without bias, BN (scale+bias)."""
    n = (depth - 2) // 6
    conv = lambda cin, cout, k: k * k * cin * cout
    bn = lambda c: 2 * c
    total = conv(3, 16, 3) + bn(16)
    cin = 16
    for cout in (16, 32, 64):
        for _ in range(n):
            total += conv(cin, cout, 3) + bn(cout) + conv(cout, cout, 3) + bn(cout)
            if cin != cout and shortcut == "B":
                total += conv(cin, cout, 1) + bn(cout)
            cin = cout
    return total + 64 * classes + classes


def test_resnet20_parameter_counts():
    assert _resnet_cifar_count(20, "A") == 269_722 and _resnet_cifar_count(20, "B") == 272_474
    for shortcut, expected in (("A", 269_722), ("B", 272_474)):
        model = models.build(_model_config("resnet20", shortcut=shortcut), 10)
        assert _count(model, (32, 32, 3)) == expected
    for depth in (32, 56):
        model = models.build(_model_config(f"resnet{depth}"), 10)
        assert _count(model, (32, 32, 3)) == _resnet_cifar_count(depth, "A")


def _reference_resnet_cifar(variables, x, shortcut):
    """He et al.'s CIFAR ResNet v1 written out with lax.conv_general_dilated, BatchNorm in evaluation mode.

    Every 3×3 conv pads one pixel on each side (PyTorch's padding=1), so a stride-2 conv samples the same
    pixels as the option-A shortcut x[:, ::2, ::2]; the option-A shortcut pads planes // 4 zero channels on
    each side (the reference PyTorch implementations), option B is a 1×1 strided conv and BatchNorm.
    """
    params, stats = variables["params"], variables["batch_stats"]

    def conv(x, kernel, stride):
        pad = (kernel.shape[0] // 2,) * 2
        return jax.lax.conv_general_dilated(
            x, kernel, (stride, stride), (pad, pad), dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest"
        )

    def bn(x, p, s):
        return (x - s["mean"]) / np.sqrt(s["var"] + 1e-5) * p["scale"] + p["bias"]

    x = jax.nn.relu(bn(conv(x, params["stem_conv"]["kernel"], 1), params["stem_norm"], stats["stem_norm"]))
    blocks = sorted((k for k in params if k.startswith("stage")), key=lambda k: (k[5], int(k.split("block")[1])))
    for name in blocks:
        p, s = params[name], stats[name]
        stride = 2 if name.endswith("_block1") and not name.startswith("stage1") else 1
        y = jax.nn.relu(bn(conv(x, p["conv1"]["kernel"], stride), p["norm1"], s["norm1"]))
        y = bn(conv(y, p["conv2"]["kernel"], 1), p["norm2"], s["norm2"])
        planes = y.shape[-1]
        if x.shape != y.shape and shortcut == "A":
            x = np.pad(x[:, ::2, ::2, :], ((0, 0), (0, 0), (0, 0), (planes // 4, planes // 4)))
        elif x.shape != y.shape:
            x = bn(conv(x, p["shortcut_conv"]["kernel"], stride), p["shortcut_norm"], s["shortcut_norm"])
        x = jax.nn.relu(x + y)
    return x.mean(axis=(1, 2)) @ params["head"]["kernel"] + params["head"]["bias"]


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_resnet20_matches_a_hand_written_forward_pass_with_symmetric_padding(shortcut):
    # Random weights and running statistics, so that every BatchNorm in evaluation mode does something.
    model = models.build(_model_config("resnet20", shortcut=shortcut), 10)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    rng = np.random.default_rng(2)
    ranges = {"scale": (0.5, 1.5), "bias": (-0.2, 0.2), "mean": (-0.2, 0.2), "var": (0.5, 2.0)}
    variables = jax.tree_util.tree_map_with_path(
        lambda path, leaf: (
            rng.uniform(*ranges[path[-1].key], leaf.shape).astype(np.float32)
            if path[-1].key in ranges and path[-2].key != "head"
            else np.asarray(leaf)
        ),
        variables,
    )
    got = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    want = _reference_resnet_cifar(variables, np.asarray(x, np.float64), shortcut)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * float(np.abs(want).max()))


def test_webb_mlp_ensembles_have_815k_parameters():
    """Webb's Fashion-MNIST ensembles: M modules × H hidden units, 784 inputs, 10 classes."""
    for m, h in ((1, 1024), (16, 64), (64, 16), (256, 4)):
        per_module = 784 * h + h + h * 10 + 10
        model = models.build(_model_config("mlp", widths=(h,)), 10)
        assert _count(model, (28, 28, 1)) == per_module
        assert round(m * per_module, -3) in (814_000, 815_000, 817_000), m * per_module


def test_fort_cnn_parameter_counts():
    def by_hand(channels, classes=10):
        total, cin = 0, 3
        for c in channels:
            total += 9 * cin * c + 2 * c  # conv without bias, BN scale and bias
            cin = c
        return total + cin * classes + classes

    assert _count(models.build(_model_config("fort_small_cnn"), 10), (32, 32, 3)) == by_hand((16, 32, 32))
    assert _count(models.build(_model_config("fort_medium_cnn"), 10), (32, 32, 3)) == by_hand((64, 128, 256, 256))


# (name, input shape, extra model fields): the smallest inputs each model takes, to keep CPU time low.
ZOO = [
    ("mlp", (28, 28, 1), {}),
    ("cnn1d", (40, 1), {"widths": (8, 16)}),
    ("cnn2d", (28, 28, 1), {"widths": (8, 16)}),
    ("resnet20", (32, 32, 3), {}),
    ("resnet32", (32, 32, 3), {"shortcut": "B"}),
    ("resnet56", (16, 16, 3), {}),
    ("resnet50_v2", (32, 32, 3), {}),
    ("vit", (64, 64, 3), {"dropout": 0.1}),
    ("fort_small_cnn", (32, 32, 3), {}),
    ("fort_medium_cnn", (32, 32, 3), {}),
    ("webb_cnn", (32, 32, 3), {}),
    ("densenet100_12", (32, 32, 3), {}),
    ("densenet82_8", (32, 32, 3), {}),
    ("densenet64_6", (32, 32, 3), {}),
    ("densenet16_4", (8, 8, 1), {}),
]


# XLA:CPU compiles the deep DenseNets for minutes at full optimization; these tests run a few steps only.
FAST_COMPILE = {"xla_backend_optimization_level": 0}
# The DenseNets and ResNet-50 take 40-60 s each to compile even so: they run with the slow tests. Their
# classes run in the default suite at small depth (DenseNet-10 in test_models_webb.py, a tiny ResNet v2 in
# test_models_resnet_v2_vit.py). resnet56 is resnet20's class with more blocks.
SLOW = {"densenet100_12", "densenet82_8", "densenet64_6", "resnet50_v2", "resnet56"}


def test_every_model_is_registered_in_the_zoo_test():
    assert sorted(name for name, _, _ in ZOO) == sorted(models.MODELS)


@pytest.mark.parametrize(
    "name, shape, fields",
    [pytest.param(*z, marks=[pytest.mark.slow] if z[0] in SLOW else []) for z in ZOO],
    ids=[z[0] for z in ZOO],
)
def test_forward_backward_under_the_ensemble_vmap(name, shape, fields):
    """K=2 members, each its own batch of 2: train-mode loss and gradients, eval-mode logits, and
    per-member BatchNorm statistics (never shared across the member axis)."""
    model = models.build(_model_config(name, **fields), 10, shape)
    tx = optax.sgd(0.1)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    init = jax.jit(jax.vmap(lambda k: ensemble_lib.init_member(model, tx, k, shape)), compiler_options=FAST_COMPILE)
    params, batch_stats, _ = init(keys)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 2, *shape))  # [K, B, ...]: different data per member.
    y = jnp.array([[1, 2], [3, 4]])

    def member(p, s, xb, yb, key):
        grad_fn = jax.value_and_grad(train_step.member_loss, argnums=1, has_aux=True)
        (loss, (logits, new_stats)), grads = grad_fn(model, p, s, xb, yb, key)
        return loss, grads, new_stats, ensemble_lib.member_logits(model, p, new_stats, xb)

    step = jax.jit(jax.vmap(member), compiler_options=FAST_COMPILE)
    loss, grads, new_stats, eval_logits = step(params, batch_stats, x, y, keys)
    assert loss.shape == (2,) and bool(jnp.all(jnp.isfinite(loss)))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads)) > 0
    assert eval_logits.shape == (2, 2, 10) and eval_logits.dtype == jnp.float32
    for before, after in zip(jax.tree.leaves(batch_stats), jax.tree.leaves(new_stats)):
        assert after.shape[0] == 2
        assert not np.allclose(after[0], after[1])  # Each member's statistics from its own batch.
        assert not np.allclose(after, before)


def _init_apply(model, shape, train):
    """Jitted init and apply on 2 examples: (variables, logits)."""

    def run(key):
        variables = model.init({"params": key, "dropout": key}, jnp.zeros((1, *shape)), train=False)
        return variables, model.apply(
            variables,
            jnp.ones((2, *shape)),
            train=train,
            rngs={"dropout": key},
            mutable=["batch_stats"] if train else False,
        )

    variables, out = jax.jit(run, compiler_options=FAST_COMPILE)(jax.random.PRNGKey(0))
    return variables, (out[0] if train else out)


def test_bfloat16_compute_returns_float32_logits():
    model = models.build(_model_config("fort_small_cnn", dtype="bfloat16"), 10)
    variables, logits = _init_apply(model, (32, 32, 3), train=False)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables["params"]))
    assert logits.dtype == jnp.float32 and logits.shape == (2, 10)
    assert bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.parametrize("norm", ["layer", "group", "none"])
def test_normalization_choices(norm):
    model = models.build(_model_config("fort_small_cnn", norm=norm), 10)
    variables, logits = _init_apply(model, (32, 32, 3), train=True)
    assert "batch_stats" not in variables  # Only BatchNorm keeps running statistics.
    norm_params = [p for p in models.param_paths(variables["params"]) if p[0].startswith("norm")]
    assert len(norm_params) == (2 * 3 if norm != "none" else 0)  # 3 norms with scale and bias.
    assert logits.shape == (2, 10)


def test_forward_order_of_resnet20():
    model = models.build(_model_config("resnet20", shortcut="B"), 10)
    order = models.forward_order(model, (32, 32, 3))
    assert order[0] == ("stem_conv", "kernel")
    assert order[1:3] == [("stem_norm", "scale"), ("stem_norm", "bias")]
    assert order[-2:] == [("head", "kernel"), ("head", "bias")]
    blocks = [p[0] for p in order if p[0].startswith("stage")]
    expected = [f"stage{s}_block{b}" for s in (1, 2, 3) for b in (1, 2, 3)]
    assert list(dict.fromkeys(blocks)) == expected  # Blocks appear input side first.
    block = [p[1] for p in order if p[0] == "stage2_block1"]
    assert list(dict.fromkeys(block)) == ["conv1", "norm1", "conv2", "norm2", "shortcut_conv", "shortcut_norm"]


@pytest.mark.parametrize("name, shape, fields", ZOO, ids=[z[0] for z in ZOO])
def test_forward_order_lists_every_tensor_once(name, shape, fields):
    model = models.build(_model_config(name, **fields), 10, shape)
    order = models.forward_order(model, shape)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape)), train=False))["params"]
    assert sorted(order) == sorted(models.param_paths(params))
    assert order[-1][-1] == "bias" and order[-2][-1] == "kernel"  # The classifier closes the forward pass.
    assert sum(models.param_sizes(params, order)) == _count(model, shape)


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"model.name": "resnet21"}, r"config.model.name='resnet21': unknown; allowed: mlp, .*resnet20.*densenet64_6"),
        ({"model.name": "resnet20"}, r"config.model.name='resnet20': takes examples of rank 3.*\(40, 1\).*mlp, cnn1d"),
        (
            {"dataset": "digits", "model.name": "webb_cnn", "train.batch_size": 32},
            r"config.model.name='webb_cnn': needs images of at least 27 pixels",
        ),
        (
            {"dataset": "cifar10", "model.name": "vit", "model.norm": "batch"},
            r"config.model.norm='batch': vit takes layer",
        ),
        ({"dataset": "cifar10", "model.name": "vit", "model.patch_size": 5}, r"config.model.patch_size=5: must divide"),
        ({"dataset": "cifar10", "model.name": "resnet20", "model.dropout": 0.1}, r"resnet20 has no dropout"),
        ({"model.dtype": "float16"}, r"config.model.dtype='float16': unknown; allowed: float32, bfloat16"),
        ({"dataset": "cifar10", "model.name": "resnet20", "model.shortcut": "C"}, r"config.model.shortcut='C'"),
    ],
)
def test_model_config_errors_list_the_choices(overrides, pattern):
    with pytest.raises(config_lib.ConfigError, match=pattern):
        small_config(**overrides)
