"""The TFDS path: datasets read with `tfds.data_source` without TensorFlow, and fast failure offline.

CIFAR-10, SVHN and ImageNet cannot be downloaded here. A "prepared" dataset is simulated by writing the
dataset's real metadata (dataset_info.json, features.json) into a data_dir, and its records by
`tfds.testing.mock_data`, which replaces the array_record reader with generated examples.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import REPO, small_config

from jaxens import data as data_lib
from jaxens.data import tfds_source

NUM_EXAMPLES = 12


def _prepare_metadata(data_dir, name, splits, file_format="array_record"):
    """Writes `name`'s metadata into data_dir as `tfds build` would, with the given split sizes."""
    builder = tfds.builder(name, data_dir=str(data_dir), file_format=file_format)
    infos = [
        tfds.core.SplitInfo(
            name=split,
            shard_lengths=[n],
            num_bytes=0,
            filename_template=tfds.core.ShardedFileTemplate(
                data_dir=builder.data_path,
                template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
                dataset_name=builder.name,
                split=split,
                filetype_suffix=file_format,
            ),
        )
        for split, n in splits.items()
    ]
    builder.info.set_splits(tfds.core.SplitDict(infos))
    builder.data_path.mkdir(parents=True, exist_ok=True)
    builder.info.write_to_directory(builder.data_path)


def _cifar_config(tmp_path, **overrides):
    return small_config(
        **{
            "dataset": "cifar10",
            "model.name": "cnn2d",
            "train.batch_size": 4,
            "data.tfds_dir": str(tmp_path / "tfds"),
            "data.cache_dir": str(tmp_path / "cache"),
            "data.allow_size_mismatch": True,  # The mock holds NUM_EXAMPLES records per split.
            **overrides,
        }
    )


def test_cifar10_and_svhn_read_through_data_source_without_tensorflow(tmp_path):
    _prepare_metadata(tmp_path / "tfds", "cifar10", {"train": 50000, "test": 10000})
    _prepare_metadata(tmp_path / "tfds", "svhn_cropped", {"train": 73257, "test": 26032, "extra": 531131})
    config = _cifar_config(tmp_path, **{"eval.ood": ("svhn_cropped",)})
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES, data_dir=str(tmp_path / "tfds")):
        dataset = data_lib.load(config)
        ood = data_lib.load_eval_sets(config)["svhn_cropped"]
        source = tfds.data_source("cifar10", split="train", data_dir=str(tmp_path / "tfds"))
        expected = [source[i] for i in range(NUM_EXAMPLES)]
        svhn = tfds.data_source("svhn_cropped", split="test", data_dir=str(tmp_path / "tfds"))
        expected_svhn = [svhn[i] for i in range(NUM_EXAMPLES)]
    assert "tensorflow" not in sys.modules  # Read without TensorFlow.

    assert dataset.train_x.shape == (NUM_EXAMPLES, 32, 32, 3) and dataset.train_x.dtype == np.uint8
    assert dataset.test_x.shape == (NUM_EXAMPLES, 32, 32, 3) and dataset.train_y.dtype == np.int32
    np.testing.assert_array_equal(dataset.train_x, np.stack([e["image"] for e in expected]))
    np.testing.assert_array_equal(dataset.train_y, [e["label"] for e in expected])
    assert ood.kind == "ood" and ood.x.shape == (NUM_EXAMPLES, 32, 32, 3) and ood.x.dtype == np.uint8
    np.testing.assert_array_equal(ood.x, np.stack([e["image"] for e in expected_svhn]))

    # A batch is the normalized source examples at the member's indices.
    order = np.random.default_rng(1).permutation(NUM_EXAMPLES).astype(np.int32)
    key = np.zeros(2, np.uint32)
    x, y = data_lib.member_batch(dataset.to_device(), order, key, 1, batch_size=4, augment="none")
    indices = order[4:8]
    scaled = np.stack([expected[i]["image"] for i in indices]).astype(np.float32) / 255.0
    np.testing.assert_allclose(np.asarray(x), (scaled - dataset.mean) / dataset.std, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(y), [expected[i]["label"] for i in indices])

    # The decoded arrays were cached: loading again reads no records (outside the mock there are none).
    again = data_lib.load(config)
    np.testing.assert_array_equal(again.train_x, dataset.train_x)


