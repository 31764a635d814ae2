"""logs/mcp_server.log as an operator reads it: what is in it, how it rotates, and its
JSON form for log shippers. Each test runs a real daemon with its own log folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import DaemonFactory, DaemonProcess, async_wait_for
from tests.e2e.ops_support import STEP_S, op_client

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(not Path("/proc").is_dir(), reason="checks processes in /proc"),
]

LINE_RE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def server_log(daemon: DaemonProcess, suffix: str = "") -> Path:
    """The daemon's mcp_server.log (or a rotated backup of it, `suffix` ".1", …)."""
    return daemon.log_dir / f"mcp_server.log{suffix}"


def log_text(daemon: DaemonProcess) -> str:
    """What mcp_server.log holds now ('' before it exists)."""
    path = server_log(daemon)
    return path.read_text(errors="replace") if path.exists() else ""


async def test_server_log_records_sessions_workers_and_error_codes(
    daemon_factory: DaemonFactory,
) -> None:
    """mcp_server.log shows each worker starting and becoming ready (with its pid), the
    daemon's `ready in N ms`, a session opening and closing, a failed call with its
    error code, and every worker exiting when the daemon stops."""
    daemon = daemon_factory(workers=2)
    pids = daemon.worker_pids()
    async with op_client(daemon) as client:
        short = client.session_id[:8]
        answer = await client.call("no_such_tool", {})
        assert answer["error"]["code"] == "TOOL_NOT_FOUND"
    await async_wait_for(
        lambda: f"session {short} closed" in log_text(daemon), STEP_S, "the session close line"
    )
    assert daemon.stop() == 0
    text = log_text(daemon)
    lines = text.splitlines()
    assert not [line for line in lines if not LINE_RE.match(line)]
    assert re.search(r"INFO broker: ready in \d+ ms: 2 workers", text)
    for pid in pids:
        assert re.search(rf"INFO broker.pool.supervisor: worker \d started pid={pid}\b", text), text
        assert re.search(rf"INFO broker.pool.supervisor: worker \d ready pid={pid}\b", text), text
        assert re.search(rf"worker \d pid={pid} exited with code 0", text), text
    assert f"session {short} opened (resumed=False)" in text
    assert f"session {short} closed" in text
    errors = [line for line in lines if "TOOL_NOT_FOUND" in line]
    assert len(errors) == 1 and "no_such_tool" in errors[0] and short in errors[0], errors
    assert text.rstrip().endswith("INFO broker: stopped")
    # The same lines reach the console (stderr) of whoever started the daemon.
    assert re.search(r"INFO broker: ready in \d+ ms", daemon.stderr())
    assert f"session {short} closed" in daemon.stderr()


async def test_server_log_rotates_by_size_keeping_the_configured_backups(
    daemon_factory: DaemonFactory,
) -> None:
    """With EXAI_LOG_MAX_BYTES=2048, EXAI_LOG_BACKUPS=2 and --log-level DEBUG, traffic
    writes DEBUG lines and rotates the log: mcp_server.log.1 and .2 exist, there is
    never a .3, and no file grows past the limit."""
    daemon = daemon_factory(
        workers=1,
        env={"EXAI_LOG_MAX_BYTES": "2048", "EXAI_LOG_BACKUPS": "2"},
        args=["--log-level", "DEBUG"],
    )
    async with op_client(daemon) as client:
        await client.ws.send_str("this is not json")  # logged at DEBUG as a bad frame
        await async_wait_for(
            lambda: " DEBUG broker.router.router: bad frame" in log_text(daemon),
            STEP_S,
            "the bad frame's DEBUG line",
        )
        calls = 0
        # Enough traffic to rotate past .2 at least twice more (each error is one line).
        while not server_log(daemon, ".2").exists() and calls < 2000:
            await client.call(f"missing_tool_{calls}", {})
            calls += 1
        assert server_log(daemon, ".2").exists(), f"no .2 after {calls} calls"
        for n in range(calls):
            await client.call(f"more_missing_{n}", {})
    assert daemon.stop() == 0
    files = sorted(p.name for p in daemon.log_dir.glob("mcp_server.log*"))
    assert files == ["mcp_server.log", "mcp_server.log.1", "mcp_server.log.2"], files
    for name in files:
        size = (daemon.log_dir / name).stat().st_size
        assert 0 < size <= 2048, (name, size)


async def test_json_log_format_makes_every_line_a_json_object(
    daemon_factory: DaemonFactory,
) -> None:
    """With --log-format json, every line of mcp_server.log (and of the daemon's stderr)
    is one JSON object with level, logger and message, including the start-up lines,
    worker output and error lines."""
    daemon = daemon_factory(workers=1, args=["--log-format", "json"])
    async with op_client(daemon) as client:
        assert (await client.call("no_such_tool", {}))["error"]["code"] == "TOOL_NOT_FOUND"
        assert (await client.call("fail", {"message": "json-logged"}))["isError"] is True
    assert daemon.stop() == 0
    for text in (log_text(daemon), daemon.stderr()):
        entries = []
        for line in text.splitlines():
            entry = json.loads(line)
            assert isinstance(entry, dict), line
            assert {"level", "logger", "message"} <= set(entry), line
            assert entry["level"] in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
            entries.append(entry)
        messages = [e["message"] for e in entries]
        assert any(m.startswith("ready in ") for m in messages), messages
        assert any("TOOL_NOT_FOUND" in m for m in messages), messages
        assert any(re.match(r"worker 0 ready pid=\d+", m) for m in messages), messages
        assert messages[-1] == "stopped"


async def test_a_tool_name_cannot_forge_lines_in_the_server_log(
    daemon_factory: DaemonFactory,
) -> None:
    """A client calling a tool whose name contains a newline and a fake log line must not
    be able to add that fake line to mcp_server.log (every line must be the daemon's)."""
    daemon = daemon_factory(workers=1)
    forged = "2026-01-01 00:00:00,000 ERROR broker: FORGED worker 0 pid=1 exited"
    async with op_client(daemon) as client:
        answer = await client.call(f"innocent\n{forged}", {})
        assert answer["error"]["code"] == "TOOL_NOT_FOUND"
    assert daemon.stop() == 0
    lines = log_text(daemon).splitlines()
    assert not [line for line in lines if line.startswith(forged)], lines
