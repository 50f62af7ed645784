"""A multi-host run: two processes with 4 host devices each form one 8-device mesh, as the hosts of a
Cloud TPU pod slice do, through JAX's distributed runtime (gloo between the CPU processes).

Both processes run the same CLI command with config.mesh.distributed=True; process 0 alone writes the
logs and results, and the run computes what one process on one device computes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

OVERRIDES = [
    "--config=configs/mnist1d_ensemble.py",
    "--config.ensemble.k=4",
    "--config.model.widths=(32,)",
    "--config.train.batch_size=500",
    "--config.train.num_epochs=2",
    "--config.train.checkpoint_every=1ep",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    env.update(CI="true", **extra)
    return env


def _on_two_processes(command: list[str], **extra_env) -> tuple[list, list]:
    """Runs `command` as processes 0 and 1 of one distributed run, 4 host devices each."""
    port = _free_port()
    procs = [
        subprocess.Popen(
            command,
            cwd=REPO,
            env=_env(
                XLA_FLAGS="--xla_force_host_platform_device_count=4",
                JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                JAX_NUM_PROCESSES="2",
                JAX_PROCESS_ID=str(i),
                **extra_env,
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=600))
    finally:
        for p in procs:
            p.kill()
    return procs, outputs


def _single(command: list[str], workdir) -> dict:
    """`command` in one process on one device, into `workdir`; its summary."""
    proc = subprocess.run(
        [*command, f"--workdir={workdir}"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads((workdir / "summary.json").read_text())


def _assert_same_test_metrics(summary: dict, reference: dict) -> None:
    for key in ("member_error", "member_nll", "ensemble_error", "ensemble_nll", "ensemble_sym_kl"):
        np.testing.assert_allclose(summary["test"][key], reference["test"][key], rtol=1e-4, atol=1e-5, err_msg=key)


# coupled_to_t is slow-marked to keep the default suite within its time (its parent phase is also covered on
# one process, and by the two-process kill-and-resume test).
@pytest.mark.parametrize("condition", ["no_coupling", pytest.param("coupled_to_t", marks=pytest.mark.slow)])
def test_two_processes_train_one_run_and_only_process_0_writes(tmp_path, condition):
    """coupled_to_t adds a one-member parent, on a (1, 2) mesh: one device of each process."""
    workdir = tmp_path / "pod"
    overrides = [*OVERRIDES, f"--config.coupling.condition={condition}"]
    if condition == "coupled_to_t":
        overrides.append("--config.coupling.t=('4it',)")
    command = [sys.executable, "-m", "jaxens.train", *overrides, f"--workdir={workdir}"]
    procs, outputs = _on_two_processes([*command, "--config.mesh.distributed=True"])
    for i, (p, (out, err)) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"process {i}:\n{out[-3000:]}\n{err[-6000:]}"
    assert "ensemble (mean_prob)" in outputs[0][0] and "ensemble (mean_prob)" not in outputs[1][0]  # One report.

    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["mesh"] == {"member": 4, "data": 2, "processes": 2}
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["step"], r["split"], r["scope"], r["member"], r["metric"]) for r in records]
    assert len(keys) == len(set(keys)), "every record once: only process 0 writes"
    assert json.loads((workdir / "status.json").read_text())["status"] == "finished"
    # Saved by both processes together, at every epoch of the members' phase (ticks from the spawn).
    assert sorted(os.listdir(workdir / "checkpoints"), key=int) == (
        ["8", "16"] if condition == "no_coupling" else ["8", "12"]
    )

    # The same run in one process on one device.
    _assert_same_test_metrics(summary, _single(command[:-1], tmp_path / "single"))


@pytest.mark.slow  # 35 s; the single-process kill-and-resume runs by default (tests/test_reliability.py).
def test_a_run_killed_on_two_processes_resumes_on_one_device(tmp_path):
    """SIGKILL right after the spawn (of both processes, as a lost slice); the parent checkpoints they
    saved together restore onto one device, and the resumed run ends as an uninterrupted one."""
    workdir = tmp_path / "pod"
    overrides = [*OVERRIDES, "--config.coupling.condition=coupled_to_t", "--config.coupling.t=('4it',)"]
    command = [sys.executable, "-m", "jaxens.train", *overrides]
    procs, outputs = _on_two_processes(
        [*command, f"--workdir={workdir}", "--config.mesh.distributed=True"], JAXENS_KILL_AT="spawn"
    )
    # Process 0 is killed; process 1 is killed too, or brought down by a signal (JAX aborts it, or it
    # faults, once its coordinator is gone): in no case does it go on alone.
    codes = [p.returncode for p in procs]
    assert codes[0] == -9 and codes[1] < 0, (codes, [err[-3000:] for _, err in outputs])
    assert os.listdir(workdir / "parent") == ["4"] and not (workdir / "summary.json").exists()
    resumed = _single(command, workdir)  # Same run on another mesh: config.mesh is placement only.
    assert resumed["mesh"] == {"member": 1, "data": 1, "processes": 1}
    _assert_same_test_metrics(resumed, _single(command, tmp_path / "single"))
