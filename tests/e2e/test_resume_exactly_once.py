"""Exactly once across a resume, whatever the answers' size; bounded memory for the
sessions that wait out their grace; a reused request id runs anew.

A JSON-lines driver talks to a real `python -m shim` that reaches the daemon through a
loopback TCP proxy the test cuts; `record` (tests.fixtures.counting_tools) writes one
line per execution, so "ran once" is read from a file.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import DaemonFactory, async_wait_for
from tests.e2e.reliability_support import (
    COUNTING_ARGS,
    ShimDriver,
    read_counts,
    rpc_error,
    rpc_text,
    shim_drivers,
    tcp_proxy,
)
from tests.support.health import health_until
from tests.support.op_client import OpClient

pytestmark = pytest.mark.timeout(120)

MIB = 1024 * 1024
CALLS = 12


def answer_of(shim: ShimDriver, rid: object) -> dict[str, object]:
    return next(r for r in shim.responses if r.get("id") == rid)


async def _answers_while_away(
    daemon_factory: DaemonFactory, tmp_path: Path, **env: str
) -> tuple[ShimDriver, list[object], dict[str, int]]:
    """CALLS `record` calls with 1 MiB answers each complete while the shim's
    connection is down; then it reconnects. (shim, request ids, execution counts)."""
    caps = {"EXAI_WS_SESSION_MAX_INFLIGHT": str(CALLS), "EXAI_WS_GLOBAL_MAX_INFLIGHT": "64"}
    daemon = daemon_factory(workers=2, args=COUNTING_ARGS, env={**caps, **env})
    counts = tmp_path / "counts.txt"
    async with tcp_proxy(daemon.port) as proxy, shim_drivers(tmp_path) as start:
        shim = await start(daemon.shim_env(EXAI_WS_PORT=str(proxy.port)))
        await shim.initialize()
        ids = [
            await shim.call(
                "record", {"key": f"k{i}", "seconds": 1.0, "pad": MIB, "path": str(counts)}
            )
            for i in range(CALLS)
        ]
        await async_wait_for(lambda: len(read_counts(counts)) == CALLS, 15, "every call to start")
        proxy.refusing = True
        assert proxy.cut() == 1
        await health_until(
            daemon,
            lambda h: h["sessions_detached"] == 1 and h["inflight"]["global"] == 0,
            "every call to finish while the session is detached",
        )
        proxy.refusing = False
        for rid in ids:
            await shim.response(rid)
        barrier = await shim.call_and_wait("echo", {"text": "barrier"})
        assert rpc_text(barrier) == "barrier"
        return shim, ids, read_counts(counts)


async def test_more_answers_than_the_session_keeps_still_run_once(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """12 MiB of answers complete while the shim is away (more than the 8 MiB a session
    keeps of answers it sent): after the resume each call has its answer, once, and
    none ran twice."""
    shim, ids, counts = await _answers_while_away(
        daemon_factory, tmp_path, EXAI_WS_SEND_BUFFER_BYTES=str(32 * MIB)
    )
    assert counts == {f"k{i}": 1 for i in range(CALLS)}
    for i, rid in enumerate(ids):
        assert shim.count(rid) == 1, f"{rid} answered {shim.count(rid)} times"
        assert rpc_text(answer_of(shim, rid)).startswith(f"recorded k{i}")


async def test_answers_lost_while_away_are_said_so_and_never_rerun(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """The detached session can hold only 2 MiB, so most answers are dropped: those
    calls are answered WORKER_LOST (cause answer_evicted: they ran), never re-run."""
    shim, ids, counts = await _answers_while_away(
        daemon_factory, tmp_path, EXAI_WS_SEND_BUFFER_BYTES=str(2 * MIB)
    )
    assert counts == {f"k{i}": 1 for i in range(CALLS)}
    lost = 0
    for rid in ids:
        assert shim.count(rid) == 1, f"{rid} answered {shim.count(rid)} times"
        answer = answer_of(shim, rid)
        if "error" in answer:
            error = rpc_error(answer)
            assert error["data"]["code"] == "WORKER_LOST", error
            assert error["data"]["cause"] == "answer_evicted", error
            lost += 1
    assert lost > 0, "the outbox should have been too small for some answers"


async def test_a_reused_request_id_runs_anew(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    """A client that reuses a request id after getting its answer gets a new answer,
    not the earlier one again."""
    daemon = daemon_factory(workers=1, args=COUNTING_ARGS)
    counts = tmp_path / "counts.txt"
    async with shim_drivers(tmp_path) as start:
        shim = await start(daemon.shim_env())
        await shim.initialize()
        first = await shim.response(
            await shim.call("record", {"key": "first", "path": str(counts)}, rid=7)
        )
        second = await shim.response(
            await shim.call("record", {"key": "second", "path": str(counts)}, rid=7)
        )
    assert rpc_text(first) == "recorded first"
    assert rpc_text(second) == "recorded second"
    assert read_counts(counts) == {"first": 1, "second": 1}


async def test_disconnected_sessions_are_bounded(daemon_factory: DaemonFactory) -> None:
    """EXAI_WS_DETACHED_MAX_SESSIONS=2: a third session dropped without goodbye ends
    the oldest one early (logged), so departed clients cannot grow the daemon."""
    daemon = daemon_factory(
        workers=1, env={"EXAI_WS_DETACHED_MAX_SESSIONS": "2", "EXAI_HEALTH_INTERVAL": "0.05"}
    )
    async with aiohttp.ClientSession() as http:
        for n in range(3):
            ws = await http.ws_connect(daemon.url)
            client = OpClient(ws, f"departed-{n}")
            ack = await client.hello()
            assert ack["ok"], ack
            # Gone without a close handshake, like a killed shim.
            transport = ws._response.connection.transport  # type: ignore[union-attr]
            assert transport is not None
            transport.abort()
            await async_wait_for(
                lambda n=n: daemon.stderr().count("disconnected; kept") == n + 1,
                15,
                f"session {n} to be detached",
            )
    await async_wait_for(
        lambda: "ended before its resume grace" in daemon.stderr(), 15, "the oldest to end"
    )
    await health_until(daemon, lambda h: h["sessions_detached"] == 2, "two detached sessions")


async def test_a_late_copy_on_a_replaced_connection_does_not_run_again(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """A shim whose link stalled re-sends a call on its new connection; the copy it sent
    on the old one reaches the daemon late, after the call answered, while the old
    connection is still busy sending. The call runs once."""
    daemon = daemon_factory(workers=1, args=COUNTING_ARGS)
    counts = tmp_path / "counts.txt"
    hello = {"op": "hello", "session_id": "late-copy", "acks": True}

    def record(key: str, pad: int = 0) -> dict[str, object]:
        arguments = {"key": key, "path": str(counts), "pad": pad}
        params = {"name": "record", "arguments": arguments}
        return {"jsonrpc": "2.0", "id": key, "method": "tools/call", "params": params}

    async def answer(ws: aiohttp.ClientWebSocketResponse, key: str) -> dict[str, object]:
        while True:  # acks and other frames may come first
            frame = await ws.receive_json(timeout=10)
            if frame.get("id") == key and "op" not in frame:
                return dict(frame)

    async with tcp_proxy(daemon.port) as proxy, aiohttp.ClientSession() as http:
        old = await http.ws_connect(f"ws://127.0.0.1:{proxy.port}/")
        await old.send_json({**hello, "awaited": []})
        assert (await old.receive_json(timeout=10))["ok"] is True
        # An answer too large for the stalled link keeps the old connection sending, so
        # it is still reading when the late copy arrives.
        assert proxy.stall() == 1
        await old.send_json(record("big", pad=24 * MIB))
        await old.send_json(record("queued", pad=MIB))
        await async_wait_for(
            lambda: len(daemon.metrics_lines()) == 2, 10, "both answers to be sent"
        )
        assert proxy.hold_upstream() == 1
        await old.send_json(record("k"))
        new = await http.ws_connect(daemon.url, max_msg_size=64 * MIB)
        await new.send_json({**hello, "awaited": ["big", "queued", "k"]})
        assert (await new.receive_json(timeout=10))["resumed"] is True
        await new.send_json(record("k"))
        assert rpc_text(await answer(new, "k")) == "recorded k"
        await proxy.release_upstream()
        # The late copy is in the daemon's socket now; give the daemon a moment to read
        # it before the barrier (on a slow machine the check only gets weaker).
        await asyncio.sleep(0.2)
        await new.send_json(record("barrier"))
        assert rpc_text(await answer(new, "barrier")) == "recorded barrier"
        await new.close()
    assert read_counts(counts) == {"big": 1, "queued": 1, "k": 1, "barrier": 1}
