"""`python -m broker import`: each client's MCP servers copied into the servers file,
and `--rewrite-client` pointing the client at the shim instead, with a backup.

Every test uses a throwaway home under tmp_path and names its files explicitly, so no
real client configuration is read or touched.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import shim.clients
from broker.fleet.config import parse_servers
from broker.fleet.importer import import_main, is_shim
from exai.exits import ExitCode
from tests.conftest import ROOT, base_env, scaled

BACKUP_NAME = re.compile(r"\.bak-\d{8}-\d{6}(-\d+)?$")


@pytest.fixture(autouse=True)
def _installed_shim(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe for an uninstalled source tree starts a Python; shim.clients tests it."""
    monkeypatch.setattr(shim.clients, "shim_needs_pythonpath", lambda *_: False)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def environ_for(home: Path) -> dict[str, str]:
    return {"HOME": str(home), "APPDATA": str(home / "AppData" / "Roaming")}


def write_json(path: Path, document: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def run(capsys: pytest.CaptureFixture[str], home: Path, *argv: str) -> tuple[int, str, str]:
    code = import_main(argv, environ_for(home))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


STDIO = {"command": "uvx", "args": ["mcp-server-fetch"], "env": {"LOG": "1"}}
REMOTE = {"url": "https://mcp.example.com/mcp", "headers": {"Authorization": "Bearer t"}}

# Each client's own spelling of the same two servers, and its table key.
SAMPLES: dict[str, tuple[str, dict[str, Any]]] = {
    "claude-desktop": ("mcpServers", {"fetch": STDIO, "docs": REMOTE}),
    "claude-code": (
        "mcpServers",
        {"fetch": {"type": "stdio", **STDIO}, "docs": {"type": "http", **REMOTE}},
    ),
    "vscode": (
        "servers",
        {"fetch": {"type": "stdio", **STDIO}, "docs": {"type": "http", **REMOTE}},
    ),
    "cursor": ("mcpServers", {"fetch": STDIO, "docs": REMOTE}),
    "gemini": (
        "mcpServers",
        {
            "fetch": {**STDIO, "cwd": "/srv"},
            "docs": {"httpUrl": REMOTE["url"], "headers": REMOTE["headers"]},
        },
    ),
}


@pytest.mark.parametrize("client", list(SAMPLES))
def test_each_client_format_is_imported(
    client: str, home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key, table = SAMPLES[client]
    source = write_json(tmp_path / "client.json", {key: table, "theme": "dark"})
    target = tmp_path / "out" / "servers.json"
    code, out, _ = run(
        capsys, home, "--from", client, "--config-file", str(source), "--write", str(target)
    )
    assert code == ExitCode.OK
    fetch = {**STDIO, "cwd": "/srv"} if client == "gemini" else STDIO
    assert read_json(target) == {"mcpServers": {"fetch": fetch, "docs": REMOTE}}
    assert target.read_text().startswith('{\n  "mcpServers": {\n    "fetch"')
    assert "imported 2: fetch, docs" in out
    assert f"wrote {target}" in out
    assert f"--config {target}" in out
    # What is written is what the daemon loads.
    assert set(parse_servers(target.read_text(), environ={}).servers) == {"fetch", "docs"}


def test_default_locations_come_from_home(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_json(home / ".cursor" / "mcp.json", {"mcpServers": {"fetch": STDIO}})
    code, out, _ = run(capsys, home, "--from", "cursor")
    assert code == ExitCode.OK
    written = home / ".config" / "exai-broker" / "servers.json"
    if sys.platform == "darwin":
        written = home / "Library" / "Application Support" / "exai-broker" / "servers.json"
    assert read_json(written) == {"mcpServers": {"fetch": STDIO}}
    assert str(home / ".cursor" / "mcp.json") in out
    assert "next: start the daemon with `python -m broker`" in out


def test_claude_code_reads_the_user_table_only(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_json(
        home / ".claude.json",
        {
            "mcpServers": {"fetch": {"type": "stdio", **STDIO}},
            "projects": {"/src/app": {"mcpServers": {"local": STDIO}}},
        },
    )
    target = tmp_path / "servers.json"
    code, _, err = run(capsys, home, "--from", "claude-code", "--write", str(target))
    assert code == ExitCode.OK
    assert read_json(target) == {"mcpServers": {"fetch": STDIO}}
    assert "1 project(s)" in err


def test_merging_keeps_what_the_servers_file_has(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ours = {"command": "mine", "exai": {"isolation": "session"}}
    target = write_json(
        tmp_path / "servers.json", {"mcpServers": {"fetch": ours, "git": {"command": "git-mcp"}}}
    )
    source = write_json(
        tmp_path / "mcp.json", {"mcpServers": {"fetch": STDIO, "time": {"command": "t"}}}
    )
    code, out, _ = run(
        capsys, home, "--from", "cursor", "--config-file", str(source), "--write", str(target)
    )
    assert code == ExitCode.OK
    assert read_json(target) == {
        "mcpServers": {"fetch": ours, "git": {"command": "git-mcp"}, "time": {"command": "t"}}
    }
    assert "imported 1: time" in out
    assert "skipped fetch: already in the servers file" in out


def test_shim_entries_are_recognised() -> None:
    environ: dict[str, str] = {}
    assert is_shim({"command": "/venv/bin/python", "args": ["-m", "shim"]}, environ)
    assert is_shim({"command": "C:\\tools\\exai-shim.exe"}, environ)
    assert is_shim({"command": "uvx", "args": ["--from", "exai-broker", "exai-shim"]}, environ)
    assert is_shim({"type": "http", "url": "http://127.0.0.1:8765/mcp"}, environ)
    assert is_shim({"httpUrl": "http://localhost:8765/mcp/"}, environ)
    assert is_shim({"url": "http://127.0.0.1:9100/mcp"}, {"EXAI_WS_PORT": "9100"})
    # Another local server at /mcp, or a module merely named like ours, is not the shim.
    assert not is_shim({"url": "http://localhost:3000/mcp"}, environ)
    assert not is_shim({"command": "python", "args": ["-m", "shimmer"]}, environ)
    assert not is_shim({"url": "https://example.com:8765/mcp"}, environ)


def test_the_shim_itself_is_skipped(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shim_entry = {"command": sys.executable, "args": ["-m", "shim"], "env": {}}
    source = write_json(
        tmp_path / "mcp.json",
        {"mcpServers": {"exai": shim_entry, "web": {"url": "http://127.0.0.1:8765/mcp"}}},
    )
    target = tmp_path / "servers.json"
    code, out, _ = run(
        capsys, home, "--from", "cursor", "--config-file", str(source), "--write", str(target)
    )
    assert code == ExitCode.OK
    assert not target.exists()
    assert "skipped exai: the shim's own entry" in out
    assert "skipped web: the shim's own entry" in out
    assert "imported 0" in out


def test_gemini_spelling_is_mapped(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_json(
        tmp_path / "settings.json",
        {
            "theme": "GitHub",
            "mcpServers": {
                "remote": {"httpUrl": "https://api.example.com/mcp", "timeout": 5000},
                "legacy": {"url": "http://localhost:8080/sse"},
                "git": {
                    "command": "uvx",
                    "args": ["mcp-server-git"],
                    "trust": True,
                    "includeTools": ["git_log", "git_show"],
                    "excludeTools": ["git_reset"],
                },
            },
        },
    )
    target = tmp_path / "servers.json"
    code, out, err = run(
        capsys, home, "--from", "gemini", "--config-file", str(source), "--write", str(target)
    )
    assert code == ExitCode.OK
    assert read_json(target) == {
        "mcpServers": {
            "remote": {"url": "https://api.example.com/mcp"},
            "git": {
                "command": "uvx",
                "args": ["mcp-server-git"],
                "exai": {"tools": {"allow": ["git_log", "git_show"], "deny": ["git_reset"]}},
            },
        }
    }
    assert "skipped legacy: SSE" in out
    assert "remote: dropped timeout" in err
    assert "git: dropped trust" in err


def test_vscode_servers_key_and_inputs(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_json(
        tmp_path / ".vscode" / "mcp.json",
        {
            "inputs": [{"type": "promptString", "id": "gh-token", "password": True}],
            "servers": {
                "github": {
                    "type": "http",
                    "url": "https://api.githubcopilot.com/mcp/",
                    "headers": {"Authorization": "Bearer ${input:gh-token}"},
                },
                "old": {"type": "sse", "url": "http://localhost:9000/sse"},
            },
        },
    )
    target = tmp_path / "servers.json"
    code, out, err = run(
        capsys, home, "--from", "vscode", "--config-file", str(source), "--write", str(target)
    )
    assert code == ExitCode.OK
    assert read_json(target) == {
        "mcpServers": {
            "github": {
                "url": "https://api.githubcopilot.com/mcp/",
                "headers": {"Authorization": "Bearer ${input:gh-token}"},
            }
        }
    }
    assert "warning: github: ${input:...}" in err
    assert "skipped old: SSE" in out


def test_rewrite_client_leaves_a_backup_and_only_the_shim(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_json(
        home / ".claude.json",
        {
            "numStartups": 7,
            "projects": {"/src/app": {"allowedTools": []}},
            "mcpServers": {
                "fetch": {"type": "stdio", **STDIO},
                "docs": {"type": "http", **REMOTE},
                "legacy": {"type": "sse", "url": "http://localhost:9000/sse"},
            },
        },
    )
    source.chmod(0o600)
    original = source.read_bytes()
    target = tmp_path / "servers.json"
    code, out, _ = run(
        capsys, home, "--from", "claude-code", "--write", str(target), "--rewrite-client"
    )
    assert code == ExitCode.OK
    assert set(read_json(target)["mcpServers"]) == {"fetch", "docs"}
    (backup,) = (p for p in home.iterdir() if BACKUP_NAME.search(p.name))
    assert backup.name.startswith(".claude.json.bak-")
    assert backup.read_bytes() == original
    assert f"backup of the original: {backup}" in out
    rewritten = read_json(source)
    assert rewritten["numStartups"] == 7
    assert rewritten["projects"] == {"/src/app": {"allowedTools": []}}
    assert set(rewritten["mcpServers"]) == {"exai", "legacy"}
    shim_entry = rewritten["mcpServers"]["exai"]
    assert shim_entry["type"] == "stdio"
    assert shim_entry["args"] == ["-m", "shim"]
    assert is_shim(shim_entry, {})
    assert source.stat().st_mode & 0o777 == 0o600


def test_rewrite_client_keeps_an_existing_shim_entry(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shim_entry = {"command": "exai-shim", "env": {"EXAI_WS_PORT": "8765", "X": "kept"}}
    source = write_json(tmp_path / "mcp.json", {"servers": {"broker": shim_entry, "fetch": STDIO}})
    target = tmp_path / "servers.json"
    code, out, _ = run(
        capsys,
        home,
        *("--from", "vscode", "--config-file", str(source), "--write", str(target)),
        "--rewrite-client",
    )
    assert code == ExitCode.OK
    assert read_json(source) == {"servers": {"broker": shim_entry}}
    assert "fetch -> broker" in out


def test_dry_run_writes_nothing(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_json(tmp_path / "mcp.json", {"mcpServers": {"fetch": STDIO}})
    before = source.read_bytes()
    target = tmp_path / "servers.json"
    code, out, err = run(
        capsys,
        home,
        *("--from", "cursor", "--config-file", str(source), "--write", str(target)),
        *("--rewrite-client", "--dry-run"),
    )
    assert code == ExitCode.OK
    assert json.loads(out) == {"mcpServers": {"fetch": STDIO}}
    assert "would write" in err
    assert not target.exists()
    assert source.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "mcp.json"]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (None, "no such file"),
        ("{ // a comment\n}", "not plain JSON"),
        ("[]", "does not hold a JSON object"),
        ('{"mcpServers": []}', '"mcpServers" is not an object'),
    ],
)
def test_an_unusable_client_file_is_a_usage_error(
    text: str | None, why: str, home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "mcp.json"
    if text is not None:
        source.write_text(text)
    target = tmp_path / "servers.json"
    code, _, err = run(
        capsys, home, "--from", "cursor", "--config-file", str(source), "--write", str(target)
    )
    assert code == ExitCode.USAGE
    assert str(source) in err
    assert why in err
    assert not target.exists()


def test_an_unusable_servers_file_is_a_usage_error(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_json(tmp_path / "mcp.json", {"mcpServers": {"fetch": STDIO}})
    target = tmp_path / "servers.json"
    target.write_text("{not json")
    code, _, err = run(
        capsys, home, "--from", "cursor", "--config-file", str(source), "--write", str(target)
    )
    assert code == ExitCode.USAGE
    assert str(target) in err
    assert target.read_text() == "{not json"


def test_python_m_broker_import_runs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    source = write_json(home / ".cursor" / "mcp.json", {"mcpServers": {"fetch": STDIO}})
    target = tmp_path / "servers.json"
    done = subprocess.run(
        [sys.executable, "-m", "broker", "import", "--from", "cursor", "--write", str(target)],
        cwd=ROOT,
        env=base_env(HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=False,
    )
    assert done.returncode == ExitCode.OK, done.stderr
    assert str(source) in done.stdout
    assert read_json(target) == {"mcpServers": {"fetch": STDIO}}
