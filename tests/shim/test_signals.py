"""Unit tests of the shim's termination signals (shim.__main__.SignalStop), in this
process: the first signal stops the shim once, the later ones are ignored, with the
loop's signal handlers and with plain `signal.signal` ones (Windows' loops have none)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest

from shim.signals import SignalStop, termination_signals
from tests.conftest import async_wait_for

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
    pytest.mark.timeout(30),
]


@pytest.fixture(autouse=True)
def restored_handlers() -> Iterator[None]:
    """A stopped SignalStop leaves the signals ignored: give this process its own back."""
    saved = {sig: signal.getsignal(sig) for sig in termination_signals()}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


class NoSignalHandlersLoop:
    """A loop without add_signal_handler, like Windows' loops."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def add_signal_handler(self, sig: int, callback: Callable[..., object], *args: Any) -> None:
        raise NotImplementedError

    def remove_signal_handler(self, sig: int) -> bool:
        raise NotImplementedError

    def call_soon_threadsafe(self, callback: Callable[..., object], *args: Any) -> Any:
        return self._loop.call_soon_threadsafe(callback, *args)


def test_the_termination_signals_are_those_of_this_platform() -> None:
    assert termination_signals() == [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]


@pytest.mark.parametrize("loop_kind", ["add_signal_handler", "signal.signal"])
async def test_the_first_signal_stops_once_and_later_ones_are_ignored(loop_kind: str) -> None:
    running = asyncio.get_running_loop()
    loop = running if loop_kind == "add_signal_handler" else NoSignalHandlersLoop(running)
    stops: list[str | None] = []
    stop = SignalStop(cast(asyncio.AbstractEventLoop, loop), lambda: stops.append(stop.signalled))
    stop.install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        await async_wait_for(lambda: stops, 5, "the stop")
        # Unhandled, either would end this process (SIGINT with a KeyboardInterrupt).
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.sleep(0.2)
        assert stops == ["SIGINT"]
        assert all(signal.getsignal(sig) is signal.SIG_IGN for sig in termination_signals())
    finally:
        for sig in termination_signals():
            running.remove_signal_handler(sig)
