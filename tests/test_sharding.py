"""Training on a ('member', 'data') mesh of 8 host devices computes what one device computes.

JAX fixes its device count when its backend starts, so the multi-device checks run in subprocesses started
with XLA_FLAGS=--xla_force_host_platform_device_count=8; their assertions fail the tests with their
messages. The checkpoint a subprocess saved on 8 devices is restored here, on this process's one device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from conftest import REPO, small_config

from jaxens import config as config_lib
from jaxens import run, sharding
from jaxens.trainer import spec as spec_lib

PRELUDE = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, os.path.join(__REPO__, "tests"))
    import jax, jax.numpy as jnp, numpy as np
    from conftest import small_config
    from jaxens import data as data_lib, ensemble as E, members, models, run, sharding
    from jaxens.trainer import spec as spec_lib

    assert jax.device_count() == 8, jax.devices()

    def close(a, b, what, tol=1e-4):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol, err_msg=what)

    def setup(config, shape, strategy, split_train=False):
        # The run's own pieces: data, plan, model, optimizer and TrainChunk, the state placed on `shape`.
        mesh = sharding.make_mesh(shape)
        dataset = sharding.put_dataset(data_lib.load(config), mesh, split_train)
        if split_train:  # 4000 examples, 500 on each device.
            assert {s.data.shape[0] for s in dataset.train_x.addressable_shards} == {4000 // (shape[0] * shape[1])}
        spec = spec_lib.resolve(config)
        state = E.init_ensemble(spec.model, spec.tx, spec.plan.streams(), spec.input_shape)
        state = sharding.put_members(state, mesh)
        epochs = sharding.put_members(np.zeros(spec.plan.num_members, np.int32), mesh)
        orders = data_lib.epoch_orders(state.rngs.order, epochs, dataset.num_train)
        chunk = spec_lib.make_train_chunk(spec, strategy=strategy)
        return mesh, dataset, spec.model, state, orders, chunk

    def strategy_for(config, member_rows):
        convolutional = models.MODELS[config.model.name].convolutional
        return members.resolve_strategy(config.ensemble.strategy, convolutional, num_devices=member_rows)
    """
)

TRAIN = PRELUDE + textwrap.dedent(
    """
    out = sys.argv[1]

    def train(config, shape, strategy, steps=4, split_train=False):
        mesh, dataset, model, state, orders, chunk = setup(config, shape, strategy, split_train)
        for _ in range(2):  # The second call reuses the compiled step and the placed dataset.
            state, sums = chunk(state, orders, dataset, steps)
        assert chunk.trace_count == 1, chunk.trace_count
        m, d = shape
        for leaf in jax.tree.leaves(state):  # Members on 'member' (K/M per device row), copies over 'data'.
            assert leaf.sharding.is_equivalent_to(sharding.members(mesh), leaf.ndim), leaf.sharding
            assert {s.data.shape[0] for s in leaf.addressable_shards} == {leaf.shape[0] // m}
            assert len(leaf.addressable_shards) == m * d
        predictor = E.Predictor(model, 100, strategy)
        logits = predictor(state, dataset.test_x[:300], dataset)
        assert logits.sharding.is_equivalent_to(sharding.members(mesh), 3), logits.sharding
        if dataset.views is not None:  # Trials: each seed's block of members predicts its own validation split.
            logits = (logits, predictor(state, dataset.val_x[:, :300], dataset, per_view=True))
        return jax.device_get((state, sums, logits))

    cases = [  # name, config overrides, within-device strategy
        ("mlp", {"ensemble.k": 8}, "vmap"),
        ("batchnorm cnn1d", {"ensemble.k": 8, "model.name": "cnn1d", "model.widths": (8, 8), "model.norm": "batch",
                              "train.batch_size": 64}, "loop"),
        ("mlp lambda", {"ensemble.k": 4, "loss.lam": (0.5, 1.0), "coupling.condition": "coupled_order"}, "vmap"),
        ("mlp shared batch", {"ensemble.k": 8, "coupling.condition": "coupled_order"}, "vmap"),
        # Two trials (config.data.val_from_seed): each seed's 4 members on its own rows, statistics and split.
        ("mlp trials", {"ensemble.k": 4, "grid.seed": (0, 1), "seed": 0, "data.val_size": 500,
                        "data.val_from_seed": True, "coupling.condition": "coupled_order"}, "vmap"),
    ]
    for name, overrides, within in cases:
        config = small_config(**overrides)
        reference = train(config, (1, 1), within)
        for shape in ((8, 1), (4, 2), (1, 8)):
            strategy = strategy_for(config, shape[0])
            assert strategy == (f"shard_map/{within}" if shape[0] > 1 else within), strategy
            close(reference, train(config, shape, strategy), f"{name} on {shape}")
            if shape[0] > 1 and within == "vmap":  # GSPMD's own partitioning of the vmapped members.
                close(reference, train(config, shape, "vmap"), f"{name} on {shape}, plain vmap")
        if not config.grid.seed:  # (Trials' views do not split: refused under config.mesh.shard_train.)
            # The training set split over the 8 devices (config.mesh.shard_train): batches gathered across them.
            close(reference, train(config, (4, 2), strategy_for(config, 4), split_train=True), f"{name}, split")
        print("ok", name, flush=True)

    # Whole runs (a spawning condition: a one-member parent, then two groups of children; checkpoints,
    # evaluation), on one device and on (4, 2) from config.mesh.
    base = {"ensemble.k": 2, "coupling.condition": "coupled_to_t", "coupling.t": ("4it", "1ep"),
             "train.checkpoint_every": "1ep"}
    summaries = {}
    for name, (m, d) in (("one", (1, 1)), ("mesh", (4, 2))):  # The (4, 2) run splits the training set.
        config = small_config(**base, **{"mesh.member": m, "mesh.data": d, "mesh.shard_train": name == "mesh"})
        summaries[name] = run.train_and_evaluate(config, os.path.join(out, name))
        assert summaries[name]["mesh"] == {"member": m, "data": d, "processes": 1}, summaries[name]["mesh"]
    for a, b in zip(summaries["one"]["groups"], summaries["mesh"]["groups"], strict=True):
        assert a["steps"] == b["steps"] and a["t"] == b["t"]
        close(a["test"], b["test"], "run summary")
    # The one-device run's checkpoint restores onto all 8 devices (run.restore picks the automatic mesh).
    restored = run.restore(os.path.join(out, "one"))
    assert run.mesh_shape_of(restored.state) == (4, 2), run.mesh_shape_of(restored.state)
    mesh_run = run.restore(os.path.join(out, "mesh"))
    close(restored.state.params, mesh_run.state.params, "restored")
    np.savez(os.path.join(out, "mesh_params.npz"), *[np.asarray(x) for x in jax.tree.leaves(mesh_run.state.params)])
    print("ok run", flush=True)
    """
)

