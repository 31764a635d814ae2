"""`python -m shim config`: the exact MCP server entry each client reads, and merging it
into an existing config file without losing anything else.

E below is `{command, args, env}`; N the server's name (`--name`, default exai).

| client        | file (`--write` with no PATH)                 | shape                           |
|---------------|-----------------------------------------------|---------------------------------|
| `vscode`      | `.vscode/mcp.json`                            | `servers.N = {type: stdio, E}`  |
| `augment`     | VS Code settings.json (give PATH)             | `augment.advanced.mcpServers[]` |
|               |                                               | `= {name: N, E}`                |
| `auggie`      | `~/.augment/settings.json`                    | `mcpServers.N = E`              |
| `claude`      | `claude_desktop_config.json` (macOS, Windows) | `mcpServers.N = E`              |
| `cursor`      | `~/.cursor/mcp.json`                          | `mcpServers.N = E`              |
| `claude-code` | `.mcp.json` (the project's)                   | `mcpServers.N =`                |
|               |                                               | `{type: stdio, E}`              |
| `gemini`      | `~/.gemini/settings.json`                     | `mcpServers.N = E`              |
| `codex`       | `$CODEX_HOME/config.toml` (`~/.codex/`)       | TOML table `[mcp_servers.N]` E  |
| `windsurf`    | `~/.codeium/windsurf/mcp_config.json`         | `mcpServers.N = E`              |
| `zed`         | `~/.config/zed/settings.json`                 | `context_servers.N = E`         |
| `cline`       | VS Code's `globalStorage/saoudrizwan.claude-` |                                 |
|               | `dev/settings/cline_mcp_settings.json`        |                                 |
|               |                                               | `mcpServers.N = {E, disabled:`  |
|               |                                               | `false, autoApprove: []}`       |
| `continue`    | `.continue/mcpServers/N.yaml` (a block file)  | YAML `name, version, schema:`   |
|               |                                               | `v1,`                           |
|               |                                               | `mcpServers: [{name: N, E}]`    |

`codex` prints TOML, `continue` YAML, `claude-code` the command line its documentation
gives (`claude mcp add-json --scope user N '<json>'`; `--write` makes the project's
`.mcp.json` instead), every other client JSON.

No entry depends on the directory the client starts it in: `claude mcp add-json` drops
`cwd`, and clients start servers in whatever project is open. The command is this
virtual environment's interpreter by absolute path and, when `shim` is importable only
from the source tree (not installed), PYTHONPATH names that tree.

`--transport http` gives instead each client's own Streamable HTTP entry, aimed at the
daemon's endpoint U = `http://EXAI_WS_HOST:EXAI_WS_PORT/mcp` (nothing is started, so no
interpreter and no autostart). A is the header `Authorization: Bearer …`, there only
when EXAI_WS_TOKEN is set; the last column says how the token gets into it:

| client        | HTTP shape                                       | the token                |
|---------------|--------------------------------------------------|--------------------------|
| `vscode`      | `servers.N = {type: http, url: U, headers: A}`   | written into the file    |
| `augment`     | refused: its settings start stdio servers only   |                          |
| `auggie`      | `mcpServers.N = {type: http, url: U, headers: A}`| written into the file    |
| `claude`      | refused: the file starts stdio servers only      |                          |
| `cursor`      | `mcpServers.N = {url: U, headers: A}`            | `${env:EXAI_WS_TOKEN}`   |
| `claude-code` | `mcpServers.N = {type: http, url: U, headers: A}`| `${EXAI_WS_TOKEN}`       |
| `gemini`      | `mcpServers.N = {httpUrl: U, headers: A}`        | `${EXAI_WS_TOKEN}`       |
| `codex`       | `[mcp_servers.N] url = U`                        | `bearer_token_env_var =` |
|               |                                                  | `"EXAI_WS_TOKEN"`        |
| `windsurf`    | `mcpServers.N = {serverUrl: U, headers: A}`      | `${env:EXAI_WS_TOKEN}`   |
| `zed`         | `context_servers.N = {url: U, headers: A}`       | written into the file    |
| `cline`       | `mcpServers.N = {type: streamableHttp, url: U,`  | written into the file    |
|               | `headers: A, disabled: false, autoApprove: []}`  |                          |
| `continue`    | `mcpServers: [{name: N, type: streamable-http,`  | written into the file    |
|               | `url: U, requestOptions: {headers: A}}]`         |                          |

A client given a reference (`${…}`, or Codex's variable name) reads the token from
EXAI_WS_TOKEN in its own environment each time it connects, so the secret stays out of
its config file; it must then be set wherever that client is started. `claude-code`
prints `claude mcp add --transport http --scope user N U --header A`, quoted so the
shell leaves the reference for Claude Code to expand.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CLIENTS",
    "HTTP_REFUSED",
    "build_config",
    "build_http_config",
    "config_main",
    "daemon_url",
    "default_path",
    "merge_config",
    "render",
]

CLIENTS = (
    "vscode",
    "augment",
    "auggie",
    "claude",
    "cursor",
    "claude-code",
    "gemini",
    "codex",
    "windsurf",
    "zed",
    "cline",
    "continue",
)
_ENV_KEYS = (
    "EXAI_WS_HOST",
    "EXAI_WS_PORT",
    "EXAI_WS_TOKEN",
    "EXAI_SHIM_RPC_TIMEOUT",
    "EXAI_SHIM_AUTOSTART",
)
# The JSON object each JSON client keeps its servers in, by name.
_TABLE_KEY = {"vscode": "servers", "zed": "context_servers"}
_CONTINUE_BLOCK_VERSION = "0.0.1"
ROOT = Path(__file__).resolve().parents[1]


class ConfigError(Exception):
    """The config file cannot be merged automatically; the message says why."""


def _entry(python: str, env: Mapping[str, str]) -> dict[str, Any]:
    return {"command": python, "args": ["-m", "shim"], "env": dict(env)}


def _wrap(client: str, name: str, entry: dict[str, Any]) -> dict[str, Any]:
    """The block `client` expects around one server entry (stdio or HTTP) called `name`."""
    if client == "vscode":
        return {"servers": {name: entry}}
    if client == "augment":
        return {"augment.advanced": {"mcpServers": [{"name": name, **entry}]}}
    if client == "zed":
        return {"context_servers": {name: entry}}
    if client == "codex":
        return {"mcp_servers": {name: entry}}
    if client == "cline":
        return {"mcpServers": {name: {**entry, "disabled": False, "autoApprove": []}}}
    if client == "continue":
        return {
            "name": name,
            "version": _CONTINUE_BLOCK_VERSION,
            "schema": "v1",
            "mcpServers": [{"name": name, **entry}],
        }
    if client in ("auggie", "claude", "cursor", "claude-code", "gemini", "windsurf"):
        return {"mcpServers": {name: entry}}
    raise ValueError(f"unknown client {client!r}; expected one of {', '.join(CLIENTS)}")


def build_config(client: str, name: str, python: str, env: Mapping[str, str]) -> dict[str, Any]:
    """The block `client` expects (as plain data), containing one server called `name`."""
    entry = _entry(python, env)
    if client in ("vscode", "claude-code"):
        entry = {"type": "stdio", **entry}
    return _wrap(client, name, entry)


# --- Streamable HTTP entries -------------------------------------------------------------

TOKEN_VAR = "EXAI_WS_TOKEN"
# The daemon serves Streamable HTTP here (broker.web.streamable.STREAMABLE_PATH); the
# shim never imports the broker, so the path is repeated rather than imported.
_MCP_PATH = "/mcp"

HTTP_REFUSED = {
    "claude": "Claude Desktop's config file starts stdio servers only (remote servers are "
    "added in the app, as connectors)",
    "augment": "Augment's VS Code settings (augment.advanced.mcpServers) start stdio servers only",
}


@dataclass(frozen=True)
class _HttpShape:
    """How one client spells a Streamable HTTP server entry."""

    url_key: str = "url"
    fields: Mapping[str, str] = field(default_factory=dict)
    # Where the Authorization header goes inside the entry.
    headers_at: tuple[str, ...] = ("headers",)
    # The client's own reference to an environment variable, expanded when it connects;
    # None where it has none documented, and the token itself is written instead.
    env_ref: str | None = None
    # A key naming the variable the client takes a bearer token from (instead of a header).
    token_var_key: str | None = None


_HTTP_SHAPES = {
    "vscode": _HttpShape(fields={"type": "http"}),
    "auggie": _HttpShape(fields={"type": "http"}),
    "cursor": _HttpShape(env_ref=f"${{env:{TOKEN_VAR}}}"),
    "claude-code": _HttpShape(fields={"type": "http"}, env_ref=f"${{{TOKEN_VAR}}}"),
    "gemini": _HttpShape(url_key="httpUrl", env_ref=f"${{{TOKEN_VAR}}}"),
    "codex": _HttpShape(token_var_key="bearer_token_env_var"),
    "windsurf": _HttpShape(url_key="serverUrl", env_ref=f"${{env:{TOKEN_VAR}}}"),
    "zed": _HttpShape(),
    "cline": _HttpShape(fields={"type": "streamableHttp"}),
    "continue": _HttpShape(
        fields={"type": "streamable-http"}, headers_at=("requestOptions", "headers")
    ),
}


def reads_token_from_environment(client: str) -> bool:
    """Does `client`'s HTTP entry name EXAI_WS_TOKEN rather than hold the token?"""
    shape = _HTTP_SHAPES.get(client)
    return shape is not None and (shape.env_ref is not None or shape.token_var_key is not None)


