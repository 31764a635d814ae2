"""Origin and Host checks (the DNS-rebinding defence), on raw requests and in a real
headless Chromium loading a page from another loopback origin."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from exai.settings import SettingsError, load_settings
from tests.conftest import DaemonFactory, DaemonProcess, async_wait_for, mcp_client, scaled
from tests.e2e.security_support import (
    connect,
    daemon_logs,
    echo_op,
    recv_json,
)
from tests.support.browser import Browser, require_chromium

ALLOWED = "http://allowed.example:8080"
HTTP_PATHS = ("/health", "/metrics", "/")


async def upgrade_status(
    http: aiohttp.ClientSession, daemon: DaemonProcess, headers: dict[str, str]
) -> int:
    """101 when the WebSocket upgrade with these headers succeeds (and hello works), else
    the HTTP status of the refusal."""
    try:
        ws = await connect(http, daemon, headers=headers)
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status
    async with ws:
        await ws.send_str(json.dumps({"op": "hello"}))
        ack = await recv_json(ws)
        assert ack["ok"] is True, ack
        await echo_op(ws, "upgraded")
    return 101


async def http_status(
    http: aiohttp.ClientSession, daemon: DaemonProcess, path: str, headers: dict[str, str]
) -> int:
    """The status of a plain GET on the daemon's port."""
    async with http.get(f"http://127.0.0.1:{daemon.port}{path}", headers=headers) as resp:
        await resp.read()
        return resp.status


# --- raw requests ----------------------------------------------------------------------


