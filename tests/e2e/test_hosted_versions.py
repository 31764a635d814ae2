"""A hosted server's every feature, in the shapes of each protocol version a client speaks.

The daemon hosts our full-feature fixture server (initialized once per instance in the
handshake era); each client negotiates its own version over a direct WebSocket, and
every result it gets is validated against the official types of that version. A
2026-07-28 client takes no server requests: the server's sampling request reaches it
as an `input_required` result, and its retry (carrying `inputResponses` and the
`requestState`) goes back to the same instance and gets the tool's answer.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from mcp_types.methods import serialize_server_result
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from tests.conftest import DaemonFactory, DaemonProcess
from tests.support.jsonrpc import rpc_text
from tests.support.mcp_ws import McpWsClient

pytestmark = pytest.mark.timeout(90)

MODERN = "2026-07-28"
FULL_CMD = f"{shlex.quote(sys.executable)} -m tests.fixtures.full_server"
CAPABILITIES = {"sampling": {}, "roots": {"listChanged": True}, "elicitation": {"form": {}}}
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientInfo": {"name": "e2e-test", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": CAPABILITIES,
}
HELLO = "fixture://static/hello.txt"


@asynccontextmanager
async def raw_client(daemon: DaemonProcess) -> AsyncIterator[McpWsClient]:
    """An MCP-over-WebSocket client that has not opened its session yet (each test
    opens it in the version it is about)."""
    async with aiohttp.ClientSession() as http:
        client = McpWsClient(await http.ws_connect(daemon.url, protocols=("mcp",)))
        try:
            yield client
        finally:
            await client.aclose()


def full_daemon(factory: DaemonFactory) -> DaemonProcess:
    return factory(workers=1, args=["--server-cmd", FULL_CMD, "--isolation", "session"])


class Versioned:
    """Requests in one version's form; every result checked against its types."""

    def __init__(self, client: McpWsClient, version: str) -> None:
        self.client = client
        self.version = version

    def params(self, params: dict[str, Any]) -> dict[str, Any]:
        if self.version != MODERN:
            return params
        meta = {**params.get("_meta", {}), **ENVELOPE}
        return {**params, "_meta": meta}

    async def raw(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        return await self.client.request(method, self.params(params))

    async def ok(self, method: str, params: dict[str, Any]) -> Any:
        response = await self.raw(method, params)
        assert "result" in response, (method, response)
        result = response["result"]
        serialize_server_result(method, self.version, result)  # raises when a shape is off
        if self.version == MODERN:
            assert result["resultType"] in ("complete", "input_required"), result
        else:
            assert not {"resultType", "ttlMs", "cacheScope"} & result.keys(), (method, result)
        return result


async def open_session(client: McpWsClient, version: str) -> Versioned:
    session = Versioned(client, version)
    if version == MODERN:
        discovered = await session.ok("server/discover", {})
        capabilities = discovered["capabilities"]
    else:
        init = await session.ok(
            "initialize",
            {
                "protocolVersion": version,
                "capabilities": CAPABILITIES,
                "clientInfo": {"name": "e2e-test", "version": "1"},
            },
        )
        assert init["protocolVersion"] == version
        assert init["serverInfo"]["name"] == "full-fixture"
        capabilities = init["capabilities"]
        await client.send_json({"jsonrpc": "2.0", "method": "notifications/initialized"})
    # The hosted server's own capabilities, not the broker's.
    assert {"tools", "resources", "prompts", "logging", "completions"} <= capabilities.keys()
    assert capabilities["resources"].get("subscribe") is True
    return session


@pytest.mark.parametrize("version", [*HANDSHAKE_PROTOCOL_VERSIONS, MODERN])
async def test_every_feature_in_the_clients_own_version(
    daemon_factory: DaemonFactory, version: str
) -> None:
    """tools, resources (pages, templates, read, subscribe), prompts, completions,
    logging and ping: each answered, each in the client's version's shapes."""
    daemon = full_daemon(daemon_factory)
    async with raw_client(daemon) as client:
        session = await open_session(client, version)
        tools = await session.ok("tools/list", {})
        assert "echo" in {t["name"] for t in tools["tools"]}
        echoed = await session.ok("tools/call", {"name": "echo", "arguments": {"text": "hé"}})
        assert rpc_text({"result": echoed}) == "hé"
        added = await session.ok("tools/call", {"name": "add", "arguments": {"a": 2, "b": 3}})
        assert added["structuredContent"] == {"sum": 5}
        first = await session.ok("resources/list", {})
        assert first["nextCursor"]
        second = await session.ok("resources/list", {"cursor": first["nextCursor"]})
        uris = {r["uri"] for r in first["resources"] + second["resources"]}
        assert HELLO in uris
        templates = await session.ok("resources/templates/list", {})
        assert templates["resourceTemplates"][0]["uriTemplate"] == "fixture://items/{id}"
        read = await session.ok("resources/read", {"uri": HELLO})
        assert read["contents"][0]["uri"] == HELLO
        item = await session.ok("resources/read", {"uri": "fixture://items/7"})
        assert item["contents"]
        prompts = await session.ok("prompts/list", {})
        assert {"greet", "with_resource"} <= {p["name"] for p in prompts["prompts"]}
        greeted = await session.ok("prompts/get", {"name": "greet", "arguments": {"name": "Ada"}})
        assert "Ada" in str(greeted["messages"])
        completed = await session.ok(
            "completion/complete",
            {
                "ref": {"type": "ref/prompt", "name": "greet"},
                "argument": {"name": "name", "value": ""},
            },
        )
        assert completed["completion"]["values"]
        if version != MODERN:
            # 2026-07-28 has no subscribe or setLevel (its envelope carries the level).
            await session.ok("resources/subscribe", {"uri": "fixture://counter"})
            await session.ok("resources/unsubscribe", {"uri": "fixture://counter"})
            await session.ok("logging/setLevel", {"level": "debug"})
            await session.ok("ping", {})  # 2026-07-28 has no ping either
        missing = await session.raw("tools/call", {"name": "no-such-tool", "arguments": {}})
    # The server's own answer to an unknown tool, not one the broker made up.
    assert "no-such-tool" in str(missing)


async def test_2026_07_28_sampling_is_an_input_required_round(
    daemon_factory: DaemonFactory,
) -> None:
    """A 2026-07-28 client calls `sample`: the server's sampling request comes back as
    an input_required result; the retry with the response and the requestState gets
    the tool's answer; another session cannot use that requestState."""
    daemon = full_daemon(daemon_factory)
    async with raw_client(daemon) as client, raw_client(daemon) as other:
        session = await open_session(client, MODERN)
        thief = await open_session(other, MODERN)
        call = {"name": "sample", "arguments": {"prompt": "hello"}}
        first = await session.ok("tools/call", call)
        assert first["resultType"] == "input_required", first
        [(key, request)] = first["inputRequests"].items()
        assert request["method"] == "sampling/createMessage"
        assert request["params"]["messages"][0]["content"]["text"] == "hello"
        stolen = await thief.raw(
            "tools/call",
            {**call, "requestState": first["requestState"], "inputResponses": {}},
        )
        answer = {
            "role": "assistant",
            "content": {"type": "text", "text": "sampled for me"},
            "model": "m",
        }
        final = await session.ok(
            "tools/call",
            {**call, "inputResponses": {key: answer}, "requestState": first["requestState"]},
        )
        replayed = await session.raw(
            "tools/call",
            {**call, "inputResponses": {key: answer}, "requestState": first["requestState"]},
        )
    assert final["resultType"] == "complete"
    assert rpc_text({"result": final}) == "sampled for me"
    assert stolen["error"]["code"] == -32602, stolen
    assert "requestState" in stolen["error"]["message"]
    assert replayed["error"]["code"] == -32602, replayed
