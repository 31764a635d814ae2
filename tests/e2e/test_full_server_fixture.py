"""Self-test of `tests.fixtures.full_server`, driven directly (no broker).

Each test starts `python -m tests.fixtures.full_server` as a child process and talks
to it with the SDK's `ClientSession` over `stdio_client`, with sampling, elicitation,
roots and logging callbacks, so the fixture is known-good before it is put behind
the broker and compared.
"""

from __future__ import annotations

import base64
import json
import sys
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
import pytest
from mcp import MCPError
from mcp.client.session import ClientRequestContext, ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPDeprecationWarning

from tests.conftest import base_env, scaled
from tests.fixtures.full_server import BLOB_BYTES, COUNTER_URI, HELLO_URI, ITEM_TEMPLATE

REPO_ROOT = Path(__file__).resolve().parents[2]
ROOTS = ("file:///work/alpha", "file:///work/beta")
SAMPLED_TEXT = "sampled answer"


@dataclass
class Recorder:
    """What the client saw: server notifications (in arrival order) and callback params."""

    notifications: list[types.ServerNotification] = field(default_factory=list)
    logs: list[types.LoggingMessageNotificationParams] = field(default_factory=list)
    sampling: list[types.CreateMessageRequestParams] = field(default_factory=list)
    elicitations: list[types.ElicitRequestParams] = field(default_factory=list)
    roots_calls: int = 0
    errors: list[Exception] = field(default_factory=list)
    _changed: anyio.Event = field(default_factory=anyio.Event)

    def poke(self) -> None:
        """Wake whoever waits in `wait_until`: something was recorded."""
        self._changed.set()
        self._changed = anyio.Event()

    def of_type(self, kind: type[Any]) -> list[Any]:
        return [n for n in self.notifications if isinstance(n, kind)]

    async def wait_until(self, check: Callable[[], bool], what: str) -> None:
        with anyio.fail_after(scaled(5.0)):
            while not check():
                await self._changed.wait()
        assert check(), what


@asynccontextmanager
async def connect() -> AsyncIterator[tuple[ClientSession, Recorder]]:
    """A fresh fixture process and an initialized client session talking to it."""
    rec = Recorder()

    async def on_sampling(
        context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        rec.sampling.append(params)
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=SAMPLED_TEXT),
            model="fixture-model",
            stop_reason="endTurn",
        )

    async def on_elicitation(
        context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult:
        rec.elicitations.append(params)
        return types.ElicitResult(action="accept", content={"answer": "forty-two"})

    async def on_roots(context: ClientRequestContext) -> types.ListRootsResult:
        rec.roots_calls += 1
        return types.ListRootsResult(roots=[types.Root(uri=uri) for uri in ROOTS])  # type: ignore[arg-type]

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        rec.logs.append(params)
        rec.poke()

    async def on_message(message: Any) -> None:
        if isinstance(message, Exception):
            rec.errors.append(message)
        else:
            rec.notifications.append(message)
        rec.poke()

    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "tests.fixtures.full_server"],
        cwd=str(REPO_ROOT),
        env=base_env(PYTHONPATH=str(REPO_ROOT)),
    )
    with anyio.fail_after(scaled(15.0)):
        async with (
            stdio_client(params) as (read, write),
            ClientSession(
                read,
                write,
                sampling_callback=on_sampling,
                elicitation_callback=on_elicitation,
                list_roots_callback=on_roots,
                logging_callback=on_log,
                message_handler=on_message,
            ) as session,
        ):
            await session.initialize()
            yield session, rec
    assert rec.errors == []


def text_of(result: types.CallToolResult) -> str:
    assert len(result.content) == 1, result
    block = result.content[0]
    assert isinstance(block, types.TextContent), block
    return block.text


async def marker(session: ClientSession, rec: Recorder, name: str) -> None:
    """Send a log notification and wait for it: everything sent before it has arrived."""
    await session.call_tool("log", {"level": "emergency", "message": name})
    await rec.wait_until(
        lambda: any(
            isinstance(n, types.LoggingMessageNotification) and n.params.data == name
            for n in rec.notifications
        ),
        f"marker {name}",
    )


# --- tools ------------------------------------------------------------------------


