"""Throughput of jaxens's TFDS reading path on prepared array_record files: images per second read and decoded
into the uint8 arrays a run trains on, and how much of that is reading records against decoding PNGs.

  /tmp/prep/bin/python tests/fixtures/make_tfds_fixtures.py --out=/tmp/tfds_big --scale=200 --noise
  python benchmarks/tfds_read.py --tfds_dir=/tmp/tfds_big [--name=cifar10] [--repeats=3]

The first command (with the `prepare` extra) writes the test fixture's datasets 200 times larger (cifar10:
9,600 training and 4,800 test images), with noisy pixels so that each PNG is as large as a real CIFAR
image's. The second times, side by side in one process:
- `read_splits`: `jaxens.data.tfds_source.read_splits`, the call a run makes (no cache): every record read,
  its PNG decoded, the arrays filled by its thread pool;
- `records only`: the same records read with TFDS's decoding skipped (the PNG bytes), one thread;
and prints images per second of each, the share decoding takes, and the time the same path would take for
CIFAR-10's 60,000 images at the measured rate (a run decodes them once: later runs hit the `.npz` cache).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _read_splits(name: str, tfds_dir: str, splits: list[str]) -> int:
    from jaxens.data import tfds_source

    arrays = tfds_source.read_splits(name, {s: s for s in splits}, tfds_dir, download=False)
    return sum(len(arrays[f"{s}_y"]) for s in splits)


def _records_only(name: str, tfds_dir: str, splits: list[str]) -> int:
    import tensorflow_datasets as tfds

    n = 0
    for split in splits:
        source = tfds.data_source(
            name, split=split, data_dir=tfds_dir, download=False, decoders={"image": tfds.decode.SkipDecoding()}
        )
        for i in range(len(source)):
            source[i]
        n += len(source)
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tfds_dir", required=True, help="a TFDS data_dir holding the dataset (array_record)")
    parser.add_argument("--name", default="cifar10")
    parser.add_argument("--splits", default="train,test")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    splits = args.splits.split(",")
    ways = {"read_splits": _read_splits, "records only": _records_only}
    times: dict[str, list[float]] = {way: [] for way in ways}
    counts = {}
    for _ in range(args.repeats):
        for way, fn in ways.items():  # Alternating, so both see the same machine load.
            start = time.perf_counter()
            counts[way] = fn(args.name, args.tfds_dir, splits)
            times[way].append(time.perf_counter() - start)
    rates = {way: counts[way] / float(np.median(t)) for way, t in times.items()}
    print(
        f"{args.name} {'+'.join(splits)}: {counts['read_splits']} images, {os.cpu_count()} CPUs, {args.repeats} repeats"
    )
    for way, rate in rates.items():
        print(f"  {way:>13}: {rate:9.0f} images/s (median {np.median(times[way]):.2f} s)")
    decode_share = 1 - rates["read_splits"] / rates["records only"]
    print(f"  decoding and filling take {100 * decode_share:.0f}% of read_splits' time")
    print(f"  CIFAR-10's 60,000 images at this rate: {60000 / rates['read_splits']:.1f} s (once; then the cache)")


if __name__ == "__main__":
    main()
