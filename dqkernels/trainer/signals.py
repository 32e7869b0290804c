"""SIGINT/SIGTERM during training: finish the step, write a checkpoint, exit 128 + signal."""

from __future__ import annotations

import os
import signal
import threading

__all__ = ["StopRequest"]


class StopRequest:
    """While installed (``with stop:``), the first SIGINT/SIGTERM sets :attr:`signum`,
    which the loop checks after every step; a second SIGINT interrupts at once."""

    def __init__(self):
        self.signum = 0
        self._old = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            # (signal handlers can only be set from the main thread)
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        # os.write: safe inside a handler that may interrupt a print
        os.write(
            2,
            f"\ndqk train: got {signal.Signals(signum).name}; finishing the current "
            f"step, then writing a checkpoint\n".encode(),
        )
