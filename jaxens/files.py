"""Atomic file writes that keep ordinary permissions, and the temporaries a killed writer leaves behind.

A result file is written to a temporary file in its directory (named `.tmp-*`), flushed to disk and renamed
over its target, so a reader sees the old file or the whole new one. `tempfile.mkstemp` creates its file
mode 0600; the rename would then make results readable by their owner only, so the temporary is given the
mode an ordinary `open()` would have produced: the target's own mode when it exists, else 0666 minus the
process's umask (a shared group can read what a run wrote).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from typing import IO, Any

from absl import logging

TEMPORARY_PREFIX = ".tmp-"


def nearest_existing(path: str) -> str:
    """`path` made absolute, or its nearest ancestor that exists: where creating it would start, and what
    decides whether it can be created."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    return existing


def not_a_directory(path: str) -> str | None:
    """Why `path` (a directory setting: '' and URLs are not checked) cannot be a directory, or None: it is a
    file, or lies under one."""
    if not isinstance(path, str) or not path or "://" in path:
        return None
    expanded = os.path.expanduser(path)
    existing = nearest_existing(expanded)
    if os.path.isdir(existing):
        return None
    return "is a file" if existing == os.path.abspath(expanded) else f"lies under the file {existing}"


def umask() -> int:
    """The process's umask, read without changing it (other threads may be creating files meanwhile)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # Not Linux: the brief change is the only portable way to read it.
    os.umask(mask)
    return mask


def _mode_for(path: str) -> int:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~umask()


@contextlib.contextmanager
def atomic_writer(path: str) -> Iterator[IO[bytes]]:
    """A binary file to write `path`'s new content into: a temporary file in the same directory, synced
    and renamed over `path` when the block ends without an error (and deleted when it raises). Readers see
    the old file or the whole new one, never a half-written file. The file gets the permissions an
    ordinary `open(path, 'wb')` would give it."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=TEMPORARY_PREFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _mode_for(path))
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Writes `data` to `path` atomically (`atomic_writer`)."""
    with atomic_writer(path) as f:
        f.write(data)


def write_json_atomic(path: str, obj: Any) -> None:
    """Writes `obj` as JSON to `path` atomically (`write_bytes_atomic`)."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def remove_temporaries(directory: str, older_than_s: float = 0.0) -> list[str]:
    """Deletes the `.tmp-*` files a writer killed mid-write left in `directory` (not below it), and
    returns their names.

    Args:
      older_than_s: only those last modified this long ago (a directory other processes may be writing
        into right now); 0 for all (a workdir whose lock this process holds).
    """
    removed = []
    now = time.time()
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        path = os.path.join(directory, name)
        if not name.startswith(TEMPORARY_PREFIX) or not os.path.isfile(path):
            continue
        try:
            if now - os.path.getmtime(path) >= older_than_s:
                os.remove(path)
                removed.append(name)
        except FileNotFoundError:
            continue  # Renamed or removed by its writer meanwhile.
    if removed:
        logging.info("removed %d temporary file(s) left by an interrupted write in %s", len(removed), directory)
    return removed
