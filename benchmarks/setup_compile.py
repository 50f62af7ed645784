"""Compile time of the members' initialization: `jax.jit` at XLA's default level against `jaxens.setup_jit`.

  python benchmarks/setup_compile.py [--models=mlp,cnn2d,resnet20] [--k=4]

Every run compiles its members' initialization once (`jaxens.ensemble.init_ensemble`), and on CPU that
compilation is mostly LLVM optimizing the PRNG's unrolled hash. For each model this lowers the same program
once and compiles it twice, side by side in this process: with the default options, and with
`jaxens.setup_jit.CPU_OPTIONS` (what the trainer uses on CPU). Prints both times, their ratio, and whether the
two programs' initial members are bit for bit the same (tests/test_setup_jit.py checks that for every
architecture).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jaxens import config as config_lib  # noqa: E402
from jaxens import ensemble, models  # noqa: E402
from jaxens import rng as rng_lib  # noqa: E402
from jaxens.setup_jit import CPU_OPTIONS  # noqa: E402

CASES = {  # model → (widths or (), input shape): the shipped configs' members.
    "mlp": ((64,) * 6, (40,)),  # configs/mnist1d_spawn_deep.py
    "cnn2d": ((32, 64), (28, 28, 1)),  # Fashion-MNIST
    "resnet20": ((), (32, 32, 3)),  # configs/resnet20_spawn.py
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(CASES))
    parser.add_argument("--k", type=int, default=4)
    args = parser.parse_args()
    print(
        f"jax {jax.__version__} on {jax.default_backend()}, {os.cpu_count()} CPUs; K = {args.k}; options {CPU_OPTIONS}"
    )
    jax.block_until_ready(jax.jit(lambda x: x + 1)(1.0))  # The backend starts outside the timings.
    init = jax.jit(ensemble._init_members.__wrapped__, static_argnames=("model", "tx", "input_shape"))
    for name in args.models.split(","):
        widths, shape = CASES[name]
        c = config_lib.get_default_config().model
        c.name = name
        if widths:
            c.widths = widths
        model, tx = models.build(c, 10, shape), optax.sgd(0.05, momentum=0.9)
        keys = rng_lib.member_streams(0, args.k).init
        lowered = init.lower(keys, model=model, tx=tx, input_shape=shape)
        seconds, members = {}, {}
        for label, options in (("default", None), ("setup_jit", CPU_OPTIONS)):
            start = time.perf_counter()
            compiled = lowered.compile(options)
            seconds[label] = time.perf_counter() - start
            members[label] = [np.asarray(x) for x in jax.tree.leaves(compiled(keys))]
        same = all(np.array_equal(a, b) for a, b in zip(members["default"], members["setup_jit"], strict=True))
        print(
            f"{name:>9}: default {seconds['default']:6.2f} s, setup_jit {seconds['setup_jit']:5.2f} s, "
            f"ratio {seconds['setup_jit'] / seconds['default']:.2f}, same members: {same}"
        )


if __name__ == "__main__":
    main()
