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
    with pytest.raises(idx.DatasetFileError, match="t10k-labels-idx1-ubyte.gz.*truncated"):
        idx.load_mnist_format(str(tmp_path), "fashion_mnist")


def test_corrupted_gzip_names_the_file(tmp_path):
    _copy_fmnist(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:1000])  # Cut the archive itself.
    with pytest.raises(idx.DatasetFileError, match="train-labels-idx1-ubyte.gz"):
        idx.load_mnist_format(str(tmp_path), "fashion_mnist")


def test_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(idx.DatasetFileError, match="apt-get install dataset-fashion-mnist"):
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
