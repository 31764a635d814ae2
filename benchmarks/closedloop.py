"""The closed loop every load client runs: call, wait for the answer, call again.

Client-agnostic: anything with `open`, `call` and `close` can be driven. Only calls
that finish inside the measurement window count; the warm-up before it and a call
still running when it ends are left out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from typing import Protocol

__all__ = [
    "CLIENT_TIMEOUT",
    "DISCONNECTED",
    "ClientGone",
    "LoadClient",
    "LoopResult",
    "Window",
    "drive",
]

CLIENT_TIMEOUT = "CLIENT_TIMEOUT"  # no answer within the client's own deadline
DISCONNECTED = "DISCONNECTED"  # the connection or the shim went away mid-run


class ClientGone(ConnectionError):
    """The client's transport closed; it cannot make further calls."""


class LoadClient(Protocol):
    async def open(self) -> None:
        """Connect and open the session; raise on failure."""

    async def call(self) -> str | None:
        """One echo call: None when it echoed correctly, else the error code."""

    async def close(self) -> None:
        """Release the connection or process; never raises."""


@dataclasses.dataclass(frozen=True, slots=True)
class Window:
    """Measurement window on this process's `time.perf_counter` clock."""

    start: float
    end: float


@dataclasses.dataclass(slots=True)
class LoopResult:
    latencies_ms: list[float] = dataclasses.field(default_factory=list)
    errors: Counter[str] = dataclasses.field(default_factory=Counter)
    gone: bool = False


async def drive(client: LoadClient, window: Window, call_timeout_s: float) -> LoopResult:
    """Run `client` in a closed loop until the window ends; return what fell inside it."""
    result = LoopResult()
    perf = time.perf_counter
    while True:
        t0 = perf()
        if t0 >= window.end:
            return result
        try:
            async with asyncio.timeout(call_timeout_s):
                code = await client.call()
        except TimeoutError:
            code = CLIENT_TIMEOUT
        except ClientGone:
            code = DISCONNECTED
            result.gone = True
        t1 = perf()
        if window.start <= t1 <= window.end:
            if code is None:
                result.latencies_ms.append((t1 - t0) * 1000.0)
            else:
                result.errors[code] += 1
        if result.gone:
            return result
