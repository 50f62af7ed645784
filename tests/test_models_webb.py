"""Webb et al.'s models: the CIFAR-10 CNN (Table 3) and DenseNet-BC (Table 4).

Parameter counts are derived by hand from the architecture descriptions and compared with the modules'
'params' collections (shapes only, via jax.eval_shape); forward and backward passes run on 2 images.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxens.models.densenet import WEBB_DENSENETS, DenseNetBC
from jaxens.models.order import forward_order
from jaxens.models.webb_cnn import WebbCNN

IMAGE = (32, 32, 3)


def _variables_shapes(model):
    """The module's variables as shapes only (traced, nothing computed)."""
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((2, *IMAGE)), train=False))


def _num_params(model) -> int:
    """Parameters of the module: the 'params' collection only (BatchNorm statistics are not parameters)."""
    params = _variables_shapes(model)["params"]
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))


# --- hand counts ---------------------------------------------------------------------------------------


def webb_cnn_count(num_classes: int) -> int:
    """Table 3: 3×3 convs 3→32→64→64→128→128 with biases, then FC 128 → classes with bias."""
    channels = [3, 32, 64, 64, 128, 128]
    convs = sum(3 * 3 * cin * cout + cout for cin, cout in zip(channels[:-1], channels[1:]))
    return convs + 128 * num_classes + num_classes


def densenet_bc_count(depth: int, k: int, num_classes: int, theta: float = 0.5) -> int:
    """Closed form per block for DenseNet-BC on 3-channel inputs; every norm has scale + bias (2 per channel).

    A bottleneck layer on c input channels: norm(c) 2c + conv 1×1 c·4k + norm(4k) 8k + conv 3×3 4k·k·9.
    In a block entered with c0 channels the layer inputs are c0 + i·k for i = 0..n-1, so their sum is
    n·c0 + k·n(n−1)/2 and the block has (2 + 4k)·that + n·(8k + 36k²) parameters and ends with c0 + n·k
    channels. A transition on c channels: norm 2c + conv 1×1 c·floor(θc).
    """
    n = (depth - 4) // 6
    total = 3 * 3 * 3 * (2 * k)  # stem, no bias
    c = 2 * k
    for block in range(3):
        sum_inputs = n * c + k * n * (n - 1) // 2
        total += (2 + 4 * k) * sum_inputs + n * (8 * k + 36 * k * k)
        c += n * k
        if block < 2:
            out = math.floor(theta * c)
            total += 2 * c + c * out
            c = out
    return total + 2 * c + c * num_classes + num_classes  # final norm, FC with bias


def test_hand_count_spot_check():
    # The first DenseNet-BC layers by hand, k = 12: stem 648; norm(24) 48, conv 24·48 = 1152, norm(48) 96,
    # conv 48·12·9 = 5184. With n = 1 per block (depth 10) the formula must agree with a direct sum.
    k = 12
    c1 = 2 * k  # block 1: 24 → 36; transition → 18
    l1 = 2 * c1 + c1 * 4 * k + 8 * k + 36 * k * k
    t1 = 2 * 36 + 36 * 18
    l2 = 2 * 18 + 18 * 4 * k + 8 * k + 36 * k * k  # block 2: 18 → 30; transition → 15
    t2 = 2 * 30 + 30 * 15
    l3 = 2 * 15 + 15 * 4 * k + 8 * k + 36 * k * k  # block 3: 15 → 27
    head = 2 * 27 + 27 * 10 + 10
    assert densenet_bc_count(10, k, 10) == 27 * 24 + l1 + t1 + l2 + t2 + l3 + head
    assert webb_cnn_count(10) == 896 + 18_496 + 36_928 + 73_856 + 147_584 + 1_290 == 279_050


# --- counts against the modules ------------------------------------------------------------------------


def test_webb_cnn_param_count():
    per_module = _num_params(WebbCNN(num_classes=10))
    assert per_module == webb_cnn_count(10) == 279_050
    assert round(10 * per_module / 1e6, 1) == 2.8  # Webb §4.2: "The ensemble has ~2.8M parameters."
    # A norm replaces each conv bias (c) by scale + bias (2c): +32 +64 +64 +128 +128.
    for kind in ("batch", "layer", "group"):
        assert _num_params(WebbCNN(num_classes=10, norm=kind)) == 279_050 + 416


