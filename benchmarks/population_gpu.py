"""The population axis on an accelerator: aggregate images per second of K stacked members, and the ratio to
one member, for every member strategy.

  python benchmarks/population_gpu.py                      # on the GPU or TPU host, one command
  python benchmarks/population_gpu.py --mlp_ks=1,4 --resnet_ks=1,2 --repeats=1   # a quick check on CPU

MLP members (784-256-256-10 on Fashion-MNIST) at K = 1, 16, 64, 256 and ResNet-20 members (CIFAR-shaped
random images) at K = 1, 8, 32, batch 128 per member, through the trainer's own K-member step
(`benchmarks/member_strategies.py`: the same timing, medians of interleaved rounds after a compiling call).
`member-img/s` is the aggregate K·B / step time; `vs sequential` is K · (one member's step) / (the K-member
step): how many times more images per second the stacked population trains than one member alone. A grid run
(config.grid) of G groups of k members trains exactly such a K = G·k population.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import member_strategies  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mlp_ks", default="1,16,64,256")
    parser.add_argument("--resnet_ks", default="1,8,32")
    parser.add_argument("--strategies", default="vmap,loop", help="and shard_map/vmap on several devices")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    strategies = args.strategies.split(",")
    member_strategies.print_backend()
    for name, ks in (("mlp", args.mlp_ks), ("resnet20", args.resnet_ks)):
        if ks:  # An empty list skips the model.
            member_strategies.report(name, [int(k) for k in ks.split(",")], strategies, args.repeats)


if __name__ == "__main__":
    main()
