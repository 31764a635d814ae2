"""A remote server in the servers file: a `url` entry the daemon is the HTTP client of.

The remote is the SDK's own Streamable HTTP server (tests/fixtures/remote_http_server)
on a loopback port, behind a Bearer token the entry's `headers` take from the daemon's
environment. A client that only has the shim sees its tools beside a stdio server's,
under the entry's prefix, with progress, log lines and the server's questions routed
to it, and each metrics line names the server that answered.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mcp.types as types
import pytest
from mcp.client.session import ClientRequestContext

from tests.conftest import ROOT, DaemonFactory, DaemonProcess, base_env, mcp_client, wait_for
from tests.support.jsonrpc import sdk_text

pytestmark = pytest.mark.timeout(120)

TOKEN = "remote-secret"
COUNTER = [sys.executable, "-m", "tests.fixtures.counter_server"]


@pytest.fixture
def remote_url(tmp_path: Path) -> Iterator[str]:
    """A running fixture server that wants `Bearer TOKEN`; its /mcp URL."""
    with open(tmp_path / "remote.stderr", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fixtures.remote_http_server"],
            cwd=ROOT,
            env=base_env(REMOTE_FIXTURE_TOKEN=TOKEN),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,
        )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def servers(daemon: DaemonProcess) -> dict[str, dict[str, Any]]:
    """The health snapshot's servers by name ({} while the file is being rewritten)."""
    try:
        return {s["name"]: s for s in daemon.health().get("servers", [])}
    except (OSError, ValueError):
        return {}


def all_ready(daemon: DaemonProcess, *names: str) -> None:
    wait_for(
        lambda: all(servers(daemon).get(n, {}).get("state") == "ready" for n in names),
        60,
        f"servers {names} ready",
    )


def servers_file(path: Path, entries: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"mcpServers": entries}))
    return path


async def test_a_remote_server_is_shared_beside_a_stdio_one(
    daemon_factory: DaemonFactory, remote_url: str, tmp_path: Path
) -> None:
    config = servers_file(
        tmp_path / "servers.json",
        {
            "docs": {"url": remote_url, "headers": {"Authorization": "Bearer ${REMOTE_TOKEN}"}},
            "counter": {"command": COUNTER[0], "args": COUNTER[1:], "cwd": str(ROOT)},
        },
    )
    daemon = daemon_factory(workers=1, args=["--config", str(config)], env={"REMOTE_TOKEN": TOKEN})
    all_ready(daemon, "docs", "counter")
    progress: list[float] = []
    logs: list[str] = []
    questions: list[str] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(str(params.data))

    async def on_elicitation(
        context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult:
        questions.append(params.message)
        return types.ElicitResult(action="accept", content={"answer": "forty-two"})

    async with mcp_client(
        daemon.shim_env(), elicitation_callback=on_elicitation, logging_callback=on_log
    ) as session:
        listed = {t.name for t in (await session.list_tools()).tools}
        echoed = await session.call_tool("docs__echo", {"text": "over http"})
        slow = await session.call_tool(
            "docs__slow", {"seconds": 0.2, "steps": 3}, progress_callback=on_progress
        )
        answer = await session.call_tool("docs__ask", {"question": "the answer?"})
        counted = await session.call_tool("counter__increment", {})

    assert {"docs__echo", "docs__slow", "docs__ask", "counter__increment", "version"} <= listed
    assert sdk_text(echoed) == "over http"
    assert not slow.is_error, sdk_text(slow)
    assert progress, "progress from the remote server reaches the client"
    assert logs, "the remote server's log line reaches the client with the call in flight"
    assert questions == ["the answer?"]
    assert sdk_text(answer) == "forty-two"
    assert sdk_text(counted) == "1"

    def named() -> dict[str, str] | None:
        found = {m["tool"]: m.get("server") for m in daemon.metrics_lines()}
        wanted = ("docs__echo", "counter__increment")
        return found if all(tool in found for tool in wanted) else None

    servers = wait_for(named, 30, "the metrics lines of both servers' calls")
    assert servers.get("docs__echo") == "docs"
    assert servers.get("counter__increment") == "counter"


async def test_a_remote_that_refuses_the_token_is_failed_and_the_rest_serve(
    daemon_factory: DaemonFactory, remote_url: str, tmp_path: Path
) -> None:
    config = servers_file(
        tmp_path / "servers.json",
        {
            "docs": {"url": remote_url, "headers": {"Authorization": "Bearer wrong"}},
            "counter": {"command": COUNTER[0], "args": COUNTER[1:], "cwd": str(ROOT)},
        },
    )
    daemon = daemon_factory(workers=1, args=["--config", str(config)])

    def settled() -> dict[str, Any] | None:
        found = servers(daemon)
        docs, counter = found.get("docs"), found.get("counter")
        if docs is None or counter is None or counter["state"] != "ready":
            return None
        return docs if docs["state"] == "failed" else None

    docs = wait_for(settled, 60, "the remote marked failed, the counter ready")
    assert "401" in (docs.get("failure") or "")
    async with mcp_client(daemon.shim_env()) as session:
        listed = {t.name for t in (await session.list_tools()).tools}
        counted = await session.call_tool("counter__increment", {})
    assert "counter__increment" in listed
    assert not any(name.startswith("docs__") for name in listed)
    assert sdk_text(counted) == "1"
