"""ResNetV2 (pre-activation bottleneck ResNet) and ViT: parameter counts by hand, forward and backward passes."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxens.models.resnet_v2 import BottleneckV2, ResNetV2, resnet50_v2
from jaxens.models.vit import EncoderBlock, ViT


def num_params(model, input_shape):
    """Scalars in the model's 'params' collection (shapes only, no compute)."""
    variables = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, *input_shape), np.float32))
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(variables["params"]))


# --- Parameter counts written out from the architecture, independently of the modules. ---


def resnet_v2_params_by_hand(stage_sizes, width, num_classes, stem_kernel, in_channels=3):
    """Convs without bias; a norm (scale + shift: 2 per channel) before each of a block's three convs and
    after the last stage; a projection on each stage's first block; a Dense head with bias."""
    total = stem_kernel * stem_kernel * in_channels * width  # stem conv
    c_in = width
    for i, blocks in enumerate(stage_sizes):
        w = width * 2**i
        for j in range(blocks):
            total += 2 * c_in + c_in * w  # norm1, conv1 1×1
            total += 2 * w + 3 * 3 * w * w  # norm2, conv2 3×3
            total += 2 * w + w * 4 * w  # norm3, conv3 1×1
            if j == 0:
                total += c_in * 4 * w  # projection shortcut 1×1
            c_in = 4 * w
    return total + 2 * c_in + c_in * num_classes + num_classes  # final norm, head


def test_resnet50_v2_imagenet_count_by_hand():
    # ResNet-50 v2 at 1000 classes, written out flat (64-wide stem, stages of 3, 4, 6, 3 bottlenecks).
    stem = 7 * 7 * 3 * 64  # 9,408
    stage1 = (2 * 64 + 64 * 64 + 2 * 64 + 9 * 64 * 64 + 2 * 64 + 64 * 256 + 64 * 256) + 2 * (
        2 * 256 + 256 * 64 + 2 * 64 + 9 * 64 * 64 + 2 * 64 + 64 * 256
    )
    stage2 = (2 * 256 + 256 * 128 + 2 * 128 + 9 * 128 * 128 + 2 * 128 + 128 * 512 + 256 * 512) + 3 * (
        2 * 512 + 512 * 128 + 2 * 128 + 9 * 128 * 128 + 2 * 128 + 128 * 512
    )
    stage3 = (2 * 512 + 512 * 256 + 2 * 256 + 9 * 256 * 256 + 2 * 256 + 256 * 1024 + 512 * 1024) + 5 * (
        2 * 1024 + 1024 * 256 + 2 * 256 + 9 * 256 * 256 + 2 * 256 + 256 * 1024
    )
    stage4 = (2 * 1024 + 1024 * 512 + 2 * 512 + 9 * 512 * 512 + 2 * 512 + 512 * 2048 + 1024 * 2048) + 2 * (
        2 * 2048 + 2048 * 512 + 2 * 512 + 9 * 512 * 512 + 2 * 512 + 512 * 2048
    )
    head = 2 * 2048 + 2048 * 1000 + 1000  # final norm, Dense
    flat = stem + stage1 + stage2 + stage3 + stage4 + head
    assert flat == resnet_v2_params_by_hand((3, 4, 6, 3), 64, 1000, stem_kernel=7) == 25_549_352
    # Keras' ResNet50V2 has 25,568,360 trainable parameters: the same plus biases on its stem conv (64), on
    # every block's last 1×1 conv (3·256 + 4·512 + 6·1024 + 3·2048) and on the 4 shortcut convs (256 + ... + 2048).
    keras_biases = 64 + (3 * 256 + 4 * 512 + 6 * 1024 + 3 * 2048) + (256 + 512 + 1024 + 2048)
    assert flat + keras_biases == 25_568_360
    assert num_params(resnet50_v2(1000), (224, 224, 3)) == flat


def test_resnet50_v2_small_inputs_count_by_hand():
    expected = resnet_v2_params_by_hand((3, 4, 6, 3), 64, 200, stem_kernel=3)
    assert expected == 25_549_352 - (7 * 7 - 3 * 3) * 3 * 64 - 800 * (2048 + 1) == 23_902_472
    assert num_params(resnet50_v2(200, small_inputs=True), (64, 64, 3)) == expected


