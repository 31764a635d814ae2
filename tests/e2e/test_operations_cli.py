"""The operator commands run as a user runs them, in subprocesses against real daemons:
`python -m broker status`, `python -m broker report` and `python -m shim config`.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from exai import __version__
from tests.conftest import RUN_ID, DaemonFactory, DaemonProcess, async_wait_for, base_env, free_port
from tests.e2e.ops_support import STEP_S, op_client, run_python

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(not Path("/proc").is_dir(), reason="checks processes in /proc"),
]


def status(daemon_port: int, log_dir: Path, cwd: Path, **extra: str) -> tuple[int, str]:
    """`python -m broker status` for this port and log dir: (exit code, output)."""
    env = base_env(EXAI_WS_PORT=str(daemon_port), EXAI_LOG_DIR=str(log_dir), **extra)
    done = run_python(["-m", "broker", "status"], env, cwd)
    return done.returncode, done.stdout + done.stderr


# --- python -m broker status -----------------------------------------------------------


async def test_status_of_a_running_daemon_summarizes_it_and_exits_0(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """With a daemon up, `status` exits 0 and names its pid, the attached sessions, the
    calls in flight against the global and provider caps, and every worker's pid."""
    daemon = daemon_factory(workers=2)
    pids = daemon.worker_pids()
    async with op_client(daemon) as client:
        sleep = await client.start("sleep", {"seconds": 300})
        await async_wait_for(
            lambda: daemon.health()["inflight"]["global"] == 1, STEP_S, "the sleep to run"
        )
        code, out = status(daemon.port, daemon.log_dir, tmp_path)
        await client.cancel(sleep.request_id)
        await sleep.wait()
    assert code == 0, out
    assert out.startswith(f"UP: exai-broker {__version__} pid {daemon.proc.pid}"), out
    assert f"127.0.0.1:{daemon.port}" in out
    assert "sessions 1 attached" in out
    assert "in flight 1/24 (per session 8)" in out
    assert "providers: kimi 0/6, glm 0/4" in out
    assert "workers 2/2 ready" in out
    for pid in pids:
        assert f"pid {pid} ready" in out


