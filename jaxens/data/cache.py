"""A disk cache of decoded dataset arrays (.npz), so expensive decoding or generation happens once.

Entries are keyed by a dict of everything that determines their content (dataset, split, version,
source directory, transforms); the file name carries a digest of it. Writes are atomic, so runs racing
to fill the same entry never read a partial file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable

import numpy as np

Arrays = dict[str, np.ndarray]


def default_cache_dir() -> str:
    """`$XDG_CACHE_HOME/jaxens`, or `~/.cache/jaxens`."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxens")


def cached(cache_dir: str | None, prefix: str, key: dict, build: Callable[[], Arrays]) -> Arrays:
    """The arrays cached under (`prefix`, `key`), calling `build()` and caching its result on a miss.

    Args:
      cache_dir: directory of the cache ('' or None: `default_cache_dir()`).
      prefix: readable start of the file name (the dataset name; '/' is replaced).
      key: JSON-serializable description of the content.
      build: computes the arrays.
    """
    cache_dir = cache_dir or default_cache_dir()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    path = os.path.join(cache_dir, f"{prefix.replace('/', '-')}-{digest}.npz")
    if os.path.exists(path):
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    arrays = build()
    os.makedirs(cache_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return arrays
