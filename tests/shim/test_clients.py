"""Unit tests for shim.clients: the config block each client reads, and `--write`, which
merges it into a user's real config file without losing anything.

The fixtures under tests/shim/fixtures/ are small copies of real config files: a VS Code
mcp.json and settings.json (with an Augment server list), Claude Desktop's config, the
Auggie CLI's settings, Cursor's mcp.json, and a VS Code settings.json with comments.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from shim.clients import CLIENTS, build_config, config_main, merge_config

FIXTURES = Path(__file__).parent / "fixtures"
ENVIRON = {"EXAI_WS_HOST": "127.0.0.1", "EXAI_WS_PORT": "8799"}


def printed_block(
    client: str, capsys: pytest.CaptureFixture[str], environ: dict[str, str] | None = None
) -> dict[str, Any]:
    """What `python -m shim config --client <client>` prints, parsed."""
    assert config_main(["--client", client], environ if environ is not None else ENVIRON) == 0
    block: dict[str, Any] = json.loads(capsys.readouterr().out)
    return block


def our_entry(client: str, block: dict[str, Any], name: str = "exai") -> dict[str, Any]:
    if client == "vscode":
        entry: dict[str, Any] = block["servers"][name]
    elif client == "augment":
        (entry,) = [s for s in block["augment.advanced"]["mcpServers"] if s.get("name") == name]
    else:
        entry = block["mcpServers"][name]
    return entry


# --- the printed block -------------------------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
def test_build_config_has_each_clients_shape(client: str) -> None:
    """vscode: servers.<name> with type stdio; augment: a named entry in the
    augment.advanced.mcpServers list; auggie, claude, cursor: mcpServers.<name>."""
    block = build_config(client, "srv", "/venv/bin/python", "/repo", {"EXAI_WS_PORT": "1"})
    expected: dict[str, Any] = {
        "command": "/venv/bin/python",
        "args": ["-m", "shim"],
        "cwd": "/repo",
        "env": {"EXAI_WS_PORT": "1"},
    }
    if client == "vscode":
        assert block == {"servers": {"srv": {"type": "stdio", **expected}}}
    elif client == "augment":
        assert block == {"augment.advanced": {"mcpServers": [{"name": "srv", **expected}]}}
    else:
        assert block == {"mcpServers": {"srv": expected}}


def test_build_config_refuses_an_unknown_client() -> None:
    with pytest.raises(ValueError, match="unknown client 'zed'"):
        build_config("zed", "exai", "/p", "/r", {})


@pytest.mark.parametrize("client", CLIENTS)
def test_printed_entry_uses_this_venvs_python_and_the_daemon_address(
    client: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command is this interpreter by absolute path (not resolved past the venv's
    symlink), args are -m shim, env carries host and port, and no token when none is set."""
    entry = our_entry(client, printed_block(client, capsys))
    assert entry["command"] == os.path.abspath(sys.executable)
    assert Path(entry["command"]).is_absolute()
    assert entry["args"] == ["-m", "shim"]
    assert entry["env"] == {"EXAI_WS_HOST": "127.0.0.1", "EXAI_WS_PORT": "8799"}
    assert Path(entry["cwd"], "shim", "__main__.py").is_file()


