"""MNIST-1D (Greydanus 2020), generated offline with the `mnist1d` package and cached on disk.

The package's default arguments give 4000 training and 1000 test sequences of length 40, 10 classes.
Generation takes a few seconds; the result is cached as .npz outside the working directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

import numpy as np


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxens")


def load(cache_dir: str | None = None) -> dict[str, np.ndarray]:
    """MNIST-1D with the package's default generation arguments.

    Returns:
      dict with x [4000, 40] float32, y [4000] int32, x_test [1000, 40] float32, y_test [1000] int32.
    """
    from mnist1d import data as mnist1d_data  # Imports matplotlib/requests: only when needed.

    args = mnist1d_data.get_dataset_args(as_dict=True)
    digest = hashlib.sha256(json.dumps(args, sort_keys=True, default=str).encode()).hexdigest()[:12]
    cache_dir = cache_dir or default_cache_dir()
    path = os.path.join(cache_dir, f"mnist1d-{digest}.npz")
    if os.path.exists(path):
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    raw = mnist1d_data.make_dataset(mnist1d_data.get_dataset_args())  # Offline; no download.
    arrays = {
        "x": raw["x"].astype(np.float32),
        "y": raw["y"].astype(np.int32),
        "x_test": raw["x_test"].astype(np.float32),
        "y_test": raw["y_test"].astype(np.int32),
    }
    os.makedirs(cache_dir, exist_ok=True)
    # Atomic: concurrent runs may race to write the cache; each writes its own temp file.
    fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".npz.tmp")
    with os.fdopen(fd, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)
    return arrays