def test_status_with_a_token_needs_it(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    """With auth on, `status` given EXAI_WS_TOKEN reports UP; without it the daemon's 401
    is named (and the summary falls back to the health file, exit 1)."""
    daemon = daemon_factory(workers=1, env={"EXAI_WS_TOKEN": "status-token"})
    code, out = status(daemon.port, daemon.log_dir, tmp_path, EXAI_WS_TOKEN="status-token")
    assert code == 0 and out.startswith("UP: "), out
    code, out = status(daemon.port, daemon.log_dir, tmp_path)
    assert code == 1 and "HTTP 401" in out, out


def test_status_after_the_daemon_stopped_says_down_why_and_how_old(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """After the daemon stopped, `status` exits 1 with DOWN, why (nothing answers on its
    address), and the age and pid of the last health snapshot it left behind."""
    daemon = daemon_factory(workers=1)
    pid = daemon.proc.pid
    assert daemon.stop() == 0
    code, out = status(daemon.port, daemon.log_dir, tmp_path)
    assert code == 1, out
    assert out.startswith("DOWN: "), out
    assert f"no daemon answers at http://127.0.0.1:{daemon.port}" in out
    match = re.search(r"last health snapshot is (\d+) s old \(pid (\d+)\)", out)
    assert match is not None, out
    assert 0 <= int(match.group(1)) < 120 and int(match.group(2)) == pid


def test_status_with_no_daemon_and_no_health_file_exits_1(tmp_path: Path) -> None:
    """Nothing ever ran here: `status` exits 1, says DOWN, and that there is no health file."""
    code, out = status(free_port(), tmp_path / "never-used", tmp_path)
    assert code == 1, out
    assert out.startswith("DOWN: ") and "no health file" in out, out


# --- python -m broker report -------------------------------------------------------------


async def traffic_then_stop(daemon: DaemonProcess) -> None:
    """3 echo, 1 fail (EXEC_ERROR), 1 unknown tool, 1 short sleep; then a graceful stop
    (which flushes the metrics file)."""
    async with op_client(daemon) as client:
        for n in range(3):
            assert "error" not in await client.call("echo", {"text": f"r{n}"})
        assert (await client.call("fail", {"message": "x"}))["isError"] is True
        assert (await client.call("nope", {}))["error"]["code"] == "TOOL_NOT_FOUND"
        assert "error" not in await client.call("sleep", {"seconds": 0.05})
    assert daemon.stop() == 0


def report(log_dir: Path, cwd: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    """`python -m broker report ARGS` on `log_dir`'s metrics."""
    full_env = base_env(EXAI_LOG_DIR=str(log_dir))
    full_env.update(env or {})
    return run_python(["-m", "broker", "report", *args], full_env, cwd)


async def test_report_reads_a_real_metrics_file_as_tables_and_json(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """On a real daemon's metrics file, `report` prints per-tool and per-provider tables
    and the error codes; `--json` prints the same numbers as JSON; a bad --since is
    refused with exit 2."""
    daemon = daemon_factory(workers=1)
    await traffic_then_stop(daemon)
    assert len(daemon.metrics_lines()) == 6

    tables = report(daemon.log_dir, tmp_path)
    assert tables.returncode == 0, tables.stderr
    out = tables.stdout
    assert out.startswith("6 calls over ")
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert rows["tool"][1:] == [
        "calls",
        "errors",
        "p50",
        "ms",
        "p90",
        "ms",
        "p99",
        "ms",
        "queue",
        "ms",
    ]
    assert rows["echo"][1:3] == ["3", "0"]
    assert rows["fail"][1:3] == ["1", "1"]
    assert rows["nope"][1:3] == ["1", "1"]
    assert rows["sleep"][1:3] == ["1", "0"]
    assert rows["provider"][1] == "calls"
    assert rows["none"][1:3] == ["6", "2"]
    assert "errors by code: " in out and "EXEC_ERROR 1" in out and "TOOL_NOT_FOUND 1" in out
    assert "busiest sessions: " in out and "(6)" in out

    as_json = report(daemon.log_dir, tmp_path, "--json", "--since", "1h")
    assert as_json.returncode == 0, as_json.stderr
    summary = json.loads(as_json.stdout)
    assert summary["calls"] == 6
    assert summary["tools"]["echo"]["calls"] == 3 and summary["tools"]["echo"]["errors"] == 0
    assert summary["tools"]["sleep"]["p50_ms"] >= 50
    assert summary["providers"]["none"]["calls"] == 6
    assert summary["errors_by_code"] == {"EXEC_ERROR": 1, "TOOL_NOT_FOUND": 1}
    assert len(summary["busiest_sessions"]) == 1 and summary["busiest_sessions"][0]["calls"] == 6

    explicit = report(tmp_path, tmp_path, "--json", str(daemon.metrics_path))
    assert json.loads(explicit.stdout)["calls"] == 6

    bad = report(daemon.log_dir, tmp_path, "--since", "yesterday")
    assert bad.returncode == 2 and "--since 'yesterday'" in bad.stderr, bad


def _matplotlib_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


async def test_report_plot_writes_a_png_or_says_what_to_install(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """`report --plot out.png` writes a PNG when matplotlib is installed; without it, it
    says to install the `plot` extra (checked always, by hiding matplotlib)."""
    daemon = daemon_factory(workers=1)
    await traffic_then_stop(daemon)
    out_png = tmp_path / "out.png"

    hidden = tmp_path / "no-matplotlib"
    (hidden / "matplotlib").mkdir(parents=True)
    (hidden / "matplotlib" / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    pythonpath = os.pathsep.join([str(hidden), base_env()["PYTHONPATH"]])
    missing = report(
        daemon.log_dir, tmp_path, "--plot", str(out_png), env={"PYTHONPATH": pythonpath}
    )
    assert missing.returncode != 0
    assert "matplotlib" in missing.stderr and "pip install -e '.[plot]'" in missing.stderr
    assert not out_png.exists()

    if not _matplotlib_available():
        pytest.skip("matplotlib is not installed: the PNG itself is not checked")
    drawn = report(daemon.log_dir, tmp_path, "--plot", str(out_png))
    assert drawn.returncode == 0, drawn.stderr
    assert f"wrote {out_png}" in drawn.stdout
    data = out_png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


# --- python -m shim config ---------------------------------------------------------------


def shim_config(cwd: Path, *args: str, **env: str) -> Any:
    """`python -m shim config ARGS` with exactly these EXAI_* variables."""
    return run_python(["-m", "shim", "config", *args], base_env(**env), cwd)


def server_entry(client: str, block: dict[str, Any], name: str) -> dict[str, Any]:
    """The one server entry inside `client`'s block, checking the block's shape."""
    if client == "vscode":
        assert list(block) == ["servers"] and list(block["servers"]) == [name]
        entry = block["servers"][name]
        assert entry["type"] == "stdio"
    elif client == "augment":
        assert list(block) == ["augment.advanced"]
        servers = block["augment.advanced"]["mcpServers"]
        assert isinstance(servers, list) and len(servers) == 1
        entry = servers[0]
        assert entry["name"] == name
    else:
        assert list(block) == ["mcpServers"] and list(block["mcpServers"]) == [name]
        entry = block["mcpServers"][name]
    assert isinstance(entry, dict)
    return entry


@pytest.mark.parametrize("client", ["vscode", "augment", "auggie", "claude", "cursor"])
@pytest.mark.parametrize("with_token", [False, True], ids=["no-token", "token"])
def test_shim_config_prints_the_block_each_client_expects(
    client: str, with_token: bool, tmp_path: Path
) -> None:
    """`python -m shim config --client X` prints JSON in X's own shape whose command is
    this virtualenv's Python by absolute path, args -m shim, and env with the daemon
    address in force (the token only when one is set)."""
    env = {"EXAI_WS_HOST": "127.0.0.1", "EXAI_WS_PORT": "9123"}
    if with_token:
        env["EXAI_WS_TOKEN"] = "cfg-token"
    done = shim_config(tmp_path, "--client", client, "--name", "exai-test", **env)
    assert done.returncode == 0, done.stderr
    entry = server_entry(client, json.loads(done.stdout), "exai-test")
    command = Path(entry["command"])
    assert command.is_absolute()
    assert os.path.samefile(command, sys.executable)
    assert (command.parent.parent / "pyvenv.cfg").is_file(), "not a virtualenv's python"
    assert entry["args"] == ["-m", "shim"]
    assert entry["env"]["EXAI_WS_HOST"] == "127.0.0.1"
    assert entry["env"]["EXAI_WS_PORT"] == "9123"
    assert ("EXAI_WS_TOKEN" in entry["env"]) is with_token
    if with_token:
        assert entry["env"]["EXAI_WS_TOKEN"] == "cfg-token"


def test_shim_config_defaults_name_and_address(tmp_path: Path) -> None:
    """With no EXAI_* variables set and no --name, the entry is called exai and points
    at the default address 127.0.0.1:8765."""
    done = shim_config(tmp_path, "--client", "claude")
    assert done.returncode == 0, done.stderr
    entry = server_entry("claude", json.loads(done.stdout), "exai")
    assert entry["env"] == {"EXAI_WS_HOST": "127.0.0.1", "EXAI_WS_PORT": "8765"}


def test_shim_config_write_merges_into_a_file_from_the_command_line(tmp_path: Path) -> None:
    """`--write PATH` run as a command merges into the file, says where the backup is,
    and the backup is the original byte for byte."""
    target = tmp_path / "claude_desktop_config.json"
    original = json.dumps({"mcpServers": {"other": {"command": "node", "args": ["x.js"]}}})
    target.write_text(original)
    done = shim_config(tmp_path, "--client", "claude", "--write", str(target))
    assert done.returncode == 0, done.stderr
    match = re.search(r"\(backup: (.+)\)", done.stdout)
    assert match is not None, done.stdout
    assert Path(match.group(1)).read_text() == original
    merged = json.loads(target.read_text())
    assert set(merged["mcpServers"]) == {"other", "exai"}


async def test_generated_vscode_entry_runs_as_an_mcp_server(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """The VS Code entry, launched exactly as VS Code would (its command, args, env and
    cwd) by the mcp SDK's stdio client, reaches the live daemon: initialize works and the
    version tool answers."""
    daemon = daemon_factory(workers=1)
    done = shim_config(
        tmp_path, "--client", "vscode", EXAI_WS_HOST="127.0.0.1", EXAI_WS_PORT=str(daemon.port)
    )
    assert done.returncode == 0, done.stderr
    entry = server_entry("vscode", json.loads(done.stdout), "exai")
    # The run tag only lets the end-of-run check find a leaked shim; it changes nothing else.
    env = {**entry["env"], "EXAI_TEST_RUN_ID": RUN_ID}
    params = StdioServerParameters(
        command=entry["command"], args=entry["args"], env=env, cwd=entry.get("cwd")
    )
    with open(tmp_path / "shim.stderr", "w") as errlog:  # noqa: ASYNC230 - one file per test
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write) as session,
        ):
            init = await session.initialize()
            assert init.server_info.name == "exai-broker"
            result = await session.call_tool("version", {})
    assert not result.is_error, result
    assert result.structured_content is not None
    assert result.structured_content["version"] == __version__
