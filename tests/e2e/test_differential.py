"""Differential tests: a hosted server seen through the broker is the server itself.

The same scripted conversation (tests/support/differential.py) runs against a stdio
MCP server spawned directly — the reference — and against a daemon hosting that server
with `--server-cmd`, reached over a direct WebSocket and through a real shim. Responses,
notifications and server→client requests must be the same, frame for frame, modulo
request ids (each path must echo the ids the client sent) — numbers as JSON text
(1 stays 1), absent fields absent, progress tokens as the client sent them.

Servers: our `tests.fixtures.full_server` (every MCP feature, deterministic) and
@modelcontextprotocol/server-everything (when `make node-tools` installed it).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import re
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, DaemonFactory, DaemonProcess, async_wait_for
from tests.support.differential import (
    Conversation,
    Script,
    ShimTransport,
    StdioTransport,
    Transcript,
    Transport,
    WsTransport,
    compare,
    format_differences,
    python_module_command,
    run_script,
)
from tests.support.jsonrpc import JsonObj

pytestmark = [pytest.mark.timeout(150)]

FULL_CMD = python_module_command("tests.fixtures.full_server")
EVERYTHING_ENTRY = (
    ROOT
    / ".cache"
    / "node"
    / "node_modules"
    / "@modelcontextprotocol"
    / "server-everything"
    / "dist"
    / "index.js"
)

COUNTER_URI = "fixture://counter"


# --- the scripts ----------------------------------------------------------------------


async def full_server_script(c: Conversation) -> None:
    """Every feature of tests.fixtures.full_server, in a fixed order."""
    await c.initialize()
    await c.list_all("tools/list", "tools/list")

    # tools: plain, argument shapes, structured, errors
    await c.call("echo text", "echo", {"text": "héllo ✓"})
    await c.call("echo without arguments", "echo", omit_arguments=True)
    await c.call("echo with {}", "echo", {})
    await c.call("add (structured)", "add", {"a": 2, "b": 40})
    await c.call("annotated without arguments", "annotated", omit_arguments=True)
    await c.call("tool error", "fail", {})
    await c.call("unknown tool", "no_such_tool", {})
    await c.call("invalid arguments", "add", {"a": "x", "b": 1})
    await c.call("slow 0 s (number arg)", "slow", {"seconds": 0.0})

    await c.cancelled(
        "cancelled call", "tools/call", {"name": "slow", "arguments": {"seconds": 30}}
    )

    # progress, both token types
    await c.call("progress int token", "progress", {"steps": 3}, progress_token=7)
    await c.call("progress string token", "progress", {"steps": 2}, progress_token="tok-β")
    await c.call("progress zero steps", "progress", {"steps": 0}, progress_token=0)

    # logging
    await c.call("log before setLevel", "log", {"level": "debug", "message": "first"})
    await c.request("logging/setLevel warning", "logging/setLevel", {"level": "warning"})
    await c.call("log below level", "log", {"level": "info", "message": "dropped"})
    await c.call("log at level", "log", {"level": "error", "message": "kept"})
    await c.request("logging/setLevel debug", "logging/setLevel", {"level": "debug"})
    await c.call("log debug again", "log", {"level": "debug", "message": "back"})

    # resources
    await c.list_all("resources/list", "resources/list")
    await c.request("resources/templates/list", "resources/templates/list")
    await c.request("read text", "resources/read", {"uri": "fixture://static/hello.txt"})
    await c.request("read binary", "resources/read", {"uri": "fixture://static/blob.bin"})
    await c.request("read template", "resources/read", {"uri": "fixture://items/7"})
    await c.request("read missing", "resources/read", {"uri": "fixture://nope"})
    await c.call("bump unsubscribed", "bump", {})
    await c.request("subscribe", "resources/subscribe", {"uri": COUNTER_URI})
    await c.call("bump subscribed", "bump", omit_arguments=True)
    await c.request("read counter", "resources/read", {"uri": COUNTER_URI})
    await c.request("unsubscribe", "resources/unsubscribe", {"uri": COUNTER_URI})
    await c.call("bump after unsubscribe", "bump", {})

    # prompts and completions
    await c.list_all("prompts/list", "prompts/list")
    await c.request("prompt greet", "prompts/get", {"name": "greet", "arguments": {"name": "Ada"}})
    await c.request(
        "prompt greet styled",
        "prompts/get",
        {"name": "greet", "arguments": {"name": "Ada", "style": "pirate"}},
    )
    await c.request("prompt embedded resource", "prompts/get", {"name": "with_resource"})
    await c.request("prompt missing argument", "prompts/get", {"name": "greet"})
    await c.request(
        "complete prompt argument",
        "completion/complete",
        {
            "ref": {"type": "ref/prompt", "name": "greet"},
            "argument": {"name": "name", "value": "al"},
        },
    )
    await c.request(
        "complete template argument",
        "completion/complete",
        {
            "ref": {"type": "ref/resource", "uri": "fixture://items/{id}"},
            "argument": {"name": "id", "value": ""},
        },
    )

    # server→client requests (the harness answers)
    await c.call("sampling", "sample", {"prompt": "say something"})
    await c.call("elicitation", "elicit", {"question": "What is the answer?"})
    await c.call("roots", "roots", omit_arguments=True)

    # tools/list_changed
    await c.call("add tool", "add_tool", {"name": "dyn_one"})
    await c.list_all("tools/list after change", "tools/list")
    await c.call("dynamic tool", "dyn_one", omit_arguments=True)

    await c.request("ping", "ping")
    await c.request("unknown method", "no/such/method", {})


async def everything_script(c: Conversation) -> None:
    """The deterministic part of @modelcontextprotocol/server-everything.

    Left out: get-env (prints the environment, which differs by design), simulated
    logging (random levels on a timer) and the task-based tools.
    """
    await c.initialize()
    # The server asks for roots 350 ms after the handshake and logs what it got; a
    # hosted instance was initialized by the broker, not by this client (handshake).
    await c.settle(
        "post-handshake roots",
        {"request roots/list": 1, "notification notifications/message": 1},
        handshake=True,
    )
    await c.list_all("tools/list", "tools/list")

    await c.call("echo", "echo", {"message": "hi ✓"})
    await c.call("echo without arguments", "echo", omit_arguments=True)
    await c.call("echo with {}", "echo", {})
    await c.call("sum ints", "get-sum", {"a": 2, "b": 40})
    await c.call("sum floats", "get-sum", {"a": 1.5, "b": 2.25})
    await c.call("structured content", "get-structured-content", {"location": "New York"})
    await c.call(
        "annotated message", "get-annotated-message", {"messageType": "error", "includeImage": True}
    )
    await c.call("tiny image", "get-tiny-image", {})
    await c.call(
        "resource reference", "get-resource-reference", {"resourceType": "Blob", "resourceId": 2}
    )
    await c.call("resource links", "get-resource-links", {"count": 3})
    await c.call("unknown tool", "no-such-tool", {})
    await c.call("invalid arguments", "get-sum", {"a": "x", "b": 1})

    await c.call(
        "progress int token",
        "trigger-long-running-operation",
        {"duration": 0.2, "steps": 2},
        progress_token=7,
    )
    await c.call(
        "progress string token",
        "trigger-long-running-operation",
        {"duration": 0.1, "steps": 1},
        progress_token="tok-β",
    )

    await c.request("logging/setLevel info", "logging/setLevel", {"level": "info"})
    await c.list_all("resources/list", "resources/list")
    await c.list_all("resources/templates/list", "resources/templates/list")
    await c.request("read text", "resources/read", {"uri": "demo://resource/dynamic/text/1"})
    await c.request("read binary", "resources/read", {"uri": "demo://resource/dynamic/blob/1"})
    await c.request(
        "read static document",
        "resources/read",
        {"uri": "demo://resource/static/document/features.md"},
    )
    text_uri = "demo://resource/dynamic/text/2"
    await c.request("subscribe (logs at info)", "resources/subscribe", {"uri": text_uri})
    updated = frozenset({"notifications/resources/updated"})
    await c.call("updates on", "toggle-subscriber-updates", {}, dedupe=updated)
    await c.call("updates off", "toggle-subscriber-updates", {}, dedupe=updated)
    await c.request("logging/setLevel warning", "logging/setLevel", {"level": "warning"})
    await c.request("unsubscribe (log dropped)", "resources/unsubscribe", {"uri": text_uri})

    await c.list_all("prompts/list", "prompts/list")
    await c.request("prompt simple", "prompts/get", {"name": "simple-prompt"})
    await c.request(
        "prompt with arguments",
        "prompts/get",
        {"name": "args-prompt", "arguments": {"city": "Paris", "state": "IdF"}},
    )
    await c.request(
        "prompt with resource",
        "prompts/get",
        {"name": "resource-prompt", "arguments": {"resourceType": "Text", "resourceId": "3"}},
    )
    await c.request(
        "complete prompt argument",
        "completion/complete",
        {
            "ref": {"type": "ref/prompt", "name": "completable-prompt"},
            "argument": {"name": "department", "value": "E"},
        },
    )

    await c.call(
        "sampling", "trigger-sampling-request", {"prompt": "say something", "maxTokens": 20}
    )
    await c.call("elicitation", "trigger-elicitation-request", {})
    await c.call("roots", "get-roots-list", {})

    data = "data:text/plain;base64," + base64.b64encode(b"hello differential").decode()
    await c.call(
        "gzip as resource (resources/list_changed)",
        "gzip-file-as-resource",
        {"name": "diff.txt.gz", "data": data, "outputType": "resourceLink"},
    )
    await c.list_all("resources/list after change", "resources/list")
    await c.request(
        "read session resource", "resources/read", {"uri": "demo://resource/session/diff.txt.gz"}
    )

    await c.request("ping", "ping")
    await c.request("unknown method", "no/such/method", {})


# --- servers --------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """A server under test: how to start it, its script, its barrier call, and what of
    its frames to scrub before comparing."""

    name: str
    command: Callable[[], str]
    script: Script
    barrier: tuple[str, JsonObj]
    scrub: Callable[[Any], Any] | None = None
    # Waits, once a daemon hosts the server, for what it does by itself after the
    # broker's handshake with it, so that no client step sees it by chance.
    settle_hosted: Callable[[DaemonProcess, str], Awaitable[None]] | None = None


TIME_OF_DAY = re.compile(r"\b\d{1,2}:\d{2}:\d{2}\s?[AP]M\b")


def scrub_time_of_day(value: Any) -> Any:
    """server-everything's dynamic resources say when they were made ("created at
    12:42:40 PM"), in text and in base64 blobs: the time of day is not compared."""
    if isinstance(value, str):
        return TIME_OF_DAY.sub("<time>", value)
    if isinstance(value, list):
        return [scrub_time_of_day(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: scrub_time_of_day(v) for k, v in value.items()}
    blob = value.get("blob")
    if isinstance(blob, str):
        try:
            text = base64.b64decode(blob, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            out["blob"] = blob
        else:
            scrubbed = TIME_OF_DAY.sub("<time>", text)
            out["blob"] = blob if scrubbed == text else f"<base64 of {scrubbed!r}>"
    return out


def everything_command() -> str:
    """The local server-everything (EXAI_TEST_EVERYTHING_CMD, or `make node-tools`'s copy);
    skips when node or the module is missing (tests never download)."""
    if not shutil.which("node"):
        pytest.skip("node is not installed")
    command = os.environ.get("EXAI_TEST_EVERYTHING_CMD", "").strip()
    if command:
        return command
    if not EVERYTHING_ENTRY.is_file():
        pytest.skip("server-everything is not installed locally (run `make node-tools`)")
    return f"node {EVERYTHING_ENTRY} stdio"


async def everything_roots_timer(daemon: DaemonProcess, isolation: str) -> None:
    """server-everything asks its client for roots 350 ms after its handshake. With
    session isolation that is the session's own (it comes in the "post-handshake roots"
    step); a shared instance was initialized at startup, and its timer's roots/list
    reaches whichever single session has a request in flight at that moment, or is
    refused (the daemon logs it). Best effort: wait for the refusal, a few seconds."""
    if isolation == "session":
        return
    with contextlib.suppress(AssertionError):
        await async_wait_for(
            lambda: "refused roots/list" in daemon.stderr(),
            5.0,
            "the shared server-everything's post-handshake roots/list",
            interval_s=0.05,
        )


FULL = Server(
    "full_server",
    lambda: FULL_CMD,
    full_server_script,
    ("tools/call", {"name": "echo", "arguments": {"text": "barrier"}}),
)
EVERYTHING = Server(
    "server-everything",
    everything_command,
    everything_script,
    ("tools/call", {"name": "echo", "arguments": {"message": "barrier"}}),
    scrub_time_of_day,
    everything_roots_timer,
)


async def direct_transcript(server: Server, command: str, tmp_path: Path, n: int = 1) -> Transcript:
    """The reference: the script against the server spawned directly."""
    transport = await StdioTransport.start(command, tmp_path / f"direct-{n}.stderr")
    return await run_script(transport, server.script, server.barrier, scrub=server.scrub)


async def broker_transport(path: str, daemon: DaemonProcess, tmp_path: Path) -> Transport:
    """A client of `daemon`: a direct WebSocket or a real shim."""
    if path == "ws":
        return await WsTransport.start(daemon)
    return await ShimTransport.start(daemon, tmp_path / "shim.stderr")


async def assert_same_through_broker(
    server: Server, path: str, isolation: str, daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    command = server.command()
    reference = await direct_transcript(server, command, tmp_path)
    daemon = daemon_factory(
        workers=1,
        env={"EXAI_WS_CALL_TIMEOUT": "60"},
        args=["--server-cmd", command, "--isolation", isolation],
    )
    if server.settle_hosted is not None:
        await server.settle_hosted(daemon, isolation)
    transport = await broker_transport(path, daemon, tmp_path)
    # A shared instance is initialized by the broker before any client connects: what
    # the server does right after its handshake belongs to no client.
    own_handshake = isolation == "session"
    got = await run_script(
        transport,
        server.script,
        server.barrier,
        reference,
        handshake_traffic=own_handshake,
        scrub=server.scrub,
    )
    differences = compare(reference, got, include_handshake=own_handshake)
    label = f"{server.name} via {path}, isolation {isolation}"
    assert not differences, format_differences(
        label, differences, diagnostics=daemon.stderr()[-1500:]
    )


# --- the harness itself ---------------------------------------------------------------


@pytest.mark.parametrize("server", [FULL, EVERYTHING], ids=lambda s: s.name)
async def test_direct_runs_are_identical(server: Server, tmp_path: Path) -> None:
    """The harness is deterministic: two direct runs of a script compare equal (so any
    difference through the broker is the broker's), and it sees what a user would."""
    command = server.command()
    first = await direct_transcript(server, command, tmp_path, 1)
    second_transport = await StdioTransport.start(command, tmp_path / "direct-2.stderr")
    second = await run_script(
        second_transport, server.script, server.barrier, first, scrub=server.scrub
    )
    differences = compare(first, second)
    assert not differences, format_differences(f"{server.name} direct twice", differences)
    steps = first.by_name()
    requests = [s for s in first.steps if s.request and not s.handshake]
    assert [s.name for s in requests if s.answer_expected and s.response is None] == []
    assert [s.name for s in requests if not s.answer_expected and s.response] == []
    if server is FULL:
        assert_full_reference_sane(steps)
    else:
        assert_everything_reference_sane(steps)


def assert_everything_reference_sane(steps: dict[str, Any]) -> None:
    """What server-everything is known to do, so the reference is worth comparing to."""
    assert any("roots/list" in r for r in steps["post-handshake roots"].server_requests)
    assert steps["roots"].server_requests == []  # it kept the roots from the handshake
    progress = steps["progress int token"].notifications
    assert len(progress) == 2 and '"progress":1,' in progress[0], progress
    assert any("resources/updated" in n for n in steps["updates on"].notifications)
    assert steps["unsubscribe (log dropped)"].notifications == []
    assert any('"temperature":0.7' in r for r in steps["sampling"].server_requests)
    assert any(
        "list_changed" in n
        for n in steps["gzip as resource (resources/list_changed)"].notifications
    )
    assert "<time>" in str(steps["read binary"].response)


def assert_full_reference_sane(steps: dict[str, Any]) -> None:
    """What full_server is known to answer, so the reference is worth comparing to."""
    assert '"text":"no arguments"' in steps["echo without arguments"].response
    assert '"text":"empty arguments"' in steps["echo with {}"].response
    assert '"isError":true' in steps["tool error"].response
    progress = steps["progress int token"].notifications
    assert [p for p in progress if '"progressToken":7' in p and '"progress":1,' in p], progress
    assert any('"progressToken":"tok-β"' in p for p in steps["progress string token"].notifications)
    assert steps["log below level"].notifications == []
    assert len(steps["log at level"].notifications) == 1
    assert steps["bump unsubscribed"].notifications == []
    assert any("resources/updated" in n for n in steps["bump subscribed"].notifications)
    assert steps["bump after unsubscribe"].notifications == []
    assert any("sampling/createMessage" in r for r in steps["sampling"].server_requests)
    assert any("elicitation/create" in r for r in steps["elicitation"].server_requests)
    assert any("roots/list" in r for r in steps["roots"].server_requests)
    assert any("tools/list_changed" in n for n in steps["add tool"].notifications)
    assert '"nextCursor":"<cursor>"' in steps["resources/list#1"].response
    assert '"id":"<id>"' in steps["read binary"].response


def test_compare_tells_int_from_float_and_absent_from_false() -> None:
    """The comparison keeps the distinctions a client sees."""
    from tests.support.differential import StepRecord, canonical

    def transcript(result: JsonObj) -> Transcript:
        step = StepRecord("s", "", response=canonical({"id": "<id>", "result": result}))
        return Transcript("t", [step])

    assert compare(transcript({"p": 1}), transcript({"p": 1})) == []
    assert compare(transcript({"p": 1}), transcript({"p": 1.0}))
    assert compare(transcript({"c": []}), transcript({"c": [], "isError": False}))
    assert compare(transcript({"b": True}), transcript({"b": 1}))
    assert compare(transcript({"x": None}), transcript({}))


# --- through the broker ---------------------------------------------------------------


@pytest.mark.parametrize("isolation", ["shared", "session"])
@pytest.mark.parametrize("path", ["ws", "shim"])
async def test_full_server_through_broker(
    path: str, isolation: str, daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """tests.fixtures.full_server hosted with `--server-cmd`: every response, notification
    and server request the client sees is what it sees talking to the server directly."""
    await assert_same_through_broker(FULL, path, isolation, daemon_factory, tmp_path)


@pytest.mark.parametrize("isolation", ["shared", "session"])
@pytest.mark.parametrize("path", ["ws", "shim"])
async def test_server_everything_through_broker(
    path: str, isolation: str, daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """@modelcontextprotocol/server-everything hosted with `--server-cmd`: the same frames
    as talking to it directly (shared: after the broker's own handshake with it)."""
    await assert_same_through_broker(EVERYTHING, path, isolation, daemon_factory, tmp_path)
