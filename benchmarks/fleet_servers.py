"""The stdio MCP servers the fleet benchmark hosts, the servers files it writes, and
the daemons that host them.

Each server comes with one cheap tool call, so a client can show that the server is
really there and answering (through the daemon the tool is `<name>__<tool>`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from benchmarks.daemon import DaemonError, DaemonProcess, running_daemon
from benchmarks.fleet_procs import kill_survivors, mark

__all__ = [
    "COUNTER",
    "EVERYTHING_JS",
    "FULL",
    "HUNG",
    "TIME",
    "ServerSpec",
    "everything_or_fallback",
    "hosting_daemon",
    "server_states",
    "wait_servers",
    "write_servers_file",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
EVERYTHING_JS = (
    REPO_ROOT / ".cache/node/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
)


@dataclasses.dataclass(frozen=True, slots=True)
class ServerSpec:
    """One stdio server: how to start it and one call that it answers."""

    name: str
    argv: tuple[str, ...]
    tool: str
    arguments: dict[str, Any]
    cwd: str = str(REPO_ROOT)

    def entry(self) -> dict[str, Any]:
        """Its `mcpServers` entry."""
        return {"command": self.argv[0], "args": list(self.argv[1:]), "cwd": self.cwd}


PY = sys.executable
TIME = ServerSpec(
    "time",
    (PY, "-m", "mcp_server_time", "--local-timezone", "UTC"),
    "get_current_time",
    {"timezone": "UTC"},
)
COUNTER = ServerSpec("counter", (PY, "-m", "tests.fixtures.counter_server"), "pid", {})
FULL = ServerSpec("full", (PY, "-m", "tests.fixtures.full_server"), "echo", {"text": "fleet"})
# Never answers `initialize`: it reads its stdin until the daemon closes it.
HUNG = ServerSpec("hung", (PY, "-c", "import sys; sys.stdin.read()"), "none", {})


def everything_or_fallback() -> ServerSpec:
    """The reference server-everything (node) when installed, else a Python fixture."""
    node = shutil.which("node")
    if node and EVERYTHING_JS.is_file():
        return ServerSpec(
            "everything", (node, str(EVERYTHING_JS), "stdio"), "echo", {"message": "fleet"}
        )
    return ServerSpec(
        "conformance", (PY, "-m", "tests.fixtures.conformance_server"), "test_simple_text", {}
    )


def write_servers_file(path: Path, servers: Sequence[ServerSpec]) -> Path:
    """Write a servers file hosting `servers` under their names; returns `path`."""
    document = {"mcpServers": {s.name: s.entry() for s in servers}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    return path


CAPS_ENV = {"EXAI_WS_SESSION_MAX_INFLIGHT": "64", "EXAI_WS_GLOBAL_MAX_INFLIGHT": "1024"}


@contextlib.contextmanager
def hosting_daemon(log_dir: Path, env: Mapping[str, str]) -> Iterator[DaemonProcess]:
    """`python -m broker --workers 1` with `env` (EXAI_CONFIG or EXAI_SERVER_CMD), and
    afterwards no process of its tree left: hosted servers run in process groups of
    their own, which stopping the daemon's group does not reach."""
    marks = []
    try:
        with running_daemon(1, log_dir, {**CAPS_ENV, **env}, REPO_ROOT) as daemon:
            try:
                yield daemon
            finally:
                marks = mark([daemon.pid])
    finally:
        left = kill_survivors(marks)
        if left:
            print(f"note: killed {len(left)} process(es) the daemon left: {left}", file=sys.stderr)


def server_states(daemon: DaemonProcess) -> dict[str, str]:
    """Each hosted server's state (starting, ready, failed, ...) from `/health`."""
    return {s["name"]: s["state"] for s in daemon.health().get("servers", [])}


def wait_servers(daemon: DaemonProcess, names: Sequence[str], timeout_s: float = 60.0) -> float:
    """Wait until every server in `names` is ready; returns the seconds waited."""
    start = time.monotonic()
    while True:
        states = server_states(daemon)
        if all(states.get(name) == "ready" for name in names):
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            raise DaemonError(f"servers not ready after {timeout_s:g} s: {states}")
        time.sleep(0.05)