def daemon_url(host: str, port: str) -> str:
    """The daemon's Streamable HTTP endpoint at `host`:`port`."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    return f"http://{host}:{port}{_MCP_PATH}"


def build_http_config(client: str, name: str, url: str, token: str | None) -> dict[str, Any]:
    """The block `client` expects with one Streamable HTTP server `name` at `url`, sending
    `token` as a bearer token when given (by reference, for clients that can read it
    from the environment)."""
    if client in HTTP_REFUSED:
        raise ValueError(f"{HTTP_REFUSED[client]}; use the stdio shim for {client}")
    shape = _HTTP_SHAPES.get(client)
    if shape is None:
        raise ValueError(f"unknown client {client!r}; expected one of {', '.join(CLIENTS)}")
    entry: dict[str, Any] = {**shape.fields, shape.url_key: url}
    if token and shape.token_var_key is not None:
        entry[shape.token_var_key] = TOKEN_VAR
    elif token:
        nested: dict[str, Any] = {"Authorization": f"Bearer {shape.env_ref or token}"}
        for key in reversed(shape.headers_at):
            nested = {key: nested}
        entry.update(nested)
    return _wrap(client, name, entry)


def render(client: str, block: dict[str, Any]) -> str:
    """What `python -m shim config` prints for `client`: its block in its file's format."""
    if client == "codex":
        return dump_toml(block)
    if client == "continue":
        return dump_yaml(block)
    if client == "claude-code":
        ((name, entry),) = block["mcpServers"].items()
        if entry.get("type") == "http":
            argv = ["claude", "mcp", "add", "--transport", "http", "--scope", "user"]
            argv += [name, entry["url"]]
            for header, value in entry.get("headers", {}).items():
                argv += ["--header", f"{header}: {value}"]
            return shlex.join(argv) + "\n"
        spec = json.dumps(entry, separators=(",", ":"))
        return shlex.join(["claude", "mcp", "add-json", "--scope", "user", name, spec]) + "\n"
    return json.dumps(block, indent=2) + "\n"