def test_printed_env_carries_the_token_and_shim_settings_only_when_set(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """EXAI_WS_TOKEN, EXAI_SHIM_RPC_TIMEOUT and EXAI_SHIM_AUTOSTART are copied when set;
    an empty token is the same as none; unrelated variables never leak in."""
    environ = {
        "EXAI_WS_PORT": "9000",
        "EXAI_WS_TOKEN": "t0k",
        "EXAI_SHIM_AUTOSTART": "1",
        "EXAI_SHIM_RPC_TIMEOUT": "12",
        "KIMI_API_KEY": "secret-key",
        "HOME": "/home/me",
    }
    entry = our_entry("claude", printed_block("claude", capsys, environ))
    assert entry["env"] == {
        "EXAI_WS_HOST": "127.0.0.1",
        "EXAI_WS_PORT": "9000",
        "EXAI_WS_TOKEN": "t0k",
        "EXAI_SHIM_AUTOSTART": "1",
        "EXAI_SHIM_RPC_TIMEOUT": "12",
    }
    blank = our_entry("claude", printed_block("claude", capsys, {"EXAI_WS_TOKEN": ""}))
    assert "EXAI_WS_TOKEN" not in blank["env"]


def test_name_option_names_the_server(capsys: pytest.CaptureFixture[str]) -> None:
    assert config_main(["--client", "vscode", "--name", "exai-dev"], ENVIRON) == 0
    assert list(json.loads(capsys.readouterr().out)["servers"]) == ["exai-dev"]


# --- --write into real config shapes -----------------------------------------------------

WRITE_CASES = [
    pytest.param("vscode", "vscode_mcp.json", id="vscode-mcp.json"),
    pytest.param("augment", "vscode_settings.json", id="augment-settings.json"),
    pytest.param("claude", "claude_desktop_config.json", id="claude-desktop"),
    pytest.param("auggie", "auggie_settings.json", id="auggie-settings"),
    pytest.param("cursor", "cursor_mcp.json", id="cursor-mcp.json"),
]


def expected_merge(client: str, original: dict[str, Any], entry: dict[str, Any]) -> Any:
    """`original` with our entry put in by hand: what --write must produce."""
    expected = copy.deepcopy(original)
    if client == "augment":
        advanced = expected.setdefault("augment.advanced", {})
        servers = [s for s in advanced.get("mcpServers", []) if s.get("name") != entry["name"]]
        advanced["mcpServers"] = [*servers, entry]
    else:
        expected.setdefault("servers" if client == "vscode" else "mcpServers", {})["exai"] = entry
    return expected


def write(client: str, path: Path, *extra: str) -> int:
    return config_main(["--client", client, "--write", str(path), *extra], ENVIRON)


@pytest.mark.parametrize(("client", "fixture"), WRITE_CASES)
def test_write_merges_keeping_everything_else_and_a_byte_identical_backup(
    client: str, fixture: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--write into a real-shaped config keeps every other setting and server exactly,
    replaces an existing server of the same name (no old fields survive), and leaves a
    backup that is the original byte for byte."""
    entry = our_entry(client, printed_block(client, capsys))
    target = tmp_path / fixture
    shutil.copy(FIXTURES / fixture, target)
    original_bytes = target.read_bytes()
    original = json.loads(original_bytes)

    assert write(client, target) == 0
    out = capsys.readouterr().out
    match = re.fullmatch(rf"wrote {re.escape(str(target))} \(backup: (.+)\)\n", out)
    assert match is not None, out
    backup = Path(match.group(1))
    assert backup.parent == target.parent and backup.name.startswith(f"{fixture}.bak-")
    assert backup.read_bytes() == original_bytes

    merged = json.loads(target.read_text())
    assert merged == expected_merge(client, original, entry)
    assert our_entry(client, merged) == entry  # the old exai entry is gone entirely
    assert list(merged) == list(original)  # top-level order kept too


@pytest.mark.parametrize(("client", "fixture"), WRITE_CASES)
def test_writing_twice_leaves_a_single_entry(client: str, fixture: str, tmp_path: Path) -> None:
    """Running --write again changes nothing: still one server of that name."""
    target = tmp_path / fixture
    shutil.copy(FIXTURES / fixture, target)
    assert write(client, target) == 0
    once = target.read_text()
    assert write(client, target) == 0
    assert target.read_text() == once
    if client == "augment":
        names = [s["name"] for s in json.loads(once)["augment.advanced"]["mcpServers"]]
        assert names.count("exai") == 1


def test_write_with_another_name_adds_a_second_server(tmp_path: Path) -> None:
    """--name picks which entry is written: a differently named one is added beside."""
    target = tmp_path / "mcp.json"
    shutil.copy(FIXTURES / "vscode_mcp.json", target)
    assert write("vscode", target, "--name", "exai-2") == 0
    servers = json.loads(target.read_text())["servers"]
    assert set(servers) == {"github", "exai", "memory", "exai-2"}
    assert servers["exai"]["args"] == ["/home/me/EX-AI-MCP-Server/scripts/run_ws_shim.py"]


def test_write_creates_a_missing_file_and_its_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config file that does not exist yet is created (with its folder), holding only
    our block, and no backup is mentioned."""
    block = printed_block("cursor", capsys)
    target = tmp_path / ".cursor" / "mcp.json"
    assert write("cursor", target) == 0
    assert capsys.readouterr().out == f"wrote {target}\n"
    assert json.loads(target.read_text()) == block
    assert [p.name for p in target.parent.iterdir()] == ["mcp.json"]


def test_a_file_with_comments_is_refused_and_left_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """VS Code's settings.json may hold comments (JSONC): --write refuses with a message
    saying so and how to proceed, exits 1, and neither changes the file nor leaves a
    backup behind."""
    target = tmp_path / "settings.json"
    shutil.copy(FIXTURES / "vscode_settings_with_comments.json", target)
    before = target.read_bytes()
    assert write("augment", target) == 1
    err = capsys.readouterr().err
    assert err.startswith("exai-shim: ")
    assert str(target) in err and "not plain JSON" in err and "comments" in err
    assert "python -m shim config" in err
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["settings.json"]


@pytest.mark.parametrize(
    ("client", "content", "message"),
    [
        pytest.param("claude", "[1, 2]\n", "does not hold a JSON object", id="array"),
        pytest.param("vscode", '{"servers": [{"name": "a"}]}\n', '"servers"', id="servers-list"),
        pytest.param("claude", '{"mcpServers": "x"}\n', '"mcpServers"', id="mcpservers-str"),
    ],
)
def test_a_file_of_the_wrong_shape_is_refused_and_left_untouched(
    client: str, content: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A JSON file whose shape is not what the client uses is not overwritten."""
    target = tmp_path / "config.json"
    target.write_text(content)
    assert write(client, target) == 1
    assert message in capsys.readouterr().err
    assert target.read_text() == content


def test_an_augment_server_table_of_the_wrong_shape_is_not_silently_dropped(
    tmp_path: Path,
) -> None:
    """A settings.json whose augment.advanced.mcpServers is an object (a Claude-style
    table pasted in) must either be refused untouched or keep its servers: --write
    promises to keep every other entry."""
    target = tmp_path / "settings.json"
    content = {"augment.advanced": {"mcpServers": {"context7": {"command": "npx"}}}}
    target.write_text(json.dumps(content))
    code = write("augment", target)
    text = target.read_text()
    assert (code == 1 and json.loads(text) == content) or (code == 0 and "context7" in text)


def test_two_writes_in_the_same_second_keep_the_original_backup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two --write runs within one second (e.g. a script adding two servers) must still
    leave a backup identical to the original file, not only one of the intermediate."""
    monkeypatch.setattr(time, "strftime", lambda *_: "20260101-120000")
    target = tmp_path / "claude_desktop_config.json"
    shutil.copy(FIXTURES / "claude_desktop_config.json", target)
    original = target.read_bytes()
    assert write("claude", target, "--name", "exai-a") == 0
    assert write("claude", target, "--name", "exai-b") == 0
    backups = [p.read_bytes() for p in tmp_path.glob("*.bak-*")]
    assert original in backups


def test_merge_config_never_mutates_its_inputs() -> None:
    """merge_config returns a new object; the loaded file and the block stay as they were."""
    existing = json.loads((FIXTURES / "vscode_settings.json").read_text())
    block = build_config("augment", "exai", "/p", "/r", {})
    snapshot = (copy.deepcopy(existing), copy.deepcopy(block))
    merged = merge_config(existing, block, "augment")
    assert (existing, block) == snapshot
    assert merged is not existing
