"""Fault injection for tests: SIGKILL this process at a named point of a run.

`JAXENS_KILL_AT` holds comma-separated points `name` or `name@step`. Points: `spawn` (the children of a
spawning condition exist, before their first step), `overwrite` (an --overwrite has deleted the old run's
directories, not yet its files) and a checkpoint directory's base name, e.g.
`checkpoints@16` or `parent@8` (the Orbax write of that step has started and is still running). The
kill is a real SIGKILL of the process: nothing runs after it, as when a machine is preempted without
warning. Unset (the normal case), `kill_point` does nothing.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

ENV = "JAXENS_KILL_AT"


def kill_point(name: str, step: int | None = None, ready: Callable[[], bool] | None = None) -> None:
    """SIGKILLs this process if `JAXENS_KILL_AT` names this point (and step).

    Args:
      ready: polled (for up to 10 s) before the kill, when the point is a state that another thread reaches,
        e.g. an asynchronous write that has created its temporary files; a loaded machine may be slow to.
    """
    spec = os.environ.get(ENV, "")
    for item in filter(None, spec.split(",")):
        point, _, at = item.partition("@")
        if point == name and (not at or (step is not None and int(at) == step)):
            deadline = time.monotonic() + 10
            while ready is not None and not ready() and time.monotonic() < deadline:
                time.sleep(0.001)
            os.kill(os.getpid(), signal.SIGKILL)
