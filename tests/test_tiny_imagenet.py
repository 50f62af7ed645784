"""Tiny-ImageNet reader on a small fake `tiny-imagenet-200` folder of real JPEG files."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from jaxens.data import tiny_imagenet
from jaxens.data.errors import DatasetError

# Listed unsorted in wnids.txt; the class index is the position in sorted order.
WNIDS = ["n09999999", "n01443537", "n02124075"]
LABELS = {"n01443537": 0, "n02124075": 1, "n09999999": 2}
TRAIN_PER_CLASS = 4
# val file name -> wnid, written to val_annotations.txt in this (unsorted) order.
VAL = {
    "val_3.JPEG": "n02124075",
    "val_0.JPEG": "n09999999",
    "val_4.JPEG": "n01443537",
    "val_1.JPEG": "n01443537",
    "val_2.JPEG": "n02124075",
}
GRAY_VAL = "val_2.JPEG"
TOLERANCE = 3  # JPEG error on a flat color at quality 95.


def _color(k: int) -> tuple[int, int, int]:
    """A flat color unique to image number k, away from 0 and 255."""
    return (20 + 11 * k, 230 - 9 * k, 40 + 5 * k)


def _save(path, size=64, color=(128, 128, 128), mode="RGB"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fill = color[0] if mode == "L" else color
    Image.new(mode, (size, size), fill).save(path, quality=95)


@pytest.fixture
def fake(tmp_path):
    """Writes the folder; returns (root, expected train colors [12, 3], expected val colors [5, 3])."""
    root = tmp_path / "tiny-imagenet-200"
    root.mkdir()
    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    k = 0
    train_colors = {}
    for wnid in WNIDS:
        for i in reversed(range(TRAIN_PER_CLASS)):  # Written out of order on purpose.
            train_colors[(LABELS[wnid], i)] = _color(k)
            _save(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", color=_color(k))
            k += 1
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.JPEG\t0\t0\t63\t63\n")
    val_colors = {}
    lines = []
    for name, wnid in VAL.items():
        mode = "L" if name == GRAY_VAL else "RGB"
        color = (77, 77, 77) if mode == "L" else _color(k)
        val_colors[name] = color
        _save(root / "val" / "images" / name, color=color, mode=mode)
        lines.append(f"{name}\t{wnid}\t1\t2\t60\t61")
        k += 1
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    _save(root / "test" / "images" / "test_0.JPEG", size=32)  # Would fail the size check if read.
    expected_train = [train_colors[(label, i)] for label in range(3) for i in range(TRAIN_PER_CLASS)]
    expected_val = [val_colors[name] for name in sorted(VAL)]
    return root, np.array(expected_train), np.array(expected_val)


def _assert_flat(images, colors):
    """Every pixel of images[j] [64, 64, 3] lies within TOLERANCE of colors[j] [3]."""
    diff = np.abs(images.astype(np.int32) - colors[:, None, None, :])
    assert diff.max() <= TOLERANCE, diff.max()


@pytest.mark.parametrize("parent", [False, True])
def test_loads_folder_or_its_parent(fake, parent):
    root, train_colors, val_colors = fake
    (train_x, train_y), (val_x, val_y) = tiny_imagenet.load(str(root.parent if parent else root))
    assert train_x.shape == (12, 64, 64, 3) and train_x.dtype == np.uint8
    assert val_x.shape == (5, 64, 64, 3) and val_x.dtype == np.uint8
    assert train_y.dtype == np.int32 and val_y.dtype == np.int32
    np.testing.assert_array_equal(train_y, [0] * 4 + [1] * 4 + [2] * 4)
    # Val sorted by file name: val_0 .. val_4.
    np.testing.assert_array_equal(val_y, [LABELS[VAL[f"val_{i}.JPEG"]] for i in range(5)])
    _assert_flat(train_x, train_colors)
    _assert_flat(val_x, val_colors)
    gray = val_x[sorted(VAL).index(GRAY_VAL)]
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 0] == gray[..., 2]).all()


def test_missing_directory(tmp_path):
    with pytest.raises(DatasetError, match="tiny-imagenet-200") as e:
        tiny_imagenet.load(str(tmp_path / "nowhere"))
    assert "config.data.dir" in str(e.value) and "cs231n.stanford.edu" in str(e.value)


@pytest.mark.parametrize("content", ["garbage", "truncated"])
def test_undecodable_image(fake, content):
    root = fake[0]
    path = root / "train" / "n02124075" / "images" / "n02124075_2.JPEG"
    # "truncated" cuts the file inside the compressed image data, past the header.
    data = b"this is not a jpeg" if content == "garbage" else path.read_bytes()[:-20]
    path.write_bytes(data)
    with pytest.raises(DatasetError, match="n02124075_2.JPEG"):
        tiny_imagenet.load(str(root))


def test_wrong_image_size(fake):
    root = fake[0]
    _save(root / "val" / "images" / "val_3.JPEG", size=32)
    with pytest.raises(DatasetError, match=r"val_3\.JPEG.*32x32"):
        tiny_imagenet.load(str(root))


def test_val_annotation_with_unknown_wnid(fake):
    root = fake[0]
    with open(root / "val" / "val_annotations.txt", "a") as f:
        f.write("val_0.JPEG\tn00000000\t0\t0\t1\t1\n")
    with pytest.raises(DatasetError, match="n00000000"):
        tiny_imagenet.load(str(root))


def test_missing_pieces(fake):
    root = fake[0]
    os.remove(root / "val" / "images" / "val_4.JPEG")
    with pytest.raises(DatasetError, match="val_4.JPEG"):
        tiny_imagenet.load(str(root))
    os.remove(root / "val" / "val_annotations.txt")
    with pytest.raises(DatasetError, match="val_annotations.txt"):
        tiny_imagenet.load(str(root))
    for name in os.listdir(root / "train" / "n01443537" / "images"):
        os.remove(root / "train" / "n01443537" / "images" / name)
    with pytest.raises(DatasetError, match="n01443537"):
        tiny_imagenet.load(str(root))
