"""SIGINT / SIGTERM during training: remember the signal, let the loop finish its step and save.

Under torchrun a rank also stops when its launcher dies (torchrun killed alone would otherwise leave
its ranks training, orphaned, beside whatever runs next): on Linux the kernel sends the rank SIGTERM
when its parent exits (prctl PR_SET_PDEATHSIG), and on every system the loop sees the parent's pid
change at its checks. Both end the run as SIGTERM does: checkpoint_interrupted, then exit."""
import ctypes
import ctypes.util
import os
import signal

PR_SET_PDEATHSIG = 1  # linux/prctl.h
_launcher_pid = None  # the parent a rank started under, once exit_with_launcher has run


def exit_with_launcher() -> None:
    """Call first thing in a rank started by torchrun."""
    global _launcher_pid
    _launcher_pid = os.getppid()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the pid check in StopSignals.received stands alone


def launcher_gone() -> bool:
    return _launcher_pid is not None and os.getppid() != _launcher_pid


class StopSignals:
    """Context manager: while inside, SIGINT and SIGTERM set `.received` (the signal's name) instead
    of killing the process; the previous handlers come back on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self._received = None
        self._previous = {}

    @property
    def received(self):
        """The signal's name, "launcher exit" once torchrun is gone, or None."""
        if self._received is None and launcher_gone():
            self._received = "launcher exit"
        return self._received

    def _on_signal(self, signum, _frame):
        self._received = signal.Signals(signum).name

    def __enter__(self):
        self._previous = {s: signal.signal(s, self._on_signal) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        return False
