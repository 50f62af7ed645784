"""Config schema and validation: every violation names the field, before any compute."""

from __future__ import annotations

import glob
import os

import pytest
from conftest import REPO, load_config_file, small_config

from jaxens import config as config_lib
from jaxens.trainer import validation

SHIPPED = sorted(n for n in map(os.path.basename, glob.glob(os.path.join(REPO, "configs", "*.py"))) if n[0] != "_")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_validate_and_document_themselves(name):
    validation.validate(load_config_file(name))
    doc = open(os.path.join(REPO, "configs", name)).read()
    assert "python -m jaxens.train --config=configs/" in doc and "Expected run time" in doc and "Expected result" in doc


def test_locked_config_rejects_unknown_field():
    c = config_lib.get_default_config()
    with pytest.raises(AttributeError, match="kk"):
        c.ensemble.kk = 3


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"dataset": "cifar11"}, r"config.dataset='cifar11': unknown dataset; allowed: .*mnist1d"),
        ({"model.name": "resnet7"}, r"config.model.name='resnet7': unknown; allowed: .*mlp"),
        ({"model.name": "cnn2d"}, r"config.model.name='cnn2d'.*\(40, 1\).*mlp, cnn1d"),
        ({"ensemble.k": 0}, r"config.ensemble.k=0: must be >= 1"),
        ({"ensemble.strategy": "pmap"}, r"config.ensemble.strategy='pmap'.*vmap, loop"),
        ({"train.batch_size": 4001}, r"config.train.batch_size=4001: larger than the 4000"),
        ({"optimizer.learning_rate": 0.0}, r"config.optimizer.learning_rate=0.0: must be > 0"),
        ({"optimizer.boundaries": (0.75, 0.5)}, r"config.optimizer.boundaries"),
        ({"model.dropout": 1.0}, r"config.model.dropout=1.0"),
        (
            {"dataset": "cifar10_corrupted/fog_6"},
            r"config.dataset='cifar10_corrupted/fog_6': unknown dataset.*zoom_blur",
        ),
        (
            {"dataset": "cifar10_corrupted/fog_3", "model.name": "cnn2d"},
            r"evaluation-only dataset.*config.eval.shifted",
        ),
        (
            {"data.val_size": 3900},
            r"config.train.batch_size=500: larger than the 100 training examples of mnist1d left",
        ),
        ({"data.val_size": 4000}, r"config.data.val_size=4000: must be < the 4000"),
        ({"data.augment": "crop_flip"}, r"config.data.augment='crop_flip': needs images \[H, W, C\].*'none'"),
        (
            {"data.augment": "mixup"},
            r"config.data.augment='mixup': unknown; allowed: auto, none, flip, crop, crop_flip",
        ),
        (
            {"dataset": "cifar10", "model.name": "cnn2d", "eval.shifted": ("svhn_cropped",)},
            r"config.eval.shifted: 'svhn_cropped' has the classes of svhn.*config.eval.ood",
        ),
        (
            {"dataset": "cifar10", "model.name": "cnn2d", "eval.ood": ("fashion_mnist",)},
            r"config.eval.ood: 'fashion_mnist' has examples of shape \(28, 28, 1\)",
        ),
        ({"dataset": "tiny_imagenet", "model.name": "cnn2d"}, r"config.data.dir='': tiny_imagenet reads"),
        ({"ensemble.shared_streams": ("order", "labels")}, r"config.ensemble.shared_streams='labels'.*init, order"),
    ],
)
def test_invalid_values_are_named(overrides, pattern):
    with pytest.raises(config_lib.ConfigError, match=pattern):
        small_config(**overrides)


def test_all_violations_reported_at_once():
    with pytest.raises(config_lib.ConfigError) as info:
        small_config(**{"ensemble.k": 0, "train.num_epochs": 0})
    assert "config.ensemble.k" in str(info.value) and "config.train.num_epochs" in str(info.value)


def test_unknown_override_paths():
    assert config_lib.unknown_fields(["config.ensemble.k", "config.train.batch_size"]) == []
    (msg,) = config_lib.unknown_fields(["config.ensemble.kk"])
    assert "'kk'" in msg and "k, members_per_call, method, shared_streams, strategy" in msg


def test_fort_resnet20_follows_the_keras_cifar10_resnet_example():
    """Fort et al.: "the learning rate schedule used in Keras examples". The example's lr_schedule(epoch),
    written here as Keras has it, against the config's schedule at the first and last step of every epoch;
    batch 32, L2 1e-4 (2e-4 on the gradient), projection shortcuts."""

    def keras_lr_schedule(epoch):  # keras-team/keras examples/cifar10_resnet.py, 0-based epochs.
        lr = 1e-3
        if epoch > 180:
            lr *= 0.5e-3
        elif epoch > 160:
            lr *= 1e-3
        elif epoch > 120:
            lr *= 1e-2
        elif epoch > 80:
            lr *= 1e-1
        return lr

    from jaxens import optim

    config = config_lib.load_file(os.path.join(REPO, "configs", "fort_cifar10_cnn.py"), "resnet20")
    validation.validate(config)
    spe = (50000 - 5000) // 32
    schedule = optim.make_schedule(config.optimizer, spe * 200)
    for epoch in range(200):
        for step in (epoch * spe, (epoch + 1) * spe - 1):
            assert float(schedule(step)) == pytest.approx(keras_lr_schedule(epoch), rel=1e-6), (epoch, step)
    assert config.train.batch_size == 32 and config.model.shortcut == "B" and config.optimizer.weight_decay == 2e-4
    assert config.optimizer.name == "adam" and config.train.num_epochs == 200


def test_decay_factors_need_one_per_boundary():
    with pytest.raises(config_lib.ConfigError, match=r"config.optimizer.decay_factors=\(0.1,\): needs one"):
        small_config(**{"optimizer.schedule": "piecewise", "optimizer.decay_factors": (0.1,)})


def test_imagenet_c_names_are_evaluation_sets_of_imagenet():
    config = load_config_file("fort_imagenet_resnet50.py")
    validation.validate(config)  # Its shifted sets: imagenet2012_corrupted/gaussian_noise_1..5.
    config.eval.shifted = ("imagenet2012_corrupted/glass_blur_6",)
    with pytest.raises(config_lib.ConfigError, match=r"glass_blur_6.*unknown dataset.*elastic_transform"):
        validation.validate(config)
    config.eval.shifted = ()
    config.dataset = "imagenet2012_corrupted/fog_3"
    with pytest.raises(config_lib.ConfigError, match="evaluation-only dataset.*train on imagenet2012"):
        validation.validate(config)


@pytest.mark.parametrize("configuration", ["DN-100-12-4", "DN-82-8-8", "DN-64-6-16"])
def test_webb_densenet_configurations_validate(configuration):
    config = config_lib.load_file(os.path.join(REPO, "configs", "webb_cifar100_densenet.py"), configuration)
    validation.validate(config)
    assert tuple(config.loss.lam) == (0.0, 0.5, 0.9, 1.0)