@pytest.mark.parametrize(
    "name, modules, table",
    [("densenet100_12", 4, 3.2), ("densenet82_8", 8, 2.1), ("densenet64_6", 16, 1.7)],
)
def test_densenet_param_counts_match_webb_table4(name, modules, table):
    depth, k = WEBB_DENSENETS[name]
    per_module = _num_params(DenseNetBC(depth=depth, growth_rate=k, num_classes=100))
    assert per_module == densenet_bc_count(depth, k, 100)
    assert round(modules * per_module / 1e6, 1) == table


def test_the_cpu_sized_densenet_is_densenet_bc_16_4():
    from jaxens import config as config_lib
    from jaxens import models

    model_config = config_lib.get_default_config().model
    model_config.name = "densenet16_4"
    model = models.build(model_config, 10, (8, 8, 3))
    assert _num_params(model) == densenet_bc_count(16, 4, 10)


def test_densenet_known_counts():
    # Exact values (100 classes / 10 classes), so a change to the architecture shows here.
    assert densenet_bc_count(100, 12, 100) == 800_032
    assert densenet_bc_count(82, 8, 100) == 266_556
    assert densenet_bc_count(64, 6, 100) == 105_316
    assert densenet_bc_count(100, 12, 10) == 769_162  # Huang et al.: DenseNet-BC (L=100, k=12) 0.8M
    # Layer and group norm have the same scale + bias per channel as batch norm.
    for kind in ("layer", "group"):
        assert _num_params(DenseNetBC(depth=10, growth_rate=4, num_classes=10, norm=kind)) == densenet_bc_count(
            10, 4, 10
        )


def test_densenet_rejects_bad_depth():
    for depth in (4, 50, 101):
        with pytest.raises(ValueError, match="6n \\+ 4"):
            _num_params(DenseNetBC(depth=depth, growth_rate=4, num_classes=10))


# --- structure -----------------------------------------------------------------------------------------


def test_webb_cnn_feature_map_sizes_follow_table3():
    model = WebbCNN(num_classes=10)
    variables = _variables_shapes(model)
    x = jnp.zeros((2, *IMAGE))
    _, state = jax.eval_shape(lambda v: model.apply(v, x, capture_intermediates=True), variables)
    sizes = [state["intermediates"][f"conv{i}"]["__call__"][0].shape for i in range(1, 6)]
    assert sizes == [(2, 30, 30, 32), (2, 14, 14, 64), (2, 12, 12, 64), (2, 5, 5, 128), (2, 3, 3, 128)]


def test_submodules_in_forward_order():
    cnn = [(f"conv{i}", t) for i in range(1, 6) for t in ("kernel", "bias")] + [("fc", "kernel"), ("fc", "bias")]
    assert forward_order(WebbCNN(num_classes=10), IMAGE) == cnn

    model = DenseNetBC(depth=16, growth_rate=4, num_classes=10)
    modules = ["conv0"]
    for b in (1, 2, 3):
        for i in (1, 2):
            modules += [f"block{b}_layer{i}_{s}" for s in ("norm1", "conv1", "norm2", "conv2")]
        if b < 3:
            modules += [f"trans{b}_norm", f"trans{b}_conv"]
    modules += ["norm_final", "fc"]
    tensors = {"conv": ["kernel"], "norm": ["scale", "bias"], "fc": ["kernel", "bias"]}  # convs have no bias
    expected = [(m, t) for m in modules for t in tensors[next(key for key in tensors if key in m)]]
    assert forward_order(model, IMAGE) == expected
    assert sorted(_variables_shapes(model)["batch_stats"]) == sorted(m for m in modules if "norm" in m)


# --- forward and backward ------------------------------------------------------------------------------


