"""Convolution paths: XLA's convolution against im2col (`jaxens.models.conv`), forward + both gradients.

  python benchmarks/conv_paths.py [--repeats=5]

For 3x3 (and MNIST-1D's width-5) conv layers of the models here (the strided `cnn2d`, ResNet-20's stages,
`cnn1d`), times one jitted call computing the gradients of sum(conv(x, w)²) with respect to x and w under
each implementation, interleaved in the same rounds (medians; compilation excluded). Prints the ms of
each, XLA / im2col (> 1: im2col is faster) and the implementation 'auto' picks for the layer on this
backend.
"""

from __future__ import annotations

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax
import jax.numpy as jnp

from benchmarks.common import median_seconds
from jaxens.models import conv as conv_lib

# (input [B, *spatial, C_in], C_out, window, stride, where it occurs)
LAYERS = [
    ((100, 28, 28, 1), 32, 3, 2, "cnn2d conv0 (Fashion-MNIST)"),
    ((100, 14, 14, 32), 64, 3, 2, "cnn2d conv1"),
    ((100, 7, 7, 64), 128, 3, 2, "cnn2d conv2"),
    ((128, 32, 32, 3), 16, 3, 1, "ResNet-20 stem (CIFAR)"),
    ((128, 32, 32, 16), 16, 3, 1, "ResNet-20 stage 1"),
    ((128, 32, 32, 16), 32, 3, 2, "ResNet-20 stage 2 entry"),
    ((128, 16, 16, 32), 32, 3, 1, "ResNet-20 stage 2"),
    ((128, 16, 16, 32), 64, 3, 2, "ResNet-20 stage 3 entry"),
    ((128, 8, 8, 64), 64, 3, 1, "ResNet-20 stage 3"),
    ((100, 40, 1), 32, 5, 2, "cnn1d conv0 (MNIST-1D)"),
    ((100, 20, 32), 64, 5, 2, "cnn1d conv1"),
]


def _grad_fn(implementation: str, stride: int, ndim: int):
    dn = ("NHWC", "HWIO", "NHWC") if ndim == 2 else ("NWC", "WIO", "NWC")

    def loss(x, w):
        y = conv_lib.conv_general_dilated(
            x, w, (stride,) * ndim, "SAME", dimension_numbers=dn, implementation=implementation
        )
        return jnp.sum(y * y)

    return jax.jit(jax.grad(loss, argnums=(0, 1)))


def _picks_im2col(shape, c_out, window, stride) -> bool:
    ndim = len(shape) - 2
    x, w = jnp.zeros(shape), jnp.zeros((window,) * ndim + (shape[-1], c_out))
    dn = ("NHWC", "HWIO", "NHWC") if ndim == 2 else ("NWC", "WIO", "NWC")
    fn = lambda x, w: conv_lib.conv_general_dilated(x, w, (stride,) * ndim, "SAME", dimension_numbers=dn)  # noqa: E731
    return all(e.primitive.name != "conv_general_dilated" for e in jax.make_jaxpr(fn)(x, w).eqns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.default_backend()}, {os.cpu_count()} cores; ms per forward + both gradients")
    print(
        f"  {'layer':<28} {'input':<18} {'out':>4} {'k':>2} {'s':>2} {'xla':>8} {'im2col':>8} {'xla/im2col':>10}  auto"
    )
    key = jax.random.PRNGKey(0)
    for shape, c_out, window, stride, where in LAYERS:
        ndim = len(shape) - 2
        x = jax.random.normal(key, shape)
        w = jax.random.normal(key, (window,) * ndim + (shape[-1], c_out)) * 0.1
        fns = {impl: _grad_fn(impl, stride, ndim) for impl in ("xla", "im2col")}
        ms = {
            impl: 1e3 * t
            for impl, t in median_seconds(
                {impl: (lambda f=f: f(x, w)) for impl, f in fns.items()}, args.repeats
            ).items()
        }
        auto = "im2col" if _picks_im2col(shape, c_out, window, stride) else "xla"
        print(
            f"  {where:<28} {str(shape[1:]):<18} {c_out:>4} {window:>2} {stride:>2} {ms['xla']:8.2f} "
            f"{ms['im2col']:8.2f} {ms['xla'] / ms['im2col']:10.2f}  {auto}"
        )


if __name__ == "__main__":
    main()
