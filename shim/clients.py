"""`python -m shim config`: the exact MCP server entry each client reads, and merging it
into an existing config file without losing anything else."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["CLIENTS", "build_config", "config_main", "merge_config"]

CLIENTS = ("vscode", "augment", "auggie", "claude", "cursor")
_ENV_KEYS = (
    "EXAI_WS_HOST",
    "EXAI_WS_PORT",
    "EXAI_WS_TOKEN",
    "EXAI_SHIM_RPC_TIMEOUT",
    "EXAI_SHIM_AUTOSTART",
)


class ConfigError(Exception):
    """The config file cannot be merged automatically; the message says why."""


def _entry(python: str, cwd: str, env: Mapping[str, str]) -> dict[str, Any]:
    return {"command": python, "args": ["-m", "shim"], "cwd": cwd, "env": dict(env)}


def build_config(
    client: str, name: str, python: str, cwd: str, env: Mapping[str, str]
) -> dict[str, Any]:
    """The JSON block `client` expects, containing one server called `name`."""
    entry = _entry(python, cwd, env)
    if client == "vscode":
        return {"servers": {name: {"type": "stdio", **entry}}}
    if client == "augment":
        return {"augment.advanced": {"mcpServers": [{"name": name, **entry}]}}
    if client in ("auggie", "claude", "cursor"):
        return {"mcpServers": {name: entry}}
    raise ValueError(f"unknown client {client!r}; expected one of {', '.join(CLIENTS)}")


def merge_config(existing: dict[str, Any], block: dict[str, Any], client: str) -> dict[str, Any]:
    """`existing` with our server added or replaced; every other entry kept."""
    merged = dict(existing)
    if client == "augment":
        advanced = dict(merged.get("augment.advanced") or {})
        existing_servers = advanced.get("mcpServers") or []
        if not isinstance(existing_servers, list):
            raise ConfigError('"augment.advanced.mcpServers" in the existing file is not a list')
        servers = [s for s in existing_servers if isinstance(s, dict)]
        ours = block["augment.advanced"]["mcpServers"][0]
        servers = [s for s in servers if s.get("name") != ours["name"]] + [ours]
        advanced["mcpServers"] = servers
        merged["augment.advanced"] = advanced
        return merged
    key = "servers" if client == "vscode" else "mcpServers"
    table = merged.get(key) or {}
    if not isinstance(table, dict):
        raise ConfigError(f'"{key}" in the existing file is not an object')
    merged[key] = {**table, **block[key]}
    return merged


def _free_backup_name(path: Path) -> Path:
    """A backup name that never overwrites an earlier backup."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate = path.with_name(f"{path.name}.bak-{stamp}")
    counter = 1
    while candidate.exists():
        counter += 1
        candidate = path.with_name(f"{path.name}.bak-{stamp}-{counter}")
    return candidate


def write_config(path: Path, block: dict[str, Any], client: str) -> Path | None:
    """Merge into `path` (created if missing), keeping a backup; returns the backup path."""
    existing: dict[str, Any] = {}
    backup = None
    if path.exists():
        text = path.read_text(encoding="utf-8")
        if text.strip():
            try:
                existing = json.loads(text)
            except ValueError as exc:
                raise ConfigError(
                    f"{path} is not plain JSON ({exc}); it may contain comments. "
                    "Add the block printed by `python -m shim config` by hand."
                ) from None
            if not isinstance(existing, dict):
                raise ConfigError(f"{path} does not hold a JSON object")
        backup = _free_backup_name(path)
        shutil.copy2(path, backup)
    merged = merge_config(existing, block, client)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(merged, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return backup


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m shim config",
        description="Print (or merge into a file) the MCP server entry for a client.",
    )
    parser.add_argument("--client", required=True, choices=CLIENTS)
    parser.add_argument("--name", default="exai", help="server name in the client (exai)")
    parser.add_argument("--write", metavar="PATH", help="merge into this config file")
    return parser


def config_main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    args = _parser().parse_args(argv)
    env = {k: environ[k] for k in _ENV_KEYS if environ.get(k)}
    env.setdefault("EXAI_WS_HOST", "127.0.0.1")
    env.setdefault("EXAI_WS_PORT", "8765")
    python = os.path.abspath(sys.executable)
    cwd = str(Path(__file__).resolve().parents[1])
    block = build_config(args.client, args.name, python, cwd, env)
    if not args.write:
        print(json.dumps(block, indent=2))
        return 0
    try:
        backup = write_config(Path(args.write).expanduser(), block, args.client)
    except (ConfigError, OSError) as exc:
        print(f"exai-shim: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.write}" + (f" (backup: {backup})" if backup else ""))
    return 0
