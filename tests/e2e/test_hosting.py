"""Hosting existing MCP servers: SDK objects (`--server module:attr`, in workers) and
stdio commands (`--server-cmd`, by the daemon itself), shared or one instance per
session, through real shims and the SDK client. Hosted child processes are watched
through /proc: they must come and go with their sessions and their daemon.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import mcp
import pytest
from mcp import MCPError

from tests.conftest import ROOT as REPO_ROOT
from tests.conftest import STEP_S, DaemonFactory, DaemonProcess, async_wait_for, mcp_client
from tests.fixtures import sdk_servers
from tests.support.jsonrpc import sdk_text
from tests.support.processes import cmdline, descendants, parent_pid, process_gone

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not Path("/proc").is_dir(), reason="watches processes through /proc"),
]

PY = shlex.quote(sys.executable)
COUNTER_CMD = f"{PY} -m tests.fixtures.counter_server"
TIME_CMD = f"{PY} -m mcp_server_time --local-timezone UTC"
OVER_CAPACITY_RPC = -32050
WORKER_LOST_RPC = -32052

NODE_MODULES = REPO_ROOT / ".cache" / "node" / "node_modules"


# --- helpers -------------------------------------------------------------------------


def counter_children(root_pid: int) -> list[int]:
    """Live counter_server processes below `root_pid` in the process tree."""
    return [
        pid
        for pid in descendants(root_pid)
        if any("tests.fixtures.counter_server" in part for part in cmdline(pid))
    ]


async def wait_gone(pid: int, what: str, timeout_s: float = STEP_S) -> None:
    """Wait until `pid` has exited."""
    await async_wait_for(lambda: process_gone(pid), timeout_s, what, interval_s=0.05)


async def counter_pid(session: Any) -> int:
    """The pid of the counter_server instance serving `session`."""
    result = await session.call_tool("pid", {})
    assert not result.is_error, sdk_text(result)
    return int(sdk_text(result))


async def increment(session: Any) -> int:
    """Call the counter_server's `increment`; the new count."""
    result = await session.call_tool("increment", {})
    assert not result.is_error, sdk_text(result)
    return int(sdk_text(result))


def counter_daemon(
    factory: DaemonFactory, isolation: str, workers: int = 1, **env: str
) -> DaemonProcess:
    """A daemon hosting tests.fixtures.counter_server as a stdio command (`workers`
    shared instances of it)."""
    return factory(
        workers=workers,
        env={"EXAI_WS_CALL_TIMEOUT": "30", **env},
        args=["--server-cmd", COUNTER_CMD, "--isolation", isolation],
    )


def tool_dicts(tools: Any) -> dict[str, dict[str, Any]]:
    """A tools/list result as wire dicts by name."""
    return {
        t.name: t.model_dump(by_alias=True, mode="json", exclude_none=True) for t in tools.tools
    }


async def direct_tools(target: Any) -> dict[str, dict[str, Any]]:
    """The tool list an SDK server object gives a client connected to it directly."""
    async with mcp.Client(target, mode="legacy") as client:
        return tool_dicts(await client.list_tools())


# --- SDK server objects --------------------------------------------------------------


async def test_mcpserver_object_is_hosted_unchanged(daemon_factory: DaemonFactory) -> None:
    """`--server tests.fixtures.sdk_servers:server`: the daemon lists exactly the tools the
    MCPServer lists (schemas, outputSchema, annotations); calls work, structuredContent
    passes through, tool errors stay tool errors, progress reaches the client."""
    expected = await direct_tools(sdk_servers.server)
    daemon = daemon_factory(workers=2, args=["--server", "tests.fixtures.sdk_servers:server"])
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    async with mcp_client(daemon.shim_env()) as session:
        listed = tool_dicts(await session.list_tools())
        divided = await session.call_tool("divide", {"dividend": 17, "divisor": 5})
        by_zero = await session.call_tool("divide", {"dividend": 1, "divisor": 0})
        shouted = await session.call_tool("shout", {"text": "quiet"})
        counted = await session.call_tool("countdown", {"steps": 4}, progress_callback=on_progress)

    assert listed == expected
    assert listed["divide"]["outputSchema"]["required"] == ["quotient", "remainder"]
    assert listed["shout"]["annotations"]["readOnlyHint"] is True
    assert not divided.is_error, sdk_text(divided)
    assert divided.structured_content == {"quotient": 3, "remainder": 2}
    assert by_zero.is_error
    assert "division by zero" in sdk_text(by_zero)
    assert "Traceback" not in sdk_text(by_zero)
    assert sdk_text(shouted) == "QUIET"
    assert sdk_text(counted) == "counted 4"
    assert [p[0] for p in progress] == [1, 2, 3, 4]
    assert progress[-1] == (4, 4, "step 4/4")


