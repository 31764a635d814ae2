"""The real Claude Code, Gemini and Auggie CLIs, configured by `python -m shim config`,
see the shim connected to a live daemon; and Claude Code and Gemini, configured with
`--transport http`, see the daemon's Streamable HTTP endpoint connected, with a token.

These CLIs phone home, so each check runs in a network namespace with only loopback
(`unshare -n`), daemon included (a namespace has its own loopback). The outer test
re-runs this file's inner test inside the namespace, where the ordinary daemon fixture
starts the daemon; a PID namespace ends every process in it when the run ends.
The CLIs are installed from npm into .cache/node-clis the first time.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, DaemonFactory, base_env, free_port, scaled

pytestmark = pytest.mark.slow

PREFIX = ROOT / ".cache" / "node-clis"
BIN = PREFIX / "node_modules" / ".bin"
PACKAGES = {
    "claude": "@anthropic-ai/claude-code",
    "gemini": "@google/gemini-cli",
    "auggie": "@augmentcode/auggie",
}
# Each case names its CLI first; "-http" configures it with --transport http.
CASES = [*PACKAGES, "claude-http", "gemini-http"]
INSIDE = "EXAI_REAL_CLIS_INSIDE_NETNS"
STEP_S = 120.0


def _install_clis() -> None:
    """Install the CLIs that are missing; skip with the reason when that cannot work."""
    missing = [pkg for cli, pkg in PACKAGES.items() if not (BIN / cli).exists()]
    if not missing:
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm not found: the real-CLI tests need it to install the CLIs")
    PREFIX.mkdir(parents=True, exist_ok=True)
    # Its own HOME keeps npm's cache and any CLI install hooks out of the user's.
    env = {**os.environ, "HOME": str(PREFIX)}
    argv = [npm, "install", "--prefix", str(PREFIX), "--no-audit", "--no-fund", *missing]
    try:
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=scaled(600), check=False
        )
    except subprocess.TimeoutExpired:
        pytest.skip("npm install of the CLIs timed out")
    if done.returncode != 0:
        pytest.skip(f"npm install of the CLIs failed: {done.stderr[-2000:]}")


def _netns_available() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = ["unshare", "--net", "--pid", "--fork", "true"]
    return subprocess.run(probe, capture_output=True, timeout=30, check=False).returncode == 0


@pytest.mark.skipif(os.environ.get(INSIDE) == "1", reason="runs the namespaced test itself")
@pytest.mark.parametrize("cli", CASES)
def test_real_cli_sees_the_shim_connected(cli: str, tmp_path: Path) -> None:
    """Inside a loopback-only network namespace, `cli` configured by our generated
    config reports our server connected (or lists its tools)."""
    if not _netns_available():
        pytest.skip("unshare -n is not available here (it needs root) or ip is missing")
    _install_clis()
    script = 'ip link set lo up && exec "$@"'
    node_id = f"{Path(__file__).relative_to(ROOT)}::test_inside_the_namespace[{cli}]"
    argv = [
        *("unshare", "--net", "--pid", "--fork", "--kill-child", "sh", "-c", script, "sh"),
        *(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", node_id),
    ]
    env = {**os.environ, INSIDE: "1"}
    try:
        done = subprocess.run(
            argv,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=scaled(4 * STEP_S),
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the namespaced {cli} check timed out:\n{exc.stdout!r}") from None
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout + done.stderr


def _cli_env(home: Path, **extra: str) -> dict[str, str]:
    """A throwaway user for the CLI: its own HOME, no telemetry or updates."""
    env = base_env(
        HOME=str(home),
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        DISABLE_AUTOUPDATER="1",
        DISABLE_TELEMETRY="1",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        GEMINI_CLI_TRUST_WORKSPACE="true",
        NO_COLOR="1",
    )
    # Our own tag and PYTHONPATH would hide a config that only works from the source tree.
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


def _run(argv: list[str], cwd: Path, env: dict[str, str], *, stdout_only: bool = False) -> str:
    done = subprocess.run(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=scaled(STEP_S),
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"{shlex.join(argv)} exited {done.returncode}:\n{out}"
    return done.stdout if stdout_only else out


@pytest.mark.skipif(os.environ.get(INSIDE) != "1", reason="run by the namespaced test only")
@pytest.mark.parametrize("cli", CASES)
def test_inside_the_namespace(cli: str, daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    assert [name for _, name in socket.if_nameindex()] == ["lo"], "not network-isolated"
    if cli.endswith("-http"):
        _check_http(cli.removesuffix("-http"), daemon_factory, tmp_path)
        return
    daemon = daemon_factory(workers=1)
    home = tmp_path / "home"
    project = tmp_path / "project"
    project.mkdir(parents=True)
    home.mkdir()
    env = _cli_env(home, EXAI_WS_HOST="127.0.0.1", EXAI_WS_PORT=str(daemon.port))
    config = [sys.executable, "-m", "shim", "config", "--client"]

    if cli == "claude":
        # The printed line is what a user pastes: run it as printed, with the real binary.
        line = _run([*config, "claude-code"], project, env)
        argv = shlex.split(line)
        assert argv[:3] == ["claude", "mcp", "add-json"], line
        _run([str(BIN / "claude"), *argv[1:]], project, env)
        # And the project's .mcp.json, under another name, must work as well.
        _run([*config, "claude-code", "--name", "exai-project", "--write"], project, env)
        assert (project / ".mcp.json").is_file()
        out = _run([str(BIN / "claude"), "mcp", "list"], project, env)
        assert re.search(r"^exai: .*python.* -m shim - .*Connected", out, re.M), out
    elif cli == "gemini":
        _run([*config, "gemini", "--write"], project, env)
        assert (home / ".gemini" / "settings.json").is_file()
        out = _run([str(BIN / "gemini"), "mcp", "list"], project, env)
        assert re.search(r"exai: .*python.* -m shim \(stdio\) - Connected", out), out
    else:
        _run([*config, "auggie", "--write"], project, env)
        assert (home / ".augment" / "settings.json").is_file()
        # Auggie loads MCP tools only with a session; a made-up one aimed at a closed
        # loopback port gets that far and no further.
        session = f'{{"accessToken":"x","tenantURL":"http://127.0.0.1:{free_port()}/","scopes":["email"]}}'
        out = _run(
            [str(BIN / "auggie"), "tools", "list"],
            project,
            {**env, "AUGMENT_SESSION_AUTH": session},
        )
        for tool in ("version", "listmodels", "echo"):
            assert re.search(rf"^\s*\S+ \S*{tool}\S*\s+enabled$", out, re.M), out


def _check_http(cli: str, daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    """`cli` configured with --transport http against a daemon that requires a token:
    the entry carries only a reference to EXAI_WS_TOKEN, which the CLI must expand from
    its own environment for the daemon to let it in."""
    token = secrets.token_urlsafe(16)
    # DEBUG, so a failure shows what the daemon made of each request.
    daemon = daemon_factory(workers=1, env={"EXAI_WS_TOKEN": token, "EXAI_LOG_LEVEL": "DEBUG"})
    home = tmp_path / "home"
    project = tmp_path / "project"
    project.mkdir(parents=True)
    home.mkdir()
    env = _cli_env(
        home, EXAI_WS_HOST="127.0.0.1", EXAI_WS_PORT=str(daemon.port), EXAI_WS_TOKEN=token
    )
    config = [sys.executable, "-m", "shim", "config", "--transport", "http", "--client"]
    url = re.escape(f"http://127.0.0.1:{daemon.port}/mcp")

    def daemon_log() -> str:
        return "\n--- daemon log ---\n" + daemon.stderr()[-20000:]

    if cli == "claude":
        # Project servers wait for the user's approval; this throwaway user gives it.
        settings = home / ".claude" / "settings.json"
        settings.parent.mkdir(parents=True)
        settings.write_text('{"enableAllProjectMcpServers": true}\n')
        # stdout only: stderr carries a note on where the token comes from.
        line = _run([*config, "claude-code"], project, env, stdout_only=True)
        argv = shlex.split(line)
        assert argv[:5] == ["claude", "mcp", "add", "--transport", "http"], line
        assert token not in line and "${EXAI_WS_TOKEN}" in line
        _run([str(BIN / "claude"), *argv[1:]], project, env)
        # The same entry without the header must be turned away: the header is what
        # lets the other two in, not a daemon that ignores the token.
        no_token = {k: v for k, v in env.items() if k != "EXAI_WS_TOKEN"}
        line = _run(
            [*config, "claude-code", "--name", "exai-no-token"], project, no_token, stdout_only=True
        )
        _run([str(BIN / "claude"), *shlex.split(line)[1:]], project, env)
        _run([*config, "claude-code", "--name", "exai-project", "--write"], project, env)
        assert token not in (project / ".mcp.json").read_text()
        out = _run([str(BIN / "claude"), "mcp", "list"], project, env)
        for name in ("exai", "exai-project"):
            pattern = rf"^{name}: {url} \(HTTP\) - .*Connected"
            assert re.search(pattern, out, re.M), out + daemon_log()
        assert re.search(r"^exai-no-token: .* - .*Failed", out, re.M), out + daemon_log()
    else:
        _run([*config, "gemini", "--write"], project, env)
        settings_text = (home / ".gemini" / "settings.json").read_text()
        assert token not in settings_text and "httpUrl" in settings_text
        out = _run([str(BIN / "gemini"), "mcp", "list"], project, env)
        assert re.search(rf"exai: {url} \(http\) - Connected", out), out + daemon_log()
