"""TFDS datasets read with `tfds.data_source` into uint8 arrays; TensorFlow is not needed to read.

`tfds.data_source` gives random access to datasets prepared in the array_record format. Preparing a
dataset (downloading and converting it) is TFDS's job and, for image datasets, may need TensorFlow:
the optional extra `pip install 'jaxens[prepare]'` installs it.

When a dataset is not prepared in the data directory, `read_splits` either prepares it (when allowed and
the machine can reach the dataset's download hosts) or stops at once with a `DatasetError` that says how
to prepare it and which directory to point at. It never enters TFDS's download retries on an offline
machine, which take minutes to give up.
"""

from __future__ import annotations

import concurrent.futures
import os
import socket
import urllib.parse
from collections.abc import Callable

import numpy as np

from jaxens import progress
from jaxens.data.errors import DatasetError, size_mismatch_message

# Reachability probe: seconds to wait for a TCP connection to one download host.
PROBE_TIMEOUT_S = 3.0
# Probed when a builder lists no download URLs (TFDS's own bucket).
FALLBACK_HOST = ("storage.googleapis.com", 443)
# File formats `tfds.data_source` can read.
RANDOM_ACCESS_FORMATS = ("array_record", "parquet")


def _builder(name: str, data_dir: str, **kwargs):
    import tensorflow_datasets as tfds  # Deferred: importing TFDS costs ~0.5 s.

    try:
        return tfds.builder(name, data_dir=data_dir or None, **kwargs)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DatasetError(f"{name}: TFDS knows no such dataset ({e})") from e


def unreachable_hosts(urls, timeout: float = PROBE_TIMEOUT_S) -> list[str]:
    """The `host:port`s among `urls` that accept no TCP connection within `timeout` seconds.

    Hosts are probed in parallel threads, name resolution included, so the whole probe takes at most
    about `timeout` seconds even where DNS hangs.
    """
    hosts = set()
    for url in urls:
        parsed = urllib.parse.urlparse(url)
        if parsed.hostname:
            hosts.add((parsed.hostname, parsed.port or (80 if parsed.scheme == "http" else 443)))
    addresses = sorted(hosts or {FALLBACK_HOST})

    def probe(address) -> bool:
        try:
            socket.create_connection(address, timeout=timeout).close()
            return True
        except OSError:
            return False

    pool = concurrent.futures.ThreadPoolExecutor(len(addresses))
    futures = {pool.submit(probe, address): address for address in addresses}
    done, _ = concurrent.futures.wait(futures, timeout=timeout + 0.5)
    pool.shutdown(wait=False)  # A probe stuck in name resolution is left to finish on its own.
    return [f"{h}:{p}" for f, (h, p) in futures.items() if f not in done or not f.result()]


def _how_to_prepare(name: str, data_dir: str) -> str:
    target = data_dir or "~/tensorflow_datasets"
    return (
        f"Prepare it once on a machine with internet: pip install 'jaxens[prepare]' (adds TensorFlow, which "
        f"preparing image datasets may need), then `tfds build {name} --file_format=array_record "
        f"--data_dir={target}`, and copy that directory here; or set --config.data.tfds_dir to a directory "
        f"or GCS bucket (gs://..., the usual choice on Cloud TPU) that holds {name} in array_record format."
    )


