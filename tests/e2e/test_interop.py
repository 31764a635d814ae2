"""A third-party MCP client, the MCP Inspector CLI, driving the real shim.

The Inspector is installed locally by `make node-tools`; without node or that copy the
tests skip (they never download anything).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, DaemonProcess, scaled

INSPECTOR = (
    ROOT
    / ".cache"
    / "node"
    / "node_modules"
    / "@modelcontextprotocol"
    / "inspector"
    / "clients"
    / "launcher"
    / "build"
    / "index.js"
)


def inspector(daemon: DaemonProcess, tmp_path: Path, *args: str) -> tuple[int, Any, str]:
    """Run the Inspector CLI against `python -m shim`; (exit code, parsed stdout, stderr)."""
    if shutil.which("node") is None or not INSPECTOR.is_file():
        pytest.skip("the MCP Inspector CLI is not installed locally (run `make node-tools`)")
    env_args: list[str] = []
    for key in ("EXAI_WS_HOST", "EXAI_WS_PORT", "EXAI_WS_TOKEN", "EXAI_TEST_RUN_ID", "PYTHONPATH"):
        value = daemon.shim_env().get(key)
        if value:
            env_args += ["-e", f"{key}={value}"]
    home = tmp_path / "inspector-home"
    home.mkdir(exist_ok=True)
    proc = subprocess.run(
        [
            "node",
            str(INSPECTOR),
            "--cli",
            *env_args,
            "--cwd",
            str(ROOT),
            sys.executable,
            "-m",
            "shim",
            *args,
        ],
        capture_output=True,
        timeout=scaled(60),
        env={**os.environ, "HOME": str(home), "MCP_CATALOG_PATH": str(home / "mcp.json")},
        cwd=tmp_path,
        check=False,
    )
    stdout = proc.stdout.decode(errors="replace")
    try:
        parsed = json.loads(stdout)
    except ValueError:
        parsed = stdout
    return proc.returncode, parsed, proc.stderr.decode(errors="replace")


def inspector_call(
    daemon: DaemonProcess, tmp_path: Path, tool: str, *tool_args: str
) -> tuple[int, Any, str]:
    """`inspector --method tools/call --tool-name TOOL [--tool-arg K=V …]` (see `inspector`)."""
    arg_flags = [flag for arg in tool_args for flag in ("--tool-arg", arg)]
    return inspector(daemon, tmp_path, "--method", "tools/call", "--tool-name", tool, *arg_flags)


def test_inspector_lists_the_daemon_tools_through_the_shim(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    """The Inspector sees the daemon's tools, with their schemas and annotations."""
    code, out, err = inspector(daemon, tmp_path, "--method", "tools/list")
    assert code == 0, (out, err)
    tools = {tool["name"]: tool for tool in out["tools"]}
    assert {"version", "listmodels", "chat", "echo", "sleep"} <= set(tools)
    assert tools["echo"]["inputSchema"]["required"] == ["text"]
    assert tools["echo"]["annotations"]["readOnlyHint"] is True


def test_inspector_calls_a_tool_through_the_shim(daemon: DaemonProcess, tmp_path: Path) -> None:
    """A tools/call from the Inspector comes back with the tool's answer and exit code 0."""
    code, out, err = inspector_call(daemon, tmp_path, "echo", "text=hello from the inspector")
    assert code == 0, (out, err)
    assert out["content"] == [{"type": "text", "text": "hello from the inspector"}]
    assert out["isError"] is False


def test_inspector_sees_a_tool_error_and_an_unknown_tool(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    """A tool that raises is a tool error (exit 5); an unknown tool is refused, not a hang."""
    code, out, err = inspector_call(daemon, tmp_path, "fail", "message=on purpose")
    assert code == 5, (out, err)
    assert "on purpose" in json.dumps(out) + err
    code, out, err = inspector_call(daemon, tmp_path, "no_such_tool")
    assert code != 0, (out, err)