async def test_lowlevel_server_object_is_hosted_unchanged(daemon_factory: DaemonFactory) -> None:
    """`--server tests.fixtures.sdk_servers:lowlevel`: the lowlevel Server's tool is listed
    as it declares it and its calls work; arguments its schema refuses get the answer
    the server gives them directly (the broker does not answer for the server)."""
    expected = await direct_tools(sdk_servers.lowlevel)
    async with mcp.Client(sdk_servers.lowlevel, mode="legacy") as direct:
        direct_bad = await outcome(direct.call_tool("reverse", {"text": 42}))
    daemon = daemon_factory(workers=1, args=["--server", "tests.fixtures.sdk_servers:lowlevel"])
    async with mcp_client(daemon.shim_env()) as session:
        listed = tool_dicts(await session.list_tools())
        reversed_ = await session.call_tool("reverse", {"text": "stressed"})
        brokered_bad = await outcome(session.call_tool("reverse", {"text": 42}))

    assert listed == expected
    assert listed["reverse"]["annotations"] == {"readOnlyHint": True}
    assert sdk_text(reversed_) == "desserts"
    assert brokered_bad == direct_bad


async def outcome(call: Any) -> tuple[str, Any]:
    """What a client sees of a call: ("error", code, message) or ("result", text, isError)."""
    try:
        result = await call
    except MCPError as exc:
        return ("error", (exc.error.code, exc.error.message))
    return ("result", (sdk_text(result), result.is_error))


# --- third-party stdio servers -------------------------------------------------------


