"""`/mcp`: the Streamable HTTP transport (2025-11-25), against real daemons.

The official clients first: the Python SDK's `mcp.Client` on the URL (its default
mode probes `server/discover`, is refused for want of a session and falls back to
`initialize`; legacy mode starts there) and the TypeScript SDK's
StreamableHTTPClientTransport (tests/fixtures/ts_http_client.mjs). Then raw aiohttp
requests for what the clients never do wrong: session ids, versions, guards, limits,
the standalone stream and its replay, and a closed stream cancelling its call.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import shutil
import signal
import subprocess
import sys
from typing import Any

import aiohttp
import anyio
import mcp
import pytest

from exai.errors import MODERN_VERSION
from tests.conftest import ROOT, DaemonFactory, DaemonProcess, async_wait_for, base_env, scaled

pytestmark = pytest.mark.timeout(60)

FULL_CMD = f"{shlex.quote(sys.executable)} -m tests.fixtures.full_server"
TS_SDK = ROOT / ".cache" / "node" / "node_modules" / "@modelcontextprotocol" / "sdk"
TS_CLIENT = ROOT / "tests" / "fixtures" / "ts_http_client.mjs"
ACCEPT_BOTH = "application/json, text/event-stream"
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"},
    },
}


def mcp_url(daemon: DaemonProcess) -> str:
    return f"http://127.0.0.1:{daemon.port}/mcp"


async def inflight(http: aiohttp.ClientSession, daemon: DaemonProcess) -> int:
    async with http.get(f"http://127.0.0.1:{daemon.port}/health") as resp:
        return int((await resp.json())["inflight"]["global"])


async def open_session(http: aiohttp.ClientSession, daemon: DaemonProcess) -> dict[str, str]:
    """Initialize over raw HTTP; the headers every later request of the session needs."""
    headers = {"Accept": ACCEPT_BOTH}
    async with http.post(mcp_url(daemon), json=INIT, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "application/json"
        body = await resp.json()
        assert body["result"]["protocolVersion"] == "2025-11-25"
        session_id = resp.headers["Mcp-Session-Id"]
    assert len(session_id) >= 32
    headers |= {"Mcp-Session-Id": session_id, "MCP-Protocol-Version": "2025-11-25"}
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    async with http.post(mcp_url(daemon), json=note, headers=headers) as resp:
        assert resp.status == 202
        assert await resp.read() == b""
    return headers


async def read_answer(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    """The JSON-RPC answer of a POST: a JSON body, or the stream's last event (a request
    answered before anything else came gets JSON even when it could have streamed)."""
    if resp.content_type == "text/event-stream":
        while True:
            _, message = await read_event(resp)
            if "method" not in message:
                return message
    return dict(await resp.json())


async def read_event(resp: aiohttp.ClientResponse) -> tuple[str | None, dict[str, Any]]:
    """The next SSE event with data on `resp`: (id, the JSON message)."""
    event_id: str | None = None
    data: list[str] = []
    while True:
        line = (await asyncio.wait_for(resp.content.readline(), scaled(20))).decode()
        assert line, "the stream ended before an event"
        line = line.rstrip("\r\n")
        if not line:
            if data:
                return event_id, json.loads("\n".join(data))
            continue
        if line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


# --- the official clients --------------------------------------------------------------


@pytest.mark.parametrize(("mode", "version"), [("auto", MODERN_VERSION), ("legacy", "2025-11-25")])
async def test_python_sdk_client(daemon_factory: DaemonFactory, mode: str, version: str) -> None:
    """Default mode speaks 2026-07-28 (sessionless: no Mcp-Session-Id, every request a
    POST of its own); legacy mode the 2025-11-25 session."""
    daemon = daemon_factory(workers=2)
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async with aiohttp.ClientSession() as http:
        async with mcp.Client(mcp_url(daemon), mode=mode) as client:  # type: ignore[arg-type]
            assert client.protocol_version == version
            tools = {tool.name for tool in (await client.list_tools()).tools}
            assert {"echo", "sleep", "version"} <= tools
            echoed = await client.call_tool("echo", {"text": "over http"})
            assert echoed.content[0].text == "over http"  # type: ignore[union-attr]
            slept = await asyncio.gather(
                *(client.call_tool("sleep", {"seconds": 0.3}) for _ in range(6))
            )
            assert [r.content[0].text for r in slept] == ["slept 0.3"] * 6  # type: ignore[union-attr]
            result = await client.call_tool(
                "sleep", {"seconds": 0.3, "steps": 3}, progress_callback=on_progress
            )
            assert not result.is_error
            assert progress == [1.0, 2.0, 3.0]
            with anyio.move_on_after(0.5):
                await client.call_tool("sleep", {"seconds": 30})
            await async_wait_for(
                lambda: _zero(inflight(http, daemon)), 10, "the cancelled call to end"
            )
            async with http.get(f"http://127.0.0.1:{daemon.port}/health") as resp:
                # A sessionless client's exchanges each had a session of their own.
                assert (await resp.json())["sessions"] == (0 if version == MODERN_VERSION else 1)
        # Leaving the client sent DELETE: the session is gone at once.
        async with http.get(f"http://127.0.0.1:{daemon.port}/health") as resp:
            assert (await resp.json())["sessions"] == 0


async def _zero(count: Any) -> bool:
    return await count == 0


@pytest.mark.skipif(shutil.which("node") is None or not TS_SDK.is_dir(), reason="no node SDK")
async def test_typescript_sdk_client(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(workers=2)
    proc = await asyncio.create_subprocess_exec(
        shutil.which("node") or "node",
        str(TS_CLIENT),
        mcp_url(daemon),
        env=base_env(TS_CLIENT_STEP_S=str(scaled(20))),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), scaled(45))
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    record = json.loads(out.decode().strip().splitlines()[-1])
    steps = record["steps"]
    assert steps["connect"] == {"ok": "exai-broker"}, steps
    assert {"echo", "sleep"} <= set(steps["list"]["ok"]), steps
    assert steps["echo"] == {"ok": "hi ts"}, steps
    assert steps["overlap"] == {"ok": ["slept 0.3"] * 4}, steps
    assert steps["progress"]["ok"]["text"] == "slept 0.3", steps
    assert steps["progress"]["ok"]["progress"] == [1, 2, 3], steps
    assert steps["cancel"] == {"ok": "aborted"}, steps
    assert steps["terminate"] == {"ok": None}, steps
    async with aiohttp.ClientSession() as http:
        await async_wait_for(lambda: _zero(inflight(http, daemon)), 10, "the cancel to land")
        async with http.get(f"http://127.0.0.1:{daemon.port}/health") as resp:
            assert (await resp.json())["sessions"] == 0
        # The session the client deleted is unknown now.
        headers = {"Accept": ACCEPT_BOTH, "Mcp-Session-Id": record["sessionId"]}
        ping = {"jsonrpc": "2.0", "id": 9, "method": "ping"}
        async with http.post(mcp_url(daemon), json=ping, headers=headers) as resp:
            assert resp.status == 404


# --- raw HTTP ----------------------------------------------------------------------------


async def test_session_rules_limits_and_cancel_on_close(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(workers=1, env={"EXAI_WS_MAX_BYTES": "65536"})
    url = mcp_url(daemon)
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=ping, headers={"Accept": ACCEPT_BOTH}) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["code"] == -32600
        unknown = {"Accept": ACCEPT_BOTH, "Mcp-Session-Id": "no-such-session"}
        async with http.post(url, json=ping, headers=unknown) as resp:
            assert resp.status == 404
        async with http.get(url, headers=unknown | {"Accept": "text/event-stream"}) as resp:
            assert resp.status == 404
        async with http.delete(url, headers=unknown) as resp:
            assert resp.status == 404
        headers = await open_session(http, daemon)
        async with http.post(url, json=ping, headers=headers) as resp:
            assert resp.status == 200
            assert (await resp.json()) == {"jsonrpc": "2.0", "id": 2, "result": {}}
        bad_version = headers | {"MCP-Protocol-Version": "1999-01-01"}
        async with http.post(url, json=ping, headers=bad_version) as resp:
            assert resp.status == 400
        # A body over EXAI_WS_MAX_BYTES is refused before it is parsed.
        big = {"jsonrpc": "2.0", "id": 3, "method": "ping", "params": {"x": "a" * 70_000}}
        async with http.post(url, json=big, headers=headers) as resp:
            assert resp.status == 413
        async with http.post(
            url, data=b"[]", headers=headers | {"Content-Type": "application/json"}
        ) as resp:
            assert resp.status == 400
        # One standalone stream per session.
        sse = headers | {"Accept": "text/event-stream"}
        async with http.get(url, headers=sse) as first:
            assert first.status == 200
            assert first.content_type == "text/event-stream"
            async with http.get(url, headers=sse) as second:
                assert second.status == 409
        # Closing a request's stream before its answer cancels the call.
        call = {
            "jsonrpc": "2.0",
            "id": 4,
            "method": "tools/call",
            "params": {"name": "sleep", "arguments": {"seconds": 30}},
        }
        async with aiohttp.ClientSession() as other:
            resp = await other.post(url, json=call, headers=headers)
            assert resp.status == 200
            assert resp.content_type == "text/event-stream"
            await async_wait_for(lambda: _positive(inflight(http, daemon)), 10, "the call to start")
            resp.close()
        await async_wait_for(lambda: _zero(inflight(http, daemon)), 10, "the call to be cancelled")
        assert "closed before its answer; cancelled" in daemon.stderr() + _server_log(daemon)
        # The session still works, and DELETE ends it.
        async with http.post(url, json=ping, headers=headers) as resp:
            assert resp.status == 200
        async with http.delete(url, headers=headers) as resp:
            assert resp.status == 204
        async with http.post(url, json=ping, headers=headers) as resp:
            assert resp.status == 404


async def _positive(count: Any) -> bool:
    return await count > 0


def _server_log(daemon: DaemonProcess) -> str:
    path = daemon.log_dir / "mcp_server.log"
    return path.read_text(errors="replace") if path.exists() else ""


async def test_standalone_stream_replays_after_last_event_id(
    daemon_factory: DaemonFactory,
) -> None:
    daemon = daemon_factory(workers=1, args=["--server-cmd", FULL_CMD])
    url = mcp_url(daemon)

    def add_tool(n: int) -> dict[str, Any]:
        return {
            "jsonrpc": "2.0",
            "id": 100 + n,
            "method": "tools/call",
            "params": {"name": "add_tool", "arguments": {"name": f"dyn{n}"}},
        }

    async with aiohttp.ClientSession() as http:
        headers = await open_session(http, daemon)
        sse = headers | {"Accept": "text/event-stream"}
        async with http.get(url, headers=sse) as stream:
            assert stream.status == 200
            async with http.post(url, json=add_tool(1), headers=headers) as resp:
                answer = await read_answer(resp)
                assert answer["id"] == 101 and "result" in answer
            first_id, changed = await read_event(stream)
            assert changed["method"] == "notifications/tools/list_changed"
            assert first_id is not None
        # Sent while no stream is open: held for the next one.
        async with http.post(url, json=add_tool(2), headers=headers) as resp:
            answer = await read_answer(resp)
            assert answer["id"] == 102
        async with http.get(url, headers=sse | {"Last-Event-ID": first_id}) as stream:
            second_id, changed = await read_event(stream)
            assert changed["method"] == "notifications/tools/list_changed"
            assert second_id is not None and second_id != first_id
        # Resuming from before the first replays both.
        stream_no = first_id.split("-")[0]
        async with http.get(url, headers=sse | {"Last-Event-ID": f"{stream_no}-0"}) as stream:
            ids = [(await read_event(stream))[0] for _ in range(2)]
            assert ids == [first_id, second_id]


async def test_guards_apply_to_mcp(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(workers=1, env={"EXAI_WS_TOKEN": "s3cret-token"})
    url = mcp_url(daemon)
    async with aiohttp.ClientSession() as http:
        for method in ("POST", "GET", "DELETE"):
            async with http.request(
                method, url, json=INIT, headers={"Accept": ACCEPT_BOTH}
            ) as resp:
                assert resp.status == 401, method
                assert resp.headers["WWW-Authenticate"] == "Bearer"
        wrong = {"Accept": ACCEPT_BOTH, "Authorization": "Bearer wrong"}
        async with http.post(url, json=INIT, headers=wrong) as resp:
            assert resp.status == 401
        good = {"Accept": ACCEPT_BOTH, "Authorization": "Bearer s3cret-token"}
        async with http.post(
            url, json=INIT, headers=good | {"Origin": "https://evil.example"}
        ) as resp:
            assert resp.status == 403
        async with http.post(url, json=INIT, headers=good | {"Host": "evil.example"}) as resp:
            assert resp.status == 403
        async with http.post(url, json=INIT, headers=good) as resp:
            assert resp.status == 200
            assert "Mcp-Session-Id" in resp.headers


async def test_idle_session_expires(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(workers=1, env={"EXAI_SESSION_IDLE_TIMEOUT": "1"})
    url = mcp_url(daemon)
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    async with aiohttp.ClientSession() as http:
        headers = await open_session(http, daemon)
        async with http.post(url, json=ping, headers=headers) as resp:
            assert resp.status == 200
        # Any request would count as activity: look only once it has had time to expire.
        await asyncio.sleep(scaled(2.5))
        async with http.post(url, json=ping, headers=headers) as resp:
            assert resp.status == 404


async def test_a_full_house_ends_the_session_idle_longest(daemon_factory: DaemonFactory) -> None:
    """EXAI_WS_MAX_CONNECTIONS=2 HTTP sessions, both idle (their clients left without
    DELETE, as `claude mcp list` does): a third client still gets in, the session
    idle the longest is the one ended (404 to its client), the other keeps working.
    With a request of each in flight, the third is refused with 503."""
    daemon = daemon_factory(workers=1, env={"EXAI_WS_MAX_CONNECTIONS": "2"})
    url = mcp_url(daemon)
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    async with aiohttp.ClientSession() as http:
        oldest = await open_session(http, daemon)
        newer = await open_session(http, daemon)
        third = await open_session(http, daemon)
        async with http.post(url, json=ping, headers=oldest) as resp:
            oldest_status = resp.status
        async with http.post(url, json=ping, headers=newer) as resp:
            newer_status = resp.status
        async with http.post(url, json=ping, headers=third) as resp:
            third_status = resp.status
        call = {
            "jsonrpc": "2.0",
            "id": 3,
            "method": "tools/call",
            "params": {"name": "sleep", "arguments": {"seconds": 3}},
        }
        busy = [asyncio.ensure_future(http.post(url, json=call, headers=h)) for h in (newer, third)]

        async def both_busy() -> bool:
            return await inflight(http, daemon) == 2

        await async_wait_for(both_busy, 30, "both sleeps in flight", interval_s=0.1)
        async with http.post(url, json=INIT, headers={"Accept": ACCEPT_BOTH}) as resp:
            refused = resp.status
        for started in busy:
            (await started).close()
    assert (oldest_status, newer_status, third_status) == (404, 200, 200)
    assert refused == 503


def modern_request(rid: int, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """A self-contained 2026-07-28 request: the envelope rides in `_meta`."""
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
    }
    return {
        "jsonrpc": "2.0",
        "id": rid,
        "method": method,
        "params": {**(params or {}), "_meta": meta},
    }


async def test_sessionless_2026_requests(daemon_factory: DaemonFactory) -> None:
    """2026-07-28 over HTTP: each POST stands alone (no Mcp-Session-Id, no session left
    behind), Mcp-Method must match the body, GET and DELETE are 405."""
    daemon = daemon_factory(workers=1)
    url = mcp_url(daemon)
    modern = {"Accept": ACCEPT_BOTH, "MCP-Protocol-Version": MODERN_VERSION}
    async with aiohttp.ClientSession() as http:
        call = modern_request(1, "tools/call", {"name": "echo", "arguments": {"text": "alone"}})
        async with http.post(url, json=call, headers=modern | {"Mcp-Method": "tools/call"}) as resp:
            assert resp.status == 200
            assert "Mcp-Session-Id" not in resp.headers
            answer = await read_answer(resp)
        assert answer["id"] == 1 and answer["result"]["content"][0]["text"] == "alone", answer
        assert answer["result"]["resultType"] == "complete", answer
        discover = modern_request(2, "server/discover")
        async with http.post(
            url, json=discover, headers=modern | {"Mcp-Method": "tools/list"}
        ) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["code"] == -32020
        async with http.post(url, json=discover, headers=modern) as resp:
            assert resp.status == 400  # no Mcp-Method at all
        for method in (http.get, http.delete):
            async with method(url, headers=modern) as resp:
                assert resp.status == 405 and resp.headers["Allow"] == "POST"
        async with http.get(f"http://127.0.0.1:{daemon.port}/health") as resp:
            health = await resp.json()
        assert health["sessions"] == 0 and health["inflight"]["global"] == 0, health


async def test_a_draining_daemon_answers_the_http_call_in_flight_then_exits(
    daemon_factory: DaemonFactory,
) -> None:
    """SIGTERM with a session's GET stream open and a call running on its own stream:
    the call is answered (the drain grace), the streams end, the daemon exits 0."""
    daemon = daemon_factory(workers=1)
    async with aiohttp.ClientSession() as http:
        headers = await open_session(http, daemon)
        standalone = await http.get(
            mcp_url(daemon), headers=headers | {"Accept": "text/event-stream"}
        )
        call = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "sleep", "arguments": {"seconds": 1.0}},
        }
        posted = asyncio.create_task(http.post(mcp_url(daemon), json=call, headers=headers))
        await async_wait_for(lambda: _positive(inflight(http, daemon)), 10, "the call to start")
        daemon.proc.send_signal(signal.SIGTERM)
        async with await asyncio.wait_for(posted, scaled(20)) as resp:
            answer = await read_answer(resp)
        assert answer["result"]["content"][0]["text"] == "slept 1", answer
        assert await asyncio.wait_for(standalone.read(), scaled(20)) is not None
        standalone.close()
    assert await asyncio.to_thread(daemon.proc.wait, scaled(20)) == 0


async def _positive(count: Any) -> bool:
    return await count > 0
