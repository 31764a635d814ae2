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

The checks of each value, one by one, are in `broker.fleet.entry`.
"""

from __future__ import annotations

import dataclasses
import enum
import fnmatch
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from broker.fleet.entry import (
    MAX_TOOL_NAME,
    SEPARATOR,
    ConfigError,
    _count,
    _decode,
    _default_prefix,
    _member,
    _option,
    _prefix,
    _shown,
    _tools,
    _transport,
)
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

_ROOT_KEYS = ("mcpServers", "servers")
_ENTRY_KEYS = frozenset(
    {"command", "args", "env", "cwd", "url", "headers", "type", "disabled", "exai"}
)
_EXAI_KEYS = frozenset({"isolation", "instances", "maxInflight", "prefix", "tools", "startup"})
_APP_DIR = "exai-broker"
_FILE_NAME = "servers.json"


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
    config = parse_servers(text, source=str(path), environ=environ)
    # A relative cwd means one next to the file, wherever the daemon was started.
    base = Path(path).expanduser().resolve().parent
    servers = {
        name: dataclasses.replace(spec, cwd=str(base / Path(spec.cwd).expanduser()))
        if spec.cwd is not None and not Path(spec.cwd).expanduser().is_absolute()
        else spec
        for name, spec in config.servers.items()
    }
    return dataclasses.replace(config, servers=servers)


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


def _home(env: Mapping[str, str], variable: str) -> Path:
    home = env.get(variable)
    return Path(home) if home else Path.home()
