"""A disk cache of decoded dataset arrays (.npz), so expensive decoding or generation happens once.

Entries are keyed by a dict of everything that determines their content (dataset, split, version,
source directory, transforms); the file name carries a digest of it. Writes are atomic, so runs racing
to fill the same entry never read a partial file. The cache only saves time: an entry that does not load
(cut short by a full disk, damaged) is built again and replaced, and a cache directory this process
cannot write to (a shared, read-only one) is read from but not written, each event logged.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable

import numpy as np
from absl import logging

from jaxens import files
from jaxens.data.errors import DatasetError

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
    damage = None
    if os.path.exists(path):
        try:
            with np.load(path) as f:
                return {k: f[k] for k in f.files}
        except Exception as e:  # zipfile, numpy and OS errors: any of them means "build it again".
            damage = f"the cache entry {path} does not load ({type(e).__name__}: {e})"
            logging.warning("%s; building it again", damage)
    try:
        arrays = build()
    except DatasetError as e:
        if damage is None:
            raise
        raise DatasetError(f"{e}\n({damage}, and could not be built again)") from None
    _write(path, arrays)
    return arrays


# Writers killed mid-write leave `.tmp-*` files; ones this old cannot belong to a write still running.
_STALE_TEMPORARY_S = 24 * 3600


def _write(path: str, arrays: Arrays) -> None:
    """Caches `arrays` at `path` atomically; a directory that cannot be written only costs the next run time."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        files.remove_temporaries(os.path.dirname(path), older_than_s=_STALE_TEMPORARY_S)
        with files.atomic_writer(path) as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
    except OSError as e:
        logging.warning("could not cache the data at %s (%s); it will be read or built again next time", path, e)
