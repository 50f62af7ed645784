"""`jax.jit` for a run's set-up programs: parameter initialization and the other code a run executes once,
where what a run waits for is XLA's compilation, not the program.

XLA:CPU compiles JAX's PRNG slowly at its default LLVM optimization level: every draw is threefry's rounds
of integer mixing, unrolled, and LLVM spends seconds on them. Initializing 4 members of a seven-layer MLP
compiled in 4.8 s, of ResNet-20 in 26.3 s on the 2-core CPU; at LLVM level 1 in 0.9 s and 2.8 s
(`benchmarks/setup_compile.py`), to the same bits: integer arithmetic has one answer at any level, and the float
transforms of the initializers (truncated normal: erfinv) gave identical values for every model
(tests/test_setup_jit.py; level 0 does not, it rounds erfinv differently). Training and evaluation keep the
default level: they run thousands of times. On GPU and TPU, `setup_jit` is `jax.jit`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax

CPU_OPTIONS = {"xla_backend_optimization_level": 1}  # XLA:CPU's LLVM level (its default: 2 or more).


def setup_jit(fun: Callable | None = None, **jit_kwargs) -> Callable:
    """`jax.jit(fun, **jit_kwargs)`, compiled with `CPU_OPTIONS` when JAX's default backend is the CPU.

    Usable as `jax.jit` is, also as `@functools.partial(setup_jit, static_argnames=...)`.
    """
    if fun is None:
        return functools.partial(setup_jit, **jit_kwargs)
    default = jax.jit(fun, **jit_kwargs)
    on_cpu = jax.jit(fun, compiler_options=CPU_OPTIONS, **jit_kwargs)

    @functools.wraps(fun)
    def call(*args, **kwargs):
        # Inside another trace (jit, eval_shape) the outer program's compilation decides: a nested jit
        # takes no compiler options.
        traced = any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((args, kwargs)))
        return (on_cpu if jax.default_backend() == "cpu" and not traced else default)(*args, **kwargs)

    return call
