"""Train-side forgetting events (Toneva et al.) tracked inside the training step (config.eval.forgetting).

The reference is re-derived here without the tracker: every step's parameters come from a trajectory
snapshot saved before that step, the step's minibatch from the definition of the members' data order (a
fresh permutation per epoch under fold_in(order stream, epoch)), and the forgetting events are counted in
NumPy, one presentation per minibatch. Kill-and-resume keeps the trackers bit for bit: see
tests/test_reliability.py, whose spawn runs track forgetting.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from conftest import cli_in_process

from jaxens import ensemble, run
from jaxens import trajectory as trajectory_lib

ARGS = (
    "--config.train.num_epochs=2",
    "--config.ensemble.k=2",
    "--config.model.widths=(16,)",
    "--config.eval.forgetting=True",
    "--config.trajectory.every=1it",  # The parameters before every step, for the reference.
)
# configs/mnist1d_ensemble.py: each member draws its own minibatches. The λ groups of
# configs/webb_mnist1d_mlp.py: every member sees member 0's minibatch (Webb et al.'s shared batches).
CASES = {
    "own_batches": ("configs/mnist1d_ensemble.py", ()),
    "lambda_groups": ("configs/webb_mnist1d_mlp.py:4x64", ("--config.loss.lam=(0.5,)",)),
}


def toneva_counts(correct_per_step: list[np.ndarray], indices_per_step: list[np.ndarray], n: int) -> dict:
    """Forgetting statistics of one member, counted presentation by presentation (Toneva et al.)."""
    last = np.full(n, -1)
    forgotten = np.zeros(n, int)
    learned = np.zeros(n, bool)
    for correct, idx in zip(correct_per_step, indices_per_step):
        for i, c in zip(idx, correct):
            if last[i] == 1 and not c:
                forgotten[i] += 1
            last[i] = int(c)
            learned[i] |= bool(c)
    presented = last >= 0
    return {
        "events": int(forgotten.sum()),
        "forgotten_examples": int((forgotten > 0).sum()),
        "unforgettable": int((learned & (forgotten == 0)).sum()),
        "never_learned": int((presented & ~learned).sum()),
        "presented": int(presented.sum()),
        "counts": forgotten,
    }


@pytest.mark.parametrize("case", CASES)
def test_the_trainers_forgetting_events_equal_a_count_from_the_snapshots(tmp_path, monkeypatch, case):
    config, extra = CASES[case]
    workdir = tmp_path / case
    assert cli_in_process(monkeypatch, [f"--config={config}", f"--workdir={workdir}", *ARGS, *extra]) == 0
    restored = run.restore(str(workdir))
    spec, dataset = restored.spec, restored.dataset
    n, b, spe = spec.num_train, spec.batch_size, spec.steps_per_epoch
    assert dataset.num_train == n
    trajectory = trajectory_lib.load(str(workdir))
    steps = int(restored.state.step[0])
    assert list(trajectory.steps[:steps]) == list(range(steps))
    order_keys = np.asarray(restored.state.rngs.order)  # [K, 2]
    summary = json.load(open(workdir / "summary.json"))
    tracked = summary["groups"][0]["train_forgetting"]
    for m in range(spec.plan.k):
        source = 0 if case == "lambda_groups" else m  # Whose order stream draws the minibatch.
        indices, correct = [], []
        for s in range(steps):
            epoch, position = divmod(s, spe)
            order = np.asarray(jax.random.permutation(jax.random.fold_in(order_keys[source], epoch), n))
            idx = order[position * b : (position + 1) * b]
            params = jax.tree.map(lambda p: p[s, m], trajectory.params)
            # No dropout, BatchNorm or augmentation here: the training forward pass is the eval-mode one.
            logits = ensemble.member_logits(restored.model, params, {}, dataset.normalize(dataset.train_x[idx]))
            indices.append(idx)
            correct.append(np.asarray(np.argmax(logits, -1) == np.asarray(dataset.train_y)[idx]))
        expected = toneva_counts(correct, indices, n)
        np.testing.assert_array_equal(np.asarray(restored.state.forgetting.forgotten[m]), expected.pop("counts"))
        assert {name: values[m] for name, values in tracked.items()} == expected
        assert expected["events"] > 0 and expected["presented"] == min(n, steps * b)
    # The per-evaluation log carries each member's cumulative events.
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    last = [r for r in rows if r["metric"] == "forgetting_events" and r["step"] == steps]
    assert sorted((r["member"], r["value"]) for r in last) == list(enumerate(map(float, tracked["events"])))


def test_children_inherit_their_parents_tracker(tmp_path, monkeypatch):
    """A child's presentations continue its parent's: every member presented step × B examples in all."""
    workdir = tmp_path / "spawn"
    args = [
        "--config=configs/mnist1d_spawn.py",
        f"--workdir={workdir}",
        "--config.coupling.condition=coupled_to_t",
        "--config.coupling.t=('1ep',)",
        "--config.ensemble.k=2",
        "--config.model.widths=(16,)",
        "--config.train.batch_size=500",
        "--config.train.num_epochs=3",
        "--config.eval.forgetting=True",
    ]
    assert cli_in_process(monkeypatch, args) == 0
    restored = run.restore(str(workdir))
    presentations = np.asarray(restored.state.forgetting.presentations).sum(-1)  # [K]
    np.testing.assert_array_equal(presentations, np.asarray(restored.state.step) * restored.spec.batch_size)
    assert int(restored.state.step[0]) == 3 * restored.spec.steps_per_epoch  # The parent's steps, then its own.