def _list_key(client: str) -> tuple[str, ...] | None:
    """Where a client keeps a list of named servers (instead of a table by name)."""
    if client == "augment":
        return ("augment.advanced", "mcpServers")
    if client == "continue":
        return ("mcpServers",)
    return None


def merge_config(existing: dict[str, Any], block: dict[str, Any], client: str) -> dict[str, Any]:
    """`existing` with our server added or replaced; every other entry kept."""
    merged = dict(existing)
    path = _list_key(client)
    if path is not None:
        parent = merged
        if len(path) == 2:
            outer = merged.get(path[0]) or {}
            if not isinstance(outer, dict):
                raise ConfigError(f'"{path[0]}" in the existing file is not an object')
            parent = merged[path[0]] = dict(outer)
        existing_servers = parent.get(path[-1]) or []
        if not isinstance(existing_servers, list):
            raise ConfigError(f'"{".".join(path)}" in the existing file is not a list')
        ours = block[path[0]][path[1]][0] if len(path) == 2 else block[path[0]][0]
        kept = [
            s
            for s in existing_servers
            if not (isinstance(s, dict) and s.get("name") == ours["name"])
        ]
        parent[path[-1]] = [*kept, ours]
        if client == "continue":
            for key in ("name", "version", "schema"):
                merged.setdefault(key, block[key])
        return merged
    key = "mcp_servers" if client == "codex" else _TABLE_KEY.get(client, "mcpServers")
    table = merged.get(key) or {}
    if not isinstance(table, dict):
        raise ConfigError(f'"{key}" in the existing file is not an object')
    merged[key] = {**table, **block[key]}
    return merged


