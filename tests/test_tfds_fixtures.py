"""The TFDS path on real prepared files: tests/fixtures/tfds holds tiny array_record datasets under the exact
names, versions and feature specs of cifar10, cifar10_corrupted/gaussian_noise_5 and svhn_cropped (written by
tests/fixtures/make_tfds_fixtures.py with TensorFlow, which this environment does not have). They are read
through the same code path as a user's --config.data.tfds_dir: dataset_info.json, the array_record records and
the PNG decoding of their `Image` features, and checked pixel by pixel against the generator's formula.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, small_config

from jaxens import data as data_lib
from jaxens import run as run_lib
from jaxens.trainer import spec as spec_lib

FIXTURES = os.path.join(REPO, "tests", "fixtures")
TFDS_DIR = os.path.join(FIXTURES, "tfds")
_spec = importlib.util.spec_from_file_location("make_tfds_fixtures", os.path.join(FIXTURES, "make_tfds_fixtures.py"))
assert _spec is not None and _spec.loader is not None
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)  # Its module level imports no TensorFlow: the formulas only.
with open(os.path.join(TFDS_DIR, "ORDER.json")) as f:
    ORDER = json.load(f)  # {name: {split: record index → example index}}, as TFDS read the records back.

SHIFTED, OOD = "cifar10_corrupted/gaussian_noise_5", "svhn_cropped"


def _expected(name: str, split: str):
    """The split's images [N, 32, 32, 3] and labels [N] in record order, from the generator's formulas."""
    order = ORDER[name][split]
    x = np.stack([fixtures.image(name, split, i) for i in order])
    y = np.asarray([fixtures.label(split, i) for i in order], np.int32)
    return x, y


def _source(tmp_path, name="cifar10", **fields) -> data_lib.Source:
    fields = {"tfds_dir": TFDS_DIR, "cache_dir": str(tmp_path / "cache"), "download": False, **fields}
    return data_lib.Source(name=name, allow_size_mismatch=True, **fields)


def test_tensorflow_is_not_needed():
    assert importlib.util.find_spec("tensorflow") is None, "the default suite runs without TensorFlow"


@pytest.mark.parametrize("name", ["cifar10", "svhn_cropped"])
def test_every_pixel_label_and_the_record_order(tmp_path, name):
    dataset = data_lib.load(_source(tmp_path, name))
    for split, (x, y) in (("train", (dataset.train_x, dataset.train_y)), ("test", (dataset.test_x, dataset.test_y))):
        want_x, want_y = _expected(name, split)
        assert sorted(ORDER[name][split]) == list(range(len(want_x)))  # Every example once.
        np.testing.assert_array_equal(np.asarray(x), want_x)  # PNG decoding is lossless: exact.
        np.testing.assert_array_equal(np.asarray(y), want_y)
    assert dataset.num_classes == 10


def test_validation_hold_out_and_channel_statistics(tmp_path):
    dataset = data_lib.load(_source(tmp_path, val_size=8, val_seed=3))
    x, y = _expected("cifar10", "train")
    held = np.sort(np.random.default_rng(3).permutation(len(x))[:8])  # The documented contract, re-derived.
    kept = np.setdiff1d(np.arange(len(x)), held)
    np.testing.assert_array_equal(np.asarray(dataset.val_x), x[held])
    np.testing.assert_array_equal(np.asarray(dataset.val_y), y[held])
    np.testing.assert_array_equal(np.asarray(dataset.train_x), x[kept])
    assert dataset.num_train == 40
    pixels = x[kept].astype(np.float64).reshape(-1, 3) / 255.0
    np.testing.assert_allclose(np.asarray(dataset.mean).reshape(-1), pixels.mean(0), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(dataset.std).reshape(-1), pixels.std(0), rtol=1e-5)


def test_shifted_and_ood_evaluation_sets(tmp_path):
    sets = data_lib.load_eval_sets(_source(tmp_path, shifted=(SHIFTED,), ood=(OOD,)))
    assert {name: s.kind for name, s in sets.items()} == {SHIFTED: "shifted", OOD: "ood"}
    for name in (SHIFTED, OOD):
        want_x, want_y = _expected(name, "test")
        np.testing.assert_array_equal(np.asarray(sets[name].x), want_x)
        np.testing.assert_array_equal(np.asarray(sets[name].y), want_y)


def test_sizes_are_read_from_the_metadata_and_resolve_the_run(tmp_path):
    info = data_lib.source_info(_source(tmp_path))
    assert (info.num_train, info.num_test, info.input_shape) == (48, 24, (32, 32, 3))
    assert data_lib.source_info(dataclasses.replace(_source(tmp_path), allow_size_mismatch=False)).num_train == 50000
    config = _config(tmp_path, **{"data.val_size": 8})
    spec = spec_lib.resolve(config)
    assert (spec.num_train, spec.steps_per_epoch) == (40, 5)  # 40 examples in batches of 8.


@pytest.mark.parametrize("name, split, found, known", [("cifar10", "train", 48, 50000), (SHIFTED, "test", 24, 10000)])
def test_a_partial_preparation_is_refused_naming_both_counts(tmp_path, name, split, found, known):
    source = dataclasses.replace(_source(tmp_path, name), allow_size_mismatch=False)
    with pytest.raises(data_lib.DatasetError, match="allow_size_mismatch") as e:
        if name == SHIFTED:
            data_lib.load_eval_sets(
                dataclasses.replace(_source(tmp_path), shifted=(SHIFTED,), allow_size_mismatch=False)
            )
        else:
            data_lib.load(source)
    assert f"{split} split holds {found} examples, where {name} has {known}" in str(e.value)
    assert not os.path.exists(tmp_path / "cache")  # Refused before decoding: nothing cached.


def _write_idx(path: str, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", n) for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_local_idx_files_of_another_size(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"train": rng.integers(0, 256, (12, 28, 28)), "test": rng.integers(0, 256, (6, 28, 28))}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        _write_idx(str(tmp_path / f"{prefix}-images-idx3-ubyte.gz"), arrays[split])
        _write_idx(str(tmp_path / f"{prefix}-labels-idx1-ubyte.gz"), np.arange(len(arrays[split])) % 10)
    source = data_lib.Source(name="fashion_mnist", dir=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(data_lib.DatasetError, match=r"holds 12 examples, where fashion_mnist has 60000"):
        data_lib.load(source)
    allowed = dataclasses.replace(source, allow_size_mismatch=True)
    assert (data_lib.source_info(allowed).num_train, data_lib.source_info(allowed).num_test) == (12, 6)
    dataset = data_lib.load(allowed)
    np.testing.assert_array_equal(np.asarray(dataset.train_x)[..., 0], arrays["train"])
    np.testing.assert_array_equal(np.asarray(dataset.test_y), np.arange(6) % 10)


def _overrides(tmp_path) -> dict:
    return {
        "dataset": "cifar10",
        "model.name": "cnn2d",
        "model.widths": (4,),
        "ensemble.k": 2,
        "train.batch_size": 8,
        "train.num_epochs": 1,
        "data.tfds_dir": TFDS_DIR,
        "data.cache_dir": str(tmp_path / "cache"),
        "data.download": False,
        "data.allow_size_mismatch": True,
        "eval.shifted": (SHIFTED,),
        "eval.ood": (OOD,),
    }


def _config(tmp_path, **more):
    return small_config(**{**_overrides(tmp_path), **more})


def _flags(tmp_path, **more) -> list[str]:
    def text(value):
        return f"({','.join(repr(v) for v in value)},)" if isinstance(value, tuple) else str(value)

    return [f"--config.{k}={text(v)}" for k, v in {**_overrides(tmp_path), **more}.items()]


def test_the_command_line_trains_on_the_fixture(tmp_path):
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "jaxens.train", "--config=configs/mnist1d_ensemble.py", f"--workdir={workdir}"]
    refused = subprocess.run(
        [*cmd, *_flags(tmp_path, **{"data.allow_size_mismatch": False})], cwd=REPO, capture_output=True, text=True
    )
    assert refused.returncode == 2, refused.stderr
    assert "train split holds 48 examples, where cifar10 has 50000" in refused.stderr
    assert not workdir.exists()  # Refused before anything was written.
    done = subprocess.run([*cmd, *_flags(tmp_path, **{"data.val_size": 8})], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["steps"] == 5  # One epoch of the 40 training examples left after the hold-out, 8 per batch.
    assert set(summary["eval"]) >= {"val", SHIFTED, OOD}
    assert len(summary["test"]["member_error"]) == 2
    restored = run_lib.restore(str(workdir))
    assert restored.dataset.num_train == 40
