"""Ctrl-C, SIGTERM and SIGHUP as a polite request: finish the step, save, stop. A second one aborts at once.

SIGHUP is what a closed terminal or a dropped ssh session sends: without a handler it kills the
run between two checkpoints, losing up to an epoch of work.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any

# SIGHUP does not exist on Windows
SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class GracefulInterrupt:
    """``requested`` turns true on the first SIGINT/SIGTERM/SIGHUP between ``install()`` and ``restore()``
    (or inside ``with``).

    Training polls ``requested`` after each step (the :class:`~mlp_torch.training.callbacks.GracefulStop`
    callback). A second signal raises ``KeyboardInterrupt`` right away; checkpoints are written
    atomically, so that cannot corrupt one. Outside the main thread (where handlers cannot be
    installed) it does nothing.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        message = f"{self.signal_name} received: finishing this step and saving last.pt"
        try:
            print(f"\n{message} (send it again to abort at once)", file=sys.stderr, flush=True)
        except OSError:  # after SIGHUP the terminal may be gone; saving matters more than saying so
            pass

    def install(self) -> None:
        """Handle the signals from now on (in the main thread; elsewhere handlers cannot be set)."""
        if threading.current_thread() is threading.main_thread() and not self._previous:
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        """Put the previous handlers back; safe to call twice."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __enter__(self) -> GracefulInterrupt:
        self.install()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.restore()