async def test_identity_tools_listing_and_plain_calls() -> None:
    async with connect() as (session, _):
        init = session.initialize_result
        assert init is not None
        assert init.server_info.name == "full-fixture"
        assert init.server_info.version == "1.0.0"
        assert init.instructions == "Full-feature fixture server."
        caps = init.capabilities
        assert caps.tools is not None and caps.tools.list_changed is True
        assert caps.resources is not None and caps.resources.subscribe is True
        assert caps.prompts is not None
        assert caps.logging is not None
        assert caps.completions is not None

        listing = await session.list_tools()
        tools = {tool.name: tool for tool in listing.tools}
        assert set(tools) == {
            "echo", "add", "progress", "log", "sample", "elicit", "roots",
            "add_tool", "bump", "fail", "slow", "cancelled", "annotated",
        }  # fmt: skip
        assert listing.next_cursor is None
        assert tools["add"].output_schema == {
            "type": "object",
            "properties": {"sum": {"type": "integer"}},
            "required": ["sum"],
        }
        annotations = tools["annotated"].annotations
        assert annotations is not None
        assert annotations.read_only_hint is True
        assert annotations.idempotent_hint is True

        # echo: text, no `arguments` at all, and `{}` are three different answers.
        assert text_of(await session.call_tool("echo", {"text": "héllo ✓"})) == "héllo ✓"
        assert text_of(await session.call_tool("echo")) == "no arguments"
        assert text_of(await session.call_tool("echo", {})) == "empty arguments"

        added = await session.call_tool("add", {"a": 2, "b": 40})
        assert added.is_error is False
        assert added.structured_content == {"sum": 42}
        assert json.loads(text_of(added)) == {"sum": 42}

        failed = await session.call_tool("fail")
        assert failed.is_error is True
        assert text_of(failed) == "fixture failure"

        # No-argument tools accept a call without `arguments`, and with `{}`.
        assert text_of(await session.call_tool("annotated")) == "annotated"
        assert text_of(await session.call_tool("annotated", {})) == "annotated"

        with pytest.raises(MCPError) as unknown:
            await session.call_tool("no_such_tool")
        assert unknown.value.error.code == types.INVALID_PARAMS
        with pytest.raises(MCPError) as bad:
            await session.call_tool("add", {"a": "x", "b": 1})
        assert bad.value.error.code == types.INVALID_PARAMS


async def test_progress_reports_each_step() -> None:
    seen: list[tuple[float, float | None, str | None]] = []
    async with connect() as (session, rec):

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen.append((progress, total, message))
            rec.poke()

        result = await session.call_tool("progress", {"steps": 3}, progress_callback=on_progress)
        assert text_of(result) == "done"
        await rec.wait_until(lambda: len(seen) >= 3, "three progress callbacks")
    assert seen == [(1, 3, "step 1/3"), (2, 3, "step 2/3"), (3, 3, "step 3/3")]


async def test_dynamic_tool_and_list_changed() -> None:
    async with connect() as (session, rec):
        result = await session.call_tool("add_tool", {"name": "dyn_one"})
        assert text_of(result) == "added dyn_one"
        await rec.wait_until(
            lambda: bool(rec.of_type(types.ToolListChangedNotification)), "tools/list_changed"
        )
        names = [tool.name for tool in (await session.list_tools()).tools]
        assert names[-1] == "dyn_one"
        assert text_of(await session.call_tool("dyn_one")) == "dynamic dyn_one"


async def test_slow_is_cancellable_and_times_out() -> None:
    async with connect() as (session, _):
        with anyio.move_on_after(0.3) as scope:
            await session.call_tool("slow", {"seconds": 30})
        assert scope.cancelled_caught
        with pytest.raises(MCPError) as timed_out:
            await session.call_tool("slow", {"seconds": 30}, read_timeout_seconds=0.3)
        assert timed_out.value.error.code == types.REQUEST_TIMEOUT
        # The server is still serving after two abandoned sleeps.
        assert text_of(await session.call_tool("slow", {"seconds": 0.05})) == "slept"
        assert text_of(await session.call_tool("echo", {"text": "alive"})) == "alive"


# --- server-to-client requests -----------------------------------------------------


async def test_sampling_elicitation_and_roots() -> None:
    async with connect() as (session, rec):
        sampled = await session.call_tool("sample", {"prompt": "say something"})
        assert text_of(sampled) == SAMPLED_TEXT
        assert len(rec.sampling) == 1
        message = rec.sampling[0].messages[0]
        assert message.role == "user"
        assert isinstance(message.content, types.TextContent)
        assert message.content.text == "say something"

        elicited = await session.call_tool("elicit", {"question": "What is the answer?"})
        assert json.loads(text_of(elicited)) == {
            "action": "accept",
            "content": {"answer": "forty-two"},
        }
        assert len(rec.elicitations) == 1
        request = rec.elicitations[0]
        assert isinstance(request, types.ElicitRequestFormParams)
        assert request.message == "What is the answer?"
        assert request.requested_schema["properties"] == {"answer": {"type": "string"}}

        roots = await session.call_tool("roots")
        assert text_of(roots).split("\n") == list(ROOTS)
        assert rec.roots_calls == 1


# --- logging ----------------------------------------------------------------------


async def test_logging_and_set_level() -> None:
    async with connect() as (session, rec):
        assert text_of(await session.call_tool("log", {"level": "info", "message": "one"})) == (
            "logged"
        )
        await rec.wait_until(lambda: len(rec.logs) == 1, "first log")
        assert rec.logs[0].level == "info"
        assert rec.logs[0].logger == "full-server"
        assert rec.logs[0].data == "one"

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            await session.set_logging_level("warning")
        await session.call_tool("log", {"level": "info", "message": "dropped"})
        await session.call_tool("log", {"level": "error", "message": "kept"})
        await rec.wait_until(lambda: any(log.data == "kept" for log in rec.logs), "kept log")
        assert [(log.level, log.data) for log in rec.logs] == [("info", "one"), ("error", "kept")]


