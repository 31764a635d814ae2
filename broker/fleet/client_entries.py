"""One client's MCP server entries, turned into servers-file entries. Pure: it is given
the client's table as decoded JSON and reads no file.

Each entry keeps command/args/env/cwd or url/headers. SSE entries (VS Code and Claude
Code `type: sse`, Gemini `url`) are skipped: the daemon speaks stdio and Streamable
HTTP to what it hosts. Gemini's `httpUrl` becomes `url`, its includeTools/excludeTools
the entry's `exai.tools` allow/deny lists. The shim's own entry is never imported: the
daemon would host itself. VS Code's `${input:...}` values are kept verbatim, with a
warning, since the daemon cannot ask for them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = ["Imported", "collect", "convert", "is_shim", "project_note"]

_KEPT = ("command", "args", "env", "cwd", "url", "headers", "disabled", "exai")
_HTTP_TYPES = ("http", "streamable-http")
# Read and turned into kept keys, so never reported as dropped.
_CONSUMED = ("type", "httpUrl", "includeTools", "excludeTools")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_SHIM_COMMAND = "exai-shim"
_DEFAULT_PORT = 8765


@dataclass
class Imported:
    """What one client file gives: entries to host, and what was left out and why."""

    servers: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    shims: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _words(entry: Mapping[str, Any]) -> list[str]:
    args = entry.get("args")
    words = [entry.get("command"), *(args if isinstance(args, list) else [])]
    return [w for w in words if isinstance(w, str)]


def is_shim(entry: Mapping[str, Any], environ: Mapping[str, str]) -> bool:
    """Does `entry` start the shim, or reach this daemon's Streamable HTTP endpoint?"""
    words = _words(entry)
    for i, word in enumerate(words):
        program = re.split(r"[\\/]", word)[-1].lower().removesuffix(".exe")
        if program == _SHIM_COMMAND or word == "-mshim":
            return True
        if word == "-m" and words[i + 1 : i + 2] == ["shim"]:
            return True
    port_text = environ.get("EXAI_WS_PORT") or str(_DEFAULT_PORT)
    port = int(port_text) if port_text.isdigit() else _DEFAULT_PORT
    hosts = {*_LOOPBACK, (environ.get("EXAI_WS_HOST") or "127.0.0.1").lower()}
    for key in ("url", "httpUrl", "serverUrl"):
        url = entry.get(key)
        if not isinstance(url, str):
            continue
        try:
            parts = urlsplit(url)
            url_port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            continue
        # Other local servers serve /mcp too: only the daemon's own port counts.
        if parts.hostname in hosts and parts.path.rstrip("/") == "/mcp" and url_port == port:
            return True
    return False


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _is_str_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)


def _from_gemini(entry: dict[str, Any], notes: list[str]) -> None:
    """Gemini's spelling, in place: httpUrl is the Streamable HTTP address, the tool
    lists become exai.tools."""
    if "httpUrl" in entry:
        # Gemini's precedence: httpUrl, then url, then command.
        shadowed = [k for k in ("url", "command", "args", "env", "cwd") if k in entry]
        for key in shadowed:
            del entry[key]
        if shadowed:
            notes.append(f"dropped {', '.join(shadowed)}: Gemini uses httpUrl first")
        entry["url"] = entry.pop("httpUrl")
    tools: dict[str, Any] = {}
    for gemini_key, verdict in (("includeTools", "allow"), ("excludeTools", "deny")):
        if gemini_key in entry:
            if not _is_str_list(entry[gemini_key]):
                raise ValueError(f"{gemini_key}: expected a list of tool names")
            tools[verdict] = entry[gemini_key]
    if tools:
        exai = entry.get("exai")
        entry["exai"] = {**(exai if isinstance(exai, dict) else {}), "tools": tools}


_CHECKS: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("command", lambda v: isinstance(v, str) and bool(v.strip()), "a non-empty string"),
    ("url", lambda v: isinstance(v, str) and bool(v.strip()), "a non-empty string"),
    ("args", lambda v: isinstance(v, list) and all(isinstance(a, str) for a in v), "a list"),
    ("env", lambda v: _is_str_map(v), "an object of strings"),
    ("headers", lambda v: _is_str_map(v), "an object of strings"),
    ("cwd", lambda v: isinstance(v, str), "a string"),
    ("disabled", lambda v: isinstance(v, bool), "true or false"),
    ("exai", lambda v: isinstance(v, dict), "an object"),
)


def convert(client: str, raw: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The servers-file entry for one client entry, and notes about what changed.

    Raises ValueError with the reason when the entry cannot be hosted."""
    entry = dict(raw)
    notes: list[str] = []
    kind = entry.get("type")
    gemini_sse = "url" in entry and "httpUrl" not in entry and kind not in _HTTP_TYPES
    if kind == "sse" or (client == "gemini" and gemini_sse):
        raise ValueError("SSE transport, which the daemon does not host")
    if client == "gemini":
        _from_gemini(entry, notes)
    dropped = sorted(k for k in entry if k not in _KEPT and k not in _CONSUMED)
    if dropped:
        notes.append(f"dropped {', '.join(dropped)} (no servers-file equivalent)")
    # null means unset, to the servers file as to the clients.
    out = {k: entry[k] for k in _KEPT if entry.get(k) is not None}
    if ("command" in out) == ("url" in out):
        raise ValueError("expected either a command or a url")
    for key, valid, expected in _CHECKS:
        if key in out and not valid(out[key]):
            raise ValueError(f"{key}: expected {expected}")
    return out, notes


def collect(client: str, table: Mapping[str, Any], environ: Mapping[str, str]) -> Imported:
    """Sort a client's servers into those to host and those left out."""
    result = Imported()
    for name, raw in table.items():
        if not isinstance(raw, dict):
            result.skipped[name] = "not an object"
            continue
        if is_shim(raw, environ):
            result.shims.append(name)
            result.skipped[name] = "the shim's own entry (the daemon must not host itself)"
            continue
        try:
            entry, notes = convert(client, raw)
        except ValueError as exc:
            result.skipped[name] = str(exc)
            continue
        result.warnings += [f"{name}: {note}" for note in notes]
        if client == "vscode" and any("${input:" in s for s in _strings(entry)):
            result.warnings.append(
                f"{name}: ${{input:...}} is asked for by VS Code when it starts the server; "
                "the daemon cannot ask, so it is kept verbatim: put the real value in the "
                "servers file"
            )
        result.servers[name] = entry
    return result


def project_note(document: Mapping[str, Any]) -> str | None:
    """Claude Code keeps per-project servers in the same file; say they stay behind."""
    projects = document.get("projects")
    if not isinstance(projects, dict):
        return None
    with_servers = [p for p, v in projects.items() if isinstance(v, dict) and v.get("mcpServers")]
    if not with_servers:
        return None
    return (
        f"{len(with_servers)} project(s) in this file have their own servers "
        "(projects.*.mcpServers); only the top-level ones are imported"
    )
