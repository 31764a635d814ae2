"""Reliability: SIGTERM drains — running calls finish, new ones are refused with a typed
error, clients are told "going away" (1001), and the metrics and health files say so."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from typing import Any

import aiohttp
import pytest

from tests.conftest import DaemonFactory, DaemonProcess, scaled, wait_for
from tests.e2e.reliability_support import (
    STEP_S,
    JsonObj,
    rpc_error,
    rpc_text,
)
from tests.support.health import health_until
from tests.support.mcp_ws import mcp_ws_clients

SHUTTING_DOWN = -32053


async def _refused_or_shutting_down(daemon: DaemonProcess) -> str:
    """Try a new connection after SIGTERM: how the daemon turned it away."""
    async with aiohttp.ClientSession() as http:
        try:
            ws = await http.ws_connect(daemon.url, protocols=("mcp",))
        except aiohttp.ClientConnectorError:
            return "refused"
        except aiohttp.WSServerHandshakeError as exc:
            return f"http {exc.status}"
        await ws.close()
        return "accepted"


@pytest.mark.timeout(90)
async def test_sigterm_lets_running_calls_finish_and_refuses_new_ones(
    daemon_factory: DaemonFactory,
) -> None:
    """In-flight 1 s calls finish; a late call is SHUTTING_DOWN; close 1001; exit 0."""
    daemon = daemon_factory(
        workers=2, env={"EXAI_SHUTDOWN_GRACE": "10", "EXAI_HEALTH_INTERVAL": "0.05"}
    )
    async with mcp_ws_clients(daemon, 2) as clients:
        running = [
            (await c.start_call("sleep", {"seconds": 1}))[1] for c in clients for _ in range(2)
        ]
        await health_until(daemon, lambda h: h["inflight"]["global"] == 4, "four running calls")
        daemon.proc.send_signal(signal.SIGTERM)
        await health_until(daemon, lambda h: h["draining"], "the daemon to start draining")

        # A call sent now is refused with a typed error (or finds the connection closed).
        _, late = await clients[0].start_call("echo", {"text": "too late"})
        closed: asyncio.Future[Any] = asyncio.ensure_future(clients[0].closed.wait())
        either: set[asyncio.Future[Any]] = {late, closed}
        await asyncio.wait(either, timeout=scaled(STEP_S), return_when=asyncio.FIRST_COMPLETED)
        closed.cancel()
        late_answer: JsonObj | None = late.result() if late.done() else None
        if late_answer is not None:
            error = rpc_error(late_answer)
            assert error["code"] == SHUTTING_DOWN, late_answer
            assert error.get("data", {}).get("code") == "SHUTTING_DOWN"
        assert await _refused_or_shutting_down(daemon) in ("refused", "http 503")

        answers = await asyncio.wait_for(asyncio.gather(*running), scaled(STEP_S))
        assert [rpc_text(a) for a in answers] == ["slept 1"] * 4
        for client in clients:
            await asyncio.wait_for(client.closed.wait(), scaled(STEP_S))
            assert client.close_code == 1001

    wait_for(lambda: daemon.proc.poll() is not None, 20, "the daemon to exit")
    assert daemon.proc.returncode == 0, daemon.stderr()

    # Nothing written is lost: one metrics line per answered call, the final health says so.
    lines = daemon.metrics_lines()
    seen = Counter((m["tool"], m["outcome"]) for m in lines)
    expected = Counter({("sleep", "ok"): 4})
    if late_answer is not None:
        expected[("echo", "SHUTTING_DOWN")] = 1
    assert seen == expected, lines
    final = daemon.health()
    assert final["draining"] is True
    assert final["inflight"]["global"] == 0
    assert final["calls_total"] == sum(expected.values())