async def test_websocket_origin_rules(
    daemon_factory: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    """A foreign Origin is 403 before the upgrade; a listed origin (with or without a
    trailing slash), the daemon's own and no Origin at all are accepted."""
    daemon = daemon_factory(workers=1, env={"EXAI_WS_ALLOWED_ORIGINS": f"{ALLOWED}/"})
    refused = [
        "http://evil.example",
        "null",
        "http://allowed.example",  # same host, other port: another origin
        "https://allowed.example:8080",
        f"http://127.0.0.1:{daemon.port + 1}",  # another local server's page
        f"http://127.0.0.1.evil.example:{daemon.port}",
        "",
    ]
    for origin in refused:
        assert await upgrade_status(http, daemon, {"Origin": origin}) == 403, origin
    # Listed ones, and the daemon's own (only a page it served has that origin).
    own = (f"http://127.0.0.1:{daemon.port}", f"http://localhost:{daemon.port}")
    for origin in (ALLOWED, f"{ALLOWED}/", *own):
        assert await upgrade_status(http, daemon, {"Origin": origin}) == 101, origin
    assert await upgrade_status(http, daemon, {}) == 101
    logs = daemon_logs(daemon)
    assert "refused GET / from origin http://evil.example" in logs


async def test_websocket_host_rules(
    daemon_factory: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    """A Host that is not a loopback name is 403 (DNS rebinding); loopback names pass."""
    daemon = daemon_factory(workers=1)
    port = daemon.port
    for host in ("evil.example", f"evil.example:{port}", "localhost.evil.example", "10.0.0.1"):
        assert await upgrade_status(http, daemon, {"Host": host}) == 403, host
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "127.0.0.1"):
        assert await upgrade_status(http, daemon, {"Host": host}) == 101, host
    assert "refused GET / for host evil.example" in daemon_logs(daemon)


async def test_host_that_only_looks_like_loopback_is_refused(
    daemon_factory: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    """A rebinding page on http://127.0.0.1.evil.example:PORT must not read /health."""
    daemon = daemon_factory(workers=1)
    for host in ("127.0.0.1.evil.example", f"127.0.0.1.evil.example:{daemon.port}", "127.evil"):
        assert await http_status(http, daemon, "/health", {"Host": host}) == 403, host
        assert await upgrade_status(http, daemon, {"Host": host}) == 403, host


def test_host_setting_that_only_looks_like_loopback_needs_a_token() -> None:
    """Settings only (nothing is started): a DNS name is not a loopback address."""
    with pytest.raises(SettingsError, match="EXAI_WS_TOKEN"):
        load_settings({"EXAI_WS_HOST": "127.0.0.1.evil.example"})


async def test_http_endpoints_origin_host_and_token(
    daemon_factory: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    """GET /health, /metrics and / follow the Origin and Host rules and need the token."""
    token = "tok-http-endpoints-7f3a"
    daemon = daemon_factory(
        workers=1, env={"EXAI_WS_TOKEN": token, "EXAI_WS_ALLOWED_ORIGINS": ALLOWED}
    )
    bearer = {"Authorization": f"Bearer {token}"}
    for path in HTTP_PATHS:
        assert await http_status(http, daemon, path, {}) == 401, path
        assert await http_status(http, daemon, path, {"Authorization": "Bearer nope"}) == 401
        assert await http_status(http, daemon, path, bearer) == 200, path
        assert await http_status(http, daemon, f"{path}?token={token}", {}) == 200, path
        assert await http_status(http, daemon, f"{path}?token=nope", {}) == 401, path
        evil = {**bearer, "Origin": "http://evil.example"}
        assert await http_status(http, daemon, path, evil) == 403, path
        assert await http_status(http, daemon, path, {"Origin": "http://evil.example"}) == 403
        assert await http_status(http, daemon, path, {**bearer, "Origin": ALLOWED}) == 200, path
        assert await http_status(http, daemon, path, {**bearer, "Host": "evil.example"}) == 403
    async with http.get(f"http://127.0.0.1:{daemon.port}/health", headers=bearer) as resp:
        snapshot = await resp.json()
        assert snapshot["ready"] is True
        assert token not in json.dumps(snapshot)
    assert token not in daemon_logs(daemon)


async def test_http_endpoints_without_token_still_check_origin(
    daemon_factory: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    """Auth off: the endpoints are open to local tools but still closed to browsers."""
    daemon = daemon_factory(workers=1)
    for path in HTTP_PATHS:
        assert await http_status(http, daemon, path, {}) == 200, path
        assert await http_status(http, daemon, path, {"Origin": "http://evil.example"}) == 403
        assert await http_status(http, daemon, path, {"Host": "evil.example"}) == 403, path


# --- a real browser --------------------------------------------------------------------

PAGE = """<!doctype html>
<html><head><title>probe</title></head><body><pre id="result"></pre>
<script>
const out = {events: [], origin: location.origin};
let pending = 4;
function finish() {
  if (--pending === 0) document.getElementById("result").textContent = JSON.stringify(out);
}
const ws = new WebSocket("ws://127.0.0.1:DAEMON_PORT/");
ws.onopen = () => {
  out.events.push("open");
  ws.send(JSON.stringify({op: "hello", session_id: "browser-probe"}));
};
ws.onmessage = (e) => { out.events.push("message"); out.message = e.data; ws.close(1000); };
ws.onerror = () => out.events.push("error");
ws.onclose = (e) => { out.events.push("close"); out.close_code = e.code; finish(); };
for (const path of ["/health", "/metrics"]) {
  fetch("http://127.0.0.1:DAEMON_PORT" + path, {cache: "no-store"})
    .then(async (r) => { out[path] = "read " + r.status + " " + (await r.text()).slice(0, 80); },
          (e) => { out[path] = "blocked " + e.name; })
    .finally(finish);
}
// A "simple" cross-origin POST (no preflight): the browser sends it, and only the
// daemon's Origin check stops an initialize from opening a session.
const init = {jsonrpc: "2.0", id: 1, method: "initialize", params: {protocolVersion: "2025-11-25",
  capabilities: {}, clientInfo: {name: "page", version: "1"}}};
fetch("http://127.0.0.1:DAEMON_PORT/mcp", {method: "POST", mode: "no-cors", cache: "no-store",
  headers: {"Content-Type": "text/plain"}, body: JSON.stringify(init)})
  .then((r) => { out["/mcp"] = "sent " + r.type; }, (e) => { out["/mcp"] = "blocked " + e.name; })
  .finally(finish);
</script></body></html>
"""


@contextlib.asynccontextmanager
async def page_server(daemon_port: Callable[[], int]) -> AsyncIterator[tuple[int, int]]:
    """The probe page served on two loopback ports (two origins); yields the ports."""

    async def page(request: web.Request) -> web.Response:
        html = PAGE.replace("DAEMON_PORT", str(daemon_port()))
        return web.Response(text=html, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        for _ in range(2):
            await web.TCPSite(runner, "127.0.0.1", 0).start()
        ports = [int(address[1]) for address in runner.addresses]
        assert len(ports) == 2, runner.addresses
        yield ports[0], ports[1]
    finally:
        await runner.cleanup()


async def shim_echo(daemon: DaemonProcess, text: str) -> str:
    """One echo call through a real shim and the SDK client."""
    async with mcp_client(daemon.shim_env()) as client:
        result = await client.call_tool("echo", {"text": text})
        return str(result.content[0].text)


async def test_browser_page_cannot_reach_the_daemon(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """Chromium on another loopback origin: the WebSocket fails (403 in the daemon log),
    /health and /metrics cannot be read, a POST to /mcp is refused before it opens a
    session, and a shim meanwhile works. The same page from
    an origin listed in EXAI_WS_ALLOWED_ORIGINS opens the WebSocket (the control)."""
    require_chromium()
    holder: dict[str, int] = {}
    async with page_server(lambda: holder["port"]) as (refused_port, allowed_port):
        allowed_origin = f"http://127.0.0.1:{allowed_port}"
        daemon = daemon_factory(workers=1, env={"EXAI_WS_ALLOWED_ORIGINS": allowed_origin})
        holder["port"] = daemon.port
        result_expr = "document.getElementById('result').textContent"
        async with asyncio.timeout(scaled(90.0)), Browser.launch(tmp_path / "chromium") as chrome:
            raw, echoed = await asyncio.gather(
                chrome.run_page(f"http://127.0.0.1:{refused_port}/", result_expr),
                shim_echo(daemon, "shim during the browser attack"),
            )
            refused: dict[str, Any] = json.loads(raw)
            allowed: dict[str, Any] = json.loads(
                await chrome.run_page(f"{allowed_origin}/", result_expr)
            )
    assert echoed == "shim during the browser attack"

    assert refused["origin"] == f"http://127.0.0.1:{refused_port}"
    assert "open" not in refused["events"] and "message" not in refused["events"], refused
    assert "error" in refused["events"] and refused["close_code"] == 1006, refused
    for path in ("/health", "/metrics"):
        assert refused[path].startswith("blocked"), refused
    origin_line = f"from origin http://127.0.0.1:{refused_port}"
    await async_wait_for(
        lambda: f"refused GET / {origin_line}" in daemon_logs(daemon),
        10.0,
        "the daemon to log the refused browser upgrade",
    )
    logs = daemon_logs(daemon)
    assert f"refused GET /health {origin_line}" in logs
    assert f"refused GET /metrics {origin_line}" in logs
    assert f"refused POST /mcp {origin_line}" in logs
    assert "HTTP session" not in logs, "a browser page on another origin opened an HTTP session"

    # The control: the harness can open a WebSocket when the origin is allowed.
    assert allowed["events"][:2] == ["open", "message"], allowed
    assert json.loads(allowed["message"])["ok"] is True
    # Without CORS headers even an allowed page cannot read the HTTP endpoints.
    for path in ("/health", "/metrics"):
        assert allowed[path].startswith("blocked"), allowed