def ensure_prepared(name: str, data_dir: str, download: bool):
    """The TFDS builder of `name`, prepared in `data_dir` in a random-access format.

    Prepares the dataset first when it is missing, `download` is true and its download hosts answer;
    otherwise fails fast.

    Raises:
      DatasetError: saying what is missing and how to prepare it (within seconds on an offline machine).
    """
    builder = _builder(name, data_dir)
    where = data_dir or "the default TFDS data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
    if not builder.is_prepared():
        if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
            raise DatasetError(
                f"{name}: not prepared in {where}, and TFDS cannot download it: put its files, downloaded by "
                f"hand, in <data_dir>/downloads/manual as its TFDS catalog page says. "
                + _how_to_prepare(name, data_dir)
            )
        if not download:
            raise DatasetError(
                f"{name}: not prepared in {where} (config.data.download is false). " + _how_to_prepare(name, data_dir)
            )
        failed = unreachable_hosts(list(builder.url_infos or {}))
        if failed:
            raise DatasetError(
                f"{name}: not prepared in {where}, and this machine cannot download it (no connection to "
                f"{', '.join(failed)} within {PROBE_TIMEOUT_S:g} s). " + _how_to_prepare(name, data_dir)
            )
        try:
            builder = _builder(name, data_dir, file_format="array_record")
            builder.download_and_prepare(file_format="array_record")
        except ImportError as e:
            raise DatasetError(
                f"{name}: preparing it needs a package that is not installed ({e}). "
                "Install the optional extra: pip install 'jaxens[prepare]'"
            ) from e
    file_format = builder.info.file_format
    file_format = getattr(file_format, "value", file_format)
    if file_format not in RANDOM_ACCESS_FORMATS:
        raise DatasetError(
            f"{name}: prepared in {builder.data_dir} in the {file_format} format, which only TensorFlow can "
            f"read. Convert it once (needs TensorFlow, pip install 'jaxens[prepare]'): `tfds convert_format "
            f"--root_data_dir={data_dir or '~/tensorflow_datasets'} --out_file_format=array_record`, or "
            f"rebuild it with `tfds build {name} --file_format=array_record`."
        )
    return builder


def prepared_sizes(name: str, data_dir: str) -> dict[str, int] | None:
    """{TFDS split: examples} as the prepared dataset's metadata records them, or None when `name` is not
    prepared in `data_dir` (nothing is decoded, downloaded or prepared)."""
    builder = _builder(name, data_dir)
    if not builder.is_prepared():
        return None
    return {split: info.num_examples for split, info in builder.info.splits.items()}


def read_splits(
    name: str,
    splits: dict[str, str],
    data_dir: str,
    *,
    download: bool = True,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    image_key: str = "image",
    label_key: str = "label",
    expected: dict[str, int] | None = None,
) -> dict[str, np.ndarray]:
    """Reads whole splits of a TFDS dataset into host arrays.

    Args:
      name: TFDS name, with its config if any (e.g. 'cifar10_corrupted/fog_3').
      splits: our split name → TFDS split name, e.g. {'train': 'train', 'test': 'validation'}.
      data_dir: TFDS data directory ('' = TFDS's default); local path or gs:// bucket.
      download: allow preparing a missing dataset (only when its download hosts answer).
      transform: applied to each decoded image (e.g. resizing ImageNet to a fixed size); the results
        must share one shape.
      image_key, label_key: feature names in the TFDS examples.
      expected: our split → the examples it must hold (the dataset's known size), checked before decoding;
        None accepts any size (config.data.allow_size_mismatch).

    Returns:
      {'<split>_x': [N, H, W, C] uint8, '<split>_y': [N] int32} for each requested split.

    Raises:
      DatasetError: see `ensure_prepared`; or a split holds another number of examples than `expected`.
    """
    import tensorflow_datasets as tfds

    ensure_prepared(name, data_dir, download)
    out = {}
    for ours, theirs in splits.items():
        source = tfds.data_source(name, split=theirs, data_dir=data_dir or None, download=False)
        if expected and ours in expected and len(source) != expected[ours]:
            raise DatasetError(size_mismatch_message(name, theirs, len(source), expected[ours]))
        out[f"{ours}_x"], out[f"{ours}_y"] = _read_all(source, f"{name}:{theirs}", transform, image_key, label_key)
    return out


def _read_all(source, desc, transform, image_key, label_key):
    """Every example of a random-access source → (x [N, ...] uint8, y [N] int32), read by a thread pool."""
    n = len(source)
    if n == 0:
        raise DatasetError(f"{desc}: the split is empty")

    first = np.asarray(source[0][image_key])
    shape = (first if transform is None else transform(first)).shape
    xs = np.empty((n, *shape), np.uint8)
    ys = np.empty((n,), np.int32)
    workers = min(8, os.cpu_count() or 1)
    chunks = [range(s, min(s + 1024, n)) for s in range(0, n, 1024)]

    def fill(chunk):
        for i in chunk:
            example = source[i]
            x = np.asarray(example[image_key])
            xs[i] = x if transform is None else transform(x)
            ys[i] = int(example[label_key])
        return len(chunk)

    bar = progress.bar(n, desc=f"read {desc}", unit="img")
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for done in pool.map(fill, chunks):
            bar.update(done)
    bar.close()
    return xs, ys