# --- default locations -------------------------------------------------------------------


def default_path(
    client: str, name: str, environ: Mapping[str, str], platform: str = sys.platform
) -> Path | None:
    """Where `client` reads its servers from (user scope, or the project in the current
    directory for project-only files); None where there is no single answer."""
    home = Path(environ.get("HOME") or Path.home())
    appdata = Path(environ.get("APPDATA") or home / "AppData" / "Roaming")
    if platform == "darwin":
        app_support = home / "Library" / "Application Support"
    elif platform == "win32":
        app_support = appdata
    else:
        app_support = Path(environ.get("XDG_CONFIG_HOME") or home / ".config")
    simple = {
        "vscode": Path(".vscode", "mcp.json"),
        "auggie": home / ".augment" / "settings.json",
        "cursor": home / ".cursor" / "mcp.json",
        "claude-code": Path(".mcp.json"),
        "gemini": home / ".gemini" / "settings.json",
        "codex": Path(environ.get("CODEX_HOME") or home / ".codex") / "config.toml",
        "windsurf": home / ".codeium" / "windsurf" / "mcp_config.json",
        "continue": Path(".continue", "mcpServers", f"{name}.yaml"),
        "cline": app_support
        / "Code"
        / "User"
        / "globalStorage"
        / "saoudrizwan.claude-dev"
        / "settings"
        / "cline_mcp_settings.json",
    }
    if client in simple:
        return simple[client]
    if client == "zed":
        base = appdata / "Zed" if platform == "win32" else home / ".config" / "zed"
        return base / "settings.json"
    if client == "claude" and platform in ("darwin", "win32"):
        return app_support / "Claude" / "claude_desktop_config.json"
    return None


# --- writing -----------------------------------------------------------------------------


def _free_backup_name(path: Path) -> Path:
    """A backup name that never overwrites an earlier backup."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate = path.with_name(f"{path.name}.bak-{stamp}")
    counter = 1
    while candidate.exists():
        counter += 1
        candidate = path.with_name(f"{path.name}.bak-{stamp}-{counter}")
    return candidate


def _load_json(path: Path, text: str) -> dict[str, Any]:
    try:
        existing = json.loads(text)
    except ValueError as exc:
        raise ConfigError(
            f"{path} is not plain JSON ({exc}); it may contain comments. "
            "Add the block printed by `python -m shim config` by hand."
        ) from None
    if not isinstance(existing, dict):
        raise ConfigError(f"{path} does not hold a JSON object")
    return existing


def _load_yaml(path: Path, text: str) -> dict[str, Any]:
    try:
        import yaml  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        raise ConfigError(
            f"{path} exists and merging into YAML needs PyYAML (pip install pyyaml); "
            "or add the block printed by `python -m shim config --client continue` by hand."
        ) from None
    try:
        existing = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML ({exc})") from None
    if existing is None:
        return {}
    if not isinstance(existing, dict):
        raise ConfigError(f"{path} does not hold a YAML mapping")
    return existing


def _merged_text(path: Path, text: str, block: dict[str, Any], client: str) -> str:
    """The new file contents: `text` with our block merged in."""
    if client == "codex":
        ((name, entry),) = block["mcp_servers"].items()
        return merge_toml_text(text, name, entry, path)
    if client == "continue":
        existing = _load_yaml(path, text) if text.strip() else {}
        return dump_yaml(merge_config(existing, block, client))
    existing = _load_json(path, text) if text.strip() else {}
    return json.dumps(merge_config(existing, block, client), indent=2) + "\n"


def write_config(path: Path, block: dict[str, Any], client: str) -> Path | None:
    """Merge into `path` (created if missing), keeping a backup; returns the backup path."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    # Everything that can refuse runs before the backup, so a refusal leaves no trace.
    new_text = _merged_text(path, text, block, client)
    backup = None
    if path.exists():
        backup = _free_backup_name(path)
        shutil.copy2(path, backup)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(new_text, encoding="utf-8")
    os.replace(tmp, path)
    return backup


