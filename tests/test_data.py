"""Offline datasets: real Fashion-MNIST IDX files and MNIST-1D; batches as index gathers."""

from __future__ import annotations

import gzip
import os
import shutil

import numpy as np
import pytest
from conftest import small_config

from jaxens import data as data_lib
from jaxens.data import idx
from jaxens.data.errors import DatasetError


def test_fashion_mnist_loads_offline():
    ds = data_lib.load(small_config(**{"dataset": "fashion_mnist", "model.name": "cnn2d"}))
    assert ds.train_x.shape == (60000, 28, 28, 1) and ds.train_x.dtype == np.uint8
    assert ds.test_x.shape == (10000, 28, 28, 1)
    assert ds.train_y.dtype == np.int32 and set(np.unique(ds.train_y)) == set(range(10))
    np.testing.assert_array_equal(np.bincount(ds.train_y), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(ds.test_y), np.full(10, 1000))
    # Normalization uses the training set's statistics: the normalized training set has mean 0, std 1.
    z = np.asarray(ds.normalize(ds.train_x[:20000]))
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02


def _copy_fmnist(tmp_path):
    for stem in idx.MNIST_FORMAT_FILES.values():
        shutil.copy(os.path.join(idx.FASHION_MNIST_DIR, stem + ".gz"), tmp_path)


def test_truncated_idx_file_names_the_file(tmp_path):
    _copy_fmnist(tmp_path)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-10]))  # A valid gzip of a truncated IDX file.
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte.gz.*truncated"):
        idx.load_mnist_format(str(tmp_path), "fashion_mnist")


def test_corrupted_gzip_names_the_file(tmp_path):
    _copy_fmnist(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:1000])  # Cut the archive itself.
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte.gz"):
        idx.load_mnist_format(str(tmp_path), "fashion_mnist")


def test_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        idx.load_mnist_format(str(tmp_path), "fashion_mnist")


def test_mnist1d_generated_offline_and_cached(tmp_path):
    ds = data_lib.load(small_config(**{"data.cache_dir": str(tmp_path)}))
    assert ds.train_x.shape == (4000, 40, 1) and ds.test_x.shape == (1000, 40, 1)
    assert ds.train_x.dtype == np.float32 and set(np.unique(ds.train_y)) == set(range(10))
    cached = list(tmp_path.glob("mnist1d-*.npz"))
    assert len(cached) == 1
    again = data_lib.load(small_config(**{"data.cache_dir": str(tmp_path)}))
    np.testing.assert_array_equal(ds.train_x, again.train_x)


def test_batch_indices_slice_the_epoch_permutation():
    order = np.random.default_rng(0).permutation(100).astype(np.int32)
    spe = data_lib.steps_per_epoch(100, 30)  # 3 steps; the last 10 examples are dropped each epoch.
    assert spe == 3
    np.testing.assert_array_equal(data_lib.batch_indices(order, 1, 30, spe), order[30:60])
    np.testing.assert_array_equal(data_lib.batch_indices(order, 5, 30, spe), order[60:90])


def test_fashion_mnist_from_a_config_directory_names_a_corrupted_file(tmp_path):
    _copy_fmnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 2], compresslevel=1))
    config = small_config(**{"dataset": "fashion_mnist", "model.name": "cnn2d", "data.dir": str(tmp_path)})
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz.*truncated"):
        data_lib.load(config)


def test_fashion_mnist_without_idx_files_falls_back_to_tfds(tmp_path, monkeypatch):
    monkeypatch.setattr(idx, "FASHION_MNIST_DIR", str(tmp_path / "absent"))
    config = small_config(
        **{"dataset": "fashion_mnist", "model.name": "cnn2d", "data.tfds_dir": str(tmp_path / "tfds")}
    )
    with pytest.raises(DatasetError) as e:
        data_lib.load(config)
    assert "tfds build fashion_mnist" in str(e.value) and "apt-get install dataset-fashion-mnist" in str(e.value)


def test_digits_load_offline_with_a_fixed_split():
    ds = data_lib.load(small_config(**{"dataset": "digits", "model.name": "cnn2d", "train.batch_size": 32}))
    assert ds.train_x.shape == (1497, 8, 8, 1) and ds.test_x.shape == (300, 8, 8, 1)
    assert ds.train_x.dtype == np.uint8 and ds.train_x.max() == 16
    from sklearn.datasets import load_digits

    raw = load_digits()
    test = np.sort(np.random.default_rng(0).permutation(1797)[:300])
    np.testing.assert_array_equal(ds.test_y, raw.target[test])
    np.testing.assert_array_equal(ds.test_x[..., 0], raw.images[test].astype(np.uint8))


def test_validation_split_is_held_out_by_seed(mnist1d, tmp_path):
    config = small_config(**{"data.val_size": 500, "data.val_seed": 7})
    ds = data_lib.load(config)
    held = np.sort(np.random.default_rng(7).permutation(4000)[:500])  # The documented contract.
    rest = np.setdiff1d(np.arange(4000), held)
    np.testing.assert_array_equal(ds.val_x, mnist1d.train_x[held])
    np.testing.assert_array_equal(ds.val_y, mnist1d.train_y[held])
    np.testing.assert_array_equal(ds.train_x, mnist1d.train_x[rest])
    np.testing.assert_array_equal(ds.test_x, mnist1d.test_x)
    # Normalization statistics come from the remaining training examples only.
    np.testing.assert_allclose(ds.mean, mnist1d.train_x[rest].mean(axis=(0, 1)), rtol=1e-5)
    np.testing.assert_allclose(ds.std, mnist1d.train_x[rest].std(axis=(0, 1)), rtol=1e-4)
    other = data_lib.load(small_config(**{"data.val_size": 500, "data.val_seed": 8}))
    assert not np.array_equal(other.val_y, ds.val_y)
    assert mnist1d.val_x.shape == (0, 40, 1)  # None held out by default.


def test_channel_stats_match_numpy():
    x = np.random.default_rng(0).integers(0, 256, (10000, 4, 4, 3), dtype=np.uint8)
    mean, std = data_lib.channel_stats(x, 1 / 255)
    np.testing.assert_allclose(mean, (x / 255).mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(std, (x / 255).std(axis=(0, 1, 2)), rtol=1e-5)


def test_tiny_imagenet_through_the_registry(tmp_path):
    from test_tiny_imagenet import WNIDS, _save

    root = tmp_path / "tiny-imagenet-200"
    root.mkdir()
    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    for wnid in WNIDS:
        _save(root / "train" / wnid / "images" / f"{wnid}_0.JPEG")
    _save(root / "val" / "images" / "val_0.JPEG")
    (root / "val" / "val_annotations.txt").write_text(f"val_0.JPEG\t{WNIDS[0]}\t0\t0\t1\t1\n")
    config = small_config(
        **{
            "dataset": "tiny_imagenet",
            "model.name": "cnn2d",
            "train.batch_size": 2,
            "data.dir": str(tmp_path),
            "data.cache_dir": str(tmp_path / "cache"),
            "data.allow_size_mismatch": True,  # 3 training images of 100,000.
        }
    )
    assert data_lib.config_info(config).num_train == 3  # Counted from the folder, nothing decoded.
    ds = data_lib.load(config)
    assert ds.train_x.shape == (3, 64, 64, 3) and ds.test_x.shape == (1, 64, 64, 3) and ds.num_classes == 200
    assert data_lib.resolve_augment(config.dataset, config.data.augment) == "crop_flip"
