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

ENV = "JAXENS_KILL_AT"


def kill_point(name: str, step: int | None = None) -> None:
    """SIGKILLs this process if `JAXENS_KILL_AT` names this point (and step)."""
    spec = os.environ.get(ENV, "")
    for item in filter(None, spec.split(",")):
        point, _, at = item.partition("@")
        if point == name and (not at or (step is not None and int(at) == step)):
            os.kill(os.getpid(), signal.SIGKILL)
