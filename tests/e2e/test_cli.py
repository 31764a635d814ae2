"""The processes as a user runs them: `python -m broker` configuration, signals, and a shim
with no daemon to talk to.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from exai import __version__
from tests.conftest import DaemonFactory, DaemonProcess, base_env, free_port, scaled, wait_for
from tests.support.cli import run_python
from tests.support.jsonrpc import initialize_params, rpc_request
from tests.support.op_client import op_client, op_text
from tests.support.processes import process_running
from tests.support.shim_driver import running_shim

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="checks processes in /proc")


def run_broker(
    cwd: Path, env: dict[str, str], *args: str, timeout_s: float = 15.0
) -> subprocess.CompletedProcess[str]:
    """Run `python -m broker` to completion; kill its process group if it does not exit."""
    return run_python(["-m", "broker", *args], env, cwd, timeout_s=timeout_s)


def broker_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """A daemon environment that cannot collide with anything: free port, private log dir."""
    env = base_env(EXAI_WS_PORT=str(free_port()), EXAI_LOG_DIR=str(tmp_path / "logs"))
    env.update(overrides)
    return env


# --- configuration errors ------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "args", "names", "bad"),
    [
        pytest.param({"EXAI_WS_PORT": "abc"}, [], ["EXAI_WS_PORT"], "abc", id="port-abc"),
        pytest.param({"EXAI_WS_PORT": "70000"}, [], ["EXAI_WS_PORT"], "70000", id="port-range"),
        pytest.param(
            {"EXAI_WS_MAX_BYTES": "33554432 #comment"},
            [],
            ["EXAI_WS_MAX_BYTES"],
            "33554432 #comment",
            id="max-bytes-comment",
        ),
        pytest.param(
            {"EXAI_WS_GLM_MAX_INFLIGHT": "-1"},
            [],
            ["EXAI_WS_GLM_MAX_INFLIGHT"],
            "-1",
            id="provider-cap-negative",
        ),
        pytest.param(
            {"EXAI_WS_SESSION_MAX_INFLIGHT": "-2"},
            [],
            ["EXAI_WS_SESSION_MAX_INFLIGHT"],
            "-2",
            id="session-cap-negative",
        ),
        pytest.param({}, ["--workers", "0"], ["--workers", "EXAI_WORKERS"], "0", id="workers-0"),
    ],
)
def test_invalid_setting_exits_2_with_one_line(
    tmp_path: Path, env: dict[str, str], args: list[str], names: list[str], bad: str
) -> None:
    """A bad value stops start-up with exit 2 and one line naming the setting and the value."""
    done = run_broker(tmp_path, broker_env(tmp_path, **env), *args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert any(name in lines[0] for name in names), lines[0]
    assert bad in lines[0] and "expected" in lines[0]
    assert done.stdout == ""


def test_invalid_setting_in_dotenv_exits_2(tmp_path: Path) -> None:
    """A bad value read from ./.env is reported the same way as one from the environment."""
    (tmp_path / ".env").write_text("EXAI_WS_CALL_TIMEOUT=soon\n")
    done = run_broker(tmp_path, broker_env(tmp_path))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "EXAI_WS_CALL_TIMEOUT" in lines[0] and "soon" in lines[0]


def test_version_flag(tmp_path: Path) -> None:
    """`--version` prints the version and exits 0 without starting anything."""
    done = run_broker(tmp_path, broker_env(tmp_path), "--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"exai-broker {__version__}"


# --- configuration sources -----------------------------------------------------------


async def call_version_tool(daemon: DaemonProcess) -> dict[str, Any]:
    """The `version` tool's JSON, called over the op dialect."""
    async with op_client(daemon, "cli-test") as client:
        return dict(json.loads(op_text(await client.call("version", {}))))