# --- TOML and YAML, for the subset the entries use -----------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _quote(text: str) -> str:
    """A double-quoted string valid in both TOML and YAML (their escapes agree on these)."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif code < 0x20 or 0x7F <= code <= 0x9F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _quote(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _toml_table(path: Sequence[str], table: Mapping[str, Any]) -> str:
    lines = [f"[{'.'.join(_key(p) for p in path)}]"]
    lines += [f"{_key(k)} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def dump_toml(block: Mapping[str, Any]) -> str:
    """`{"mcp_servers": {NAME: entry}}` as TOML: one `[mcp_servers.NAME]` table each."""
    return "\n".join(_toml_table(["mcp_servers", n], e) for n, e in block["mcp_servers"].items())


_HEADER = re.compile(r"^\s*\[(\[)?\s*(?P<key>[^\[\]#]+?)\s*\](?(1)\])\s*(#.*)?$")


def _header_path(line: str) -> tuple[str, ...] | None:
    """The dotted key of a `[table]` or `[[array]]` header line, None for other lines."""
    match = _HEADER.match(line)
    if match is None:
        return None
    try:
        parsed: Any = tomllib.loads(f"{match['key']} = 0")
    except tomllib.TOMLDecodeError:
        return None
    path: list[str] = []
    while isinstance(parsed, dict) and len(parsed) == 1:
        ((key, parsed),) = parsed.items()
        path.append(key)
    return tuple(path)


def merge_toml_text(text: str, name: str, entry: Mapping[str, Any], path: Path) -> str:
    """`text` with any `[mcp_servers.NAME]` table (and its sub-tables) replaced by ours.

    Edits the text rather than re-serialising, so the user's comments, order and
    formatting survive; the result is parsed back and compared with what the merge must
    give, and anything this line-based edit cannot handle is refused, never guessed."""
    try:
        original = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc})") from None
    servers = original.get("mcp_servers", {})
    if not isinstance(servers, dict):
        raise ConfigError(f'"mcp_servers" in {path} is not a table')
    ours = ("mcp_servers", name)
    kept: list[str] = []
    skipping = False
    for line in text.splitlines(keepends=True):
        header = _header_path(line)
        if header is not None:
            skipping = header[:2] == ours
        if not skipping:
            kept.append(line)
    body = "".join(kept).rstrip("\n")
    new_text = (body + "\n\n" if body else "") + _toml_table(ours, entry)
    expected = {**original, "mcp_servers": {**servers, name: dict(entry)}}
    try:
        result = tomllib.loads(new_text)
    except tomllib.TOMLDecodeError:
        result = None
    if result != expected:
        raise ConfigError(
            f"{path} defines mcp_servers.{name} in a form this tool cannot rewrite safely "
            "(inline or dotted keys); replace it by hand with the table printed by "
            "`python -m shim config --client codex`."
        )
    return new_text


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _quote(value)
    raise TypeError(f"cannot write {type(value).__name__} as YAML")


def _yaml_lines(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, dict | list) and v:
                lines.append(f"{pad}{_key(str(k))}:")
                lines += _yaml_lines(v, indent + 2)
            else:
                empty = "{}" if isinstance(v, dict) else "[]"
                shown = empty if isinstance(v, dict | list) else _yaml_scalar(v)
                lines.append(f"{pad}{_key(str(k))}: {shown}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list) and item:
                inner = _yaml_lines(item, indent + 2)
                # The first key sits on the dash line, the rest align under it.
                lines.append(f"{pad}- {inner[0].lstrip()}")
                lines += inner[1:]
            else:
                empty = "{}" if isinstance(item, dict) else "[]"
                lines.append(
                    f"{pad}- {empty if isinstance(item, dict | list) else _yaml_scalar(item)}"
                )
    return lines


def dump_yaml(block: Mapping[str, Any]) -> str:
    """Block-style YAML with every string double-quoted (so none is read as a number,
    a boolean or null)."""
    return "\n".join(_yaml_lines(dict(block), 0)) + "\n"


# --- the command -------------------------------------------------------------------------


def shim_needs_pythonpath(python: str, environ: Mapping[str, str]) -> bool:
    """True when `python -m shim` finds this shim only thanks to the current directory
    (a source tree that is not installed): the entry must then carry PYTHONPATH."""
    env = {k: v for k, v in environ.items() if k != "PYTHONPATH"}
    probe = "import shim, sys; sys.stdout.write(shim.__file__ or '')"
    with tempfile.TemporaryDirectory() as neutral:
        try:
            done = subprocess.run(
                [python, "-c", probe],
                cwd=neutral,
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return True
    if done.returncode != 0 or not done.stdout:
        return True
    return Path(done.stdout).resolve() != Path(__file__).resolve().with_name("__init__.py")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m shim config",
        description="Print (or merge into a file) the MCP server entry for a client.",
    )
    parser.add_argument("--client", required=True, choices=CLIENTS)
    parser.add_argument("--name", default="exai", help="server name in the client (exai)")
    parser.add_argument(
        "--transport",
        choices=("stdio", "http"),
        default="stdio",
        help="stdio: the client starts this shim (default); http: the client connects "
        "to the running daemon's Streamable HTTP endpoint itself",
    )
    parser.add_argument(
        "--write",
        metavar="PATH",
        nargs="?",
        const="",
        help="merge into this config file (without PATH: the client's usual file)",
    )
    parser.add_argument(
        "--autostart",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="let the shim start the daemon when none runs (EXAI_SHIM_AUTOSTART=1); "
        "off unless given or set in the environment; stdio only",
    )
    return parser


def _stdio_block(args: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, Any]:
    env = {k: environ[k] for k in _ENV_KEYS if environ.get(k)}
    env.setdefault("EXAI_WS_HOST", "127.0.0.1")
    env.setdefault("EXAI_WS_PORT", "8765")
    if args.autostart is False:
        env.pop("EXAI_SHIM_AUTOSTART", None)
    elif args.autostart:
        env["EXAI_SHIM_AUTOSTART"] = "1"
    if env.get("EXAI_SHIM_AUTOSTART", "").lower() in ("1", "true", "yes", "on"):
        # A daemon the shim starts runs in the client's directory: an absolute log folder
        # keeps its logs in one place instead of a `logs/` in every project opened.
        env["EXAI_LOG_DIR"] = os.path.abspath(environ.get("EXAI_LOG_DIR") or "logs")
    python = os.path.abspath(sys.executable)
    if shim_needs_pythonpath(python, environ):
        env["PYTHONPATH"] = str(ROOT)
    return build_config(args.client, args.name, python, env)


def _http_block(args: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, Any]:
    url = daemon_url(
        environ.get("EXAI_WS_HOST") or "127.0.0.1", environ.get("EXAI_WS_PORT") or "8765"
    )
    token = environ.get(TOKEN_VAR) or None
    if token and reads_token_from_environment(args.client):
        # The entry only names the variable: without it where the client runs, the
        # daemon answers 401 and the client shows the server as failed.
        print(
            f"exai-shim: {args.client} reads the token from {TOKEN_VAR} when it connects; "
            "set it in the environment the client starts in",
            file=sys.stderr,
        )
    elif token:
        print(
            f"exai-shim: the {args.client} entry holds the token itself; keep that file private",
            file=sys.stderr,
        )
    return build_http_config(args.client, args.name, url, token)


def config_main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    args = _parser().parse_args(argv)
    if args.transport == "http":
        if args.autostart:
            print(
                "exai-shim: --autostart is for the stdio shim; a client on --transport http "
                "connects to a daemon that is already running",
                file=sys.stderr,
            )
            return 2
        if args.client in HTTP_REFUSED:
            print(
                f"exai-shim: {HTTP_REFUSED[args.client]}, so --transport http cannot work "
                f"for {args.client}; use the stdio shim: "
                f"python -m shim config --client {args.client}",
                file=sys.stderr,
            )
            return 2
        block = _http_block(args, environ)
    else:
        block = _stdio_block(args, environ)
    if args.write is None:
        sys.stdout.write(render(args.client, block))
        return 0
    target = Path(args.write) if args.write else default_path(args.client, args.name, environ)
    if target is None:
        print(f"exai-shim: give the {args.client} config file: --write PATH", file=sys.stderr)
        return 2
    target = target.expanduser()
    try:
        backup = write_config(target, block, args.client)
    except (ConfigError, OSError) as exc:
        print(f"exai-shim: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {target}" + (f" (backup: {backup})" if backup else ""))
    return 0
