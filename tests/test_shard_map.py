"""The 'shard_map' member strategy on a CPU split into 2 XLA devices computes what one device computes.

JAX fixes its device count when its backend starts, so the checks run in a subprocess started with
JAX_NUM_CPU_DEVICES=2; its assertions fail the test with their messages.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from conftest import REPO

SCRIPT = textwrap.dedent(
    """
    import os, sys, tempfile, json
    sys.path.insert(0, os.path.join({repo!r}, "tests"))
    import jax, jax.numpy as jnp, numpy as np
    from conftest import small_config
    from jaxens import data as data_lib, ensemble as E, models, optim, rng as rng_lib, run

    assert jax.device_count() == 2, jax.devices()
    assert E.member_mesh(4).devices.size == 2 and E.member_mesh(3).devices.size == 1
    assert E.resolve_strategy("auto", convolutional=True) == "shard_map/loop"
    assert E.resolve_strategy("auto", convolutional=False) == "shard_map/vmap"
    assert E.resolve_strategy("vmap", convolutional=False) == "vmap"

    def close(a, b, what, tol=1e-5):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol, err_msg=what)

    def train(config, dataset, strategy, step_loop, steps=5, **kwargs):
        model = models.build(config.model, dataset.num_classes, dataset.input_shape)
        tx = optim.make_optimizer(config.optimizer, 100)
        state = E.init_ensemble(model, tx, rng_lib.member_streams(0, config.ensemble.k), dataset.input_shape)
        home = state.step.sharding
        orders = data_lib.epoch_orders(state.rngs.order, state.step, dataset.num_train)
        chunk = E.TrainChunk(model, tx, config.train.batch_size, strategy, step_loop, **kwargs)
        state, sums = chunk(state, orders, dataset, steps)
        state, sums = chunk(state, orders, dataset, steps)  # The second call reuses the placed dataset.
        assert chunk.trace_count == 1, chunk.trace_count
        assert state.step.sharding == home and sums["loss"].sharding == home, "results go back to the caller's device"
        logits = E.Predictor(model, 128, strategy)(state, dataset.test_x[:300], dataset)
        assert logits.sharding == home
        return state, sums, logits

    dataset = data_lib.load(small_config()).to_device()
    cases = [
        ("mlp", {{"ensemble.k": 4}}, "vmap", "device", {{}}),
        ("cnn1d", {{"ensemble.k": 4, "model.name": "cnn1d", "model.widths": (8, 8)}}, "loop", "host", {{}}),
        ("mlp lambda", {{"ensemble.k": 4}}, "vmap", "device", {{"lams": (0.5, 1.0)}}),
        ("mlp shared batch", {{"ensemble.k": 4}}, "vmap", "device", {{"shared_batch": True}}),
    ]
    for name, overrides, within, step_loop, kwargs in cases:
        config = small_config(**overrides)
        one = train(config, dataset, within, step_loop, **kwargs)
        sharded = train(config, dataset, "shard_map/" + within, step_loop, **kwargs)
        close(one, sharded, name)
        print("ok", name)

    # A whole spawn run (parents with K = 1, two groups of children, checkpoints, evaluation) under both.
    summaries = []
    for strategy in ("loop", "shard_map"):
        config = small_config(**{{
            "ensemble.k": 2, "ensemble.strategy": strategy, "coupling.condition": "coupled_to_t",
            "coupling.t": ("4it", "1ep"), "train.checkpoint_every": "1ep",
        }})
        workdir = tempfile.mkdtemp()
        summaries.append(run.train_and_evaluate(config, os.path.join(workdir, strategy)))
    for a, b in zip(summaries[0]["groups"], summaries[1]["groups"]):
        assert a["steps"] == b["steps"] and a["t"] == b["t"]
        close(a["test"], b["test"], "run summary")
    print("ok run")
    """
)


def test_shard_map_over_two_cpu_devices_equals_one_device():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_NUM_CPU_DEVICES="2", CI="true")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(repo=REPO)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-5000:]
    checked = [line for line in proc.stdout.splitlines() if line.startswith("ok ")]
    assert checked == ["ok mlp", "ok cnn1d", "ok mlp lambda", "ok mlp shared batch", "ok run"]
