"""Reader for Tiny-ImageNet (200 classes of 64x64 RGB images) from its unzipped folder.

TFDS has no official builder for Tiny-ImageNet, so this reads the folder as unzipped from
http://cs231n.stanford.edu/tiny-imagenet-200.zip:

    tiny-imagenet-200/
      wnids.txt                                 200 WordNet ids, one per line
      train/<wnid>/images/<wnid>_<i>.JPEG       500 images per class (train/<wnid>/<wnid>_boxes.txt unused)
      val/images/val_<i>.JPEG                   10,000 images
      val/val_annotations.txt                   tab-separated: file name, wnid, 4 bounding-box ints
      test/images/*.JPEG                        unlabeled, unused

The official test split has no labels, so the `val` split serves as the test split.
"""

from __future__ import annotations

import concurrent.futures
import os

import numpy as np
from PIL import Image

from jaxens.data.errors import DatasetError

URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
FOLDER = "tiny-imagenet-200"
IMAGE_SIZE = 64


def _find_root(directory: str) -> str:
    """Returns the `tiny-imagenet-200` folder: `directory` itself or its child of that name."""
    for root in (os.path.join(directory, FOLDER), directory):
        if os.path.isfile(os.path.join(root, "wnids.txt")):
            return root
    raise DatasetError(
        f"tiny_imagenet: no wnids.txt in {directory} or {os.path.join(directory, FOLDER)}. Expected the "
        f"{FOLDER} folder (wnids.txt, train/, val/) as unzipped from {URL}; download and unzip it, then "
        f"set --config.data.dir to that folder or its parent"
    )


def _decode(path: str, out: np.ndarray) -> None:
    """Decodes one image file into `out` [64, 64, 3] uint8, converting grayscale and other modes to RGB."""
    try:
        with Image.open(path) as image:
            if image.size != (IMAGE_SIZE, IMAGE_SIZE):
                raise DatasetError(
                    f"{path}: image is {image.size[0]}x{image.size[1]}, expected {IMAGE_SIZE}x{IMAGE_SIZE}"
                )
            out[...] = np.asarray(image.convert("RGB"))
    except OSError as e:  # Also covers PIL.UnidentifiedImageError and truncated files.
        raise DatasetError(f"{path}: cannot be decoded as an image ({e}); re-download {URL}") from e


def _read_images(paths: list[str]) -> np.ndarray:
    """Decodes `paths` in parallel threads (PIL releases the GIL while decoding).

    Returns:
      [len(paths), 64, 64, 3] uint8, in the order of `paths`.
    """
    images = np.empty((len(paths), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(32, os.cpu_count() or 1)) as pool:
        for _ in pool.map(_decode, paths, images):  # Consuming the results re-raises the first error.
            pass
    return images


def load(directory: str) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Loads the labeled train and val splits of Tiny-ImageNet.

    The class index of a wnid is its position in the sorted list of wnids in wnids.txt (the torchvision
    ImageFolder convention). Train examples are ordered by class index, then file name; val examples
    by file name.

    Args:
      directory: the `tiny-imagenet-200` folder, or the folder that holds it.

    Returns:
      ((train_x [N, 64, 64, 3] uint8, train_y [N] int32), (val_x [M, 64, 64, 3] uint8, val_y [M] int32)),
      with N = 100,000 and M = 10,000 for the full dataset.

    Raises:
      DatasetError: naming the offending path, when a folder, file or annotation is missing or malformed,
        or an image cannot be decoded or is not 64x64.
    """
    train_paths, train_labels, val_paths, val_labels = _listing(directory)
    train = (_read_images(train_paths), np.asarray(train_labels, np.int32))
    val = (_read_images(val_paths), np.asarray(val_labels, np.int32))
    return train, val


def sizes(directory: str) -> tuple[int, int]:
    """(train, val) example counts of the folder, from its listing and annotations (no image decoded).

    Raises:
      DatasetError: as `load`, for a missing or malformed folder, file or annotation.
    """
    train_paths, _, val_paths, _ = _listing(directory)
    return len(train_paths), len(val_paths)


def _listing(directory: str) -> tuple[list[str], list[int], list[str], list[int]]:
    """(train paths, their class indices, val paths, their class indices), in `load`'s order."""
    root = _find_root(directory)
    with open(os.path.join(root, "wnids.txt")) as f:
        wnids = sorted(line.strip() for line in f if line.strip())
    label_of = {wnid: label for label, wnid in enumerate(wnids)}

    train_paths, train_labels = [], []
    for label, wnid in enumerate(wnids):
        folder = os.path.join(root, "train", wnid, "images")
        names = os.listdir(folder) if os.path.isdir(folder) else []
        names = sorted(n for n in names if n.lower().endswith(".jpeg"))
        if not names:
            raise DatasetError(f"{folder}: missing or empty; expected the .JPEG training images of {wnid}")
        train_paths += [os.path.join(folder, n) for n in names]
        train_labels += [label] * len(names)

    annotations = os.path.join(root, "val", "val_annotations.txt")
    if not os.path.isfile(annotations):
        raise DatasetError(f"{annotations}: not found; expected tab-separated lines of file name, wnid, bbox")
    val_label_of = {}  # file name -> class index
    with open(annotations) as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 2 or fields[1] not in label_of:
                raise DatasetError(
                    f"{annotations}:{line_number}: expected a file name and a wnid listed in wnids.txt, "
                    f"got {line.strip()!r}"
                )
            val_label_of[fields[0]] = label_of[fields[1]]
    val_names = sorted(val_label_of)
    val_paths = [os.path.join(root, "val", "images", n) for n in val_names]
    for path in val_paths:
        if not os.path.isfile(path):
            raise DatasetError(f"{path}: not found, but listed in {annotations}")

    return train_paths, train_labels, val_paths, [val_label_of[n] for n in val_names]