def test_svhn_as_training_set_and_cifar10_corrupted_as_shifted_set(tmp_path):
    name = "cifar10_corrupted/gaussian_noise_5"
    _prepare_metadata(tmp_path / "tfds", "svhn_cropped", {"train": 73257, "test": 26032, "extra": 531131})
    _prepare_metadata(tmp_path / "tfds", "cifar10", {"train": 50000, "test": 10000})
    _prepare_metadata(tmp_path / "tfds", name, {"test": 10000})
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES, data_dir=str(tmp_path / "tfds")):
        svhn = data_lib.load(_cifar_config(tmp_path, dataset="svhn_cropped"))
        shifted = data_lib.load_eval_sets(_cifar_config(tmp_path, **{"eval.shifted": (name,)}))[name]
    assert svhn.train_x.shape == (NUM_EXAMPLES, 32, 32, 3) and svhn.num_classes == 10
    assert data_lib.resolve_augment("svhn_cropped", "auto") == "crop"  # No flips of digits.
    assert shifted.kind == "shifted" and shifted.x.shape == (NUM_EXAMPLES, 32, 32, 3)


def test_imagenet_images_are_center_cropped_and_resized(tmp_path):
    _prepare_metadata(tmp_path / "tfds", "imagenet2012", {"train": 1281167, "validation": 50000})
    config = small_config(
        **{
            "dataset": "imagenet2012",
            "model.name": "cnn2d",
            "data.image_size": 16,
            "data.tfds_dir": str(tmp_path / "tfds"),
            "data.cache_dir": str(tmp_path / "cache"),
            "data.allow_size_mismatch": True,
        }
    )
    with tfds.testing.mock_data(num_examples=4, data_dir=str(tmp_path / "tfds")):
        dataset = data_lib.load(config)
    assert dataset.train_x.shape == (4, 16, 16, 3) and dataset.test_x.shape == (4, 16, 16, 3)
    assert dataset.num_classes == 1000


def test_unprepared_dataset_fails_fast_offline_with_guidance(tmp_path):
    config = _cifar_config(tmp_path)
    start = time.perf_counter()
    with pytest.raises(data_lib.DatasetError) as e:
        data_lib.load(config)
    assert time.perf_counter() - start < 10
    message = str(e.value)
    for part in (
        "cifar10: not prepared in",
        "tfds build cifar10 --file_format=array_record",
        "--config.data.tfds_dir",
        "gs://",
        "jaxens[prepare]",
    ):
        assert part in message
    assert not (tmp_path / "cache").exists() or not os.listdir(tmp_path / "cache")


def test_download_disabled_and_tfrecord_format_are_explained(tmp_path):
    with pytest.raises(data_lib.DatasetError, match="config.data.download is false"):
        data_lib.load(_cifar_config(tmp_path, **{"data.download": False}))
    _prepare_metadata(tmp_path / "tfds", "cifar10", {"train": 50000, "test": 10000}, file_format="tfrecord")
    with pytest.raises(data_lib.DatasetError, match="tfrecord format.*convert_format"):
        data_lib.load(_cifar_config(tmp_path))


def test_cli_exits_fast_for_an_unprepared_dataset(tmp_path):
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxens.train",
            f"--config={REPO}/configs/mnist1d_ensemble.py",
            f"--workdir={tmp_path / 'run'}",
            "--config.dataset=cifar100",
            "--config.model.name=cnn2d",
            f"--config.data.tfds_dir={tmp_path / 'tfds'}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr
    assert "cifar100: not prepared in" in proc.stderr and "tfds build cifar100" in proc.stderr
    assert elapsed < 10, f"took {elapsed:.1f} s"
    assert not (tmp_path / "run").exists()  # Nothing written.


def test_unreachable_hosts_probe():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        open_port = server.getsockname()[1]
        with socket.socket() as closed:  # Bound but not listening: connections are refused.
            closed.bind(("127.0.0.1", 0))
            closed_port = closed.getsockname()[1]
            failed = tfds_source.unreachable_hosts(
                [f"http://127.0.0.1:{open_port}/a.tar", f"https://127.0.0.1:{closed_port}/b.tar"], timeout=2
            )
    assert failed == [f"127.0.0.1:{closed_port}"]
