"""Peers that misbehave at the socket level: silent peers (heartbeats) and slow readers.

Neither may hold capacity forever, and neither may disturb other sessions or the daemon.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import DaemonFactory, scaled
from tests.e2e.sched_support import (
    HOLD_S,
    STEP_S,
    Files,
    RawWsClient,
    flood_until_dropped,
    idle,
    marker_state,
    marker_until,
    op_clients,
    op_text,
    rpc_text,
    sched_env,
    start_tagged_daemon,
)
from tests.support.health import health_until
from tests.support.jsonrpc import initialize_params, rpc_request, tool_call
from tests.support.mcp_ws import mcp_ws_clients

pytestmark = pytest.mark.timeout(180)

KiB = 1024


# --- heartbeats ------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["op", "mcp"])
async def test_a_peer_that_never_answers_pings_is_dropped_and_its_call_released(
    daemon_factory: DaemonFactory, tmp_path: Path, dialect: str
) -> None:
    """With EXAI_WS_PING_INTERVAL=0.5 and EXAI_WS_PING_TIMEOUT=0.5, a client that never
    answers pings is disconnected
    by the daemon; the call it had running is treated as a disconnect: cancelled in the
    worker and its capacity released (after EXAI_WS_RESUME_GRACE=1 for an op session that
    could resume; at once for an MCP session, which cannot)."""
    daemon = start_tagged_daemon(
        daemon_factory,
        sched_env(
            session=1,
            EXAI_WS_PING_INTERVAL="0.5",
            EXAI_WS_PING_TIMEOUT="0.5",
            EXAI_WS_RESUME_GRACE="1",
        ),
    )
    files = Files(tmp_path)
    marker = files.path("silent")
    arguments = {"seconds": HOLD_S, "marker": str(marker)}
    if dialect == "op":
        async with op_clients(daemon, "silent", autoping=False) as (silent,):
            call = await silent.start("plain_wait", arguments)
            await call.wait_ack()
            await marker_until(marker, "started")
            await asyncio.wait_for(silent.closed.wait(), scaled(STEP_S))
            assert not call.result.done()
            await health_until(daemon, lambda h: h["sessions_detached"] == 1, "session detached")
    else:
        async with mcp_ws_clients(daemon, 1, autoping=False) as (silent_mcp,):
            _, future = await silent_mcp.start_call("plain_wait", arguments)
            await marker_until(marker, "started")
            await asyncio.wait_for(silent_mcp.closed.wait(), scaled(STEP_S))
            with pytest.raises(ConnectionError):
                future.result()  # no answer came before the connection went
    await marker_until(marker, "cancelled")
    health = await health_until(daemon, idle, "the dropped peer's call to be released")
    assert health["sessions"] == 0 and health["sessions_detached"] == 0
    async with op_clients(daemon, "next") as (fresh,):
        assert op_text(await fresh.call("echo", {"text": "alive"})) == "alive"


async def test_a_peer_answering_pings_within_the_ping_timeout_stays_connected(
    daemon_factory: DaemonFactory,
) -> None:
    """With EXAI_WS_PING_INTERVAL=0.5 and EXAI_WS_PING_TIMEOUT=30, a client that answers
    each ping 1 s late (well inside the 30 s timeout) is not dropped: after three late
    pongs it is still connected and its calls work."""
    daemon = start_tagged_daemon(
        daemon_factory,
        sched_env(EXAI_WS_PING_INTERVAL="0.5", EXAI_WS_PING_TIMEOUT="30"),
    )
    late_pongs = 0
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(daemon.url, protocols=("mcp",), autoping=False)
        async with ws:
            while late_pongs < 3:
                msg = await ws.receive(timeout=scaled(STEP_S))
                assert msg.type is aiohttp.WSMsgType.PING, f"dropped after {late_pongs}: {msg}"
                # The peer is slow, not dead: the pong comes, but a second late.
                await asyncio.sleep(1.0)
                await ws.pong(msg.data)
                late_pongs += 1
            assert not ws.closed
            await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
            while True:
                msg = await ws.receive(timeout=scaled(STEP_S))
                if msg.type is aiohttp.WSMsgType.PING:
                    await ws.pong(msg.data)
                    continue
                assert msg.type is aiohttp.WSMsgType.TEXT, msg
                assert json.loads(msg.data)["id"] == 1
                break


# --- slow readers -------------------------------------------------------------------------


async def test_a_client_that_stops_reading_is_dropped_without_hurting_others(
    daemon_factory: DaemonFactory,
) -> None:
    """With EXAI_WS_SEND_BUFFER_BYTES=65536, an MCP client that floods 32 KiB echo calls and
    never reads its socket is dropped by the daemon (after many answers piled up, not at the
    first), while another session keeps getting correct 32 KiB answers the whole time and
    the daemon stays up with nothing left in flight."""
    daemon = start_tagged_daemon(
        daemon_factory,
        sched_env(session=5000, global_cap=5000, EXAI_WS_SEND_BUFFER_BYTES="65536"),
    )
    slow = await RawWsClient.connect(daemon.port, subprotocol="mcp")
    await slow.send_json(rpc_request(0, "initialize", initialize_params(client="slow-reader")))
    assert json.loads(await slow.read_frame())["id"] == 0

    flood_done = asyncio.Event()
    good_answers = 0

    async def well_behaved(min_calls: int) -> None:
        nonlocal good_answers
        async with mcp_ws_clients(daemon, 1) as (good,):
            while not flood_done.is_set() or good_answers < min_calls:
                text = f"{good_answers:06d}" + "g" * (32 * KiB)
                assert rpc_text(await good.call("echo", {"text": text})) == text
                good_answers += 1
            assert not good.closed.is_set()

    good_task = asyncio.get_running_loop().create_task(well_behaved(20))
    payload = "s" * (32 * KiB)
    sent = 0
    try:
        # Bounded flood: 1200 x 32 KiB answers is far more than the kernel buffers can hide.
        sent = await flood_until_dropped(
            slow,
            daemon,
            lambda n: tool_call(n, "echo", {"text": payload}),
            check_every=25,
            stop=good_task.done,
        )
    finally:
        flood_done.set()
        slow.abort()
    await asyncio.wait_for(good_task, scaled(120))
    assert good_answers >= 20
    drops = [line for line in daemon.stderr().splitlines() if "not reading" in line]
    assert len(drops) == 1, drops  # the slow reader only, never the good client
    assert sent > 3, "dropped at its first answers: not a backlog"
    assert daemon.proc.poll() is None
    await health_until(daemon, idle, "nothing left in flight")
    async with mcp_ws_clients(daemon, 1) as (after,):
        assert rpc_text(await after.call("echo", {"text": "still serving"})) == "still serving"


async def test_an_answer_larger_than_the_send_buffer_reaches_a_reading_client(
    daemon_factory: DaemonFactory,
) -> None:
    """With EXAI_WS_SEND_BUFFER_BYTES=65536, a client that reads promptly and asks for one
    100 KiB echo (well under EXAI_WS_MAX_BYTES) gets its answer; it is not dropped as a
    slow reader."""
    daemon = start_tagged_daemon(daemon_factory, sched_env(EXAI_WS_SEND_BUFFER_BYTES="65536"))
    async with mcp_ws_clients(daemon, 1) as (client,):
        text = "b" * (100 * KiB)
        response = await client.call("echo", {"text": text})
        assert rpc_text(response) == text
        assert not client.closed.is_set()
    assert "not reading" not in daemon.stderr()


async def test_a_burst_of_answers_reaches_a_client_that_reads(
    daemon_factory: DaemonFactory,
) -> None:
    """With EXAI_WS_SEND_BUFFER_BYTES=65536, a client that reads promptly and has 16 echo
    calls of 20 KiB in flight at once gets all 16 answers; the daemon does not drop it as a
    slow reader because several answers became ready in the same instant."""
    daemon = start_tagged_daemon(daemon_factory, sched_env(EXAI_WS_SEND_BUFFER_BYTES="65536"))
    async with mcp_ws_clients(daemon, 1) as (client,):
        texts = [f"{i:02d}" + "b" * (20 * KiB) for i in range(16)]
        futures = [(await client.start_call("echo", {"text": t}))[1] for t in texts]
        done, _ = await asyncio.wait(futures, timeout=scaled(STEP_S))
        assert len(done) == 16
        for future, text in zip(futures, texts, strict=True):
            assert rpc_text(future.result()) == text
        assert not client.closed.is_set()
    assert "not reading" not in daemon.stderr()


async def test_a_dropped_slow_reader_keeps_its_session_for_the_resume_grace(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """An op-dialect session whose connection is dropped for not reading is treated like any
    other disconnect: its running call keeps running for EXAI_WS_RESUME_GRACE and a
    reconnect with the same session id resumes it."""
    daemon = start_tagged_daemon(
        daemon_factory,
        sched_env(
            session=5000,
            global_cap=5000,
            EXAI_WS_SEND_BUFFER_BYTES="65536",
            EXAI_WS_RESUME_GRACE="60",
        ),
    )
    files = Files(tmp_path)
    marker = files.path("long")
    release = files.release()
    slow = await RawWsClient.connect(daemon.port)
    try:
        await slow.send_json({"op": "hello", "session_id": "slow-op-session"})
        assert json.loads(await slow.read_frame())["ok"] is True
        await slow.send_json(
            {
                "op": "call_tool",
                "request_id": "long",
                "name": "plain_wait",
                "arguments": {"seconds": HOLD_S, "marker": str(marker), "release": str(release)},
            }
        )
        await marker_until(marker, "started")
        payload = "s" * (16 * KiB)
        await flood_until_dropped(
            slow,
            daemon,
            lambda n: {
                "op": "call_tool",
                "request_id": n,
                "name": "echo",
                "arguments": {"text": payload},
            },
            check_every=10,
        )
    finally:
        slow.abort()
    try:
        await health_until(
            daemon,
            lambda h: h["sessions"] == 0 and h["sessions_detached"] == 1,
            "the dropped session to wait for its reconnect",
        )
        assert marker_state(marker) == "started"
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(daemon.url)
            async with ws:
                await ws.send_str(json.dumps({"op": "hello", "session_id": "slow-op-session"}))
                ack = json.loads((await ws.receive(timeout=scaled(STEP_S))).data)
                assert ack["resumed"] is True, ack
                Files.let_go(release)
                while True:
                    frame = json.loads((await ws.receive(timeout=scaled(STEP_S))).data)
                    if frame.get("request_id") == "long" and frame.get("op") == "call_tool_res":
                        break
                assert frame["text"] == "plain_wait done"
    finally:
        Files.let_go(release)
