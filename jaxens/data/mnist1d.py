"""MNIST-1D (Greydanus 2020), generated offline with the `mnist1d` package and cached on disk.

The package's default arguments give 4000 training and 1000 test sequences of length 40, 10 classes.
Generation takes a few seconds; the result is cached as .npz outside the working directory. The
package's `get_dataset(download=True)` is never called: this machine class has no internet.
"""

from __future__ import annotations

import numpy as np

from jaxens.data import cache


def load(cache_dir: str | None = None) -> dict[str, np.ndarray]:
    """MNIST-1D with the package's default generation arguments.

    Returns:
      dict with train_x [4000, 40] float32, train_y [4000] int32, test_x [1000, 40] float32,
      test_y [1000] int32.
    """
    from mnist1d import data as mnist1d_data  # Imports matplotlib/requests: only when needed.

    args = mnist1d_data.get_dataset_args(as_dict=True)

    def generate():
        raw = mnist1d_data.make_dataset(mnist1d_data.get_dataset_args())  # Offline; no download.
        return {
            "train_x": raw["x"].astype(np.float32),
            "train_y": raw["y"].astype(np.int32),
            "test_x": raw["x_test"].astype(np.float32),
            "test_y": raw["y_test"].astype(np.int32),
        }

    return cache.cached(cache_dir, "mnist1d", {"generator_args": args}, generate)
