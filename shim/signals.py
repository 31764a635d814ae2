"""The shim's termination signals: the first one closes the session deliberately, so
the daemon cancels the client's calls at once instead of keeping them for a resume.

Clients stop their servers with SIGTERM (Gemini), SIGINT then SIGTERM 100 ms later
(Claude Code), SIGHUP, or on Windows Ctrl+Break and closing the console.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = ["SIGNAL_CLOSE_S", "SignalStop", "termination_signals"]

# How long the session's close may take after a termination signal: clients give a
# shim about a second to exit before they kill it.
SIGNAL_CLOSE_S = 0.6
# SIGBREAK is Windows' Ctrl+Break; its C runtime also raises it for a closed console.
TERMINATION_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGBREAK")
# Windows console events after which the process is ended once its handlers return.
_CTRL_CLOSE_EVENTS = frozenset({2, 5, 6})  # CTRL_CLOSE, CTRL_LOGOFF, CTRL_SHUTDOWN


class SignalStop:
    """Stops the shim on the first termination signal, deliberately: the session is
    closed (so the daemon cancels its calls) instead of left for a resume.

    Later signals are ignored: a client that sends SIGINT and then SIGTERM must not
    cut the close short, and the close is bounded anyway."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_stop: Callable[[], None]) -> None:
        self.loop = loop
        self.on_stop = on_stop
        self.signalled: str | None = None
        # Set once the session's close is over (a console-close handler waits for it).
        self.closed = threading.Event()
        self._console_handler: Any = None

    def install(self) -> None:
        for sig in termination_signals():
            try:
                self.loop.add_signal_handler(sig, self.handle, sig.name)
            except NotImplementedError:  # Windows' event loops
                _set_handler(sig, self._handle_from_signal)
            except (RuntimeError, ValueError):
                return  # not the main thread: whoever runs us handles signals
        if sys.platform == "win32":
            self._watch_console_close()

    def handle(self, name: str) -> None:
        if self.signalled is not None:
            return
        self.signalled = name
        for sig in termination_signals():
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                self.loop.remove_signal_handler(sig)
            # Also past the loop's end, while the interpreter exits.
            _set_handler(sig, signal.SIG_IGN)
        logging.getLogger("shim").info("%s: closing the session and exiting", name)
        self.on_stop()

    def _handle_from_signal(self, signum: int, frame: FrameType | None) -> None:
        # A signal handler runs between any two bytecodes, loop internals included.
        self.loop.call_soon_threadsafe(self.handle, signal.Signals(signum).name)

    def _watch_console_close(self) -> None:
        """Close the session when the console window closes, logs off or shuts down.

        Windows ends the process as soon as the handlers of such an event return, too
        soon for a signal handler to run: this one waits for the close itself."""
        if sys.platform != "win32":
            return
        import ctypes
        from ctypes import wintypes

        def on_event(event: int) -> bool:
            if event not in _CTRL_CLOSE_EVENTS:
                return False  # Ctrl+C and Ctrl+Break: the C runtime raises a signal
            self.loop.call_soon_threadsafe(self.handle, "console close")
            self.closed.wait(SIGNAL_CLOSE_S + 0.3)
            return True

        handler_type = ctypes.WINFUNCTYPE(wintypes.BOOL, wintypes.DWORD)
        self._console_handler = handler_type(on_event)  # kept: Windows calls it later
        ctypes.windll.kernel32.SetConsoleCtrlHandler(self._console_handler, True)


def termination_signals() -> list[signal.Signals]:
    """The signals that stop the shim, of those this platform has."""
    return [getattr(signal, name) for name in TERMINATION_SIGNALS if hasattr(signal, name)]


def _set_handler(sig: signal.Signals, handler: Any) -> None:
    with contextlib.suppress(OSError, RuntimeError, ValueError):
        signal.signal(sig, handler)
