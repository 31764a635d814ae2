"""`python -m broker import --from CLIENT`: copy a client's MCP servers into the servers
file, so the daemon hosts them, and optionally point the client at the shim instead.

| `--from`         | file read (`--config-file` overrides)       | table                       |
|------------------|---------------------------------------------|-----------------------------|
| `claude-desktop` | `claude_desktop_config.json` (macOS, Win)   | `mcpServers`                |
| `claude-code`    | `~/.claude.json` (user scope only)          | top-level `mcpServers`      |
| `vscode`         | `.vscode/mcp.json` in the current directory | `servers`                   |
| `cursor`         | `~/.cursor/mcp.json`                        | `mcpServers`                |
| `gemini`         | `~/.gemini/settings.json`                   | `mcpServers`                |

This module finds the client's file, merges its servers into the servers file and, with
`--rewrite-client`, puts the shim's entry in their place. How each client's entries
become servers-file entries (SSE skipped, Gemini's spelling, the shim's own entry left
out) is `broker.fleet.client_entries`.

The client's locations and its writer (timestamped backup, atomic replace) are those of
`python -m shim config` (shim.clients), so both commands agree on every path.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from broker.fleet.client_entries import Imported, collect, is_shim, project_note
from broker.fleet.config import ConfigError as ServersFileError
from broker.fleet.config import default_config_path, parse_servers
from exai.exits import ExitCode
from shim.clients import _TABLE_KEY, ConfigError, _stdio_block, default_path, write_config

__all__ = ["IMPORT_CLIENTS", "ImportRefused", "Imported", "collect", "import_main", "is_shim"]

# Our client name -> the name shim.clients knows it by.
IMPORT_CLIENTS = {
    "claude-desktop": "claude",
    "claude-code": "claude-code",
    "vscode": "vscode",
    "cursor": "cursor",
    "gemini": "gemini",
}


class ImportRefused(Exception):
    """A file cannot be read or merged; the message names it and says why."""


# --- reading -----------------------------------------------------------------------------


def source_path(client: str, environ: Mapping[str, str]) -> Path | None:
    """The file `client` keeps its user-level servers in, or None where there is none."""
    if client == "claude-code":
        # shim.clients writes the project's .mcp.json; the user's servers live here.
        return Path(environ.get("HOME") or Path.home()) / ".claude.json"
    return default_path(IMPORT_CLIENTS[client], "exai", environ)


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path`; ImportRefused naming the path otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ImportRefused(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportRefused(f"{path}: cannot read it ({exc})") from None
    try:
        document = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise ImportRefused(
            f"{path}: not plain JSON ({exc}); comments or trailing commas must go first"
        ) from None
    if not isinstance(document, dict):
        raise ImportRefused(f"{path}: does not hold a JSON object")
    return document


def table_key(client: str) -> str:
    return _TABLE_KEY.get(IMPORT_CLIENTS[client], "mcpServers")


def server_table(client: str, document: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The client's table of servers by name ({} when the file has none)."""
    key = table_key(client)
    table = document.get(key, {})
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise ImportRefused(f'{path}: "{key}" is not an object')
    return table


# --- writing -----------------------------------------------------------------------------


def servers_root(document: Mapping[str, Any]) -> str:
    """The servers file's table key: VS Code's "servers" is read too, so it is kept."""
    return "servers" if "servers" in document and "mcpServers" not in document else "mcpServers"


def merge_servers(
    document: Mapping[str, Any], servers: Mapping[str, dict[str, Any]], path: Path
) -> tuple[dict[str, Any], list[str], list[str]]:
    """`document` with the new names added: (merged, added, already present)."""
    root = servers_root(document)
    existing = document.get(root, {})
    if existing is None:
        existing = {}
    if not isinstance(existing, dict):
        raise ImportRefused(f'{path}: "{root}" is not an object')
    added = [n for n in servers if n not in existing]
    present = [n for n in servers if n in existing]
    table = {**existing, **{n: servers[n] for n in added}}
    return {**document, root: table}, added, present


