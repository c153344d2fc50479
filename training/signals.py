"""SIGINT / SIGTERM during training: remember the signal, let the loop finish its step and save."""
import signal


class StopSignals:
    """Context manager: while inside, SIGINT and SIGTERM set `.received` (the signal's name) instead
    of killing the process; the previous handlers come back on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received = None
        self._previous = {}

    def _on_signal(self, signum, _frame):
        self.received = signal.Signals(signum).name

    def __enter__(self):
        self._previous = {s: signal.signal(s, self._on_signal) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        return False