def test_resnet_v2_count_by_hand_other_config():
    model = ResNetV2(num_classes=10, stage_sizes=(2, 1), width=16, small_inputs=True)
    assert num_params(model, (32, 32, 3)) == resnet_v2_params_by_hand((2, 1), 16, 10, stem_kernel=3)


def test_vit_default_count_by_hand():
    d, mlp, depth, p, classes = 192, 768, 6, 8, 200
    tokens = (64 // p) ** 2 + 1  # 64 patches + class token
    patch_embed = p * p * 3 * d + d
    embed = d + tokens * d  # class token, position embeddings
    block = (
        2 * d  # LayerNorm
        + 3 * (d * d + d)  # query, key, value projections
        + (d * d + d)  # attention output projection
        + 2 * d  # LayerNorm
        + (d * mlp + mlp)  # MLP in
        + (mlp * d + d)  # MLP out
    )
    expected = patch_embed + embed + depth * block + 2 * d + (d * classes + classes)
    assert expected == 2_757_896
    assert num_params(ViT(num_classes=200), (64, 64, 3)) == expected


# --- Forward and backward passes of tiny variants. ---
# Compilation dominates on CPU (the backward pass of the convolutions most), so: the variables are drawn with
# numpy at the shapes and dtypes `init` declares (`jax.eval_shape`: traced, not compiled); one jitted function
# per model does the train-mode forward and backward passes and the eval-mode pass; and the variants that only
# need to run (other norms, bfloat16 ResNet) do the forward passes only. XLA's backend optimization level 0
# (per function, nothing global) halves the compile time of these tiny functions, which run in milliseconds.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def tiny_resnet(**kw):
    return ResNetV2(num_classes=5, stage_sizes=(1, 1, 1, 1), width=8, small_inputs=True, **kw)


def tiny_vit(**kw):
    return ViT(num_classes=5, patch_size=8, hidden=32, depth=2, heads=2, mlp_dim=64, **kw)


def images(size):
    return np.random.default_rng(1).normal(size=(2, size, size, 3)).astype(np.float32)


def declared_shapes(model, x):
    """`init`'s variables as ShapeDtypeStructs (all float32: parameters and batch statistics)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(shapes))
    return shapes


def draw_variables(shapes, seed=0):
    """Variables of those shapes: kernels and embeddings ~ N(0, 1/fan_in), biases ~ N(0, 0.01²), norm scales
    and running variances 1, running means 0."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        if name in ("scale", "var"):
            value = np.ones(leaf.shape)
        elif name == "mean":
            value = np.zeros(leaf.shape)
        elif name == "bias":
            value = 0.01 * rng.normal(size=leaf.shape)
        else:
            fan_in = int(np.prod(leaf.shape[:-1]))
            value = rng.normal(size=leaf.shape) / np.sqrt(fan_in)
        return np.asarray(value, leaf.dtype)  # numpy: jit takes it as it is

    return jax.tree_util.tree_map_with_path(draw, shapes)


def call_order(model, x):
    """Names of the model's direct submodules with parameters, in the order they are first called (one traced
    forward pass)."""
    names = []

    def record(next_fun, args, kwargs, context):
        path = context.module.path
        if context.method_name == "__call__" and len(path) == 1 and path[0] not in names:
            names.append(path[0])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    return [name for name in names if name in params]  # those without parameters (dropout) left out


@functools.cache
def _train_eval_fn(model):
    """One jitted function per model (compiled once): (params, state, x, dropout key) → train-mode loss, its
    gradient, train logits and updated state; eval logits with the given state."""

    def run(params, state, x, dropout_key):
        def loss_fn(params):
            rngs = None if dropout_key is None else {"dropout": dropout_key}
            logits, new_state = model.apply({"params": params, **state}, x, train=True, rngs=rngs, mutable=list(state))
            return jnp.mean(logits**2), (logits, new_state)

        (loss, (logits, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, grads, logits, new_state, model.apply({"params": params, **state}, x, train=False)

    return jax.jit(run, compiler_options=FAST_COMPILE)


def check_logits(logits, x, model):
    assert logits.shape == (x.shape[0], model.num_classes) and logits.dtype == np.float32
    assert np.all(np.isfinite(logits))


def train_and_eval(model, variables, x, dropout_key=None):
    """Train-mode forward and backward pass (mean squared logit as the loss) and eval-mode forward pass;
    checks shapes, dtypes and finiteness. Returns train logits, eval logits and the updated state."""
    state = {k: v for k, v in variables.items() if k != "params"}  # {'batch_stats': ...} with BatchNorm
    out = _train_eval_fn(model)(variables["params"], state, x, dropout_key)
    loss, grads, logits, new_state, eval_logits = jax.device_get(out)  # numpy: no op-by-op compiles below
    check_logits(logits, x, model)
    check_logits(eval_logits, x, model)
    assert np.isfinite(loss)
    assert jax.tree.structure(grads) == jax.tree.structure(variables["params"])
    for g in jax.tree.leaves(grads):
        assert g.dtype == np.float32 and np.all(np.isfinite(g))
    assert all(np.abs(g).max() > 0 for g in jax.tree.leaves(grads))  # every parameter is used
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    return logits, eval_logits, new_state


def train_and_eval_forward(model, variables, x):
    """Train-mode and eval-mode logits only (no backward pass: its compilation is the slow part on CPU)."""

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def run(variables):
        state = [k for k in variables if k != "params"]
        return model.apply(variables, x, train=True, mutable=state)[0], model.apply(variables, x, train=False)

    logits, eval_logits = jax.device_get(run(variables))
    check_logits(logits, x, model)
    check_logits(eval_logits, x, model)
    return logits, eval_logits


def test_resnet_v2_tiny_batchnorm():
    model, x = tiny_resnet(), images(32)
    shapes = declared_shapes(model, x)
    assert set(shapes) == {"params", "batch_stats"}  # running statistics are not parameters
    params = shapes["params"]
    assert params["stage2_block1"]["conv2"]["kernel"].shape == (3, 3, 16, 16)
    assert params["stage1_block1"]["shortcut"]["kernel"].shape == (1, 1, 8, 32)
    assert params["head"]["kernel"].shape == (4 * 64, 5)
    assert "bias" not in params["stem_conv"] and "bias" not in params["stage1_block1"]["conv3"]
    assert call_order(model, x) == [
        "stem_conv", "stage1_block1", "stage2_block1", "stage3_block1", "stage4_block1", "final_norm", "head"
    ]  # fmt: skip
    variables = draw_variables(shapes)
    logits, eval_logits, new_state = train_and_eval(model, variables, x)
    # Training normalizes with batch statistics and updates the running averages; evaluation uses the latter.
    assert not np.allclose(logits, eval_logits)
    old_mean = variables["batch_stats"]["stage1_block1"]["norm1"]["mean"]
    assert not np.allclose(new_state["batch_stats"]["stage1_block1"]["norm1"]["mean"], old_mean)


def test_resnet_v2_block_structure_and_resolutions():
    model = ResNetV2(num_classes=3, stage_sizes=(2, 2), width=4, small_inputs=True, norm="none")
    x = np.zeros((2, 16, 16, 3), np.float32)
    params = declared_shapes(model, x)["params"]
    assert set(params["stage1_block1"]) == {"shortcut", "conv1", "conv2", "conv3"}  # 'none': no norm params
    assert "shortcut" not in params["stage1_block2"]  # identity: shape unchanged
    assert params["stage2_block1"]["shortcut"]["kernel"].shape == (1, 1, 16, 32)
    shapes = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and (context.module.name or "").startswith("stage"):
            shapes.append((context.module.name, out.shape))
        return out

    with nn.intercept_methods(record):
        jax.eval_shape(model.init, jax.random.key(0), x)
    assert shapes == [
        ("stage1_block1", (2, 16, 16, 16)),
        ("stage1_block2", (2, 16, 16, 16)),
        ("stage2_block1", (2, 8, 8, 32)),
        ("stage2_block2", (2, 8, 8, 32)),
    ]
    # ImageNet stem: 224 → 112 (conv) → 56 (max pool) before stage 1, then 28, 14, 7.
    shapes.clear()
    big = ResNetV2(num_classes=3, stage_sizes=(1, 1, 1, 1), width=4, norm="none")
    with nn.intercept_methods(record):
        jax.eval_shape(big.init, jax.random.key(0), np.zeros((1, 224, 224, 3), np.float32))
    assert [s[1:3] for _, s in shapes] == [(56, 56), (28, 28), (14, 14), (7, 7)]


def test_resnet_v2_bottleneck_call_order():
    block = BottleneckV2(features=4, strides=2, norm="group")
    x = np.zeros((1, 8, 8, 8), np.float32)
    assert call_order(block, x) == ["norm1", "shortcut", "conv1", "norm2", "conv2", "norm3", "conv3"]
    assert jax.eval_shape(block.init, jax.random.key(0), x)["params"]["conv3"]["kernel"].shape == (1, 1, 4, 16)


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_resnet_v2_tiny_other_norms(norm):
    model, x = tiny_resnet(norm=norm), images(32)
    shapes = declared_shapes(model, x)
    assert set(shapes) == {"params"}
    assert set(shapes["params"]["stage1_block1"]["norm1"]) == {"scale", "bias"}
    logits, eval_logits = train_and_eval_forward(model, draw_variables(shapes), x)
    np.testing.assert_allclose(logits, eval_logits, rtol=1e-5, atol=1e-5)  # no batch statistics


def test_resnet_v2_tiny_bfloat16():
    model16, x = tiny_resnet(dtype=jnp.bfloat16), images(32)
    shapes = declared_shapes(model16, x)  # float32 parameters whatever the compute dtype
    assert shapes == declared_shapes(tiny_resnet(), x)
    variables = draw_variables(shapes)
    _, logits16 = train_and_eval_forward(model16, variables, x)
    _, logits32, _ = train_and_eval(tiny_resnet(), variables, x)
    assert not np.array_equal(logits16, logits32)  # the compute did happen in bfloat16
    np.testing.assert_allclose(logits16, logits32, atol=0.1 * np.abs(logits32).max() + 0.05)


def test_vit_tiny_dropout():
    model, x = tiny_vit(dropout=0.1), images(64)
    shapes = declared_shapes(model, x)
    params = shapes["params"]
    assert params["embed"]["pos_embedding"].shape == (1, 64 + 1, 32)  # 8×8 patches + class token
    assert params["embed"]["cls_token"].shape == (1, 1, 32)
    assert params["block0"]["attn"]["query"]["kernel"].shape == (32, 2, 16)  # [D, heads, D / heads]
    assert set(params["block0"]) == {"norm1", "attn", "norm2", "mlp_in", "mlp_out"}
    assert call_order(model, x) == ["patch_embed", "embed", "block0", "block1", "final_norm", "head"]
    variables = draw_variables(shapes)
    train_a, eval_a, _ = train_and_eval(model, variables, x, jax.random.key(3))
    train_b, eval_b, _ = train_and_eval(model, variables, x, jax.random.key(4))
    assert not np.allclose(train_a, train_b)  # dropout acts in training...
    np.testing.assert_array_equal(eval_a, eval_b)  # ...and not in evaluation
    assert not np.allclose(train_a, eval_a)


def test_vit_block_call_order():
    block = EncoderBlock(heads=2, mlp_dim=8)
    assert call_order(block, np.zeros((1, 5, 4), np.float32)) == ["norm1", "attn", "norm2", "mlp_in", "mlp_out"]


def test_vit_tiny_bfloat16():
    x = images(64)
    variables = draw_variables(declared_shapes(tiny_vit(), x))
    _, logits16, _ = train_and_eval(tiny_vit(dtype=jnp.bfloat16), variables, x)
    _, logits32 = train_and_eval_forward(tiny_vit(), variables, x)
    assert not np.array_equal(logits16, logits32)  # the compute did happen in bfloat16
    np.testing.assert_allclose(logits16, logits32, atol=0.1 * np.abs(logits32).max() + 0.05)


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_vit_rejects_other_norms(norm):
    with pytest.raises(ValueError, match="allowed: layer"):
        ViT(num_classes=5, norm=norm)
