"""Third-party MCP clients through the real shim, against a hosted full-feature server.

The daemon hosts tests.fixtures.full_server (`--server-cmd`) and each client launches
`python -m shim` as its stdio server, exactly as an editor would:

- the official TypeScript SDK client (tests/fixtures/ts_client.mjs, run with node; the
  SDK comes from `make node-tools`, and the tests skip without node or that copy);
- fastmcp's `Client` with its stdio transport, in its default mode;
- the official Python SDK's `mcp.Client`, in its default (auto) mode and in legacy mode.

Every client walks the same feature sequence: tools (all pages, a plain call, a
structured one, a tool error, an unknown tool, progress), resources (pages, templates,
reads, a missing one, a subscription and its update), prompts, completions, logging
(level and message), the tools that ask the client (sampling, elicitation, roots) and a
tools/list_changed. Each step is recorded as `{"ok": <normalized value>}` or
`{"error": "<text>"}` and all steps are checked against one table, so a failure names
every step that went wrong, with the client's own error text. The clients validate
what they receive against their own schemas: a malformed shape fails its step.

With `--isolation session` each client session has its own server instance, so the
asking tools run there; one `--isolation shared` run per client covers the rest.
On a 2026-07-28 connection (the Python clients' default mode) subscriptions and
list changes arrive through `subscriptions/listen`, and log delivery is opted into per
request (`io.modelcontextprotocol/logLevel`) instead of `logging/setLevel`.

The TypeScript SDK (1.x) runs notification handlers on a microtask but settles a
response at once, so progress read in the same stdout chunk as its result reaches
`client.onerror` ("unknown token") instead of `onprogress`; ts_client.mjs counts those
as seen too (the wire order, progress before the result, is what the broker owes).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shlex
import shutil
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import mcp
import mcp.types as types
import pytest
from mcp.client.context import ClientRequestContext
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters
from mcp.client.subscriptions import listen
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp.shared.subscriptions import ResourceUpdated, ServerEvent, ToolsListChanged
from mcp.types.version import MODERN_PROTOCOL_VERSIONS

from tests.conftest import ROOT, STEP_S, DaemonFactory, DaemonProcess, base_env, scaled
from tests.fixtures.full_server import (
    BLOB_BYTES,
    COUNTER_URI,
    HELLO_URI,
    ITEM_TEMPLATE,
    LOGGER_NAME,
)

pytestmark = pytest.mark.timeout(120)

FULL_CMD = f"{shlex.quote(sys.executable)} -m tests.fixtures.full_server"
NODE_MODULES = ROOT / ".cache" / "node" / "node_modules"
TS_SDK = NODE_MODULES / "@modelcontextprotocol" / "sdk"
TS_CLIENT = ROOT / "tests" / "fixtures" / "ts_client.mjs"

# The canned answers every client gives (tests/fixtures/ts_client.mjs uses the same).
SAMPLED_TEXT = "canned sample"
ELICITED_ANSWER = "canned answer"
ROOT_URIS = ("file:///tmp/client-root-a", "file:///tmp/client-root-b")
LOUD = "the client sees this"
QUIET = "filtered out"
LOG_LEVEL_META = "io.modelcontextprotocol/logLevel"

Steps = dict[str, dict[str, Any]]
Check = Callable[[dict[str, Any]], str | None]


# --- what every client must see --------------------------------------------------


def _equal(expected: Any) -> Check:
    def check(outcome: dict[str, Any]) -> str | None:
        if "error" in outcome:
            return f"failed: {outcome['error']}"
        if outcome["ok"] != expected:
            return f"got {outcome['ok']!r}, expected {expected!r}"
        return None

    return check


def _error(*fragments: str) -> Check:
    def check(outcome: dict[str, Any]) -> str | None:
        if "error" not in outcome:
            return f"expected an error naming {fragments!r}, got {outcome['ok']!r}"
        missing = [f for f in fragments if f not in outcome["error"]]
        return f"error {outcome['error']!r} lacks {missing!r}" if missing else None

    return check


def _connect(outcome: dict[str, Any]) -> str | None:
    if "error" in outcome:
        return f"failed: {outcome['error']}"
    got = outcome["ok"]
    wanted = {"tools", "resources", "prompts", "completions"}
    if got["server"] != "full-fixture":
        return f"server name {got['server']!r}, expected 'full-fixture'"
    if not wanted <= set(got["capabilities"]):
        return (
            f"capabilities {got['capabilities']!r} lack {sorted(wanted - set(got['capabilities']))}"
        )
    return None


def _list_tools(outcome: dict[str, Any]) -> str | None:
    if "error" in outcome:
        return f"failed: {outcome['error']}"
    got = outcome["ok"]
    wanted = {"echo", "add", "progress", "log", "sample", "elicit", "roots", "add_tool", "bump"}
    if not wanted <= set(got["names"]):
        return f"tools {got['names']!r} lack {sorted(wanted - set(got['names']))}"
    if got["addRequired"] != ["sum"]:
        return f"add's outputSchema.required is {got['addRequired']!r}"
    if got["annotated"] != {"readOnlyHint": True, "idempotentHint": True}:
        return f"annotated's annotations are {got['annotated']!r}"
    return None


def _progress(outcome: dict[str, Any]) -> str | None:
    if "error" in outcome:
        return f"failed: {outcome['error']}"
    got = outcome["ok"]
    wanted = [[i, 3, f"step {i}/3"] for i in (1, 2, 3)]
    if got["text"] != "done" or got["progress"] != wanted:
        return f"got {got!r}, expected text 'done' and progress {wanted!r}"
    return None


def expectations(asking: bool, dynamic: str) -> dict[str, Check]:
    """Step name -> its check; `dynamic` is the tool name the client adds."""
    checks: dict[str, Check] = {
        "connect": _connect,
        "listTools": _list_tools,
        "echo": _equal({"text": "héllo ✓", "isError": False}),
        "add": _equal({"structured": {"sum": 42}, "isError": False}),
        "fail": _equal({"text": "fixture failure", "isError": True}),
        "unknownTool": _error("Unknown tool: no-such-tool"),
        "progress": _progress,
        "listResources": _equal(
            {"uris": [HELLO_URI, "fixture://static/blob.bin", COUNTER_URI], "pages": 2}
        ),
        "listResourceTemplates": _equal({"templates": [ITEM_TEMPLATE]}),
        "readResource": _equal(
            {
                "hello": "hello",
                "blob": base64.b64encode(BLOB_BYTES).decode("ascii"),
                "item": "item 7",
            }
        ),
        "readMissingResource": _error("Resource not found"),
        "subscribe": _equal({"bumped": "counter=1", "updated": COUNTER_URI, "counter": "1"}),
        "listPrompts": _equal(
            {"names": ["greet", "with_resource"], "greetArgs": [["name", True], ["style", False]]}
        ),
        "getPrompt": _equal(
            {
                "greet": ["Hello, Ada!"],
                "embedded": [{"type": "resource", "uri": HELLO_URI, "text": "hello"}],
            }
        ),
        "complete": _equal({"names": ["alice", "albert"], "ids": ["1", "2", "3"]}),
        "logging": _equal(
            {
                "quiet": "logged",
                "loud": "logged",
                "message": {"level": "error", "logger": LOGGER_NAME, "data": LOUD},
                "filteredDelivered": False,
            }
        ),
        "listChanged": _equal(
            {"added": f"added {dynamic}", "hasDynamic": True, "called": f"dynamic {dynamic}"}
        ),
    }
    if asking:
        answer = {"action": "accept", "content": {"answer": ELICITED_ANSWER}}
        checks["sample"] = _equal({"text": SAMPLED_TEXT, "isError": False})
        checks["elicit"] = _equal({"text": json.dumps(answer, sort_keys=True), "isError": False})
        checks["roots"] = _equal({"text": "\n".join(ROOT_URIS), "isError": False})
    return checks


# What a 2026-07-28 client asks for that the broker does not bridge yet (step name ->
# the text its failure must show). Empty: `subscriptions/listen`, which a hosted server
# initialized in the handshake era does not have, is bridged (broker/hosting/listens.py).
KNOWN_GAPS_2026: dict[str, str] = {}


def assert_steps(
    client: str,
    steps: Steps,
    asking: bool,
    dynamic: str,
    skip: frozenset[str] | set[str] = frozenset(),
    version: str | None = None,
) -> None:
    """Every expected step ran and passed; else one failure listing each wrong step.

    On 2026-07-28 the steps in KNOWN_GAPS_2026 must fail the known way: when the broker
    bridges them, this fails until they move back to the expectations above."""
    problems = []
    gaps = KNOWN_GAPS_2026 if version == "2026-07-28" else {}
    for name, check in expectations(asking, dynamic).items():
        if name in skip:
            continue
        if name in gaps:
            seen = str(steps.get(name))
            if gaps[name] not in seen:
                problems.append(f"{name}: known gap {gaps[name]!r} not seen (fixed?): {seen}")
            continue
        if name not in steps:
            problems.append(f"{name}: never ran")
            continue
        problem = check(steps[name])
        if problem:
            problems.append(f"{name}: {problem}")
    assert not problems, f"{client}: {len(problems)} step(s) wrong:\n  " + "\n  ".join(problems)


def full_daemon(factory: DaemonFactory, isolation: str) -> DaemonProcess:
    """A one-worker daemon hosting tests.fixtures.full_server with that isolation."""
    return factory(
        workers=1,
        env={"EXAI_WS_CALL_TIMEOUT": "30"},
        args=["--server-cmd", FULL_CMD, "--isolation", isolation],
    )


ISOLATIONS = [pytest.param("session", id="session-asking"), pytest.param("shared", id="shared")]


# --- the TypeScript SDK ----------------------------------------------------------


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_typescript_sdk_client(daemon_factory: DaemonFactory, isolation: str) -> None:
    """The TypeScript SDK's Client over StdioClientTransport walks every feature."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    if not (TS_SDK / "dist" / "esm" / "client" / "index.js").is_file():
        pytest.skip("@modelcontextprotocol/sdk is not installed locally (run `make node-tools`)")
    asking = isolation == "session"
    daemon = full_daemon(daemon_factory, isolation)
    env = daemon.shim_env(
        TS_CLIENT_PYTHON=sys.executable,
        TS_CLIENT_CWD=str(ROOT),
        TS_CLIENT_STEP_S=str(scaled(STEP_S)),
        TS_SDK_DIR=str(TS_SDK),
    )
    proc = subprocess.run(
        [node, str(TS_CLIENT), "asking" if asking else "shared"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=scaled(90),
        check=False,
    )
    stderr = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, f"ts_client exited {proc.returncode}:\n{stderr}"
    record = json.loads(proc.stdout)
    assert "fatal" not in record, f"{record['fatal']}\n{stderr}"
    assert record["transportErrors"] == [], record["transportErrors"]
    assert_steps(f"TypeScript SDK {record['sdkVersion']}", record["steps"], asking, "dyn_ts")
    if asking:
        assert [r["method"] for r in record["serverRequests"]] == [
            "sampling/createMessage",
            "elicitation/create",
            "roots/list",
        ]


# --- the Python clients: one sequence, an adapter per client ---------------------


@dataclass
class Inbox:
    """Notifications a client received, and a way to wait for one."""

    seen: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, method: str, params: dict[str, Any]) -> None:
        self.seen.append((method, params))
        self.changed.set()

    def add_notification(self, message: Any) -> None:
        """A message_handler's input: server notifications other than log and progress."""
        if isinstance(message, Exception):
            self.add("exception", {"error": repr(message)})
            return
        if isinstance(message, types.LoggingMessageNotification | types.ProgressNotification):
            return
        dumped = message.model_dump(by_alias=True, mode="json", exclude_none=True)
        self.add(dumped["method"], dumped.get("params") or {})

    def find(self, method: str, **params: Any) -> dict[str, Any] | None:
        for got, got_params in self.seen:
            if got == method and all(got_params.get(k) == v for k, v in params.items()):
                return got_params
        return None

    async def wait(self, method: str, **params: Any) -> dict[str, Any]:
        async with asyncio.timeout(scaled(STEP_S)):
            while (found := self.find(method, **params)) is None:
                self.changed.clear()
                await self.changed.wait()
        return found