def render(document: Mapping[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def replace_atomically(path: Path, text: str, mode: int | None = None) -> None:
    """Write `text` to `path` in one step; a reader sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp's file is the owner's only: entries carry tokens in env and headers.
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        if mode is not None:
            os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _shim_name(table: Mapping[str, Any], replaced: Sequence[str], shims: Sequence[str]) -> str:
    if shims:
        return shims[0]
    candidates = ["exai", "exai-broker", *(f"exai-{n}" for n in range(2, len(table) + 3))]
    return next(c for c in candidates if c not in table or c in replaced)


def rewrite_client(
    client: str,
    path: Path,
    replaced: Sequence[str],
    shims: Sequence[str],
    environ: Mapping[str, str],
) -> tuple[str, Path | None]:
    """Replace `replaced` in the client's file by one shim entry: (its name, the backup).

    shim.clients' writer adds the entry and keeps the backup of the original file; the
    hosted entries are taken out afterwards, so no step leaves the client without them."""
    shim_client = IMPORT_CLIENTS[client]
    key = table_key(client)
    table = server_table(client, read_json_object(path), path)
    name = _shim_name(table, replaced, shims)
    if name in shims:
        # Keep the user's own shim entry (its port, token, autostart) as it is.
        block: dict[str, Any] = {key: {name: table[name]}}
    else:
        namespace = argparse.Namespace(client=shim_client, name=name, autostart=None)
        block = _stdio_block(namespace, environ)
    mode = path.stat().st_mode & 0o7777
    backup = write_config(path, block, shim_client)
    document = read_json_object(path)
    document[key] = {n: e for n, e in document[key].items() if n == name or n not in replaced}
    replace_atomically(path, json.dumps(document, indent=2) + "\n", mode)
    return name, backup


# --- the command -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m broker import",
        description="Copy an MCP client's servers into the daemon's servers file.",
        epilog="claude-code: only the user's top-level mcpServers in ~/.claude.json; "
        "per-project servers (projects.*.mcpServers) are not read, and a project's "
        ".mcp.json is imported with --config-file PATH/.mcp.json. vscode: the workspace "
        "file .vscode/mcp.json in the current directory; the user-level mcp.json needs "
        "--config-file. claude-desktop on Linux has no standard file: give --config-file.",
    )
    parser.add_argument("--from", dest="client", required=True, choices=list(IMPORT_CLIENTS))
    parser.add_argument("--config-file", metavar="PATH", help="read this client file instead")
    parser.add_argument(
        "--write",
        metavar="PATH",
        help="servers file to create or merge into (default: the daemon's usual servers file)",
    )
    parser.add_argument(
        "--rewrite-client",
        action="store_true",
        help="then replace the imported entries in the client file by one shim entry "
        "(a timestamped backup of the file is kept)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the servers file; write nothing"
    )
    return parser


def _same(a: Path, b: Path) -> bool:
    return os.path.abspath(a.expanduser()) == os.path.abspath(b.expanduser())


def import_main(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> int:
    """Run `python -m broker import`; returns the exit code."""
    env = os.environ if environ is None else environ
    args = build_parser().parse_args(list(argv))
    client: str = args.client
    given = Path(args.config_file).expanduser() if args.config_file else None
    source = given or source_path(client, env)
    if source is None:
        return _usage(f"{client} has no standard config file on this system: --config-file")
    default_target = default_config_path(env)
    target = Path(args.write).expanduser() if args.write else default_target
    if _same(source, target):
        return _usage(f"{source} is the client's file; --write names the servers file")
    try:
        client_doc = read_json_object(source)
        imported = collect(client, server_table(client, client_doc, source), env)
        servers_doc = read_json_object(target) if target.exists() else {}
        merged, added, present = merge_servers(servers_doc, imported.servers, target)
    except ImportRefused as exc:
        return _usage(str(exc))
    # An entry already in the servers file stands for the client's only if they agree.
    table = merged[servers_root(merged)]
    same = [n for n in present if table[n] == imported.servers[n]]
    replaced = [*added, *same]
    dry = args.dry_run
    say = sys.stderr if dry else sys.stdout
    if client == "claude-code" and (note := project_note(client_doc)):
        imported.warnings.append(note)
    try:
        parse_servers(render(merged), source=str(target), environ=env)
    except ServersFileError as exc:
        imported.warnings.append(f"the daemon will refuse the servers file as it stands: {exc}")
    for warning in imported.warnings:
        print(f"exai-broker: warning: {warning}", file=sys.stderr)
    if dry:
        sys.stdout.write(render(merged))
    count = len(imported.servers) + len(imported.skipped)
    print(f"read {count} server(s) from {source} ({client})", file=say)
    print(f"imported {len(added)}: {', '.join(added) or '-'}", file=say)
    for name, reason in imported.skipped.items():
        print(f"skipped {name}: {reason}", file=say)
    for name in present:
        how = "the same entry" if name in same else "a different entry; left as it is"
        print(f"skipped {name}: already in the servers file ({how})", file=say)
    if not added:
        print(f"{target}: nothing new to write", file=say)
    elif dry:
        print(f"would write {target}", file=say)
    else:
        try:
            replace_atomically(target, render(merged))
        except OSError as exc:
            print(f"exai-broker: cannot write {target}: {exc}", file=sys.stderr)
            return ExitCode.FAILED
        print(f"wrote {target}", file=say)
    if args.rewrite_client and not replaced:
        print(f"{source}: left as it is (no entry of it is hosted)", file=say)
    elif args.rewrite_client and dry:
        print(f"would replace {', '.join(replaced)} in {source} by the shim entry", file=say)
    elif args.rewrite_client:
        try:
            name, backup = rewrite_client(client, source, replaced, imported.shims, env)
        except (ImportRefused, ConfigError, OSError) as exc:
            print(f"exai-broker: cannot rewrite {source}: {exc}", file=sys.stderr)
            return ExitCode.FAILED
        print(f"rewrote {source}: {', '.join(replaced)} -> {name} (the shim)", file=say)
        print(f"backup of the original: {backup}", file=say)
    start = "python -m broker"
    if not _same(target, default_target):
        start += f" --config {target}"
    print(f"next: start the daemon with `{start}`", file=say)
    return ExitCode.OK


def _usage(message: str) -> int:
    print(f"exai-broker: {message}", file=sys.stderr)
    return ExitCode.USAGE