async def test_mcp_server_time_is_hosted(daemon_factory: DaemonFactory) -> None:
    """A real third-party server (`python -m mcp_server_time`) behind `--server-cmd`:
    its tools are listed, get_current_time answers for Europe/Paris, and a call missing
    a required argument gets the server's own answer (a tool error naming it): the
    broker forwards what the server validates instead of answering for it."""
    daemon = daemon_factory(workers=1, args=["--server-cmd", TIME_CMD])
    async with mcp_client(daemon.shim_env()) as session:
        listed = tool_dicts(await session.list_tools())
        now = await session.call_tool("get_current_time", {"timezone": "Europe/Paris"})
        converted = await session.call_tool(
            "convert_time",
            {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"},
        )
        missing = await session.call_tool("get_current_time", {})

    assert {"get_current_time", "convert_time"} <= set(listed)
    assert listed["get_current_time"]["inputSchema"]["required"] == ["timezone"]
    assert listed["get_current_time"]["annotations"]["readOnlyHint"] is True
    assert not now.is_error, sdk_text(now)
    assert now.structured_content is not None
    assert now.structured_content["timezone"] == "Europe/Paris"
    assert not converted.is_error, sdk_text(converted)
    assert converted.structured_content is not None
    assert "T21:00:00" in converted.structured_content["target"]["datetime"]
    assert missing.is_error
    assert "timezone" in sdk_text(missing)


async def test_server_everything_is_hosted(daemon_factory: DaemonFactory) -> None:
    """@modelcontextprotocol/server-everything behind `--server-cmd`, when `make node-tools`
    installed it (or EXAI_TEST_EVERYTHING_CMD names a local copy; tests never download)."""
    command = os.environ.get("EXAI_TEST_EVERYTHING_CMD", "").strip() or everything_command()
    if not shutil.which("node"):
        pytest.skip("node is not installed")
    if not command:
        pytest.skip("server-everything is not installed locally (run `make node-tools`)")
    daemon = daemon_factory(workers=1, args=["--server-cmd", command])
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async with mcp_client(daemon.shim_env()) as session:
        listed = tool_dicts(await session.list_tools())
        echoed = await session.call_tool("echo", {"message": "hi from the broker"})
        summed = await session.call_tool("get-sum", {"a": 2, "b": 40})
        long_op = await session.call_tool(
            "trigger-long-running-operation",
            {"duration": 1, "steps": 4},
            progress_callback=on_progress,
        )

    assert {"echo", "get-sum", "trigger-long-running-operation"} <= set(listed)
    assert sdk_text(echoed) == "Echo: hi from the broker"
    assert "42" in sdk_text(summed)
    assert not long_op.is_error, sdk_text(long_op)
    assert len(progress) >= 1


def everything_command() -> str:
    """The locally installed server-everything (`make node-tools`), or ''."""
    entry = NODE_MODULES / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
    return f"node {entry} stdio" if entry.is_file() else ""


# --- isolation -----------------------------------------------------------------------


async def test_shared_isolation_one_counter_for_everyone(daemon_factory: DaemonFactory) -> None:
    """`--isolation shared`, one worker: two sessions talk to one counter_server."""
    daemon = counter_daemon(daemon_factory, "shared")
    async with mcp_client(daemon.shim_env()) as a, mcp_client(daemon.shim_env()) as b:
        seen = [await increment(a), await increment(b), await increment(a), await increment(b)]
        pids = {await counter_pid(a), await counter_pid(b)}
    assert seen == [1, 2, 3, 4]
    assert len(pids) == 1


async def test_hosted_command_progress_reaches_the_client(daemon_factory: DaemonFactory) -> None:
    """Progress a stdio-hosted server reports (counter_server `slow`) reaches the SDK
    client's progress_callback, in order, before the result."""
    daemon = counter_daemon(daemon_factory, "shared")
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    async with mcp_client(daemon.shim_env()) as session:
        listed = tool_dicts(await session.list_tools())
        result = await session.call_tool("slow", {"seconds": 0.5}, progress_callback=on_progress)

    assert listed["increment"]["annotations"]["idempotentHint"] is False
    assert sdk_text(result) == "slept 0.5"
    assert [p[0] for p in progress] == [1, 2, 3, 4, 5]
    assert progress[-1] == (5, 5, "step 5/5")


async def test_session_isolation_one_counter_per_session(daemon_factory: DaemonFactory) -> None:
    """`--isolation session`: each session gets its own counter_server, counting from 1."""
    daemon = counter_daemon(daemon_factory, "session")
    async with mcp_client(daemon.shim_env()) as a, mcp_client(daemon.shim_env()) as b:
        seen = [await increment(a), await increment(b), await increment(a), await increment(b)]
        seen.append(await increment(a))
        pid_a, pid_b = await counter_pid(a), await counter_pid(b)
    assert seen == [1, 1, 2, 2, 3]
    assert pid_a != pid_b


async def test_session_instance_exits_when_its_session_ends(
    daemon_factory: DaemonFactory,
) -> None:
    """The counter_server of a session exits when its client closes; the other session's
    instance keeps its state."""
    daemon = counter_daemon(daemon_factory, "session")
    async with mcp_client(daemon.shim_env()) as b:
        assert await increment(b) == 1
        pid_b = await counter_pid(b)
        async with mcp_client(daemon.shim_env()) as a:
            assert await increment(a) == 1
            pid_a = await counter_pid(a)
        await wait_gone(pid_a, f"session A's counter_server (pid {pid_a}) to exit")
        assert not process_gone(pid_b)
        assert await increment(b) == 2
    await wait_gone(pid_b, f"session B's counter_server (pid {pid_b}) to exit")
    assert daemon.proc.poll() is None


async def test_session_instances_cap_refuses_a_second_session(
    daemon_factory: DaemonFactory,
) -> None:
    """EXAI_SESSION_INSTANCES_MAX=1: a second concurrent session is refused with
    OVER_CAPACITY; once the first session ends, the second one gets an instance."""
    daemon = counter_daemon(daemon_factory, "session", EXAI_SESSION_INSTANCES_MAX="1")
    async with mcp_client(daemon.shim_env()) as b:
        async with mcp_client(daemon.shim_env()) as a:
            assert await increment(a) == 1
            pid_a = await counter_pid(a)
            with pytest.raises(MCPError) as caught:
                await b.call_tool("increment", {})
        await wait_gone(pid_a, f"session A's counter_server (pid {pid_a}) to exit")
        assert await increment(b) == 1
    error = caught.value.error
    assert error.code == OVER_CAPACITY_RPC, error
    assert isinstance(error.data, dict)
    assert error.data["code"] == "OVER_CAPACITY"
    assert "EXAI_SESSION_INSTANCES_MAX" in error.message


async def test_idle_session_instance_is_reaped(daemon_factory: DaemonFactory) -> None:
    """EXAI_SESSION_IDLE_TIMEOUT=1: an idle session's instance exits while the session is
    still open; the session's next call starts a fresh one (counting from 1 again)."""
    daemon = counter_daemon(daemon_factory, "session", EXAI_SESSION_IDLE_TIMEOUT="1")
    async with mcp_client(daemon.shim_env()) as session:
        assert await increment(session) == 1
        first = await counter_pid(session)
        await wait_gone(first, f"the idle counter_server (pid {first}) to be reaped")
        assert await increment(session) == 1
        assert await counter_pid(session) != first


async def test_busy_session_instance_is_not_reaped(daemon_factory: DaemonFactory) -> None:
    """EXAI_SESSION_IDLE_TIMEOUT=1: a call that runs longer than the idle timeout is not
    idle; it finishes and the instance survives it."""
    daemon = counter_daemon(daemon_factory, "session", EXAI_SESSION_IDLE_TIMEOUT="1")
    async with mcp_client(daemon.shim_env()) as session:
        assert await increment(session) == 1
        result = await session.call_tool("slow", {"seconds": 2.5})
        assert not result.is_error, sdk_text(result)
        assert sdk_text(result) == "slept 2.5"
        assert await increment(session) == 2


# --- restarts and orphans ------------------------------------------------------------


@pytest.mark.parametrize("isolation", ["shared", "session"])
async def test_killed_hosted_server_is_restarted(
    daemon_factory: DaemonFactory, isolation: str
) -> None:
    """kill -9 of the hosted counter_server: the next call either works or fails clearly
    (no traceback), the one after works on a new instance, and the daemon stays up."""
    daemon = counter_daemon(daemon_factory, isolation)
    async with mcp_client(daemon.shim_env()) as session:
        assert await increment(session) == 1
        victim = await counter_pid(session)
        os.kill(victim, signal.SIGKILL)
        await wait_gone(victim, f"the killed counter_server (pid {victim})")
        restarted_at_once = False
        try:
            first = await session.call_tool("increment", {})
        except MCPError as exc:
            assert exc.error.code == WORKER_LOST_RPC, exc.error
        else:
            assert "Traceback" not in sdk_text(first), sdk_text(first)
            if not first.is_error:
                assert sdk_text(first) == "1", "a new instance counts from 1"
                restarted_at_once = True
        after = await session.call_tool("pid", {})
        assert not after.is_error, f"the call after the failure: {sdk_text(after)}"
        assert int(sdk_text(after)) != victim
        assert not process_gone(int(sdk_text(after)))
        assert await increment(session) == (2 if restarted_at_once else 1)
    assert daemon.proc.poll() is None


async def test_no_hosted_server_outlives_the_daemon(daemon_factory: DaemonFactory) -> None:
    """After the daemon's SIGTERM every counter_server it started (the two shared
    instances `--workers 2` runs) has exited."""
    daemon = counter_daemon(daemon_factory, "shared", workers=2)
    children = await async_wait_for(
        lambda: (found := counter_children(daemon.proc.pid)) and len(found) >= 2 and found,
        STEP_S,
        "two shared counter_server instances",
    )
    async with mcp_client(daemon.shim_env()) as session:
        assert await increment(session) >= 1
        assert await counter_pid(session) in children
    assert daemon.stop(signal.SIGTERM) == 0
    for pid in children:
        await wait_gone(pid, f"counter_server pid {pid} to exit after the daemon's SIGTERM")


@pytest.mark.parametrize("isolation", ["shared", "session"])
async def test_no_hosted_server_outlives_a_killed_daemon(
    daemon_factory: DaemonFactory, isolation: str
) -> None:
    """kill -9 of the daemon itself (no chance to stop anything): the counter_servers it
    hosted see their stdin close and exit, so a crashed daemon leaves no orphans."""
    daemon = counter_daemon(daemon_factory, isolation, workers=2)
    async with mcp_client(daemon.shim_env()) as session:
        assert await increment(session) == 1
        instance = await counter_pid(session)
        assert parent_pid(instance) == daemon.proc.pid
        hosted = counter_children(daemon.proc.pid)
        assert instance in hosted
        daemon.proc.kill()
        daemon.proc.wait()
        for pid in hosted:
            await wait_gone(pid, f"counter_server pid {pid} to exit after the daemon died")
