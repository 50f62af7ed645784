"""The accelerator benchmark runs as its docstring says, so it is ready for the first session lent a GPU."""

from __future__ import annotations

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROW = re.compile(r"^\s+(\d+)\s+(vmap|loop|1 member)\s+([\d.]+)\s+(\d+)\s+([\d.]+)$")


def test_population_gpu_runs_in_one_command():
    """benchmarks/population_gpu.py with a CPU-sized K list (the ResNet-20 table skipped): a row per K and
    strategy, whose member-images/s is K·128 images over the step time and whose ratio is K times the
    one-member step timed beside it over the K-member step."""
    cmd = [sys.executable, "benchmarks/population_gpu.py", "--mlp_ks=1,2", "--resnet_ks=", "--repeats=1"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = [ROW.match(line).groups() for line in done.stdout.splitlines() if ROW.match(line)]
    assert [(int(k), s) for k, s, *_ in rows] == [(k, s) for k in (1, 2) for s in ("vmap", "loop", "1 member")]
    for k, strategy, step_ms, images_per_s, ratio in rows:
        members = 1 if strategy == "1 member" else int(k)  # The baseline row is one member's step.
        assert abs(members * 128 / (float(step_ms) / 1e3) - int(images_per_s)) <= 0.01 * int(images_per_s)
        one_ms = next(float(r[2]) for r in rows if r[0] == k and r[1] == "1 member")  # Timed beside this K.
        assert abs(members * one_ms / float(step_ms) - float(ratio)) <= 0.02 * float(ratio) + 0.01
    assert "resnet20" not in done.stdout
