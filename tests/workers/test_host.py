"""Unit tests for workers.host: result normalisation, module tool servers, tool context."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import mcp.types as types
import pytest

from workers.host import ModuleToolServer, ToolContext, error_result, to_call_tool_result

# --- to_call_tool_result -------------------------------------------------------------


def test_string_becomes_one_text_block() -> None:
    """A tool returning a string gives one text content block, not an error."""
    assert to_call_tool_result("hello") == {
        "content": [{"type": "text", "text": "hello"}],
        "isError": False,
    }


def test_dict_with_content_is_passed_through() -> None:
    """A ready-made CallToolResult dict keeps its content and extra fields."""
    value = {
        "content": [{"type": "text", "text": "x"}],
        "structuredContent": {"n": 1},
    }
    assert to_call_tool_result(value) == {**value, "isError": False}


def test_dict_with_content_keeps_its_error_flag_and_loses_result_type() -> None:
    """isError=True survives; a 2026-style resultType is stripped for the 2025 wire."""
    value = {"content": [], "isError": True, "resultType": "complete"}
    assert to_call_tool_result(value) == {"content": [], "isError": True}
    assert value["resultType"] == "complete"  # the tool's own object is not mutated


def test_list_of_content_dicts() -> None:
    """A list of content blocks becomes the result's content."""
    blocks = [
        {"type": "text", "text": "a"},
        {"type": "image", "data": "AAAA", "mimeType": "image/png"},
    ]
    assert to_call_tool_result(blocks) == {"content": blocks, "isError": False}


def test_list_of_sdk_content_objects() -> None:
    """mcp.types content objects in a list are dumped to their wire form."""
    result = to_call_tool_result([types.TextContent(type="text", text="sdk")])
    assert result == {"content": [{"type": "text", "text": "sdk"}], "isError": False}


def test_none_is_empty_content() -> None:
    """A tool returning None gives an empty, successful result."""
    assert to_call_tool_result(None) == {"content": [], "isError": False}


@pytest.mark.parametrize("value", [0, 42, 2.5, True, False, {"a": 1, "b": [1, 2]}, {}])
def test_other_json_values_become_json_text(value: Any) -> None:
    """Numbers, booleans and plain dicts are returned as their JSON text."""
    result = to_call_tool_result(value)
    assert result["isError"] is False
    [block] = result["content"]
    assert block["type"] == "text"
    assert json.loads(block["text"]) == value


@pytest.mark.parametrize("value", [[1, 2, 3], ["a", "b"]])
def test_list_of_plain_json_values_becomes_json_text(value: list[Any]) -> None:
    """A tool returning a JSON list that is not content gets it back as JSON text."""
    result = to_call_tool_result(value)
    assert result["isError"] is False
    assert json.loads(result["content"][0]["text"]) == value


def test_sdk_call_tool_result_loses_result_type_and_keeps_is_error() -> None:
    """An mcp CallToolResult is dumped by alias, without resultType, with isError present."""
    value = types.CallToolResult(
        content=[types.TextContent(type="text", text="hi")], structured_content={"k": "v"}
    )
    result = to_call_tool_result(value)
    assert "resultType" not in result
    assert result["isError"] is False
    assert result["content"] == [{"type": "text", "text": "hi"}]
    assert result["structuredContent"] == {"k": "v"}


def test_sdk_call_tool_result_error_flag_survives() -> None:
    """An SDK result marked isError stays an error."""
    value = types.CallToolResult(content=[types.TextContent(type="text", text="no")], is_error=True)
    result = to_call_tool_result(value)
    assert result["isError"] is True
    assert "resultType" not in result


def test_results_are_json_serialisable() -> None:
    """Whatever the tool returned, the normalised result can be sent as JSON."""
    values: list[Any] = [
        "s",
        None,
        3,
        {"content": []},
        [{"type": "text", "text": "t"}],
        types.CallToolResult(content=[]),
    ]
    for value in values:
        json.dumps(to_call_tool_result(value))


def test_error_result_is_a_tool_error() -> None:
    """error_result is a CallToolResult with isError and the message as text."""
    assert error_result("boom") == {"content": [{"type": "text", "text": "boom"}], "isError": True}


# --- ModuleToolServer ----------------------------------------------------------------


