"""What the benchmark scripts share: timing and config loading (imported from the scripts' own directory)."""

from __future__ import annotations

import time

import jax
import numpy as np


def median_seconds(fns: dict, repeats: int) -> dict[str, float]:
    """Median wall time of each `fns[name]()`, the calls alternating so that all see the same machine load.

    Args:
      fns: name -> no-argument callable returning device arrays (blocked on before the clock stops).
      repeats: timed calls of each, after one untimed call of each that compiles.

    Returns:
      name -> median seconds per call.
    """
    times = {name: [] for name in fns}
    for repeat in range(repeats + 1):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            if repeat:  # The first round compiles.
                times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def trainer_setup(config, **overrides):
    """(dataset on device, K-member initial state, epoch-0 orders [K, N], TrainChunk) of a validated config,
    the chunk built as the trainer builds it (`jaxens.trainer.spec.make_train_chunk`; `overrides` replace
    its arguments)."""
    import jax.numpy as jnp

    from jaxens import data as data_lib
    from jaxens import ensemble as ensemble_lib
    from jaxens.trainer import spec as spec_lib

    spec = spec_lib.resolve(config)
    dataset = data_lib.load(spec.source).to_device()
    state = ensemble_lib.init_ensemble(spec.model, spec.tx, spec.plan.streams(), spec.input_shape)
    orders = data_lib.epoch_orders(state.rngs.order, jnp.zeros((state.k,), jnp.int32), dataset.num_train)
    return dataset, state, orders, spec_lib.make_train_chunk(spec, **overrides)


def load_config(spec: str, k: int):
    """The validated config of a file `path[:arg]` (as `--config` takes it) with `ensemble.k = k`."""
    from jaxens import config as config_lib
    from jaxens.trainer import validation

    path, _, arg = spec.partition(":")
    config = config_lib.load_file(path, arg or None)
    config.ensemble.k = k
    validation.validate(config)
    return config
