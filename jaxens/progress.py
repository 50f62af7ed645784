"""Progress bars with rate and ETA; silent when stderr is not a terminal or when CI is set."""

from __future__ import annotations

import os
import sys

import tqdm


def enabled() -> bool:
    ci = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")
    return sys.stderr.isatty() and not ci


def bar(total: int, initial: int = 0, desc: str = "", unit: str = "step", leave: bool = True) -> tqdm.tqdm:
    """A tqdm bar over `total` units starting at `initial` (showing units/s and ETA)."""
    return tqdm.tqdm(
        total=total, initial=initial, desc=desc, unit=unit, disable=not enabled(), dynamic_ncols=True, leave=leave
    )