def context(sink: Any = None) -> ToolContext:
    """A context for call 1 of session s1."""
    return ToolContext(1, "s1", "glm-4.5", sink)


def test_sync_handler_runs_in_a_thread() -> None:
    """A synchronous tool runs off the event loop's thread and its value is returned."""
    seen: dict[str, Any] = {}

    def handler(name: str, arguments: dict[str, Any], ctx: ToolContext) -> str:
        seen["thread"] = threading.get_ident()
        seen["call"] = (name, arguments, ctx.session_id, ctx.model)
        return "sync-ok"

    server = ModuleToolServer("mod", [{"name": "t", "inputSchema": {"type": "object"}}], handler)

    async def run() -> tuple[Any, int]:
        return await server.call("t", {"x": 1}, context()), threading.get_ident()

    value, loop_thread = asyncio.run(run())
    assert value == "sync-ok"
    assert seen["call"] == ("t", {"x": 1}, "s1", "glm-4.5")
    assert seen["thread"] != loop_thread


def test_blocking_sync_handler_does_not_stall_other_calls() -> None:
    """While a sync tool blocks, an async tool on the same worker still runs."""
    released = threading.Event()

    def blocking(name: str, arguments: dict[str, Any], ctx: ToolContext) -> bool:
        return released.wait(timeout=10)

    async def releasing(name: str, arguments: dict[str, Any], ctx: ToolContext) -> str:
        released.set()
        return "released"

    slow = ModuleToolServer("slow", [], blocking)
    fast = ModuleToolServer("fast", [], releasing)

    async def run() -> list[Any]:
        first = asyncio.ensure_future(slow.call("block", {}, context()))
        await asyncio.sleep(0)
        return [await fast.call("release", {}, context()), await first]

    assert asyncio.run(run()) == ["released", True]


def test_async_handler_is_awaited_on_the_loop() -> None:
    """An async tool runs on the worker's loop and its value is returned."""

    async def handler(name: str, arguments: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"thread": threading.get_ident(), "name": name, "args": arguments}

    server = ModuleToolServer("mod", [], handler)

    async def run() -> tuple[Any, int]:
        return await server.call("a", {"y": 2}, context()), threading.get_ident()

    value, loop_thread = asyncio.run(run())
    assert value == {"thread": loop_thread, "name": "a", "args": {"y": 2}}


def test_handler_exception_reaches_the_caller() -> None:
    """A tool's exception propagates to the worker, which turns it into a tool error."""

    def handler(name: str, arguments: dict[str, Any], ctx: ToolContext) -> None:
        raise ValueError("bad input")

    server = ModuleToolServer("mod", [], handler)
    with pytest.raises(ValueError, match="bad input"):
        asyncio.run(server.call("t", {}, context()))


def test_tools_are_listed_as_dicts_and_model_tools_kept() -> None:
    """SDK Tool objects and dicts are both listed in wire form."""
    sdk_tool = types.Tool(name="sdk", input_schema={"type": "object"})
    server = ModuleToolServer(
        "mod", [sdk_tool, {"name": "plain"}], lambda n, a, c: None, frozenset({"sdk"})
    )
    assert [t["name"] for t in server.tools] == ["sdk", "plain"]
    assert server.tools[0]["inputSchema"] == {"type": "object"}
    assert server.model_tools == frozenset({"sdk"})
    asyncio.run(server.aclose())


# --- ToolContext ---------------------------------------------------------------------


def test_report_progress_without_sink_is_a_no_op() -> None:
    """When the client asked for no progress, reporting it does nothing and does not fail."""
    asyncio.run(context().report_progress(1, 2, "half"))


def test_report_progress_forwards_floats() -> None:
    """Progress reaches the sink as floats; a missing total stays None."""
    got: list[tuple[float, float | None, str | None]] = []
    ctx = context(lambda p, t, m: got.append((p, t, m)))

    async def run() -> None:
        await ctx.report_progress(1, 4, "one of four")
        await ctx.report_progress(2.5)

    asyncio.run(run())
    assert got == [(1.0, 4.0, "one of four"), (2.5, None, None)]
    assert all(type(p) is float for p, _, _ in got)
    assert type(got[0][1]) is float
