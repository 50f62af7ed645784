"""Reader for the IDX file format of MNIST and Fashion-MNIST (gzip-compressed or raw).

Format: 2 zero bytes, a type byte (0x08 = uint8), a byte with the number of dimensions D, then D
big-endian uint32 sizes, then the data in C order.
"""

from __future__ import annotations

import gzip
import os

import numpy as np

from jaxens.data.errors import DatasetError

# Where Debian's `dataset-fashion-mnist` package puts the four files.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

MNIST_FORMAT_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


_MAX_HEADER = 4 + 4 * 255  # The magic number, then up to 255 uint32 sizes.


def _read(path: str, size: int = -1) -> bytes:
    """The file's (decompressed) bytes, the first `size` of them, or all."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            return f.read(size)
    except (OSError, EOFError) as e:  # gzip raises these for corrupt or truncated archives.
        raise DatasetError(f"{path}: cannot be read as {'gzip' if opener is gzip.open else 'a file'}: {e}") from e


def _shape(path: str, raw: bytes) -> tuple[int, ...]:
    """The shape an IDX file's header (at the start of `raw`) declares, its magic number checked."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DatasetError(f"{path}: truncated IDX header")
    return tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))


def read_idx(path: str) -> np.ndarray:
    """Reads one IDX file of unsigned bytes into an array of its declared shape.

    Raises:
      DatasetError: naming the file, when it is not valid IDX or holds fewer bytes than declared.
    """
    raw = _read(path)
    shape = _shape(path, raw)
    header = 4 + 4 * len(shape)
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DatasetError(
            f"{path}: IDX header declares shape {shape} ({expected} bytes) but the file holds "
            f"{len(raw) - header} bytes of data (truncated or corrupted)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def count(path: str) -> int:
    """The number of examples an IDX file declares (its first dimension), read from its header only.

    Raises:
      DatasetError: naming the file, when its header cannot be read or declares no example axis.
    """
    shape = _shape(path, _read(path, _MAX_HEADER))
    if not shape:
        raise DatasetError(f"{path}: the IDX header declares a scalar, not examples")
    return shape[0]


def mnist_format_path(directory: str, key: str) -> str | None:
    """The file of `key` ('train_x', ...; `MNIST_FORMAT_FILES`) in `directory`, .gz or not; None if absent."""
    candidates = [os.path.join(directory, MNIST_FORMAT_FILES[key] + ext) for ext in (".gz", "")]
    return next((p for p in candidates if os.path.exists(p)), None)


def has_mnist_format(directory: str) -> bool:
    """Whether `directory` holds the four MNIST-format files (.gz or uncompressed)."""
    return all(
        any(os.path.exists(os.path.join(directory, stem + ext)) for ext in (".gz", ""))
        for stem in MNIST_FORMAT_FILES.values()
    )


def load_mnist_format(directory: str, name: str, sizes: tuple[int, int] | None = None):
    """Loads the four standard MNIST-format files from `directory` (.gz or uncompressed).

    Args:
      sizes: (train, test) example counts the files must hold (the dataset's known sizes), or None.

    Returns:
      ((train_x [N, H, W] uint8, train_y [N] uint8), (test_x, test_y)).

    Raises:
      DatasetError: a file is missing, unreadable, or holds another number of examples than `sizes`
        (naming the file and both counts).
    """
    arrays, paths = {}, {}
    for key, stem in MNIST_FORMAT_FILES.items():
        path = mnist_format_path(directory, key)
        if path is None:
            raise DatasetError(
                f"{name}: {os.path.join(directory, stem + '.gz')} not found. Install Debian's dataset-fashion-mnist package "
                f"(apt-get install dataset-fashion-mnist) or set --config.data.dir to a directory holding "
                f"{', '.join(s + '.gz' for s in MNIST_FORMAT_FILES.values())}"
            )
        arrays[key] = read_idx(path)
        paths[key] = path
    expected_counts = (
        {} if sizes is None else {f"{split}_{xy}": n for split, n in zip(("train", "test"), sizes) for xy in "xy"}
    )
    for key, expected in expected_counts.items():
        if len(arrays[key]) != expected:
            raise DatasetError(
                f"{name}: {paths[key]} holds {len(arrays[key])} examples, where {name} has {expected}; the file "
                f"is incomplete or not {name}'s (set --config.data.dir to a directory holding the whole dataset, "
                "or --config.data.allow_size_mismatch=True to train on these files as they are)"
            )
    for split in ("train", "test"):
        if len(arrays[f"{split}_x"]) != len(arrays[f"{split}_y"]):
            raise DatasetError(
                f"{name}: {split} images ({len(arrays[f'{split}_x'])}) and labels "
                f"({len(arrays[f'{split}_y'])}) differ in count"
            )
    return (arrays["train_x"], arrays["train_y"]), (arrays["test_x"], arrays["test_y"])
