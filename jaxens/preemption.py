"""Stopping on SIGTERM or SIGINT at a step boundary, with the state saved, instead of dying mid-step.

Preemptible machines (Cloud TPU spot VMs, preemptible GPUs, Slurm) send SIGTERM some seconds before they
take the machine; Ctrl-C sends SIGINT. Inside `stop_on_signals()` the first such signal only records a stop
request; the training loop sees it after its current chunk of steps, saves a checkpoint and raises
`Preempted`. A second signal acts at once, as it would without the handler. Rerunning the same command
resumes from that checkpoint.
"""

from __future__ import annotations

import contextlib
import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_requested: int | None = None  # The signal number of a pending stop request.
_depth = 0  # Nesting of stop_on_signals (a sweep around its runs).


class Preempted(Exception):
    """The run stopped on a signal after saving a checkpoint at `step`; rerun the same command to resume."""

    def __init__(self, signum: int, step: int, where: str):
        self.signum, self.step, self.where = signum, step, where
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} at step {step} of the {where}; checkpoint saved. Rerun the same command to resume."
        )

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def requested() -> int | None:
    """The signal that asked the run to stop, or None."""
    return _requested


def _handle(signum, frame) -> None:
    global _requested
    _requested = signum
    for s in SIGNALS:  # A second signal is not deferred.
        signal.signal(s, signal.SIG_DFL if s == signal.SIGTERM else signal.default_int_handler)


@contextlib.contextmanager
def stop_on_signals():
    """Defers SIGTERM and SIGINT to `requested()` while the block runs (main thread only; nests)."""
    global _requested, _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _depth == 0:
        _requested = None
        previous = {s: signal.getsignal(s) for s in SIGNALS}
        for s in SIGNALS:
            signal.signal(s, _handle)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            for s, handler in previous.items():
                signal.signal(s, handler)