@dataclass
class Callbacks:
    """The canned client side: sampling, elicitation and roots answers, notifications."""

    inbox: Inbox = field(default_factory=Inbox)
    asked: list[str] = field(default_factory=list)

    async def sampling(
        self, context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        self.asked.append("sampling/createMessage")
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=SAMPLED_TEXT),
            model="canned-python-model",
            stop_reason="endTurn",
        )

    async def elicitation(
        self, context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult:
        self.asked.append("elicitation/create")
        return types.ElicitResult(action="accept", content={"answer": ELICITED_ANSWER})

    async def roots(self, context: ClientRequestContext) -> types.ListRootsResult:
        self.asked.append("roots/list")
        return types.ListRootsResult(
            roots=[types.Root(uri=uri, name=f"root {i}") for i, uri in enumerate(ROOT_URIS)]  # type: ignore[arg-type]
        )

    async def logging(self, params: types.LoggingMessageNotificationParams) -> None:
        self.inbox.add(
            "notifications/message",
            params.model_dump(by_alias=True, mode="json", exclude_none=True),
        )

    async def messages(self, message: Any) -> None:
        self.inbox.add_notification(message)


ProgressFn = ProgressFnT


class Adapter(Protocol):
    """What the shared sequence needs from a Python client."""

    @property
    def protocol_version(self) -> str | None: ...
    @property
    def session(self) -> ClientSession: ...
    def connect_info(self) -> dict[str, Any]: ...
    async def list_tools(self, cursor: str | None) -> types.ListToolsResult: ...
    async def call_tool(
        self,
        name: str,
        arguments: dict[str, Any],
        progress: ProgressFn | None = None,
        meta: dict[str, Any] | None = None,
    ) -> types.CallToolResult: ...
    async def list_resources(self, cursor: str | None) -> types.ListResourcesResult: ...
    async def list_resource_templates(self) -> types.ListResourceTemplatesResult: ...
    async def read_resource(self, uri: str) -> types.ReadResourceResult: ...
    async def list_prompts(self, cursor: str | None) -> types.ListPromptsResult: ...
    async def get_prompt(self, name: str, arguments: dict[str, str]) -> types.GetPromptResult: ...
    async def complete(
        self,
        ref: types.PromptReference | types.ResourceTemplateReference,
        argument: dict[str, str],
    ) -> types.CompleteResult: ...
    async def set_logging_level(self, level: types.LoggingLevel) -> None: ...


class SdkAdapter:
    """`mcp.Client` (the official Python SDK's high-level client)."""

    def __init__(self, client: mcp.Client) -> None:
        self.client = client

    @property
    def protocol_version(self) -> str | None:
        return self.client.protocol_version

    @property
    def session(self) -> ClientSession:
        return self.client.session

    def connect_info(self) -> dict[str, Any]:
        info = self.client.server_info
        caps = self.client.server_capabilities.model_dump(by_alias=True, exclude_none=True)
        return {"server": info.name if info else None, "capabilities": sorted(caps)}

    async def list_tools(self, cursor: str | None) -> types.ListToolsResult:
        return await self.client.list_tools(cursor=cursor)

    async def call_tool(
        self,
        name: str,
        arguments: dict[str, Any],
        progress: ProgressFn | None = None,
        meta: dict[str, Any] | None = None,
    ) -> types.CallToolResult:
        return await self.client.call_tool(
            name,
            arguments,
            progress_callback=progress,
            meta=meta,  # type: ignore[arg-type]
        )

    async def list_resources(self, cursor: str | None) -> types.ListResourcesResult:
        return await self.client.list_resources(cursor=cursor)

    async def list_resource_templates(self) -> types.ListResourceTemplatesResult:
        return await self.client.list_resource_templates()

    async def read_resource(self, uri: str) -> types.ReadResourceResult:
        return await self.client.read_resource(uri)

    async def list_prompts(self, cursor: str | None) -> types.ListPromptsResult:
        return await self.client.list_prompts(cursor=cursor)

    async def get_prompt(self, name: str, arguments: dict[str, str]) -> types.GetPromptResult:
        return await self.client.get_prompt(name, arguments or None)

    async def complete(
        self,
        ref: types.PromptReference | types.ResourceTemplateReference,
        argument: dict[str, str],
    ) -> types.CompleteResult:
        return await self.client.complete(ref, argument)

    async def set_logging_level(self, level: types.LoggingLevel) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            # Client.set_logging_level warns, then so does the session call it makes.
            pending = self.client.session.set_logging_level(level)
        await pending


class FastmcpAdapter:
    """fastmcp's `Client`, through its own methods (the `*_mcp` ones return the wire
    results, so the checks are the same as for the SDK)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    @property
    def protocol_version(self) -> str | None:
        version: str | None = self.client.protocol_version
        return version

    @property
    def session(self) -> ClientSession:
        session: ClientSession = self.client.session
        return session

    def connect_info(self) -> dict[str, Any]:
        info = self.client.server_info
        caps = self.client.server_capabilities
        dumped = caps.model_dump(by_alias=True, exclude_none=True) if caps else {}
        return {"server": info.name if info else None, "capabilities": sorted(dumped)}

    async def list_tools(self, cursor: str | None) -> types.ListToolsResult:
        result: types.ListToolsResult = await self.client.list_tools_mcp(cursor=cursor)
        return result

    async def call_tool(
        self,
        name: str,
        arguments: dict[str, Any],
        progress: ProgressFn | None = None,
        meta: dict[str, Any] | None = None,
    ) -> types.CallToolResult:
        result: types.CallToolResult = await self.client.call_tool_mcp(
            name, arguments, progress_handler=progress, meta=meta
        )
        return result

    async def list_resources(self, cursor: str | None) -> types.ListResourcesResult:
        result: types.ListResourcesResult = await self.client.list_resources_mcp(cursor=cursor)
        return result

    async def list_resource_templates(self) -> types.ListResourceTemplatesResult:
        result: types.ListResourceTemplatesResult = await self.client.list_resource_templates_mcp()
        return result

    async def read_resource(self, uri: str) -> types.ReadResourceResult:
        result: types.ReadResourceResult = await self.client.read_resource_mcp(uri)
        return result

    async def list_prompts(self, cursor: str | None) -> types.ListPromptsResult:
        result: types.ListPromptsResult = await self.client.list_prompts_mcp(cursor=cursor)
        return result

    async def get_prompt(self, name: str, arguments: dict[str, str]) -> types.GetPromptResult:
        result: types.GetPromptResult = await self.client.get_prompt_mcp(name, arguments or None)
        return result

    async def complete(
        self,
        ref: types.PromptReference | types.ResourceTemplateReference,
        argument: dict[str, str],
    ) -> types.CompleteResult:
        result: types.CompleteResult = await self.client.complete_mcp(ref, argument)
        return result

    async def set_logging_level(self, level: types.LoggingLevel) -> None:
        await self.client.set_logging_level(level)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return _describe(exc.exceptions[0])
    if isinstance(exc, mcp.MCPError):
        return f"MCPError: code={exc.error.code}: {exc.error.message}: data={exc.error.data!r}"
    return f"{type(exc).__name__}: {exc}"


def _text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


def _outcome(result: types.CallToolResult) -> dict[str, Any]:
    return {"text": _text(result), "isError": bool(result.is_error)}


async def _all_pages(
    fetch: Callable[[str | None], Awaitable[Any]], key: str
) -> tuple[list[Any], int]:
    items: list[Any] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await fetch(cursor)
        pages += 1
        items.extend(getattr(page, key))
        cursor = page.next_cursor
        if cursor is None or pages >= 50:
            return items, pages


EventKind = type[ResourceUpdated] | type[ToolsListChanged]


@contextlib.asynccontextmanager
async def _listening(
    session: ClientSession, **filters: Any
) -> AsyncIterator[Callable[[EventKind], Awaitable[ServerEvent]]]:
    """A `subscriptions/listen` stream (2026-07-28); yields `next_event(kind)`."""
    async with listen(session, **filters) as sub:

        async def next_event(kind: EventKind) -> ServerEvent:
            async with asyncio.timeout(scaled(STEP_S)):
                async for event in sub:
                    if isinstance(event, kind):
                        return event
            raise AssertionError(f"the listen stream ended before a {kind.__name__}")

        yield next_event


async def run_sequence(
    adapter: Adapter, callbacks: Callbacks, *, asking: bool, dynamic: str
) -> Steps:
    """The feature sequence of ts_client.mjs, through a Python client."""
    steps: Steps = {}
    inbox = callbacks.inbox
    modern = adapter.protocol_version in MODERN_PROTOCOL_VERSIONS

    async def step(name: str, body: Callable[[], Awaitable[Any]]) -> None:
        try:
            async with asyncio.timeout(scaled(STEP_S) * 2):
                steps[name] = {"ok": await body()}
        except Exception as exc:
            steps[name] = {"error": _describe(exc)}

    async def connect() -> dict[str, Any]:
        return adapter.connect_info()

    async def list_tools() -> dict[str, Any]:
        tools, _ = await _all_pages(adapter.list_tools, "tools")
        by_name = {t.name: t for t in tools}
        add, annotated = by_name.get("add"), by_name.get("annotated")
        return {
            "names": [t.name for t in tools],
            "addRequired": (add.output_schema or {}).get("required") if add else None,
            "annotated": (
                annotated.annotations.model_dump(by_alias=True, exclude_none=True)
                if annotated and annotated.annotations
                else None
            ),
        }

    async def echo() -> dict[str, Any]:
        return _outcome(await adapter.call_tool("echo", {"text": "héllo ✓"}))

    async def add() -> dict[str, Any]:
        result = await adapter.call_tool("add", {"a": 2, "b": 40})
        return {"structured": result.structured_content, "isError": bool(result.is_error)}

    async def fail() -> dict[str, Any]:
        return _outcome(await adapter.call_tool("fail", {}))

    async def unknown_tool() -> dict[str, Any]:
        return _outcome(await adapter.call_tool("no-such-tool", {}))

    async def progress() -> dict[str, Any]:
        seen: list[list[Any]] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen.append([progress, total, message])

        result = await adapter.call_tool("progress", {"steps": 3}, progress=on_progress)
        return {"text": _text(result), "progress": seen}

    async def list_resources() -> dict[str, Any]:
        resources, pages = await _all_pages(adapter.list_resources, "resources")
        return {"uris": [str(r.uri) for r in resources], "pages": pages}

    async def list_templates() -> dict[str, Any]:
        listed = await adapter.list_resource_templates()
        return {"templates": [t.uri_template for t in listed.resource_templates]}

    def first_contents(result: types.ReadResourceResult) -> Any:
        contents = result.contents[0]
        if isinstance(contents, types.TextResourceContents):
            return contents.text
        return contents.blob

    async def read_resource() -> dict[str, Any]:
        return {
            "hello": first_contents(await adapter.read_resource(HELLO_URI)),
            "blob": first_contents(await adapter.read_resource("fixture://static/blob.bin")),
            "item": first_contents(await adapter.read_resource("fixture://items/7")),
        }

    async def read_missing() -> Any:
        await adapter.read_resource("fixture://nope")
        return "no error"

    async def subscribe() -> dict[str, Any]:
        if modern:
            async with _listening(adapter.session, resource_subscriptions=[COUNTER_URI]) as nxt:
                bumped = await adapter.call_tool("bump", {})
                event = await nxt(ResourceUpdated)
            updated = event.uri if isinstance(event, ResourceUpdated) else None
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MCPDeprecationWarning)
                pending = adapter.session.subscribe_resource(COUNTER_URI)
            await pending
            bumped = await adapter.call_tool("bump", {})
            updated = (await inbox.wait("notifications/resources/updated", uri=COUNTER_URI))["uri"]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MCPDeprecationWarning)
                pending = adapter.session.unsubscribe_resource(COUNTER_URI)
            await pending
        counter = first_contents(await adapter.read_resource(COUNTER_URI))
        return {"bumped": _text(bumped), "updated": updated, "counter": counter}

    async def list_prompts() -> dict[str, Any]:
        prompts, _ = await _all_pages(adapter.list_prompts, "prompts")
        greet = next((p for p in prompts if p.name == "greet"), None)
        return {
            "names": [p.name for p in prompts],
            "greetArgs": [[a.name, bool(a.required)] for a in (greet.arguments or [])]
            if greet
            else [],
        }

    async def get_prompt() -> dict[str, Any]:
        greet = await adapter.get_prompt("greet", {"name": "Ada"})
        embedded = await adapter.get_prompt("with_resource", {})
        return {
            "greet": [
                m.content.text for m in greet.messages if isinstance(m.content, types.TextContent)
            ],
            "embedded": [
                {
                    "type": m.content.type,
                    "uri": str(m.content.resource.uri),
                    "text": getattr(m.content.resource, "text", None),
                }
                for m in embedded.messages
                if isinstance(m.content, types.EmbeddedResource)
            ],
        }

    async def complete() -> dict[str, Any]:
        names = await adapter.complete(
            types.PromptReference(type="ref/prompt", name="greet"), {"name": "name", "value": "al"}
        )
        ids = await adapter.complete(
            types.ResourceTemplateReference(type="ref/resource", uri=ITEM_TEMPLATE),
            {"name": "id", "value": ""},
        )
        return {"names": names.completion.values, "ids": ids.completion.values}

    async def logging() -> dict[str, Any]:
        # 2025: logging/setLevel; 2026-07-28: the per-request opt-in in _meta.
        meta = {LOG_LEVEL_META: "warning"} if modern else None
        if not modern:
            await adapter.set_logging_level("warning")
        quiet = await adapter.call_tool("log", {"level": "info", "message": QUIET}, meta=meta)
        loud = await adapter.call_tool("log", {"level": "error", "message": LOUD}, meta=meta)
        message = await inbox.wait("notifications/message", data=LOUD)
        return {
            "quiet": _text(quiet),
            "loud": _text(loud),
            "message": {
                "level": message.get("level"),
                "logger": message.get("logger"),
                "data": message.get("data"),
            },
            "filteredDelivered": inbox.find("notifications/message", data=QUIET) is not None,
        }

    async def sample() -> dict[str, Any]:
        return _outcome(await adapter.call_tool("sample", {"prompt": "python?"}))

    async def elicit() -> dict[str, Any]:
        return _outcome(await adapter.call_tool("elicit", {"question": "python question?"}))

    async def roots() -> dict[str, Any]:
        return _outcome(await adapter.call_tool("roots", {}))

    async def list_changed() -> dict[str, Any]:
        if modern:
            async with _listening(adapter.session, tools_list_changed=True) as nxt:
                added = await adapter.call_tool("add_tool", {"name": dynamic})
                await nxt(ToolsListChanged)
        else:
            added = await adapter.call_tool("add_tool", {"name": dynamic})
            await inbox.wait("notifications/tools/list_changed")
        tools, _ = await _all_pages(adapter.list_tools, "tools")
        called = await adapter.call_tool(dynamic, {})
        return {
            "added": _text(added),
            "hasDynamic": any(t.name == dynamic for t in tools),
            "called": _text(called),
        }

    sequence: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("connect", connect),
        ("listTools", list_tools),
        ("echo", echo),
        ("add", add),
        ("fail", fail),
        ("unknownTool", unknown_tool),
        ("progress", progress),
        ("listResources", list_resources),
        ("listResourceTemplates", list_templates),
        ("readResource", read_resource),
        ("readMissingResource", read_missing),
        ("subscribe", subscribe),
        ("listPrompts", list_prompts),
        ("getPrompt", get_prompt),
        ("complete", complete),
        ("logging", logging),
    ]
    if asking:
        sequence += [("sample", sample), ("elicit", elicit), ("roots", roots)]
    sequence.append(("listChanged", list_changed))
    for name, body in sequence:
        await step(name, body)
    return steps


def shim_params(daemon: DaemonProcess) -> StdioServerParameters:
    """`python -m shim` for this daemon, as a stdio server command."""
    return StdioServerParameters(
        command=sys.executable, args=["-m", "shim"], env=daemon.shim_env(), cwd=str(ROOT)
    )


# --- mcp.Client ------------------------------------------------------------------

# What a 2026-07-28 client cannot get from full_server even without the broker: the
# fixture has no `subscriptions/listen`, and its sampling/elicitation/roots are
# server-initiated requests, which that revision has no back-channel for.
MODERN_UNAVAILABLE_DIRECT = frozenset({"subscribe", "listChanged", "sample", "elicit", "roots"})


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_the_sequence_itself_against_the_fixture_directly(
    mode: Literal["auto", "legacy"],
) -> None:
    """Control: the same sequence with `mcp.Client` launching full_server itself (no
    broker, no shim) passes, so a failure in the tests below is the broker's. On
    2026-07-28 the steps the fixture cannot serve to such a client directly are left
    out here (they stay required through the broker)."""
    callbacks = Callbacks()
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "tests.fixtures.full_server"],
        env=base_env(),
        cwd=str(ROOT),
    )
    async with mcp.Client(
        params,
        mode=mode,
        read_timeout_seconds=scaled(STEP_S),
        sampling_callback=callbacks.sampling,
        elicitation_callback=callbacks.elicitation,
        list_roots_callback=callbacks.roots,
        logging_callback=callbacks.logging,
        message_handler=callbacks.messages,
    ) as client:
        version = client.protocol_version
        steps = await run_sequence(SdkAdapter(client), callbacks, asking=True, dynamic="dyn")
    modern = version in MODERN_PROTOCOL_VERSIONS
    skip = MODERN_UNAVAILABLE_DIRECT if modern else frozenset()
    assert_steps(f"direct mcp.Client on {version}", steps, True, "dyn", skip=skip)


@pytest.mark.parametrize("isolation", ISOLATIONS)
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_python_sdk_client(
    daemon_factory: DaemonFactory, mode: Literal["auto", "legacy"], isolation: str
) -> None:
    """The official Python SDK's `mcp.Client`, default (auto) and legacy mode."""
    asking = isolation == "session"
    daemon = full_daemon(daemon_factory, isolation)
    callbacks = Callbacks()
    client = mcp.Client(
        shim_params(daemon),
        mode=mode,
        read_timeout_seconds=scaled(STEP_S),
        sampling_callback=callbacks.sampling,
        elicitation_callback=callbacks.elicitation,
        list_roots_callback=callbacks.roots,
        logging_callback=callbacks.logging,
        message_handler=callbacks.messages,
    )
    async with client:
        expected_version = "2025-11-25" if mode == "legacy" else "2026-07-28"
        version = client.protocol_version
        steps = await run_sequence(
            SdkAdapter(client), callbacks, asking=asking, dynamic=f"dyn_sdk_{mode}"
        )
    assert version == expected_version
    assert_steps(
        f"mcp.Client(mode={mode!r}) on {version}",
        steps,
        asking,
        f"dyn_sdk_{mode}",
        version=version,
    )
    if asking:
        assert callbacks.asked == ["sampling/createMessage", "elicitation/create", "roots/list"]
    assert not callbacks.inbox.find("exception"), callbacks.inbox.seen


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_python_sdk_client_over_streamable_http(
    daemon_factory: DaemonFactory, mode: Literal["auto", "legacy"]
) -> None:
    """`mcp.Client` pointed at the daemon's /mcp, no shim: every feature of the hosted
    server, on 2026-07-28 sessionless HTTP (auto) and on a 2025-11-25 HTTP session."""
    daemon = full_daemon(daemon_factory, "shared")
    callbacks = Callbacks()
    client = mcp.Client(
        f"http://127.0.0.1:{daemon.port}/mcp",
        mode=mode,
        read_timeout_seconds=scaled(STEP_S),
        sampling_callback=callbacks.sampling,
        elicitation_callback=callbacks.elicitation,
        list_roots_callback=callbacks.roots,
        logging_callback=callbacks.logging,
        message_handler=callbacks.messages,
    )
    async with client:
        version = client.protocol_version
        steps = await run_sequence(
            SdkAdapter(client), callbacks, asking=False, dynamic=f"dyn_http_{mode}"
        )
    assert version == ("2025-11-25" if mode == "legacy" else "2026-07-28")
    assert_steps(
        f"mcp.Client(url, mode={mode!r}) on {version}",
        steps,
        False,
        f"dyn_http_{mode}",
        version=version,
    )
    assert not callbacks.inbox.find("exception"), callbacks.inbox.seen


# --- fastmcp ---------------------------------------------------------------------


@pytest.mark.parametrize("isolation", ISOLATIONS)
async def test_fastmcp_client(daemon_factory: DaemonFactory, isolation: str) -> None:
    """fastmcp's `Client` with its stdio transport launching the shim, default mode."""
    fastmcp = pytest.importorskip("fastmcp")
    from fastmcp.client.transports import StdioTransport

    asking = isolation == "session"
    daemon = full_daemon(daemon_factory, isolation)
    callbacks = Callbacks()

    async def sampling(messages: Any, params: Any, context: Any) -> types.CreateMessageResult:
        return await callbacks.sampling(context, params)

    async def elicitation(message: str, response_type: Any, params: Any, context: Any) -> Any:
        return await callbacks.elicitation(context, params)

    async def roots(context: Any) -> list[types.Root]:
        return list((await callbacks.roots(context)).roots)

    async def log_handler(message: types.LoggingMessageNotificationParams) -> None:
        await callbacks.logging(message)

    transport = StdioTransport(
        command=sys.executable,
        args=["-m", "shim"],
        env=daemon.shim_env(),
        cwd=str(ROOT),
        keep_alive=False,
    )
    client = fastmcp.Client(
        transport,
        roots=roots,
        sampling_handler=sampling,
        elicitation_handler=elicitation,
        log_handler=log_handler,
        message_handler=callbacks.messages,
        timeout=scaled(STEP_S),
    )
    async with client:
        version = client.protocol_version
        steps = await run_sequence(
            FastmcpAdapter(client), callbacks, asking=asking, dynamic="dyn_fastmcp"
        )
    assert_steps(
        f"fastmcp {fastmcp.__version__} Client on {version}",
        steps,
        asking,
        "dyn_fastmcp",
        version=version,
    )
    if asking:
        assert callbacks.asked == ["sampling/createMessage", "elicitation/create", "roots/list"]
    assert not callbacks.inbox.find("exception"), callbacks.inbox.seen
