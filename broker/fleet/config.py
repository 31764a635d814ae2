"""The servers file: which MCP servers the daemon hosts, and how. Pure, but for
`load_servers`, which reads the file it is given.

The format is the one Claude Desktop, Cursor and Claude Code already use::

    {"mcpServers": {
        "git": {"command": "uvx", "args": ["mcp-server-git"], "env": {"GIT_DIR": "${HOME}/src"}},
        "docs": {"url": "https://example.com/mcp",
                 "headers": {"Authorization": "Bearer ${DOCS_TOKEN}"},
                 "exai": {"isolation": "session", "tools": {"deny": ["delete_*"]}}}
    }}

Each entry is a stdio server (`command`, `args`, `env`, `cwd`) or a remote Streamable
HTTP server (`url`, `headers`); a `type` of "stdio", "http" or "streamable-http" may say
which ("sse" is refused). VS Code's root key `servers` is accepted instead of
`mcpServers`, `"disabled": true` skips an entry, and a null value is the same as leaving
the key out. `${VAR}`, `${VAR:-default}` (and VS Code's `${env:VAR}`) are expanded in
command, args, cwd, url and the values of env and headers.

Our own options live under `exai`, all optional:

    isolation    "shared" (default): one set of instances for every client;
                 "session": an instance per client session
    instances    how many shared instances to run, an integer >= 1 (default 1)
    maxInflight  the most calls in flight on this server at once, >= 1 (default none)
    prefix       clients see PREFIX__TOOL; default the server's name in [A-Za-z0-9_-],
                 "" for no prefix (at most one server)
    tools        {"allow": [...], "deny": [...]}: names or globs matched against the
                 server's own tool names; no allow list allows all, deny wins
    startup      "eager" (default, with the daemon) or "lazy" (on first use)

Unknown keys are reported in `ServersConfig.notes` and otherwise ignored, since other
clients keep their own keys in the same file. An invalid value raises ConfigError, whose
message names the file, the server and the key.
"""

from __future__ import annotations

import dataclasses
import enum
import fnmatch
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import NamedTuple, TypeVar
from urllib.parse import urlsplit

from exai.settings import Isolation

__all__ = [
    "MAX_TOOL_NAME",
    "SEPARATOR",
    "ConfigError",
    "ServerSpec",
    "ServersConfig",
    "Startup",
    "changed_servers",
    "check_tool_names",
    "default_config_path",
    "load_servers",
    "parse_servers",
]

SEPARATOR = "__"
# Several clients (and model APIs behind them) refuse longer tool names.
MAX_TOOL_NAME = 64