HLO = PRELUDE + textwrap.dedent(
    """
    # Webb et al. §3.3: the λ loss needs only the B×C mean of the members' outputs exchanged.
    config = small_config(**{"ensemble.k": 8, "model.widths": (256, 256), "train.batch_size": 128,
                              "loss.lam": (0.5,), "coupling.condition": "coupled_order"})
    report = {}
    for shape in ((8, 1), (1, 8)):  # Members over devices; then one member's batch over devices.
        strategy = strategy_for(config, shape[0])
        mesh, dataset, model, state, orders, chunk = setup(config, shape, strategy)
        compiled = chunk.lower_step(state, orders, dataset).compile()
        report[str(shape)] = sharding.collectives(compiled.as_text())
    params = sum(x.size for x in jax.tree.leaves(state.params)) // 8
    print(json.dumps({"collectives": report, "member_params": params}))
    """
)


def _run_on_8_devices(script: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=8", CI="true")
    proc = subprocess.run(
        [sys.executable, "-c", script.replace("__REPO__", repr(REPO)), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc.stdout


@pytest.fixture(scope="module")
def eight_device_runs(tmp_path_factory):
    """The training checks on 8 devices; their workdirs for the checks here."""
    out = tmp_path_factory.mktemp("eight_devices")
    stdout = _run_on_8_devices(TRAIN, str(out))
    return out, [line for line in stdout.splitlines() if line.startswith("ok ")]


def test_meshes_8x1_4x2_1x8_train_as_one_device(eight_device_runs):
    _, checked = eight_device_runs
    assert checked == [
        "ok mlp",
        "ok batchnorm cnn1d",
        "ok mlp lambda",
        "ok mlp shared batch",
        "ok mlp trials",
        "ok run",
    ]


def test_checkpoint_saved_on_8_devices_restores_on_one(eight_device_runs):
    out, _ = eight_device_runs
    assert jax.device_count() == 1
    restored = run.restore(str(out / "mesh"))  # Saved by the (4, 2) run, members sharded on 'member'.
    assert run.mesh_shape_of(restored.state) == (1, 1)
    with np.load(out / "mesh_params.npz") as saved:
        expected = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    got = jax.tree.leaves(restored.state.params)
    assert [x.shape for x in got] == [x.shape for x in expected]
    for x, y in zip(got, expected, strict=True):
        np.testing.assert_array_equal(np.asarray(x), y)  # Bit-exact: a restore moves bytes only.


def test_lambda_loss_step_exchanges_the_mean_logits_not_gradients():
    """With the 8 members on 8 devices, the λ-loss step's collectives move O(B·C) elements; the same
    count on a data-parallel mesh (one member's batch over 8 devices) sees the parameter-sized gradient
    all-reduce, so the check can tell the two apart."""
    stdout = _run_on_8_devices(HLO)
    report = json.loads(stdout.strip().splitlines()[-1])
    b, c, k = 128, 10, 8
    params = report["member_params"]
    members = report["collectives"]["(8, 1)"]
    elements = sum(e for _, e, _ in members)
    moved = sum(n for _, _, n in members)
    print(f"λ-loss step, K=8 members on 8 devices: {len(members)} collectives, {elements} elements, {moved} bytes")
    # The group's mean logits [1, B, C], member 0's batch indices [B] and the largest step (a scalar). Each
    # member's divergence check selects its own state: no flag crosses devices.
    assert sorted(e for _, e, _ in members) == [1, b, b * c], members
    assert moved == 4 + 4 * b + 4 * b * c, members
    assert elements < params / 50
    data_parallel = report["collectives"]["(1, 8)"]
    assert max(e for _, e, _ in data_parallel) >= k * params, data_parallel  # Every member's gradients.


def test_mesh_shape_defaults_and_errors():
    # All devices on 'member' when K allows; the rest on 'data' as far as B allows.
    assert sharding.mesh_shape(8, 128, num_devices=8) == (8, 1)
    assert sharding.mesh_shape(4, 128, num_devices=8) == (4, 2)
    assert sharding.mesh_shape(3, 128, num_devices=8) == (1, 8)
    assert sharding.mesh_shape(6, 100, num_devices=8) == (2, 4)
    assert sharding.mesh_shape(1, 6, num_devices=8) == (1, 2)  # B = 6: two of the eight devices.
    assert sharding.mesh_shape(8, 128, member=2, num_devices=8) == (2, 4)
    assert sharding.mesh_shape(8, 128, data=2, num_devices=8) == (4, 2)
    with pytest.raises(config_lib.ConfigError, match=r"config.mesh.member=3 does not divide the 8 members"):
        sharding.mesh_shape(8, 128, member=3, num_devices=8)
    with pytest.raises(config_lib.ConfigError, match=r"config.mesh.data=3 does not divide config.train.batch_size"):
        sharding.mesh_shape(8, 128, data=3, num_devices=8)
    with pytest.raises(config_lib.ConfigError, match=r"needs 16 devices; 8 here"):
        sharding.mesh_shape(8, 128, member=8, data=2, num_devices=8)
    # A phase with fewer members (the one-member parent) moves the spare rows onto 'data'.
    assert sharding.phase_shape((8, 1), 1, 128) == (1, 8)
    assert sharding.phase_shape((4, 2), 2, 128) == (2, 4)
    assert sharding.phase_shape((4, 2), 1, 2) == (1, 2)  # B = 2 cannot be split 8 ways.


def test_config_mesh_fields_are_validated_and_do_not_make_another_run(tmp_path):
    with pytest.raises(config_lib.ConfigError, match=r"config.mesh.member=3: must divide the 4 members"):
        small_config(**{"ensemble.k": 4, "mesh.member": 3})
    with pytest.raises(config_lib.ConfigError, match=r"config.mesh.data=7: must divide config.train.batch_size=500"):
        small_config(**{"mesh.data": 7})
    with pytest.raises(config_lib.ConfigError, match=r"config.mesh.member=2 × config.mesh.data=1 needs 2 devices"):
        run.train_and_evaluate(small_config(**{"ensemble.k": 4, "mesh.member": 2, "mesh.data": 1}), str(tmp_path / "a"))
    assert not (tmp_path / "a").exists()  # Refused before anything was written.
    with pytest.raises(config_lib.ConfigError, match=r"the 3999 training examples do not divide over the mesh's 8"):
        # (On a (4, 2) mesh: this process has one device.) 3999 = 8·499 + 7: hold out 7 more.
        spec_lib.check_split_train(3999, 1, (4, 2))
    with pytest.raises(config_lib.ConfigError, match=r"hold out config.data.val_size=8"):
        spec_lib.check_split_train(3999, 1, (4, 2))
    from jaxens import workdir

    config = small_config()
    workdir.claim(str(tmp_path / "b"), workdir.config_to_dict(config))
    other_mesh = workdir.config_to_dict(small_config(**{"mesh.member": 3, "mesh.data": 2}))
    assert workdir.check(str(tmp_path / "b"), other_mesh)


def test_collectives_counts_result_arrays():
    text = "\n".join(
        [
            "%all-reduce.2 = f32[1,128,10]{2,1,0} all-reduce(%x), channel_id=3, to_apply=%add",
            "ROOT %ag = (bf16[4,2]{1,0}, s32[3]{0}) all-gather(%y, %z), dimensions={0}",
            "%ars = (f32[8]{0}, f32[8]{0}) all-reduce-start(%w), to_apply=%add",
            "%ard = f32[8]{0} all-reduce-done(%ars)",
            "%add = f32[8]{0} add(%a, %b)",
        ]
    )
    assert sharding.collectives(text) == [
        ("all-reduce", 1280, 5120),
        ("all-gather", 11, 28),
        ("all-reduce", 8, 32),
    ]
