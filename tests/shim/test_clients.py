"""Unit tests for shim.clients: the config block each client reads, and `--write`, which
merges it into a user's real config file without losing anything.

The fixtures under tests/shim/fixtures/ are small copies of real config files: a VS Code
mcp.json and settings.json (with an Augment server list), Claude Desktop's config, the
Auggie CLI's settings, Cursor's mcp.json, and a VS Code settings.json with comments.
The newer clients' files (Gemini, Windsurf, Zed, Cline, Claude Code, Codex's TOML,
Continue's YAML block) are written inline below, each with a neighbour entry to keep.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

import shim.clients
from shim.clients import (
    CLIENTS,
    HTTP_REFUSED,
    build_config,
    build_http_config,
    config_main,
    daemon_url,
    default_path,
    merge_config,
)

yaml = pytest.importorskip("yaml")
REAL_PROBE = shim.clients.shim_needs_pythonpath

FIXTURES = Path(__file__).parent / "fixtures"
ENVIRON = {"EXAI_WS_HOST": "127.0.0.1", "EXAI_WS_PORT": "8799"}
JSON_CLIENTS = [c for c in CLIENTS if c not in ("codex", "continue", "claude-code")]


@pytest.fixture(autouse=True)
def _installed_shim(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe for an uninstalled source tree starts a Python; it has its own tests."""
    monkeypatch.setattr(shim.clients, "shim_needs_pythonpath", lambda *_: False)


def parse(client: str, text: str) -> dict[str, Any]:
    """A printed or written block, read back the way the client reads it."""
    if client == "codex":
        return tomllib.loads(text)
    if client == "continue":
        loaded: dict[str, Any] = yaml.safe_load(text)
        return loaded
    if client == "claude-code" and text.startswith("claude mcp add "):
        return {"mcpServers": dict([claude_mcp_add(shlex.split(text))])}
    if client == "claude-code" and text.startswith("claude "):
        argv = shlex.split(text)
        assert argv[:5] == ["claude", "mcp", "add-json", "--scope", "user"], argv
        name, spec = argv[5:]
        return {"mcpServers": {name: json.loads(spec)}}
    parsed: dict[str, Any] = json.loads(text)
    return parsed