_ROOT_KEYS = ("mcpServers", "servers")
_ENTRY_KEYS = frozenset(
    {"command", "args", "env", "cwd", "url", "headers", "type", "disabled", "exai"}
)
_STDIO_ONLY: tuple[str, ...] = ("args", "env", "cwd")
_REMOTE_ONLY: tuple[str, ...] = ("headers",)
_EXAI_KEYS = frozenset({"isolation", "instances", "maxInflight", "prefix", "tools", "startup"})
_TOOLS_KEYS = frozenset({"allow", "deny"})
_STDIO_TYPES = frozenset({"stdio"})
_HTTP_TYPES = frozenset({"http", "streamable-http"})
_PREFIX_RE = re.compile(r"[A-Za-z0-9_-]*")
_OUTSIDE_PREFIX = re.compile(r"[^A-Za-z0-9_-]")
_UNDERSCORES = re.compile(r"_{2,}")
_VARIABLE = re.compile(r"\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_APP_DIR = "exai-broker"
_FILE_NAME = "servers.json"


class ConfigError(ValueError):
    """An unusable servers file; the message is the one line the user sees."""


class Startup(enum.StrEnum):
    """When a server's instances start: with the daemon, or at its first call."""

    LAZY = "lazy"
    EAGER = "eager"


@dataclasses.dataclass(frozen=True, slots=True)
class ServerSpec:
    """One server of the file, validated, with its variables expanded."""

    name: str
    command: tuple[str, ...] | None
    env: tuple[tuple[str, str], ...]
    cwd: str | None
    url: str | None
    headers: tuple[tuple[str, str], ...]
    isolation: Isolation
    instances: int
    max_inflight: int | None
    prefix: str
    allow: tuple[str, ...] | None
    deny: tuple[str, ...]
    startup: Startup

    @property
    def remote(self) -> bool:
        return self.url is not None

    def allows(self, tool: str) -> bool:
        """Whether the server's own tool `tool` is exposed to clients."""
        if any(fnmatch.fnmatchcase(tool, pattern) for pattern in self.deny):
            return False
        return self.allow is None or any(fnmatch.fnmatchcase(tool, p) for p in self.allow)

    def exposed_name(self, tool: str) -> str:
        """The name clients see for the server's own tool `tool`."""
        return f"{self.prefix}{SEPARATOR}{tool}" if self.prefix else tool

    def own_name(self, exposed: str) -> str | None:
        """The server's own name for a name clients call, or None when that is not one
        of this server's exposed tools (a denied tool is not). A server without a prefix
        claims every name it allows, so a router asks the prefixed servers first."""
        tool = exposed
        if self.prefix:
            head = self.prefix + SEPARATOR
            if not exposed.startswith(head):
                return None
            tool = exposed[len(head) :]
        return tool if tool and self.allows(tool) else None


@dataclasses.dataclass(frozen=True, slots=True)
class ServersConfig:
    servers: dict[str, ServerSpec]
    notes: tuple[str, ...]
    source: str


def load_servers(
    path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
) -> ServersConfig:
    """Read and parse the servers file at `path`; see `parse_servers`."""
    try:
        # utf-8-sig: Windows editors like to start a file with a byte-order mark.
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the servers file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (bad byte at offset {exc.start})") from None
    return parse_servers(text, source=str(path), environ=environ)


def parse_servers(
    text: str, *, source: str = "<text>", environ: Mapping[str, str] | None = None
) -> ServersConfig:
    """Parse a servers file's text; `${VAR}` is looked up in `environ` (default the
    process environment). Raises ConfigError; `source` names the file in messages."""
    variables = os.environ if environ is None else environ
    data = _decode(text, source)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a JSON object, got {_shown(data)}")
    roots = [key for key in _ROOT_KEYS if key in data]
    if len(roots) > 1:
        raise ConfigError(f'{source}: has both "mcpServers" and "servers"; keep one of them')
    if not roots:
        raise ConfigError(f'{source}: no "mcpServers" object at the top level')
    entries = data[roots[0]]
    if not isinstance(entries, dict):
        raise ConfigError(f'{source}: "{roots[0]}" must be an object, got {_shown(entries)}')
    notes = [f'{source}: unknown key "{key}" (ignored)' for key in data if key not in _ROOT_KEYS]
    servers: dict[str, ServerSpec] = {}
    for name, entry in entries.items():
        if not name.strip():
            raise ConfigError(f"{source}: a server name must not be empty")
        where = f'{source}: server "{name}"'
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be an object, got {_shown(entry)}")
        disabled = entry.get("disabled")
        if disabled is not None and not isinstance(disabled, bool):
            raise ConfigError(f"{where}: disabled must be true or false, got {_shown(disabled)}")
        if disabled:
            # Not validated: a server is often disabled because it does not work yet.
            notes.append(f"{where}: disabled (skipped)")
            continue
        servers[name] = _server(name, entry, where, variables, notes)
    _check_prefixes(servers, source)
    return ServersConfig(servers, tuple(notes), source)


def changed_servers(
    old: ServersConfig, new: ServersConfig
) -> tuple[list[str], list[str], list[str]]:
    """(added, removed, changed) server names going from `old` to `new`; only the
    changed ones need a restart."""
    added = [name for name in new.servers if name not in old.servers]
    removed = [name for name in old.servers if name not in new.servers]
    changed = [
        name
        for name, spec in new.servers.items()
        if name in old.servers and old.servers[name] != spec
    ]
    return added, removed, changed


def check_tool_names(spec: ServerSpec, tools: Iterable[str]) -> list[str]:
    """What is wrong with the names clients would see for these tools of `spec`'s
    server; tools it denies are never shown, so their names do not matter."""
    problems = []
    for tool in tools:
        if not spec.allows(tool):
            continue
        exposed = spec.exposed_name(tool)
        if len(exposed) > MAX_TOOL_NAME:
            problems.append(
                f'server "{spec.name}": tool "{tool}" is exposed as "{exposed}", '
                f"{len(exposed)} characters; several clients refuse names over "
                f"{MAX_TOOL_NAME} (shorten exai.prefix, or deny the tool)"
            )
    return problems


def default_config_path(
    environ: Mapping[str, str] | None = None, platform: str | None = None
) -> Path:
    """Where the servers file lives when none is named: the platform's per-user
    configuration folder, then exai-broker/servers.json."""
    env = os.environ if environ is None else environ
    platform = sys.platform if platform is None else platform
    if platform == "win32":
        appdata = env.get("APPDATA")
        base = Path(appdata) if appdata else _home(env, "USERPROFILE") / "AppData" / "Roaming"
    elif platform == "darwin":
        base = _home(env, "HOME") / "Library" / "Application Support"
    else:
        xdg = env.get("XDG_CONFIG_HOME", "")
        # The XDG spec says a relative value is invalid and to be ignored.
        base = Path(xdg) if os.path.isabs(xdg) else _home(env, "HOME") / ".config"
    return base / _APP_DIR / _FILE_NAME


# --- one entry ---


class _Transport(NamedTuple):
    """The fields of ServerSpec that say how to reach the server, in its order."""

    command: tuple[str, ...] | None = None
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None
    url: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


def _server(
    name: str, entry: dict[str, object], where: str, variables: Mapping[str, str], notes: list[str]
) -> ServerSpec:
    notes.extend(
        f'{where}: unknown key "{key}" (ignored)' for key in entry if key not in _ENTRY_KEYS
    )
    transport = _transport(entry, where, variables, notes)
    exai = entry.get("exai")
    if exai is None:
        exai = {}
    if not isinstance(exai, dict):
        raise ConfigError(f"{where}: exai must be an object, got {_shown(exai)}")
    notes.extend(
        f'{where}: unknown key "exai.{key}" (ignored)' for key in exai if key not in _EXAI_KEYS
    )
    isolation = _option(exai, "isolation", where, Isolation.SHARED, _member(Isolation))
    if exai.get("instances") is not None and isolation is not Isolation.SHARED:
        notes.append(f'{where}: exai.instances applies only to isolation "shared" (ignored)')
    prefix = exai.get("prefix")
    allow, deny = _tools(exai.get("tools"), where, notes)
    return ServerSpec(
        name,
        *transport,
        isolation=isolation,
        instances=_option(exai, "instances", where, 1, _count),
        max_inflight=_option(exai, "maxInflight", where, None, _count),
        prefix=_default_prefix(name, where) if prefix is None else _prefix(prefix, where),
        allow=allow,
        deny=deny,
        startup=_option(exai, "startup", where, Startup.EAGER, _member(Startup)),
    )


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


def _check_prefixes(servers: Mapping[str, ServerSpec], source: str) -> None:
    owners: dict[str, str] = {}
    for name, spec in servers.items():
        other = owners.setdefault(spec.prefix, name)
        if other == name:
            continue
        if not spec.prefix:
            raise ConfigError(
                f'{source}: servers "{other}" and "{name}" both have exai.prefix ""; at most '
                "one server may go without a prefix, or their tool names could clash"
            )
        raise ConfigError(
            f'{source}: servers "{other}" and "{name}" both have the tool prefix '
            f'"{spec.prefix}"; set a different exai.prefix on one of them'
        )


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


def _home(env: Mapping[str, str], variable: str) -> Path:
    home = env.get(variable)
    return Path(home) if home else Path.home()