async def test_dotenv_sets_values_and_environment_and_flags_override_it(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    """defaults < ./.env < environment < CLI flags, as seen in the health file and `version`."""
    (tmp_path / ".env").write_text(
        "EXAI_WS_SESSION_MAX_INFLIGHT=5\n"
        "EXAI_WS_GLOBAL_MAX_INFLIGHT=7  # comments are fine in .env\n"
        "EXAI_WORKERS=3\n"
    )
    daemon = daemon_factory(workers=1, env={"EXAI_WS_GLOBAL_MAX_INFLIGHT": "9"})
    health = daemon.health()
    assert health["capacity"]["session"] == 5  # from .env
    assert health["capacity"]["global"] == 9  # environment beats .env
    assert len(health["workers"]) == 1  # --workers beats .env
    caps = (await call_version_tool(daemon))["caps"]
    assert (caps["session"], caps["global"]) == (5, 9)  # the workers see the same settings


def test_flag_overrides_invalid_environment_value(
    daemon_factory: DaemonFactory,
) -> None:
    """`--port` wins over a bad EXAI_WS_PORT in the environment, so the daemon starts."""
    daemon = daemon_factory(workers=1, env={"EXAI_WS_PORT": "abc"})  # conftest passes --port 0
    assert daemon.health()["ready"] is True


def test_startup_lines_on_stderr(daemon: DaemonProcess) -> None:
    """The daemon says where it is starting and, once ready, how long it took and its URL."""
    lines = daemon.stderr().splitlines()
    assert any("Starting WS daemon on ws://127.0.0.1:" in line for line in lines), lines
    ready = [line for line in lines if re.search(r"ready in \d+ ms", line)]
    assert len(ready) == 1, lines
    assert f"ws://127.0.0.1:{daemon.port}" in ready[0]


# --- lifecycle -----------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_daemon_and_workers(
    daemon_factory: DaemonFactory, sig: signal.Signals
) -> None:
    """SIGTERM/SIGINT exit 0, take the workers along and leave a final health snapshot."""
    daemon = daemon_factory(workers=2)
    pids = daemon.worker_pids()
    assert len(pids) == 2 and all(process_running(pid) for pid in pids)
    assert daemon.stop(sig) == 0, daemon.stderr()
    wait_for(lambda: not any(process_running(pid) for pid in pids), 10.0, "workers to exit")
    assert daemon.health()["draining"] is True
    assert "stopped" in daemon.stderr()


def test_workers_exit_when_the_daemon_is_killed(
    daemon_factory: DaemonFactory,
) -> None:
    """kill -9 of the daemon: its workers see stdin EOF and exit on their own."""
    daemon = daemon_factory(workers=2)
    pids = daemon.worker_pids()
    assert len(pids) == 2 and all(process_running(pid) for pid in pids)
    daemon.proc.kill()
    daemon.proc.wait(scaled(10))
    wait_for(
        lambda: not any(process_running(pid) for pid in pids), 10.0, "orphaned workers to exit"
    )


# --- shim without a daemon -----------------------------------------------------------


async def test_shim_without_daemon_answers_an_error_then_exits(tmp_path: Path) -> None:
    """No daemon listening: the client gets an error naming the address, not a hang."""
    port = free_port()  # bound and released: nothing listens there
    env = base_env(EXAI_WS_HOST="127.0.0.1", EXAI_WS_PORT=str(port), EXAI_SHIM_RPC_TIMEOUT="2")
    async with running_shim(env, cwd=tmp_path) as shim:
        initialize = rpc_request(1, "initialize", initialize_params(client="raw-driver"))
        started = time.monotonic()
        await shim.send(initialize)
        reply = await shim.read_line(timeout_s=15)
        elapsed_s = time.monotonic() - started
        assert reply is not None, "the shim closed its stdout without answering"
        assert reply["id"] == 1 and "result" not in reply, reply
        assert isinstance(reply["error"]["code"], int)
        assert f"127.0.0.1:{port}" in reply["error"]["message"]
        assert elapsed_s < scaled(10)  # bounded by EXAI_SHIM_RPC_TIMEOUT, not the 30 s default
        await shim.close_stdin()
        assert await shim.wait_exit(10) == 0
