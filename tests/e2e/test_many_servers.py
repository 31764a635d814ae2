"""Many MCP servers behind one daemon: a servers file (`--config`) of stdio servers,
each listed under its own prefix and called through real shims by the Python SDK
(ClientSession, `mcp.Client` in both modes) and the TypeScript SDK. A server that
fails, hangs or is killed costs only its own tools; the file is watched, so an edit
adds or removes only the servers it changes; a bad file is refused (at start-up, or
as an edit); a lazy server starts on first use and is listed from its last run.
Hosted processes are watched through /proc.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import mcp
import mcp.types as types
import pytest
from mcp import MCPError
from mcp.client.stdio import StdioServerParameters

from tests.conftest import (
    ROOT,
    STEP_S,
    DaemonFactory,
    DaemonProcess,
    async_wait_for,
    mcp_client,
    scaled,
    start_daemon,
)
from tests.support.health import Health, health_until
from tests.support.jsonrpc import sdk_text
from tests.support.processes import cmdline, descendants, kill_quietly, process_gone

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(not Path("/proc").is_dir(), reason="watches processes through /proc"),
]

PY = sys.executable
NODE = shutil.which("node")
NODE_MODULES = ROOT / ".cache" / "node" / "node_modules"
EVERYTHING_JS = NODE_MODULES / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
TS_SDK = NODE_MODULES / "@modelcontextprotocol" / "sdk"
TS_CLIENT = ROOT / "tests" / "fixtures" / "fleet_ts_client.mjs"
HAS_EVERYTHING = NODE is not None and EVERYTHING_JS.is_file()

WORKER_LOST_RPC = -32052
BUILTINS = {"version", "listmodels", "chat", "echo", "sleep"}
COUNTER_MODULE = "tests.fixtures.counter_server"
# What a client must get within "~1 s" even while a server is starting or hung; the
# margin is for a loaded 2-core machine.
LIST_BOUND_S = 5.0
# Markers in the command lines of the servers that never answer, to find them in /proc.
HUNG_MARK = "fleet-hung-server"
STUCK_MARK = "fleet-stuck-server"


# --- servers files -------------------------------------------------------------------


def stdio(*argv: str, **exai: Any) -> dict[str, Any]:
    """A stdio entry of a servers file, run in the repository (`exai` options if any)."""
    entry: dict[str, Any] = {"command": argv[0], "args": list(argv[1:]), "cwd": str(ROOT)}
    if exai:
        entry["exai"] = exai
    return entry


def time_server() -> dict[str, Any]:
    return stdio(PY, "-m", "mcp_server_time", "--local-timezone", "UTC")


def counter_server(**exai: Any) -> dict[str, Any]:
    return stdio(PY, "-m", COUNTER_MODULE, **exai)


def everything_server() -> dict[str, Any]:
    assert NODE is not None
    return stdio(NODE, str(EVERYTHING_JS), "stdio")


def broken_server() -> dict[str, Any]:
    """Says what is wrong on stderr and exits 3 before `initialize`."""
    return stdio(PY, "-c", "import sys; sys.stderr.write('boom: missing token\\n'); sys.exit(3)")


def hung_server() -> dict[str, Any]:
    """Reads stdin and never answers `initialize` (exits at stdin's end)."""
    return stdio(PY, "-c", f"import sys\nfor line in sys.stdin: pass  # {HUNG_MARK}")


def stuck_server() -> dict[str, Any]:
    """Never reads stdin nor answers `initialize`: stuck in its start-up (on a network
    call, say), so only a signal stops it."""
    return stdio(PY, "-c", f"import time\ntime.sleep(600)  # {STUCK_MARK}")


def write_servers(path: Path, servers: dict[str, Any]) -> None:
    """Write the servers file the way editors save: a new file moved into place."""
    write_text(path, json.dumps({"mcpServers": servers}, indent=2))


def write_text(path: Path, text: str) -> None:
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(text)
    os.replace(temp, path)


def fleet_daemon(
    factory: DaemonFactory, path: Path, servers: dict[str, Any], **env: str
) -> DaemonProcess:
    """A one-worker daemon running the servers file `path`, written with `servers`."""
    write_servers(path, servers)
    return factory(
        workers=1, env={"EXAI_WS_CALL_TIMEOUT": "60", **env}, args=["--config", str(path)]
    )


# --- what the daemon and its processes say -------------------------------------------


def server_entry(health: Health, name: str) -> dict[str, Any] | None:
    """The `servers` entry of the health snapshot for `name`."""
    return next((s for s in health.get("servers", []) if s["name"] == name), None)


async def servers_in_state(
    daemon: DaemonProcess, state: str, *names: str, timeout_s: float = STEP_S
) -> Health:
    """The first health snapshot in which every one of `names` is in `state`."""

    def check(health: Health) -> bool:
        entries = [server_entry(health, name) for name in names]
        return all(e is not None and e["state"] == state for e in entries)

    return await health_until(daemon, check, f"servers {names} to be {state}", timeout_s)


def instance_pids(health: Health, name: str) -> list[int]:
    entry = server_entry(health, name)
    assert entry is not None, f"no server {name!r} in {health.get('servers')}"
    return [i["pid"] for i in entry["instances"] if i.get("pid")]


def hosted_processes(daemon: DaemonProcess, mark: str) -> list[int]:
    """Live processes below the daemon whose command line holds `mark`."""
    return [
        pid for pid in descendants(daemon.proc.pid) if any(mark in part for part in cmdline(pid))
    ]


async def wait_gone(pid: int, what: str, timeout_s: float = STEP_S) -> None:
    await async_wait_for(lambda: process_gone(pid), timeout_s, what, interval_s=0.05)


def log_text(daemon: DaemonProcess) -> str:
    """The daemon's log file and its stderr, as written so far."""
    log_file = daemon.log_dir / "mcp_server.log"
    text = log_file.read_text(errors="replace") if log_file.exists() else ""
    return text + daemon.stderr()


# --- what clients see ----------------------------------------------------------------


def tool_dicts(tools: Any) -> dict[str, dict[str, Any]]:
    """A tools/list result as wire dicts by name."""
    return {
        t.name: t.model_dump(by_alias=True, mode="json", exclude_none=True) for t in tools.tools
    }


async def tool_names(session: Any) -> set[str]:
    return {tool.name for tool in (await session.list_tools()).tools}


async def listed_with(session: Any, *names: str, timeout_s: float = STEP_S) -> set[str]:
    """The listing, once it holds every one of `names` (a server may still be starting)."""

    async def probe() -> set[str] | None:
        listed = await tool_names(session)
        return listed if set(names) <= listed else None

    found: set[str] = await async_wait_for(probe, timeout_s, f"{names} in tools/list", 0.2)
    return found


class ToolChanges:
    """The `notifications/tools/list_changed` a ClientSession received (its message_handler)."""

    def __init__(self) -> None:
        self.count = 0

    async def handle(self, message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            self.count += 1

    async def after(self, seen: int, what: str) -> None:
        """Wait for a notification beyond the first `seen`."""
        await async_wait_for(lambda: self.count > seen, STEP_S, f"list_changed after {what}")


@asynccontextmanager
async def sdk_client(
    daemon: DaemonProcess, mode: Literal["auto", "legacy"]
) -> AsyncIterator[mcp.Client]:
    """The SDK's high-level Client on a real shim, in the given mode."""
    params = StdioServerParameters(
        command=PY, args=["-m", "shim"], env=daemon.shim_env(), cwd=str(ROOT)
    )
    async with mcp.Client(params, mode=mode, read_timeout_seconds=scaled(STEP_S)) as client:
        yield client


async def rpc_failure(call: Any) -> types.ErrorData:
    """The JSON-RPC error a call ends with (fails if it succeeds)."""
    try:
        result = await call
    except MCPError as exc:
        return exc.error
    raise AssertionError(f"expected a JSON-RPC error, got {sdk_text(result)!r}")


# --- one daemon, several servers -----------------------------------------------------


def fleet_servers() -> dict[str, Any]:
    servers = {
        "time": time_server(),
        "counter": counter_server(tools={"deny": ["pid"]}),
        # Another counter_server, showing only its tools with an "i" in their name.
        "picked": counter_server(tools={"allow": ["*i*"]}),
    }
    if HAS_EVERYTHING:
        servers["everything"] = everything_server()
    return servers


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A daemon hosting mcp_server_time, counter_server (twice, with tool filters) and
    server-everything when it is installed."""
    tmp = tmp_path_factory.mktemp("fleet")
    path = tmp / "servers.json"
    write_servers(path, fleet_servers())
    daemon = start_daemon(
        tmp, workers=1, env={"EXAI_WS_CALL_TIMEOUT": "60"}, args=["--config", str(path)]
    )
    try:
        yield daemon
    finally:
        daemon.stop()


async def fleet_ready(daemon: DaemonProcess) -> Health:
    return await servers_in_state(daemon, "ready", *fleet_servers())


async def test_servers_side_by_side_through_sdk_sessions(fleet: DaemonProcess) -> None:
    """Through a shim and the SDK's ClientSession: the built-in tools under their bare
    names and each server's tools under its prefix, as the server declares them; a
    call to each server gets that server's answer; progress from a hosted server
    reaches the client; prompts are prefixed, resources keep their URIs."""
    await fleet_ready(fleet)
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async with mcp_client(fleet.shim_env()) as session:
        listed = tool_dicts(await session.list_tools())
        now = await session.call_tool("time__get_current_time", {"timezone": "Europe/Paris"})
        counted = await session.call_tool("counter__increment", {})
        slow = await session.call_tool("counter__slow", {"seconds": 0.3})
        if HAS_EVERYTHING:
            echoed = await session.call_tool("everything__echo", {"message": "hi from afar"})
            long_op = await session.call_tool(
                "everything__trigger-long-running-operation",
                {"duration": 1, "steps": 4},
                progress_callback=on_progress,
            )
            prompts = {p.name for p in (await session.list_prompts()).prompts}
            prompt = await session.get_prompt("everything__simple-prompt")
            resources = [r.uri for r in (await session.list_resources()).resources]
            read = await session.read_resource(resources[0]) if resources else None

    assert set(listed) >= BUILTINS, sorted(listed)
    assert {"time__get_current_time", "time__convert_time"} <= set(listed)
    assert {"counter__increment", "counter__slow"} <= set(listed)
    assert {name.split("__")[0] for name in listed if "__" in name} == set(fleet_servers())
    assert "get_current_time" not in listed and "increment" not in listed
    assert listed["time__get_current_time"]["inputSchema"]["required"] == ["timezone"]
    assert listed["counter__increment"]["annotations"]["idempotentHint"] is False
    assert not now.is_error, sdk_text(now)
    assert now.structured_content is not None
    assert now.structured_content["timezone"] == "Europe/Paris"
    assert not counted.is_error, sdk_text(counted)
    assert int(sdk_text(counted)) >= 1
    assert sdk_text(slow) == "slept 0.3"
    if not HAS_EVERYTHING:
        return
    assert {
        "everything__echo",
        "everything__get-sum",
        "everything__trigger-long-running-operation",
    } <= set(listed)
    assert sdk_text(echoed) == "Echo: hi from afar"
    assert not long_op.is_error, sdk_text(long_op)
    assert progress, "no progress from everything__trigger-long-running-operation"
    assert "everything__simple-prompt" in prompts
    assert "simple-prompt" not in prompts
    assert "without arguments" in prompt.messages[0].content.text  # type: ignore[union-attr]
    assert resources and all(uri.startswith("demo://") for uri in resources), resources
    assert read is not None and read.contents[0].uri == resources[0]


@pytest.mark.parametrize(("mode", "version"), [("auto", "2026-07-28"), ("legacy", "2025-11-25")])
async def test_servers_through_the_high_level_client(
    fleet: DaemonProcess, mode: Literal["auto", "legacy"], version: str
) -> None:
    """`mcp.Client` in its default mode (2026-07-28, no initialize) and in legacy mode
    sees the same namespaced listing, and its call reaches the named server."""
    await fleet_ready(fleet)
    async with sdk_client(fleet, mode) as client:
        negotiated = client.protocol_version
        names = {tool.name for tool in (await client.list_tools()).tools}
        now = await client.call_tool("time__get_current_time", {"timezone": "Asia/Tokyo"})
    assert negotiated == version
    assert names >= BUILTINS
    assert {"time__get_current_time", "counter__increment", "picked__pid"} <= names
    assert not now.is_error, sdk_text(now)
    assert now.structured_content is not None
    assert now.structured_content["timezone"] == "Asia/Tokyo"


async def test_servers_through_the_typescript_sdk(fleet: DaemonProcess) -> None:
    """The TypeScript SDK's Client over a shim lists the namespaced tools and calls one."""
    if NODE is None:
        pytest.skip("node is not installed")
    if not (TS_SDK / "dist" / "esm" / "client" / "index.js").is_file():
        pytest.skip("@modelcontextprotocol/sdk is not installed locally (run `make node-tools`)")
    await fleet_ready(fleet)
    env = fleet.shim_env(
        TS_CLIENT_PYTHON=PY,
        TS_CLIENT_CWD=str(ROOT),
        TS_CLIENT_STEP_S=str(scaled(STEP_S)),
        TS_SDK_DIR=str(TS_SDK),
    )
    arguments = json.dumps({"timezone": "America/New_York"})
    proc = await asyncio.to_thread(
        subprocess.run,
        [NODE, str(TS_CLIENT), "time__get_current_time", arguments],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=scaled(60),
        check=False,
    )
    stderr = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, f"fleet_ts_client exited {proc.returncode}:\n{stderr}"
    record = json.loads(proc.stdout)
    assert "fatal" not in record, f"{record['fatal']}\n{stderr}"
    assert isinstance(record["tools"], list), record["tools"]
    assert set(record["tools"]) >= BUILTINS
    assert {"time__get_current_time", "counter__increment"} <= set(record["tools"])
    assert record["call"].get("isError") is False, record["call"]
    assert "America/New_York" in record["call"]["text"]


async def test_allow_and_deny_lists_pick_the_tools_clients_see(fleet: DaemonProcess) -> None:
    """`"tools": {"deny": ["pid"]}` hides counter__pid, and calling it anyway is an
    error naming it; `"allow": ["*i*"]` shows only the matching tools (increment,
    pid; not slow), which work."""
    health = await fleet_ready(fleet)
    async with mcp_client(fleet.shim_env()) as session:
        names = await tool_names(session)
        denied = await rpc_failure(session.call_tool("counter__pid", {}))
        unpicked = await rpc_failure(session.call_tool("picked__slow", {"seconds": 0.1}))
        picked_pid = await session.call_tool("picked__pid", {})
        picked_count = await session.call_tool("picked__increment", {})

    assert {"counter__increment", "counter__slow"} <= names
    assert "counter__pid" not in names
    assert {"picked__increment", "picked__pid"} <= names
    assert "picked__slow" not in names
    assert "counter__pid" in denied.message, denied
    assert "picked__slow" in unpicked.message, unpicked
    assert not picked_pid.is_error, sdk_text(picked_pid)
    assert int(sdk_text(picked_pid)) in instance_pids(health, "picked")
    assert not picked_count.is_error, sdk_text(picked_count)
    entry = server_entry(health, "counter")
    assert entry is not None and entry["tools"] == 2, entry


# --- a server killed mid-call --------------------------------------------------------


async def test_server_killed_mid_call_fails_that_call_and_comes_back(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """kill -9 of counter_server while its `slow` call runs: that call gets WORKER_LOST
    long before the call would have ended; the time server answers meanwhile; the
    counter is restarted (restarts >= 1, a new pid, counting from 1 again)."""
    daemon = fleet_daemon(
        daemon_factory,
        tmp_path / "servers.json",
        {"time": time_server(), "counter": counter_server()},
    )
    health = await servers_in_state(daemon, "ready", "time", "counter")
    (victim,) = instance_pids(health, "counter")
    assert any(COUNTER_MODULE in part for part in cmdline(victim)), cmdline(victim)
    time_pids = instance_pids(health, "time")
    running = asyncio.Event()

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        running.set()

    async with mcp_client(daemon.shim_env()) as session:
        slow = asyncio.create_task(
            session.call_tool("counter__slow", {"seconds": 60}, progress_callback=on_progress)
        )
        async with asyncio.timeout(scaled(STEP_S)):
            await running.wait()
        os.kill(victim, signal.SIGKILL)
        async with asyncio.timeout(scaled(15)):
            lost = await rpc_failure(slow)
        other = await session.call_tool("time__get_current_time", {"timezone": "UTC"})
        await wait_gone(victim, f"the killed counter_server (pid {victim})")
        after = await session.call_tool("counter__increment", {})
        new_pid = await session.call_tool("counter__pid", {})
        restarted = await health_until(
            daemon,
            lambda h: (
                (e := server_entry(h, "counter")) is not None
                and e["state"] == "ready"
                and e["restarts"] >= 1
            ),
            "the counter's restart in the health snapshot",
        )

    assert lost.code == WORKER_LOST_RPC, lost
    assert isinstance(lost.data, dict) and lost.data["code"] == "WORKER_LOST", lost
    assert "counter" in lost.message, lost
    assert not other.is_error, sdk_text(other)
    assert not after.is_error, sdk_text(after)
    assert sdk_text(after) == "1", "a new instance counts from 1"
    assert int(sdk_text(new_pid)) != victim
    assert instance_pids(restarted, "counter") == [int(sdk_text(new_pid))]
    assert instance_pids(restarted, "time") == time_pids, "the time server was restarted"
    assert daemon.proc.poll() is None


# --- servers that fail or hang -------------------------------------------------------


@pytest.fixture(scope="module")
def troubled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A daemon hosting counter_server beside one server that exits before answering
    `initialize` and one that never answers it."""
    tmp = tmp_path_factory.mktemp("troubled")
    path = tmp / "servers.json"
    write_servers(
        path, {"counter": counter_server(), "broken": broken_server(), "hung": hung_server()}
    )
    daemon = start_daemon(
        tmp, workers=1, env={"EXAI_WS_CALL_TIMEOUT": "60"}, args=["--config", str(path)]
    )
    try:
        yield daemon
    finally:
        daemon.stop()


async def test_server_that_fails_to_start_is_marked_failed(troubled: DaemonProcess) -> None:
    """A server that writes "boom: missing token" and exits 3 is tried again, then shown
    `failed` in the health snapshot with its stderr; the listing holds the others'
    tools and none of its, and a call to one of its tools is an error naming it."""
    health = await servers_in_state(troubled, "failed", "broken")
    await servers_in_state(troubled, "ready", "counter")
    async with mcp_client(troubled.shim_env()) as session:
        names = await tool_names(session)
        refused = await rpc_failure(session.call_tool("broken__anything", {}))
        counted = await session.call_tool("counter__increment", {})

    entry = server_entry(health, "broken")
    assert entry is not None
    assert "boom" in (entry["failure"] or ""), entry
    assert entry["prefix"] == "broken"
    assert entry["tools"] == 0
    assert entry["instances"] == []
    assert "restarts" in entry
    assert "start 3 of 3 failed" in log_text(troubled)
    assert {"counter__increment", "counter__slow", "counter__pid"} <= names
    assert not [name for name in names if name.startswith("broken__")]
    assert refused.code == WORKER_LOST_RPC, refused
    assert "broken" in refused.message, refused
    assert not counted.is_error, sdk_text(counted)


async def test_listing_answers_while_a_server_hangs(troubled: DaemonProcess) -> None:
    """A server that never answers `initialize` does not hold up `tools/list`: it
    "answers within ~1 s even while a server is starting or hung" (checked here as
    under 5 s each, for a loaded machine), with the other servers' tools."""
    await servers_in_state(troubled, "ready", "counter")
    loop = asyncio.get_running_loop()
    async with mcp_client(troubled.shim_env()) as session:
        took_s: list[float] = []
        for _ in range(3):
            started = loop.time()
            names = await tool_names(session)
            took_s.append(loop.time() - started)
            assert {"counter__increment", "counter__slow"} <= names
            assert not [name for name in names if name.startswith("hung__")]
        counted = await session.call_tool("counter__increment", {})
    health = await health_until(troubled, lambda h: True, "a health snapshot")
    hung = server_entry(health, "hung")
    assert hung is not None and hung["state"] == "starting", hung
    assert max(took_s) < LIST_BOUND_S, f"tools/list took {took_s} s while a server hung"
    assert not counted.is_error, sdk_text(counted)


# --- the servers file, edited --------------------------------------------------------


async def test_edits_of_the_servers_file_apply_while_sessions_run(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """With a session open: adding a server announces `notifications/tools/list_changed`
    and lists its tools; removing one announces again and drops its tools (and its
    process) while the unchanged server keeps its process and the session works; an
    edit that is not JSON is refused in the log and changes nothing; the next good
    edit applies."""
    path = tmp_path / "servers.json"
    servers: dict[str, Any] = {"counter": counter_server(), "time": time_server()}
    daemon = fleet_daemon(daemon_factory, path, servers)
    health = await servers_in_state(daemon, "ready", "counter", "time")
    (counter_pid,) = instance_pids(health, "counter")
    (time_pid,) = instance_pids(health, "time")
    changes = ToolChanges()

    async with mcp_client(daemon.shim_env(), message_handler=changes.handle) as session:
        assert await increment(session, "counter") == 1
        before = await listed_with(session, "counter__increment", "time__get_current_time")

        seen = changes.count
        write_servers(path, {**servers, "extra": counter_server(prefix="more")})
        await changes.after(seen, "adding a server")
        added = await tool_names(session)
        assert added - before == {"more__increment", "more__slow", "more__pid"}
        assert await increment(session, "more") == 1

        seen = changes.count
        write_servers(path, {"counter": servers["counter"], "extra": counter_server(prefix="more")})
        await changes.after(seen, "removing a server")
        removed = await tool_names(session)
        assert not [name for name in removed if name.startswith("time__")], removed
        assert {"counter__increment", "more__increment"} <= removed
        await wait_gone(time_pid, f"the removed time server (pid {time_pid}) to exit")
        assert await increment(session, "counter") == 2, "the unchanged counter kept its state"
        assert await pid_of(session, "counter") == counter_pid, "the unchanged server restarted"

        write_text(path, '{"mcpServers": {"counter": ')
        await async_wait_for(
            lambda: "servers file edit refused" in log_text(daemon),
            STEP_S,
            "the refusal of the invalid edit in the log",
        )
        assert "not valid JSON" in log_text(daemon)
        assert await tool_names(session) == removed
        assert await increment(session, "counter") == 3

        # Time back, and extra changed (it now denies `slow`): only extra restarts.
        extra_pid = await pid_of(session, "more")
        seen = changes.count
        write_servers(
            path, {**servers, "extra": counter_server(prefix="more", tools={"deny": ["slow"]})}
        )
        await changes.after(seen, "adding the time server back")
        again = await listed_with(session, "time__get_current_time", "more__increment")
        now = await session.call_tool("time__get_current_time", {"timezone": "UTC"})
        assert await increment(session, "more") == 1, "the changed server was not restarted"
        assert await pid_of(session, "more") != extra_pid
        assert await increment(session, "counter") == 4

    assert again == added - {"more__slow"}
    assert not now.is_error, sdk_text(now)
    assert "servers file applied" in log_text(daemon)
    health = await servers_in_state(daemon, "ready", "counter", "extra", "time")
    assert instance_pids(health, "counter") == [counter_pid]
    await wait_gone(extra_pid, f"the changed server's old process (pid {extra_pid}) to exit")


async def increment(session: Any, prefix: str) -> int:
    result = await session.call_tool(f"{prefix}__increment", {})
    assert not result.is_error, sdk_text(result)
    return int(sdk_text(result))


async def pid_of(session: Any, prefix: str) -> int:
    result = await session.call_tool(f"{prefix}__pid", {})
    assert not result.is_error, sdk_text(result)
    return int(sdk_text(result))


@pytest.mark.parametrize(
    ("exai", "words"),
    [
        pytest.param({"instances": 0}, ("exai.instances", ">= 1"), id="instances-0"),
        pytest.param({"startup": "soon"}, ("exai.startup", '"lazy"'), id="startup-soon"),
        pytest.param({"prefix": "a__b"}, ("exai.prefix", "__"), id="prefix-separator"),
    ],
)
def test_invalid_servers_file_refuses_to_start(
    daemon_factory: DaemonFactory, tmp_path: Path, exai: dict[str, Any], words: tuple[str, ...]
) -> None:
    """An invalid value makes `python -m broker --config F` exit non-zero at once, with
    one message naming the file, the server and the key."""
    path = tmp_path / "servers.json"
    write_servers(path, {"time": time_server(), "counter": counter_server(**exai)})
    daemon = daemon_factory(workers=1, args=["--config", str(path)], wait_ready=False)
    code = daemon.proc.wait(scaled(STEP_S))
    stderr = daemon.stderr()
    assert code != 0, stderr
    assert str(path) in stderr
    assert 'server "counter"' in stderr
    for word in words:
        assert word in stderr
    assert "Traceback" not in stderr


# --- lazy servers --------------------------------------------------------------------


async def test_lazy_server_starts_on_first_use_and_is_listed_from_its_last_run(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """`"startup": "lazy"`: no process until the first listing; its tools are then kept
    in servers.listings.json, so a new daemon on the same log folder lists them
    without starting it, and starts it on the first call."""
    path = tmp_path / "servers.json"
    servers = {"counter": counter_server(startup="lazy")}
    first = fleet_daemon(daemon_factory, path, servers)
    health = await servers_in_state(first, "lazy", "counter")
    assert instance_pids(health, "counter") == []
    assert hosted_processes(first, COUNTER_MODULE) == []
    async with mcp_client(first.shim_env()) as session:
        await listed_with(session, "counter__increment", "counter__slow", "counter__pid")
        started = hosted_processes(first, COUNTER_MODULE)
        assert len(started) == 1, started
    log_dir = first.log_dir
    listings = log_dir / "servers.listings.json"
    await async_wait_for(listings.exists, STEP_S, "servers.listings.json")
    assert first.stop() == 0
    kept = json.loads(listings.read_text())
    assert {tool["name"] for tool in kept["counter"]["tools"]} == {"increment", "slow", "pid"}

    # The same log folder: the health file of the first daemon must not pass for ours.
    (log_dir / "ws_daemon.health.json").unlink()
    second = daemon_factory(
        workers=1,
        env={"EXAI_WS_CALL_TIMEOUT": "60"},
        args=["--config", str(path), "--log-dir", str(log_dir)],
        wait_ready=False,
    )
    second.log_dir = log_dir
    second.wait_ready()
    health = await servers_in_state(second, "lazy", "counter")
    entry = server_entry(health, "counter")
    assert entry is not None and entry["tools"] == 3, entry
    async with mcp_client(second.shim_env()) as session:
        names = await tool_names(session)
        assert {"counter__increment", "counter__slow", "counter__pid"} <= names
        assert hosted_processes(second, COUNTER_MODULE) == [], "listing started the server"
        assert await increment(session, "counter") == 1
        assert len(hosted_processes(second, COUNTER_MODULE)) == 1


# --- stopping servers that are still starting ----------------------------------------
#
# A ready server is stopped by closing its stdin, then TERM, then KILL; one that has
# not answered `initialize` yet must be stopped the same way.


async def test_removing_a_server_that_is_still_starting_stops_its_process(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """A server removed from the file while it is still starting (it never answers
    `initialize`) has its process stopped, as a ready one has: it must not run on,
    unlisted and unreachable, until the daemon exits."""
    path = tmp_path / "servers.json"
    daemon = fleet_daemon(
        daemon_factory, path, {"counter": counter_server(), "hung": hung_server()}
    )
    await servers_in_state(daemon, "ready", "counter")
    (hung,) = await async_wait_for(
        lambda: hosted_processes(daemon, HUNG_MARK), STEP_S, "the hung server's process"
    )
    try:
        write_servers(path, {"counter": counter_server()})
        await health_until(
            daemon, lambda h: server_entry(h, "hung") is None, "the hung server to be removed"
        )
        await wait_gone(hung, f"the removed hung server (pid {hung}) to exit", timeout_s=5)
    finally:
        kill_quietly(hung)


async def test_stopping_the_daemon_stops_a_server_still_starting(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """The daemon's SIGTERM while a server is stuck in its start-up (it reads no stdin,
    so a closed pipe does not end it): the daemon stops it on the way out instead of
    leaving it behind, orphaned."""
    path = tmp_path / "servers.json"
    daemon = fleet_daemon(
        daemon_factory, path, {"counter": counter_server(), "stuck": stuck_server()}
    )
    await servers_in_state(daemon, "ready", "counter")
    (stuck,) = await async_wait_for(
        lambda: hosted_processes(daemon, STUCK_MARK), STEP_S, "the stuck server's process"
    )
    try:
        assert daemon.stop(signal.SIGTERM) == 0
        await wait_gone(stuck, f"the stuck server (pid {stuck}) to exit", timeout_s=5)
    finally:
        kill_quietly(stuck)
