"""The guard in front of every route: Origin, Host and token, on a loopback test server.

The daemon's real app (broker.web.app.create_app) runs here in-process with a fake
backend (tests.broker.test_web_app): no workers, no daemon process.
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestServer

from tests.broker.test_web_app import get, served, upgrade
from tests.conftest import scaled

ALLOWED = "http://allowed.example:8080"
TOKEN = "tok-guard-3c1e"
HTTP_PATHS = ("/", "/health", "/metrics")


# --- Origin ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    ["http://evil.example", "null", "", "http://allowed.example", "https://allowed.example:8080"],
)
async def test_a_foreign_origin_is_refused_with_403_before_anything_runs(origin: str) -> None:
    """A page from an origin not in EXAI_WS_ALLOWED_ORIGINS gets 403 "origin not allowed"
    on every endpoint and on the upgrade; the daemon is not even asked for its health."""
    async with served({"EXAI_WS_ALLOWED_ORIGINS": ALLOWED}) as (client, backend, _):
        for path in HTTP_PATHS:
            status, body, _ = await get(client, path, {"Origin": origin})
            assert (status, body) == (403, "origin not allowed\n"), path
        assert await upgrade(client, {"Origin": origin}) == 403
        assert backend.snapshots == 0


async def test_an_allowed_origin_and_no_origin_pass() -> None:
    """A listed origin (with or without a trailing slash) and a client that sends no
    Origin (not a browser) reach the endpoints and the WebSocket."""
    async with served({"EXAI_WS_ALLOWED_ORIGINS": f"{ALLOWED}/"}) as (client, _, _):
        for headers in ({"Origin": ALLOWED}, {"Origin": f"{ALLOWED}/"}, {}):
            for path in HTTP_PATHS:
                status, _, _ = await get(client, path, headers)
                assert status == 200, (path, headers)
            assert await upgrade(client, headers) == 101, headers


# --- Host ------------------------------------------------------------------------------


async def test_a_host_that_is_not_ours_is_refused_with_403() -> None:
    """DNS rebinding: a Host that is not a loopback name (however much it looks like
    one) is 403 "host not allowed"; loopback names pass."""
    async with served({}) as (client, _, _):
        port = client.port
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "10.0.0.1"):
            for path in HTTP_PATHS:
                status, body, _ = await get(client, path, {"Host": host})
                assert (status, body) == (403, "host not allowed\n"), (path, host)
            assert await upgrade(client, {"Host": host}) == 403, host
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "127.0.0.1"):
            status, _, _ = await get(client, "/health", {"Host": host})
            assert status == 200, host
            assert await upgrade(client, {"Host": host}) == 101, host


async def test_a_wildcard_bind_with_a_token_takes_any_host_name() -> None:
    """Listening on 0.0.0.0 with a token, the daemon is reached by names it cannot know
    (the token is the defence there), still not without the token."""
    env = {"EXAI_WS_HOST": "0.0.0.0", "EXAI_WS_TOKEN": TOKEN}
    async with served(env) as (client, _, _):
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        status, _, _ = await get(client, "/health", {**bearer, "Host": "box.lan:8765"})
        assert status == 200
        status, _, _ = await get(client, "/health", {"Host": "box.lan:8765"})
        assert status == 401


# --- token -----------------------------------------------------------------------------


async def test_http_endpoints_need_the_token() -> None:
    """With auth on, GET /, /health and /metrics without the token or with a wrong one
    are 401 "unauthorized" with WWW-Authenticate: Bearer; the token as a bearer header
    or ?token= passes."""
    async with served({"EXAI_WS_TOKEN": TOKEN}) as (client, backend, _):
        for path in HTTP_PATHS:
            for headers, query in (({}, ""), ({"Authorization": "Bearer nope"}, "")):
                status, body, response_headers = await get(client, path + query, headers)
                assert (status, body) == (401, "unauthorized\n"), path
                assert response_headers["WWW-Authenticate"] == "Bearer"
            status, _, _ = await get(client, f"{path}?token=nope", {})
            assert status == 401, path
            status, _, _ = await get(client, path, {"Authorization": f"Bearer {TOKEN}"})
            assert status == 200, path
            status, _, _ = await get(client, f"{path}?token={TOKEN}", {})
            assert status == 200, path
        assert backend.snapshots == 2  # only the two requests with the token


async def test_the_websocket_upgrade_token_rules() -> None:
    """A wrong token is refused (401) on the upgrade; no token is let through for an op
    client (its hello carries it) but not for an MCP client, which has no hello."""
    async with served({"EXAI_WS_TOKEN": TOKEN}) as (client, _, _):
        assert await upgrade(client, {"Authorization": "Bearer nope"}) == 401
        assert await upgrade(client, {}) == 101
        assert await upgrade(client, {}, protocols=("mcp",)) == 401
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert await upgrade(client, bearer, protocols=("mcp",)) == 101
        assert await upgrade(client, {}, path=f"/?token={TOKEN}", protocols=("mcp",)) == 101


async def test_the_websocket_only_path_says_upgrade_without_a_token() -> None:
    """A plain GET /ws is told to use WebSocket (426), token or not; a wrong token is
    still refused there, and the upgrade on /ws follows the upgrade rules."""
    async with served({"EXAI_WS_TOKEN": TOKEN}) as (client, _, _):
        status, body, _ = await get(client, "/ws", {})
        assert (status, body) == (426, "this endpoint speaks WebSocket\n")
        status, _, _ = await get(client, "/ws", {"Authorization": "Bearer nope"})
        assert status == 401
        assert await upgrade(client, {}, path="/ws") == 101
        assert await upgrade(client, {}, path="/ws", protocols=("mcp",)) == 401


async def test_a_rotated_token_applies_to_the_next_request() -> None:
    """The guard shares the daemon's Auth: after a rotation the old token is refused and
    the new one accepted at once."""
    async with served({"EXAI_WS_TOKEN": TOKEN}) as (client, _, auth):
        assert auth.rotate(TOKEN, "tok-new")
        status, _, _ = await get(client, "/health", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 401
        status, _, _ = await get(client, "/health", {"Authorization": "Bearer tok-new"})
        assert status == 200


# --- every route -----------------------------------------------------------------------


async def test_every_route_is_guarded() -> None:
    """Each route the app registers (and a path it does not know) refuses a foreign
    Origin and a foreign Host, and, with auth on, a wrong token: a route added later
    cannot forget the checks."""
    async with served({"EXAI_WS_TOKEN": TOKEN}) as (client, _, _):
        assert isinstance(client.server, TestServer)
        paths = {
            resource.canonical
            for resource in client.server.app.router.resources()
            if any(route.method == "GET" for route in resource)
        }
        assert {"/", "/ws", "/health", "/metrics"} <= paths
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        for path in [*sorted(paths), "/not-a-route"]:
            for headers, expected in (
                ({**bearer, "Origin": "http://evil.example"}, 403),
                ({**bearer, "Host": "evil.example"}, 403),
                ({"Authorization": "Bearer nope"}, 401),
            ):
                status, _, _ = await get(client, path, headers)
                assert status == expected, (path, headers)
                upgrade_headers = {**headers, "Connection": "Upgrade", "Upgrade": "websocket"}
                status, _, _ = await get(client, path, upgrade_headers)
                assert status == expected, (path, "upgrade", headers)


async def raw_status(server: TestServer, request: bytes) -> int:
    """The status of one hand-written HTTP request (bytes an HTTP client would not send)."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(request)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), scaled(10))
    finally:
        writer.close()
        await writer.wait_closed()
    return int(line.split()[1])


@pytest.mark.parametrize(
    "credentials",
    [
        b"Authorization: Bearer \xff\xfe" + TOKEN.encode() + b"\r\n",
        b"Authorization: Bearer t\xc3\xb6k\r\n",
        b"Authorization: Bearer \xed\xa0\x80\r\n",
    ],
    ids=["invalid-utf8", "non-ascii", "encoded-surrogate"],
)
@pytest.mark.parametrize("path", ["/health", "/"])
async def test_a_token_header_that_is_not_ascii_is_401_never_500(
    credentials: bytes, path: str
) -> None:
    """Header bytes that are not (valid) UTF-8 are a wrong token, on HTTP and upgrades."""
    async with served({"EXAI_WS_TOKEN": TOKEN}) as (client, _, _):
        server = client.server
        assert isinstance(server, TestServer)
        request = b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + credentials
        if path == "/":
            request += (
                b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            )
        assert await raw_status(server, request + b"\r\n") == 401
        # A query token with bytes that are not UTF-8 is refused the same way.
        query = b"GET " + path.encode() + b"?token=%FF%FE HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        assert await raw_status(server, query) == 401