def _numpy_variables(model, seed=0):
    """Variables of the module's shapes filled on the host (compiling `model.init` costs seconds on CPU):
    kernels N(0, 2 / fan_in), norm scales 1, biases 0, running means 0 and variances 1."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "kernel":
            fan_in = math.prod(leaf.shape[:-1])
            return jnp.asarray(rng.normal(0.0, math.sqrt(2 / fan_in), leaf.shape), jnp.float32)
        return jnp.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, jnp.float32)

    return jax.tree_util.tree_map_with_path(fill, _variables_shapes(model))


def _images():
    return jnp.asarray(np.random.default_rng(1).normal(size=(2, *IMAGE)), jnp.float32)


def _check_forward_backward(model, has_batch_stats: bool, backward: bool = True):
    """One compiled function: loss and grads (if `backward`) in training mode, logits in evaluation mode."""
    x, labels = _images(), jnp.array([0, 1])
    variables = _numpy_variables(model)
    assert ("batch_stats" in variables) == has_batch_stats
    others = {name: v for name, v in variables.items() if name != "params"}

    def loss(params):
        mutable = ["batch_stats"] if has_batch_stats else False
        out = model.apply({"params": params, **others}, x, train=True, mutable=mutable)
        logits, updates = out if has_batch_stats else (out, {})
        logp = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(logp, labels[:, None], axis=1).mean(), (logits, updates)

    @jax.jit
    def run(variables):
        if backward:
            (value, (logits, updates)), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
        else:
            (value, (logits, updates)), grads = loss(variables["params"]), None
        return value, logits, updates, grads, model.apply(variables, x, train=False)

    # Checked on the host: an eager jnp op per differently shaped leaf would compile each.
    value, logits, updates, grads, evaluated = jax.device_get(run(variables))
    for out in (logits, evaluated):
        assert out.shape == (2, model.num_classes) and out.dtype == np.float32
        assert np.all(np.isfinite(out))
    assert np.isfinite(value)
    if backward:
        leaves = jax.tree_util.tree_leaves(grads)
        assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(variables["params"])
        assert all(g.dtype == np.float32 and np.all(np.isfinite(g)) for g in leaves)
        assert all(np.abs(g).max() > 0 for g in leaves)
    if has_batch_stats:
        assert set(updates) == {"batch_stats"}
        # Training mode updates the running statistics, evaluation mode reads them.
        assert not np.allclose(updates["batch_stats"]["norm_final"]["mean"], 0.0)
        assert not np.allclose(logits, evaluated)


def test_webb_cnn_forward_backward():
    _check_forward_backward(WebbCNN(num_classes=10), has_batch_stats=False)


def test_webb_cnn_bfloat16():
    _check_forward_backward(WebbCNN(num_classes=10, dtype=jnp.bfloat16), has_batch_stats=False)


def test_densenet_forward_backward():
    _check_forward_backward(DenseNetBC(depth=10, growth_rate=4, num_classes=7), has_batch_stats=True)


def test_densenet_bfloat16():
    # Forward only: compiling the bfloat16 backward pass takes ~10 s on 2 CPU cores (WebbCNN checks one).
    model = DenseNetBC(depth=10, growth_rate=4, num_classes=7, dtype=jnp.bfloat16)
    _check_forward_backward(model, has_batch_stats=True, backward=False)


@pytest.mark.parametrize(
    "model",
    [
        WebbCNN(num_classes=10, norm="batch"),
        WebbCNN(num_classes=10, norm="group"),
        WebbCNN(num_classes=10, norm="layer"),
        DenseNetBC(depth=10, growth_rate=4, num_classes=7, norm="group"),
        DenseNetBC(depth=10, growth_rate=4, num_classes=7, norm="layer"),
    ],
    ids=lambda m: f"{type(m).__name__}-{m.norm}",
)
def test_norm_variants_run(model):
    variables = _numpy_variables(model)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    logits, updates = jax.device_get(apply(variables, _images()))
    assert logits.shape == (2, model.num_classes) and logits.dtype == np.float32
    assert np.all(np.isfinite(logits))
    assert set(updates) == ({"batch_stats"} if model.norm == "batch" else set())
    if isinstance(model, WebbCNN):  # a norm replaces the conv biases
        assert all("bias" not in variables["params"][f"conv{i}"] for i in range(1, 6))