# --- resources --------------------------------------------------------------------


async def test_resources_pagination_templates_and_reads() -> None:
    async with connect() as (session, _):
        first = await session.list_resources()
        assert [r.uri for r in first.resources] == [HELLO_URI, "fixture://static/blob.bin"]
        assert first.next_cursor is not None
        second = await session.list_resources(
            params=types.PaginatedRequestParams(cursor=first.next_cursor)
        )
        assert [r.uri for r in second.resources] == [COUNTER_URI]
        assert second.next_cursor is None
        assert {r.uri: r.mime_type for r in [*first.resources, *second.resources]} == {
            HELLO_URI: "text/plain",
            "fixture://static/blob.bin": "application/octet-stream",
            COUNTER_URI: "text/plain",
        }

        templates = await session.list_resource_templates()
        assert [t.uri_template for t in templates.resource_templates] == [ITEM_TEMPLATE]

        hello = (await session.read_resource(HELLO_URI)).contents
        assert len(hello) == 1
        assert isinstance(hello[0], types.TextResourceContents)
        assert (hello[0].text, hello[0].mime_type) == ("hello", "text/plain")

        blob = (await session.read_resource("fixture://static/blob.bin")).contents[0]
        assert isinstance(blob, types.BlobResourceContents)
        assert blob.mime_type == "application/octet-stream"
        assert base64.b64decode(blob.blob) == BLOB_BYTES

        item = (await session.read_resource("fixture://items/7")).contents[0]
        assert isinstance(item, types.TextResourceContents)
        assert item.text == "item 7"

        with pytest.raises(MCPError) as missing:
            await session.read_resource("fixture://nope")
        assert missing.value.error.code == -32002


async def test_counter_subscription_notifications() -> None:
    def updates(rec: Recorder) -> list[str]:
        return [n.params.uri for n in rec.of_type(types.ResourceUpdatedNotification)]

    async def counter(session: ClientSession) -> str:
        contents = (await session.read_resource(COUNTER_URI)).contents[0]
        assert isinstance(contents, types.TextResourceContents)
        return contents.text

    async with connect() as (session, rec):
        assert await counter(session) == "0"
        assert text_of(await session.call_tool("bump")) == "counter=1"
        await marker(session, rec, "unsubscribed")
        assert updates(rec) == []

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            await session.subscribe_resource(COUNTER_URI)
        assert text_of(await session.call_tool("bump", {})) == "counter=2"
        await rec.wait_until(lambda: updates(rec) == [COUNTER_URI], "resources/updated")
        assert await counter(session) == "2"

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            await session.unsubscribe_resource(COUNTER_URI)
        assert text_of(await session.call_tool("bump")) == "counter=3"
        await marker(session, rec, "unsubscribed again")
        assert updates(rec) == [COUNTER_URI]
        assert await counter(session) == "3"


# --- prompts and completions -------------------------------------------------------


async def test_prompts_and_completions() -> None:
    async with connect() as (session, _):
        prompts = {p.name: p for p in (await session.list_prompts()).prompts}
        assert set(prompts) == {"greet", "with_resource"}
        greet_args = prompts["greet"].arguments or []
        assert [(a.name, a.required) for a in greet_args] == [("name", True), ("style", False)]

        plain = await session.get_prompt("greet", {"name": "Ada"})
        assert len(plain.messages) == 1
        assert plain.messages[0].role == "user"
        assert isinstance(plain.messages[0].content, types.TextContent)
        assert plain.messages[0].content.text == "Hello, Ada!"

        styled = await session.get_prompt("greet", {"name": "Ada", "style": "pirate"})
        assert isinstance(styled.messages[0].content, types.TextContent)
        assert styled.messages[0].content.text == "Hello, Ada! (style: pirate)"

        with pytest.raises(MCPError) as missing:
            await session.get_prompt("greet")
        assert missing.value.error.code == types.INVALID_PARAMS

        embedded = await session.get_prompt("with_resource")
        assert len(embedded.messages) == 1
        content = embedded.messages[0].content
        assert isinstance(content, types.EmbeddedResource)
        assert isinstance(content.resource, types.TextResourceContents)
        assert (content.resource.uri, content.resource.text) == (HELLO_URI, "hello")

        greet = types.PromptReference(type="ref/prompt", name="greet")
        items = types.ResourceTemplateReference(type="ref/resource", uri=ITEM_TEMPLATE)

        async def values(ref: Any, name: str, value: str) -> list[str]:
            result = await session.complete(ref, {"name": name, "value": value})
            return result.completion.values

        assert await values(greet, "name", "al") == ["alice", "albert"]
        assert await values(greet, "name", "b") == ["bob"]
        assert await values(greet, "name", "") == ["alice", "albert", "bob"]
        assert await values(greet, "name", "z") == []
        assert await values(greet, "style", "") == []
        assert await values(items, "id", "") == ["1", "2", "3"]
        assert await values(items, "id", "2") == ["2"]
