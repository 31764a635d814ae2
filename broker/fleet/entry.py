"""One mcpServers entry, checked value by value: how to reach the server (command, args,
env, cwd or url, headers, with `${VAR}` expanded) and each exai option, plus the JSON
decoding of the whole file. `broker.fleet.config` puts the results together into a
ServerSpec. Pure.

Every check raises ConfigError, whose message names the file, the server and the key;
a value is quoted as it was written, never as it expanded to.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable, Mapping
from typing import NamedTuple, TypeVar
from urllib.parse import urlsplit

__all__ = ["MAX_TOOL_NAME", "SEPARATOR", "ConfigError"]

SEPARATOR = "__"
# Several clients (and model APIs behind them) refuse longer tool names.
MAX_TOOL_NAME = 64

_STDIO_ONLY: tuple[str, ...] = ("args", "env", "cwd")
_REMOTE_ONLY: tuple[str, ...] = ("headers",)
_TOOLS_KEYS = frozenset({"allow", "deny"})
_STDIO_TYPES = frozenset({"stdio"})
_HTTP_TYPES = frozenset({"http", "streamable-http"})
_PREFIX_RE = re.compile(r"[A-Za-z0-9_-]*")
_OUTSIDE_PREFIX = re.compile(r"[^A-Za-z0-9_-]")
_UNDERSCORES = re.compile(r"_{2,}")
_VARIABLE = re.compile(r"\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """An unusable servers file; the message is the one line the user sees."""


# --- how to reach the server ---


class _Transport(NamedTuple):
    """The fields of ServerSpec that say how to reach the server, in its order."""

    command: tuple[str, ...] | None = None
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None
    url: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


def _transport(
    entry: dict[str, object], where: str, variables: Mapping[str, str], notes: list[str]
) -> _Transport:
    def expand(value: str, key: str) -> str:
        return _expand(value, key, where, variables)

    remote = _is_remote(entry, where)
    ignored = _STDIO_ONLY if remote else _REMOTE_ONLY
    notes.extend(
        f'{where}: "{key}" applies only to {"stdio" if remote else "remote"} servers (ignored)'
        for key in ignored
        if entry.get(key) is not None
    )
    if remote:
        headers = _pairs(entry.get("headers"), "headers", where, expand)
        return _Transport(url=_url(entry["url"], where, expand), headers=headers)
    env = _pairs(entry.get("env"), "env", where, expand)
    for key, _ in env:
        if "=" in key or "\0" in key:
            raise ConfigError(f'{where}: env key "{key}" is not a variable name')
    cwd = entry.get("cwd")
    if cwd is not None:
        cwd = expand(_string(cwd, "cwd", where), "cwd")
    return _Transport(_argv(entry["command"], entry.get("args"), where, expand), env, cwd)


def _is_remote(entry: dict[str, object], where: str) -> bool:
    kind = entry.get("type")
    if kind == "sse":
        raise ConfigError(
            f'{where}: type "sse" is not supported: only Streamable HTTP remotes are '
            '(type "http"); many SSE servers also serve it, often at /mcp instead of /sse'
        )
    if kind is not None and kind not in _STDIO_TYPES | _HTTP_TYPES:
        raise ConfigError(
            f'{where}: type must be "stdio", "http" or "streamable-http", got {_shown(kind)}'
        )
    has_command = entry.get("command") is not None
    has_url = entry.get("url") is not None
    if has_command and has_url:
        raise ConfigError(f'{where}: has both "command" and "url"; a server is one or the other')
    if not has_command and not has_url:
        raise ConfigError(f'{where}: needs "command" (a stdio server) or "url" (a remote server)')
    if kind in _STDIO_TYPES and has_url:
        raise ConfigError(f'{where}: type "stdio" needs "command", not "url"')
    if kind in _HTTP_TYPES and has_command:
        raise ConfigError(f'{where}: type "{kind}" needs "url", not "command"')
    return has_url


def _argv(
    raw_command: object, raw_args: object, where: str, expand: Callable[[str, str], str]
) -> tuple[str, ...]:
    command = expand(_string(raw_command, "command", where), "command")
    if not command.strip():
        raise ConfigError(f"{where}: command must not be empty")
    if raw_args is None:
        return (command,)
    if not isinstance(raw_args, list):
        raise ConfigError(f"{where}: args must be an array of strings, got {_shown(raw_args)}")
    args = [
        expand(_string(arg, f"args[{i}]", where), f"args[{i}]") for i, arg in enumerate(raw_args)
    ]
    return (command, *args)


def _url(raw: object, where: str, expand: Callable[[str, str], str]) -> str:
    written = _string(raw, "url", where)
    url = expand(written, "url")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        # What was written, not what it expanded to, which may hold a secret.
        raise ConfigError(
            f"{where}: url must be an http:// or https:// address, got {_shown(written)}"
        )
    return url


def _pairs(
    raw: object, key: str, where: str, expand: Callable[[str, str], str]
) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {key} must be an object of strings, got {_shown(raw)}")
    pairs = []
    for name, value in raw.items():
        if not name:
            raise ConfigError(f"{where}: {key} has an empty name")
        field = f"{key}.{name}"
        pairs.append((name, expand(_string(value, field, where), field)))
    return tuple(sorted(pairs))


def _expand(value: str, key: str, where: str, variables: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        variable, default = match.group(1), match.group(2)
        # Like Claude Code: a variable set to "" is set; only an unset one takes the default.
        found = variables.get(variable)
        if found is not None:
            return found
        if default is not None:
            return default
        raise ConfigError(
            f"{where}: {key} uses ${{{variable}}}, which is not set "
            f"(set it, or give a default: ${{{variable}:-value}})"
        )

    return _VARIABLE.sub(replace, value)


# --- the exai options ---

_T = TypeVar("_T")


def _option(
    exai: dict[str, object],
    key: str,
    where: str,
    default: _T,
    parse: Callable[[object, str, str], _T],
) -> _T:
    value = exai.get(key)
    return default if value is None else parse(value, f"exai.{key}", where)


def _tools(
    raw: object, where: str, notes: list[str]
) -> tuple[tuple[str, ...] | None, tuple[str, ...]]:
    if raw is None:
        return None, ()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: exai.tools must be an object, got {_shown(raw)}")
    notes.extend(
        f'{where}: unknown key "exai.tools.{key}" (ignored)'
        for key in raw
        if key not in _TOOLS_KEYS
    )
    allow = raw.get("allow")
    deny = raw.get("deny")
    return (
        None if allow is None else _patterns(allow, "exai.tools.allow", where),
        () if deny is None else _patterns(deny, "exai.tools.deny", where),
    )


def _default_prefix(name: str, where: str) -> str:
    prefix = _UNDERSCORES.sub("_", _OUTSIDE_PREFIX.sub("_", name)).strip("_")
    if not prefix:
        raise ConfigError(
            f"{where}: the name has no letter, digit or '-' to make a tool prefix of; "
            "set exai.prefix"
        )
    _check_length(prefix, where)
    return prefix


def _prefix(raw: object, where: str) -> str:
    prefix = _string(raw, "exai.prefix", where)
    if not _PREFIX_RE.fullmatch(prefix):
        raise ConfigError(
            f"{where}: exai.prefix may hold only letters, digits, '_' and '-', got {_shown(raw)}"
        )
    if SEPARATOR in prefix or prefix.endswith("_"):
        # Either would make PREFIX__TOOL ambiguous to split back into prefix and tool.
        raise ConfigError(
            f"{where}: exai.prefix must not contain '{SEPARATOR}' or end with '_', "
            f"got {_shown(raw)}"
        )
    _check_length(prefix, where)
    return prefix


def _check_length(prefix: str, where: str) -> None:
    longest = MAX_TOOL_NAME - len(SEPARATOR) - 1
    if len(prefix) > longest:
        raise ConfigError(
            f'{where}: the tool prefix "{prefix}" is {len(prefix)} characters, which leaves no '
            f"room for tool names within {MAX_TOOL_NAME}; set an exai.prefix of at most {longest}"
        )


def _patterns(raw: object, key: str, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list):
        raise ConfigError(
            f"{where}: {key} must be an array of tool names or globs, got {_shown(raw)}"
        )
    patterns = []
    for i, item in enumerate(raw):
        if not isinstance(item, str) or not item:
            raise ConfigError(f"{where}: {key}[{i}] must be a non-empty string, got {_shown(item)}")
        patterns.append(item)
    return tuple(patterns)


# --- values ---

_E = TypeVar("_E", bound=enum.StrEnum)


def _member(kind: type[_E]) -> Callable[[object, str, str], _E]:
    choices = " or ".join(f'"{member}"' for member in kind)

    def parse(raw: object, key: str, where: str) -> _E:
        if isinstance(raw, str):
            try:
                return kind(raw)
            except ValueError:
                pass
        raise ConfigError(f"{where}: {key} must be {choices}, got {_shown(raw)}")

    return parse


def _count(raw: object, key: str, where: str) -> int:
    # bool is an int to Python, but `true` is not a count to anyone writing JSON.
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        raise ConfigError(f"{where}: {key} must be an integer >= 1, got {_shown(raw)}")
    return raw


def _string(raw: object, key: str, where: str) -> str:
    if not isinstance(raw, str):
        raise ConfigError(f"{where}: {key} must be a string, got {_shown(raw)}")
    return raw


def _shown(value: object) -> str:
    """A value as the user wrote it in JSON; containers by their kind only."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    shown = json.dumps(value, ensure_ascii=False)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _decode(text: str, source: str) -> object:
    def unique(pairs: list[tuple[str, object]]) -> dict[str, object]:
        # json keeps the last of two equal keys without a word; a pasted entry would
        # silently replace the one above it.
        found: dict[str, object] = {}
        for key, value in pairs:
            if key in found:
                raise ConfigError(f'{source}: key "{key}" appears twice in one object')
            found[key] = value
        return found

    try:
        return json.loads(text, object_pairs_hook=unique)
    except json.JSONDecodeError as exc:
        hint = " (JSON has no comments)" if text[exc.pos : exc.pos + 2] in ("//", "/*") else ""
        raise ConfigError(
            f"{source}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}{hint}"
        ) from None