def claude_mcp_add(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """The server a `claude mcp add --transport http` line adds, as it lands in Claude
    Code's config: `--header "K: V"` options become the headers table."""
    assert argv[:7] == ["claude", "mcp", "add", "--transport", "http", "--scope", "user"], argv
    name, url, *rest = argv[7:]
    entry: dict[str, Any] = {"type": "http", "url": url}
    assert len(rest) % 2 == 0 and rest[::2] == ["--header"] * (len(rest) // 2), rest
    for header in rest[1::2]:
        key, value = header.split(": ", 1)
        entry.setdefault("headers", {})[key] = value
    return name, entry


def printed_block(
    client: str,
    capsys: pytest.CaptureFixture[str],
    environ: dict[str, str] | None = None,
    *extra: str,
) -> dict[str, Any]:
    """What `python -m shim config --client <client>` prints, parsed."""
    argv = ["--client", client, *extra]
    assert config_main(argv, environ if environ is not None else ENVIRON) == 0
    return parse(client, capsys.readouterr().out)


def our_entry(client: str, block: dict[str, Any], name: str = "exai") -> dict[str, Any]:
    if client == "vscode":
        entry: dict[str, Any] = block["servers"][name]
    elif client == "augment":
        (entry,) = [s for s in block["augment.advanced"]["mcpServers"] if s.get("name") == name]
    elif client == "continue":
        (entry,) = [s for s in block["mcpServers"] if s.get("name") == name]
    elif client == "zed":
        entry = block["context_servers"][name]
    elif client == "codex":
        entry = block["mcp_servers"][name]
    else:
        entry = block["mcpServers"][name]
    return entry


# --- the printed block -------------------------------------------------------------------


SHAPES: dict[str, Any] = {
    "vscode": {"servers": {"srv": {"type": "stdio", "$": 0}}},
    "augment": {"augment.advanced": {"mcpServers": [{"name": "srv", "$": 0}]}},
    "auggie": {"mcpServers": {"srv": {"$": 0}}},
    "claude": {"mcpServers": {"srv": {"$": 0}}},
    "cursor": {"mcpServers": {"srv": {"$": 0}}},
    "claude-code": {"mcpServers": {"srv": {"type": "stdio", "$": 0}}},
    "gemini": {"mcpServers": {"srv": {"$": 0}}},
    "codex": {"mcp_servers": {"srv": {"$": 0}}},
    "windsurf": {"mcpServers": {"srv": {"$": 0}}},
    "zed": {"context_servers": {"srv": {"$": 0}}},
    "cline": {"mcpServers": {"srv": {"$": 0, "disabled": False, "autoApprove": []}}},
    "continue": {
        "name": "srv",
        "version": "0.0.1",
        "schema": "v1",
        "mcpServers": [{"name": "srv", "$": 0}],
    },
}


def with_entry(shape: Any, entry: dict[str, Any]) -> Any:
    """`shape` with each {"$": 0} placeholder replaced by the entry's fields (which win
    over the shape's own: an HTTP entry brings its own `type`)."""
    if isinstance(shape, dict):
        out = {k: with_entry(v, entry) for k, v in shape.items() if k != "$"}
        return {**out, **entry} if "$" in shape else out
    if isinstance(shape, list):
        return [with_entry(v, entry) for v in shape]
    return shape


def test_every_client_has_a_shape_here() -> None:
    assert set(SHAPES) == set(CLIENTS)


@pytest.mark.parametrize("client", CLIENTS)
def test_build_config_has_each_clients_shape(client: str) -> None:
    """Each client's documented shape (see the table in shim.clients), with the same
    command, args and env everywhere, and no cwd: nothing depends on where it starts."""
    block = build_config(client, "srv", "/venv/bin/python", {"EXAI_WS_PORT": "1"})
    expected = {"command": "/venv/bin/python", "args": ["-m", "shim"], "env": {"EXAI_WS_PORT": "1"}}
    assert block == with_entry(SHAPES[client], expected)
    assert "cwd" not in json.dumps(block)


@pytest.mark.parametrize("client", CLIENTS)
def test_printed_text_parses_back_to_the_block(
    client: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """What is printed is the block in the client's own format: JSON, TOML (read with
    tomllib), YAML, or for Claude Code a `claude mcp add-json` line a shell splits into
    the name and the JSON entry."""
    block = build_config(client, "exai", os.path.abspath(sys.executable), ENVIRON)
    assert printed_block(client, capsys) == block


def test_claude_code_prints_a_command_line_with_the_stdio_entry(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert config_main(["--client", "claude-code", "--name", "my srv"], ENVIRON) == 0
    out = capsys.readouterr().out
    assert out.startswith("claude mcp add-json --scope user 'my srv' '{")
    assert out.endswith("}'\n") and out.count("\n") == 1


def test_strings_that_need_escaping_survive_toml_and_yaml() -> None:
    """Quotes, backslashes, control characters, DEL and non-ASCII in a path or token
    come back unchanged from both emitters."""
    nasty = 'C:\\Users\\"me"\t\x7f\x01 é 😀 #: - [x] {y}'
    env = {"EXAI_WS_TOKEN": nasty, "odd key": "v"}
    for client in ("codex", "continue"):
        block = build_config(client, "a.b", nasty, env)
        assert parse(client, shim.clients.render(client, block)) == block


def test_build_config_refuses_an_unknown_client() -> None:
    with pytest.raises(ValueError, match="unknown client 'emacs'"):
        build_config("emacs", "exai", "/p", {})


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
    assert "cwd" not in entry


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
    # Autostart brings an absolute log folder along (see test_autostart_is_off_unless_asked_for).
    assert Path(entry["env"].pop("EXAI_LOG_DIR")).is_absolute()
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
    block = build_config("augment", "exai", "/p", {})
    snapshot = (copy.deepcopy(existing), copy.deepcopy(block))
    merged = merge_config(existing, block, "augment")
    assert (existing, block) == snapshot
    assert merged is not existing


# --- the newer clients' files ------------------------------------------------------------

NEIGHBOUR = {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-memory"]}
OLD_OURS = {"command": "/old/python", "args": ["old.py"], "cwd": "/old"}
JSON_FILES = {
    "gemini": {"theme": "Dracula", "mcpServers": {"memory": NEIGHBOUR, "exai": OLD_OURS}},
    "windsurf": {"mcpServers": {"memory": NEIGHBOUR, "exai": OLD_OURS}},
    "zed": {"theme": "One Dark", "context_servers": {"memory": NEIGHBOUR, "exai": OLD_OURS}},
    "cline": {"mcpServers": {"memory": {**NEIGHBOUR, "disabled": True}, "exai": OLD_OURS}},
    "claude-code": {"mcpServers": {"memory": {"type": "stdio", **NEIGHBOUR}, "exai": OLD_OURS}},
}
CODEX_TOML = """\
# my Codex settings
model = "o3"

[mcp_servers.memory]
command = "npx"  # keep this comment
args = ["-y", "@modelcontextprotocol/server-memory"]

[mcp_servers.exai]
command = "/old/python"
args = ["old.py"]

[mcp_servers.exai.env]
OLD = "1"

[profiles.fast]
model = "o4-mini"
"""
CONTINUE_YAML = """\
# kept in the backup
name: My servers
version: 1.0.0
schema: v1
mcpServers:
  - name: memory
    command: npx
    args: ["-y", "@modelcontextprotocol/server-memory"]
  - name: exai
    command: /old/python
"""
NEW_CASES = [*JSON_FILES, "codex", "continue"]


def original_text(client: str) -> str:
    if client == "codex":
        return CODEX_TOML
    if client == "continue":
        return CONTINUE_YAML
    return json.dumps(JSON_FILES[client], indent=4)


@pytest.mark.parametrize("client", NEW_CASES)
def test_write_merges_into_each_new_clients_file(
    client: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--write into a Gemini, Windsurf, Zed, Cline, Claude Code, Codex or Continue file
    keeps every other entry and setting, replaces our old entry entirely, leaves a backup
    identical to the original, and the result parses back in the client's format."""
    entry = our_entry(client, printed_block(client, capsys))
    target = tmp_path / "config"
    target.write_text(original_text(client))
    original = parse(client, original_text(client))

    assert write(client, target) == 0
    match = re.fullmatch(r"wrote .+ \(backup: (.+)\)\n", capsys.readouterr().out)
    assert match is not None
    assert Path(match.group(1)).read_text() == original_text(client)

    merged = parse(client, target.read_text())
    assert our_entry(client, merged) == entry
    if client == "continue":
        assert [s["name"] for s in merged["mcpServers"]] == ["memory", "exai"]
        assert merged["mcpServers"][0] == original["mcpServers"][0]
        assert {k: merged[k] for k in ("name", "version", "schema")} == {
            "name": "My servers",
            "version": "1.0.0",
            "schema": "v1",
        }
    else:
        expected = copy.deepcopy(original)
        key = {"zed": "context_servers", "codex": "mcp_servers"}.get(client, "mcpServers")
        expected[key]["exai"] = entry
        assert merged == expected
    if client == "codex":
        text = target.read_text()
        assert "# my Codex settings" in text and "# keep this comment" in text
        assert "OLD" not in text
    assert write(client, target) == 0  # a second run changes nothing
    assert parse(client, target.read_text()) == merged


@pytest.mark.parametrize("client", NEW_CASES)
def test_write_without_a_path_uses_the_clients_usual_file(
    client: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--write` alone writes where the client looks (under HOME, or the project in the
    current directory for Claude Code's .mcp.json and Continue's block folder)."""
    monkeypatch.chdir(tmp_path)
    environ = {**ENVIRON, "HOME": str(tmp_path / "home")}
    assert config_main(["--client", client, "--write"], environ) == 0
    target = default_path(client, "exai", environ)
    assert target is not None
    where = tmp_path / target if not target.is_absolute() else target
    assert where.is_file()
    assert our_entry(client, parse(client, where.read_text()))["args"] == ["-m", "shim"]


@pytest.mark.parametrize(
    ("client", "platform", "expected"),
    [
        ("gemini", "linux", "home/.gemini/settings.json"),
        ("codex", "linux", "home/.codex/config.toml"),
        ("windsurf", "linux", "home/.codeium/windsurf/mcp_config.json"),
        ("zed", "linux", "home/.config/zed/settings.json"),
        ("zed", "darwin", "home/.config/zed/settings.json"),
        ("auggie", "linux", "home/.augment/settings.json"),
        ("cursor", "linux", "home/.cursor/mcp.json"),
        (
            "cline",
            "linux",
            "home/.config/Code/User/globalStorage/saoudrizwan.claude-dev/settings/"
            "cline_mcp_settings.json",
        ),
        (
            "claude",
            "darwin",
            "home/Library/Application Support/Claude/claude_desktop_config.json",
        ),
        ("claude-code", "linux", ".mcp.json"),
        ("continue", "linux", ".continue/mcpServers/exai.yaml"),
        ("vscode", "linux", ".vscode/mcp.json"),
    ],
)
def test_default_paths(client: str, platform: str, expected: str) -> None:
    environ = {"HOME": "home"}
    assert default_path(client, "exai", environ, platform) == Path(expected)


def test_codex_home_moves_the_codex_file() -> None:
    environ = {"HOME": "/h", "CODEX_HOME": "/c"}
    assert default_path("codex", "exai", environ, "linux") == Path("/c/config.toml")


@pytest.mark.parametrize("client", ["augment", "claude"])
def test_write_without_a_path_where_there_is_no_usual_file_asks_for_one(
    client: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    assert config_main(["--client", client, "--write"], ENVIRON) == 2
    assert "--write PATH" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('mcp_servers = { exai = { command = "x" } }\n', id="inline"),
        pytest.param('[mcp_servers]\nexai.command = "x"\n', id="dotted"),
        pytest.param("this is = = not toml\n", id="invalid"),
    ],
)
def test_a_codex_file_this_cannot_rewrite_is_refused_untouched(
    text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A TOML file that defines our server inline or with dotted keys (or is not TOML)
    is refused with a message, unchanged and without a backup, never half-rewritten."""
    target = tmp_path / "config.toml"
    target.write_text(text)
    assert write("codex", target) == 1
    assert capsys.readouterr().err.startswith("exai-shim: ")
    assert target.read_text() == text
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]


def test_a_continue_file_that_is_not_a_mapping_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "exai.yaml"
    target.write_text("- just\n- a list\n")
    assert write("continue", target) == 1
    assert "YAML mapping" in capsys.readouterr().err


# --- autostart and the launch environment ------------------------------------------------


def test_autostart_is_off_unless_asked_for(capsys: pytest.CaptureFixture[str]) -> None:
    """By default the entry does not start a daemon; --autostart turns it on with an
    absolute log folder (the daemon would otherwise write logs/ into each project the
    client opens); --no-autostart removes it even when the environment sets it."""
    assert "EXAI_SHIM_AUTOSTART" not in our_entry("gemini", printed_block("gemini", capsys))["env"]
    assert config_main(["--client", "gemini", "--autostart"], ENVIRON) == 0
    env = our_entry("gemini", json.loads(capsys.readouterr().out))["env"]
    assert env["EXAI_SHIM_AUTOSTART"] == "1"
    assert Path(env["EXAI_LOG_DIR"]).is_absolute()
    environ = {**ENVIRON, "EXAI_SHIM_AUTOSTART": "1"}
    assert config_main(["--client", "gemini", "--no-autostart"], environ) == 0
    env = our_entry("gemini", json.loads(capsys.readouterr().out))["env"]
    assert "EXAI_SHIM_AUTOSTART" not in env and "EXAI_LOG_DIR" not in env


def test_an_uninstalled_source_tree_gets_pythonpath(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """When `python -m shim` would work only from the source folder, the entry names
    that folder in PYTHONPATH so it starts from any directory."""
    monkeypatch.setattr(shim.clients, "shim_needs_pythonpath", lambda *_: True)
    env = our_entry("zed", printed_block("zed", capsys))["env"]
    assert Path(env["PYTHONPATH"], "shim", "clients.py").is_file()


def test_the_probe_sees_this_installed_shim_from_another_directory() -> None:
    """The real probe: this venv has the project installed, so no PYTHONPATH is needed;
    an interpreter that cannot import it at all needs one."""
    assert REAL_PROBE(sys.executable, dict(os.environ)) is False
    assert REAL_PROBE("/nonexistent/python", dict(os.environ)) is True


# --- --transport http --------------------------------------------------------------------

HTTP_CLIENTS = [c for c in CLIENTS if c not in HTTP_REFUSED]
URL = "http://127.0.0.1:8799/mcp"
TOKEN = "s3cret-t0k"
BEARER = f"Bearer {TOKEN}"
# Each client's documented Streamable HTTP entry: without a token, and what a token adds
# (the token itself, or the client's reference to EXAI_WS_TOKEN where it can read one).
HTTP_SHAPES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "vscode": ({"type": "http", "url": URL}, {"headers": {"Authorization": BEARER}}),
    "auggie": ({"type": "http", "url": URL}, {"headers": {"Authorization": BEARER}}),
    "cursor": (
        {"url": URL},
        {"headers": {"Authorization": "Bearer ${env:EXAI_WS_TOKEN}"}},
    ),
    "claude-code": (
        {"type": "http", "url": URL},
        {"headers": {"Authorization": "Bearer ${EXAI_WS_TOKEN}"}},
    ),
    "gemini": ({"httpUrl": URL}, {"headers": {"Authorization": "Bearer ${EXAI_WS_TOKEN}"}}),
    "codex": ({"url": URL}, {"bearer_token_env_var": "EXAI_WS_TOKEN"}),
    "windsurf": (
        {"serverUrl": URL},
        {"headers": {"Authorization": "Bearer ${env:EXAI_WS_TOKEN}"}},
    ),
    "zed": ({"url": URL}, {"headers": {"Authorization": BEARER}}),
    "cline": ({"type": "streamableHttp", "url": URL}, {"headers": {"Authorization": BEARER}}),
    "continue": (
        {"type": "streamable-http", "url": URL},
        {"requestOptions": {"headers": {"Authorization": BEARER}}},
    ),
}
READS_THE_ENVIRONMENT = {"cursor", "claude-code", "gemini", "codex", "windsurf"}
HTTP_ENVIRON = {**ENVIRON, "EXAI_WS_TOKEN": TOKEN}


def test_every_client_has_an_http_shape_or_a_refusal() -> None:
    assert set(HTTP_SHAPES) | set(HTTP_REFUSED) == set(CLIENTS)
    assert not set(HTTP_SHAPES) & set(HTTP_REFUSED)
    assert set(HTTP_REFUSED) == {"claude", "augment"}


@pytest.mark.parametrize("with_token", [False, True], ids=["no-token", "token"])
@pytest.mark.parametrize("client", HTTP_CLIENTS)
def test_build_http_config_has_each_clients_shape(client: str, with_token: bool) -> None:
    """Each client's documented Streamable HTTP entry, in the same surrounding block as
    its stdio entry (Cline's switches included); a token adds only the Authorization
    header (or Codex's variable name), nothing at all without one."""
    base, token_part = HTTP_SHAPES[client]
    expected = {**base, **token_part} if with_token else base
    block = build_http_config(client, "srv", URL, TOKEN if with_token else None)
    assert block == with_entry(SHAPES[client], expected)
    assert "command" not in json.dumps(block) and "EXAI_SHIM" not in json.dumps(block)


@pytest.mark.parametrize("with_token", [False, True], ids=["no-token", "token"])
@pytest.mark.parametrize("client", HTTP_CLIENTS)
def test_printed_http_text_parses_back_to_the_block(
    client: str, with_token: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--transport http` prints the block in the client's own format; for Claude Code a
    `claude mcp add --transport http` line that a shell splits into the same entry."""
    environ = HTTP_ENVIRON if with_token else ENVIRON
    block = build_http_config(client, "exai", URL, TOKEN if with_token else None)
    assert printed_block(client, capsys, environ, "--transport", "http") == block


@pytest.mark.parametrize("client", HTTP_CLIENTS)
def test_the_token_is_written_only_for_clients_that_cannot_read_it(
    client: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Clients that expand an environment variable get a reference to EXAI_WS_TOKEN and
    never the secret; the others get the secret itself. stderr says which it is."""
    assert config_main(["--client", client, "--transport", "http"], HTTP_ENVIRON) == 0
    out, err = capsys.readouterr()
    if client in READS_THE_ENVIRONMENT:
        assert TOKEN not in out and "EXAI_WS_TOKEN" in out
        assert "reads the token from EXAI_WS_TOKEN" in err
    else:
        assert BEARER in out and "EXAI_WS_TOKEN" not in out
        assert "holds the token itself" in err


@pytest.mark.parametrize(
    "environ", [ENVIRON, {**ENVIRON, "EXAI_WS_TOKEN": ""}], ids=["unset", "empty"]
)
def test_no_token_means_no_header_and_no_note(
    environ: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    for client in HTTP_CLIENTS:
        assert config_main(["--client", client, "--transport", "http"], environ) == 0
        out, err = capsys.readouterr()
        assert "Authorization" not in out and "bearer" not in out.lower() and err == ""


def test_claude_code_http_line_leaves_the_reference_to_claude(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The printed line is quoted so the shell passes `${EXAI_WS_TOKEN}` through for
    Claude Code to expand (it does so in user scope too), rather than pasting the secret
    into ~/.claude.json; the header option comes after the name and URL."""
    assert config_main(["--client", "claude-code", "--transport", "http"], HTTP_ENVIRON) == 0
    out = capsys.readouterr().out
    assert out == (
        "claude mcp add --transport http --scope user exai http://127.0.0.1:8799/mcp "
        "--header 'Authorization: Bearer ${EXAI_WS_TOKEN}'\n"
    )
    assert config_main(["--client", "claude-code", "--transport", "http"], ENVIRON) == 0
    assert capsys.readouterr().out == (
        "claude mcp add --transport http --scope user exai http://127.0.0.1:8799/mcp\n"
    )


@pytest.mark.parametrize(
    ("environ", "url"),
    [
        pytest.param({}, "http://127.0.0.1:8765/mcp", id="defaults"),
        pytest.param(
            {"EXAI_WS_HOST": "localhost", "EXAI_WS_PORT": "9001"},
            "http://localhost:9001/mcp",
            id="host-port",
        ),
        pytest.param({"EXAI_WS_HOST": "::1"}, "http://[::1]:8765/mcp", id="ipv6"),
        pytest.param({"EXAI_WS_HOST": "[::1]"}, "http://[::1]:8765/mcp", id="ipv6-bracketed"),
    ],
)
def test_http_url_comes_from_the_same_variables_as_the_stdio_entry(
    environ: dict[str, str], url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = our_entry("zed", printed_block("zed", capsys, environ, "--transport", "http"))
    assert entry == {"url": url}
    host, port = environ.get("EXAI_WS_HOST", "127.0.0.1"), environ.get("EXAI_WS_PORT", "8765")
    assert daemon_url(host, port) == url


def test_http_entries_need_no_python_and_ignore_shim_settings(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing is started: no interpreter, no probe for PYTHONPATH, and the shim's own
    settings (autostart, RPC timeout) from the environment stay out of the entry."""

    def no_probe(*_: object) -> bool:
        raise AssertionError("the PYTHONPATH probe ran for an HTTP entry")

    monkeypatch.setattr(shim.clients, "shim_needs_pythonpath", no_probe)
    environ = {**ENVIRON, "EXAI_SHIM_AUTOSTART": "1", "EXAI_SHIM_RPC_TIMEOUT": "5"}
    for extra in ((), ("--no-autostart",)):
        block = printed_block("gemini", capsys, environ, "--transport", "http", *extra)
        assert our_entry("gemini", block) == {"httpUrl": URL}


def test_autostart_with_http_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "settings.json"
    argv = ["--client", "gemini", "--transport", "http", "--autostart", "--write", str(target)]
    assert config_main(argv, ENVIRON) == 2
    out, err = capsys.readouterr()
    assert out == "" and "--autostart" in err and "stdio" in err
    assert not target.exists()


@pytest.mark.parametrize("client", sorted(HTTP_REFUSED))
def test_clients_without_http_are_refused_and_pointed_at_the_stdio_shim(
    client: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Claude Desktop's file and Augment's VS Code settings cannot name a Streamable
    HTTP server: --transport http exits 2 saying so and how to use the stdio shim, and
    --write leaves an existing file and its folder untouched."""
    assert config_main(["--client", client, "--transport", "http"], ENVIRON) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("exai-shim: ") and "stdio" in err
    assert f"python -m shim config --client {client}" in err
    target = tmp_path / "config.json"
    target.write_text('{"mcpServers": {}}\n')
    assert (
        config_main(["--client", client, "--transport", "http", "--write", str(target)], ENVIRON)
        == 2
    )
    assert target.read_text() == '{"mcpServers": {}}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
    with pytest.raises(ValueError, match="stdio"):
        build_http_config(client, "exai", URL, None)


def test_build_http_config_refuses_an_unknown_client() -> None:
    with pytest.raises(ValueError, match="unknown client 'emacs'"):
        build_http_config("emacs", "exai", URL, None)


def test_transport_must_be_stdio_or_http(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        config_main(["--client", "zed", "--transport", "ws"], ENVIRON)
    assert exc.value.code == 2
    assert "--transport" in capsys.readouterr().err


HTTP_FIXTURES = {
    "vscode": "vscode_mcp.json",
    "auggie": "auggie_settings.json",
    "cursor": "cursor_mcp.json",
}


def http_original_text(client: str) -> str:
    if client in HTTP_FIXTURES:
        return (FIXTURES / HTTP_FIXTURES[client]).read_text()
    return original_text(client)


@pytest.mark.parametrize("with_token", [False, True], ids=["no-token", "token"])
@pytest.mark.parametrize("client", HTTP_CLIENTS)
def test_http_write_merges_like_stdio(
    client: str, with_token: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--transport http --write into each client's real-shaped file keeps every other
    entry and setting, replaces our old (stdio) entry entirely, leaves a backup that is
    the original byte for byte, and a second run changes nothing."""
    environ = HTTP_ENVIRON if with_token else ENVIRON
    entry = our_entry(client, printed_block(client, capsys, environ, "--transport", "http"))
    target = tmp_path / "config"
    target.write_text(http_original_text(client))
    original = parse(client, http_original_text(client))

    argv = ["--client", client, "--transport", "http", "--write", str(target)]
    assert config_main(argv, environ) == 0
    match = re.fullmatch(r"wrote .+ \(backup: (.+)\)\n", capsys.readouterr().out)
    assert match is not None
    assert Path(match.group(1)).read_text() == http_original_text(client)

    merged = parse(client, target.read_text())
    assert our_entry(client, merged) == entry
    assert "command" not in our_entry(client, merged)  # nothing of the stdio entry is left
    if client == "continue":
        assert [s["name"] for s in merged["mcpServers"]] == ["memory", "exai"]
        assert merged["mcpServers"][0] == original["mcpServers"][0]
        assert merged["name"] == "My servers"
    else:
        expected = copy.deepcopy(original)
        key = {"vscode": "servers", "zed": "context_servers", "codex": "mcp_servers"}
        expected.setdefault(key.get(client, "mcpServers"), {})["exai"] = entry
        assert merged == expected
    if client == "codex":
        assert "# keep this comment" in target.read_text()
    if client in READS_THE_ENVIRONMENT:
        assert TOKEN not in target.read_text()
    once = target.read_text()
    assert config_main(argv, environ) == 0
    assert target.read_text() == once


@pytest.mark.parametrize("client", HTTP_CLIENTS)
def test_http_write_without_a_path_uses_the_clients_usual_file(
    client: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    environ = {**ENVIRON, "HOME": str(tmp_path / "home")}
    assert config_main(["--client", client, "--transport", "http", "--write"], environ) == 0
    target = default_path(client, "exai", environ)
    assert target is not None
    where = tmp_path / target if not target.is_absolute() else target
    entry = our_entry(client, parse(client, where.read_text()))
    assert URL in entry.values()


def test_switching_back_to_stdio_replaces_the_http_entry(tmp_path: Path) -> None:
    """The same server name moves between transports without leftovers either way."""
    target = tmp_path / "settings.json"
    argv = ["--client", "gemini", "--write", str(target)]
    assert config_main([*argv, "--transport", "http"], HTTP_ENVIRON) == 0
    assert config_main(argv, ENVIRON) == 0
    entry = our_entry("gemini", json.loads(target.read_text()))
    assert set(entry) == {"command", "args", "env"}
