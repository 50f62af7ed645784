"""Progress bars with rate and ETA; silent when stderr is not a terminal, when CI is set, and in every
process of a multi-host run but process 0."""

from __future__ import annotations

import os
import sys

import tqdm


def enabled() -> bool:
    ci = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")
    # Asked without starting JAX's backend: a sweep's driver must not take an accelerator's memory.
    import jax

    return sys.stderr.isatty() and not ci and (not jax.distributed.is_initialized() or jax.process_index() == 0)


def bar(total: int, initial: int = 0, desc: str = "", unit: str = "step", leave: bool = True) -> tqdm.tqdm:
    """A tqdm bar over `total` units starting at `initial` (showing units/s and ETA)."""
    return tqdm.tqdm(
        total=total, initial=initial, desc=desc, unit=unit, disable=not enabled(), dynamic_ncols=True, leave=leave
    )
