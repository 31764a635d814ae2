"""Configuration: one frozen Settings value built from defaults < .env < environment < CLI.

Pure apart from reading the `.env` file and `os.environ` in `collect_environment`.
Imported by the shim too, so it must stay light (python-dotenv is imported lazily,
only when a .env file exists).
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from exai.net import is_loopback_host, ws_url
from exai.values import (
    SettingsError,
    boolean,
    folder,
    integer,
    names,
    number,
    origins,
    read_token_file,
    text,
    token,
    valid_token,
)

__all__ = [
    "DEFAULT_PROVIDER_CAPS",
    "Isolation",
    "LogFormat",
    "PoolKind",
    "Settings",
    "SettingsError",
    "ShimSettings",
    "collect_environment",
    "load_settings",
    "load_shim_settings",
    "ray_missing_message",
    "read_token_file",
    "valid_token",
]

DEFAULT_PROVIDER_CAPS = {"kimi": 6, "glm": 4}
_PROVIDER_CAP_RE = re.compile(r"^EXAI_WS_([A-Z0-9]+)_MAX_INFLIGHT$")
_NOT_PROVIDERS = {"SESSION", "GLOBAL"}
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class Isolation(enum.StrEnum):
    """Who shares a hosted server instance: every client, or only one session."""

    SHARED = "shared"
    SESSION = "session"


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


class PoolKind(enum.StrEnum):
    """Where the workers run: processes on this machine, or actors on a Ray cluster."""

    LOCAL = "local"
    RAY = "ray"


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Everything the daemon and its workers are configured with."""

    host: str = "127.0.0.1"
    port: int = 8765
    token: str = ""
    max_frame_bytes: int = 33_554_432
    ping_interval_s: float = 25.0
    ping_timeout_s: float = 10.0
    hello_timeout_s: float = 5.0
    call_timeout_s: float = 120.0
    session_max_inflight: int = 8
    global_max_inflight: int = 24
    provider_caps: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_PROVIDER_CAPS)
    )
    queue_timeout_s: float = 0.0
    # MCP clients do not retry a custom error code: a burst of theirs waits instead,
    # for less than the TypeScript SDK's 60 s request timeout, so that what they see
    # after the wait is still our OVER_CAPACITY rather than their own timeout.
    mcp_queue_timeout_s: float = 30.0
    queue_max_depth: int = 1024
    resume_grace_s: float = 60.0
    send_buffer_bytes: int = 16 * 1024 * 1024
    # What all the sessions waiting out their resume grace may hold at once.
    detached_max_bytes: int = 256 * 1024 * 1024
    detached_max_sessions: int = 256
    allowed_origins: tuple[str, ...] = ()
    workers: int = 4
    log_dir: str = "logs"
    log_level: str = "INFO"
    log_format: LogFormat = LogFormat.TEXT
    log_max_bytes: int = 10 * 1024 * 1024
    log_backups: int = 5
    diagnostic_tools: bool = False
    server: str = ""
    default_model: str = "glm-4.5-flash"
    metrics_max_bytes: int = 64 * 1024 * 1024
    metrics_backups: int = 3
    metrics_queue_max: int = 100_000
    health_interval_s: float = 2.0
    shutdown_grace_s: float = 10.0
    heartbeat_interval_s: float = 5.0
    heartbeat_timeout_s: float = 30.0
    max_calls_per_worker: int = 0
    max_connections: int = 512
    server_cmd: str = ""
    # The servers file; "" means the default one, when it exists and no server is given.
    config: str = ""
    isolation: Isolation = Isolation.SHARED
    session_idle_timeout_s: float = 600.0
    session_instances_max: int = 16
    model_tools: tuple[str, ...] = ()
    pool_kind: PoolKind = PoolKind.LOCAL
    # The Ray cluster to join; None (with RAY) starts a private one on 127.0.0.1.
    pool_address: str | None = None
    ray_lease_ttl_s: float = 15.0
    ray_actor_cpus: float = 0.0

    @property
    def url(self) -> str:
        return ws_url(self.host, self.port)

    @property
    def pool(self) -> str:
        """The pool as `--pool` spells it: local, ray, or ray:ADDRESS."""
        if self.pool_address is None:
            return str(self.pool_kind)
        return f"{self.pool_kind}:{self.pool_address}"


@dataclasses.dataclass(frozen=True, slots=True)
class ShimSettings:
    host: str = "127.0.0.1"
    port: int = 8765
    token: str = ""
    rpc_timeout_s: float = 30.0
    max_frame_bytes: int = 33_554_432
    autostart: bool = False
    log_dir: str = "logs"

    @property
    def url(self) -> str:
        return ws_url(self.host, self.port)


# --- parsers of the settings' own types (the general ones are in exai.values) ---


def _log_level(raw: str) -> str:
    value = raw.strip().upper()
    if value not in _LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(_LOG_LEVELS)}")
    return value


_E = TypeVar("_E", bound=enum.StrEnum)


def _choice(kind: type[_E]) -> Callable[[str], _E]:
    expected = f"expected one of {', '.join(kind)}"

    def parse(raw: str) -> _E:
        try:
            return kind(raw.strip().lower())
        except ValueError:
            raise ValueError(expected) from None

    return parse


def _pool(raw: str) -> tuple[PoolKind, str | None]:
    """(kind, address): `ray:ADDRESS` is a cluster to join, plain `ray` a private one."""
    value = raw.strip()
    kind, sep, address = value.partition(":")
    if value == PoolKind.LOCAL:
        return PoolKind.LOCAL, None
    if value == PoolKind.RAY:
        return PoolKind.RAY, None
    if kind == PoolKind.RAY and sep and address.strip():
        return PoolKind.RAY, address.strip()
    raise ValueError("expected local, ray, or ray:ADDRESS (a Ray cluster, e.g. ray:10.0.0.5:6379)")


_DAEMON_FIELDS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "EXAI_WS_HOST": ("host", text),
    "EXAI_WS_PORT": ("port", integer(0, 65535)),
    "EXAI_WS_TOKEN": ("token", token),
    "EXAI_WS_MAX_BYTES": ("max_frame_bytes", integer(1024)),
    "EXAI_WS_PING_INTERVAL": ("ping_interval_s", number(0, exclusive=True)),
    "EXAI_WS_PING_TIMEOUT": ("ping_timeout_s", number(0, exclusive=True)),
    "EXAI_WS_HELLO_TIMEOUT": ("hello_timeout_s", number(0, exclusive=True)),
    "EXAI_WS_CALL_TIMEOUT": ("call_timeout_s", number(0, exclusive=True)),
    "EXAI_WS_SESSION_MAX_INFLIGHT": ("session_max_inflight", integer(1)),
    "EXAI_WS_GLOBAL_MAX_INFLIGHT": ("global_max_inflight", integer(1)),
    "EXAI_WS_QUEUE_TIMEOUT": ("queue_timeout_s", number(0)),
    "EXAI_WS_MCP_QUEUE_TIMEOUT": ("mcp_queue_timeout_s", number(0)),
    "EXAI_WS_QUEUE_MAX_DEPTH": ("queue_max_depth", integer(1)),
    "EXAI_WS_RESUME_GRACE": ("resume_grace_s", number(0)),
    "EXAI_WS_SEND_BUFFER_BYTES": ("send_buffer_bytes", integer(65536)),
    "EXAI_WS_DETACHED_MAX_BYTES": ("detached_max_bytes", integer(0)),
    "EXAI_WS_DETACHED_MAX_SESSIONS": ("detached_max_sessions", integer(0)),
    "EXAI_WS_ALLOWED_ORIGINS": ("allowed_origins", origins),
    "EXAI_WORKERS": ("workers", integer(1, 256)),
    "EXAI_LOG_DIR": ("log_dir", folder),
    "EXAI_LOG_LEVEL": ("log_level", _log_level),
    "EXAI_LOG_FORMAT": ("log_format", _choice(LogFormat)),
    "EXAI_LOG_MAX_BYTES": ("log_max_bytes", integer(1024)),
    "EXAI_LOG_BACKUPS": ("log_backups", integer(0, 100)),
    "EXAI_DIAGNOSTIC_TOOLS": ("diagnostic_tools", boolean),
    "EXAI_SERVER": ("server", text),
    "DEFAULT_MODEL": ("default_model", text),
    "EXAI_METRICS_MAX_BYTES": ("metrics_max_bytes", integer(4096)),
    "EXAI_METRICS_BACKUPS": ("metrics_backups", integer(0, 100)),
    "EXAI_METRICS_QUEUE_MAX": ("metrics_queue_max", integer(1)),
    "EXAI_HEALTH_INTERVAL": ("health_interval_s", number(0, exclusive=True)),
    "EXAI_SHUTDOWN_GRACE": ("shutdown_grace_s", number(0)),
    "EXAI_WORKER_HEARTBEAT_INTERVAL": ("heartbeat_interval_s", number(0, exclusive=True)),
    "EXAI_WORKER_HEARTBEAT_TIMEOUT": ("heartbeat_timeout_s", number(0, exclusive=True)),
    "EXAI_MAX_CALLS_PER_WORKER": ("max_calls_per_worker", integer(0)),
    "EXAI_WS_MAX_CONNECTIONS": ("max_connections", integer(1)),
    "EXAI_SERVER_CMD": ("server_cmd", text),
    "EXAI_CONFIG": ("config", text),
    "EXAI_ISOLATION": ("isolation", _choice(Isolation)),
    "EXAI_SESSION_IDLE_TIMEOUT": ("session_idle_timeout_s", number(0, exclusive=True)),
    "EXAI_SESSION_INSTANCES_MAX": ("session_instances_max", integer(1)),
    "EXAI_MODEL_TOOLS": ("model_tools", names),
    # Two fields, split in load_settings; `Settings.pool` spells them as one again.
    "EXAI_POOL": ("pool", _pool),
    "EXAI_RAY_LEASE_TTL": ("ray_lease_ttl_s", number(1)),
    "EXAI_RAY_ACTOR_CPUS": ("ray_actor_cpus", number(0)),
}

_SHIM_FIELDS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "EXAI_WS_HOST": ("host", text),
    "EXAI_WS_PORT": ("port", integer(1, 65535)),
    "EXAI_WS_TOKEN": ("token", token),
    "EXAI_SHIM_RPC_TIMEOUT": ("rpc_timeout_s", number(0, exclusive=True)),
    "EXAI_WS_MAX_BYTES": ("max_frame_bytes", integer(1024)),
    "EXAI_SHIM_AUTOSTART": ("autostart", boolean),
    "EXAI_LOG_DIR": ("log_dir", folder),
}

# CLI flag -> environment variable it overrides, so flags and variables share one parser.
CLI_TO_ENV = {
    "host": "EXAI_WS_HOST",
    "port": "EXAI_WS_PORT",
    "token": "EXAI_WS_TOKEN",
    "workers": "EXAI_WORKERS",
    "log_dir": "EXAI_LOG_DIR",
    "log_level": "EXAI_LOG_LEVEL",
    "log_format": "EXAI_LOG_FORMAT",
    "server": "EXAI_SERVER",
    "max_calls_per_worker": "EXAI_MAX_CALLS_PER_WORKER",
    "server_cmd": "EXAI_SERVER_CMD",
    "config": "EXAI_CONFIG",
    "isolation": "EXAI_ISOLATION",
    "pool": "EXAI_POOL",
}


def collect_environment(env_file: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """The merged environment: `.env` values overridden by the process environment.

    `env_file` None means `./.env` if present. An explicit file that does not exist is
    an error, since the user asked for it by name.
    """
    merged: dict[str, str] = {}
    path = Path(env_file) if env_file is not None else Path(".env")
    if env_file is not None and not path.is_file():
        raise SettingsError(f"--env-file {path}: no such file")
    if path.is_file():
        from dotenv import dotenv_values

        merged.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    merged.update(os.environ)
    return merged


def _parse_fields(
    fields: Mapping[str, tuple[str, Callable[[str], Any]]], environ: Mapping[str, str]
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for var, (attr, parse) in fields.items():
        raw = environ.get(var)
        if raw is None:
            continue
        try:
            values[attr] = parse(raw)
        except ValueError as exc:
            shown = "<hidden>" if "TOKEN" in var or "KEY" in var else repr(raw)
            raise SettingsError(f"{var}={shown}: {exc}") from None
    return values


def _provider_caps(environ: Mapping[str, str]) -> dict[str, int]:
    caps = dict(DEFAULT_PROVIDER_CAPS)
    parse = integer(1)
    for var, raw in environ.items():
        match = _PROVIDER_CAP_RE.match(var)
        if not match or match.group(1) in _NOT_PROVIDERS:
            continue
        try:
            caps[match.group(1).lower()] = parse(raw)
        except ValueError as exc:
            raise SettingsError(f"{var}={raw!r}: {exc}") from None
    return caps


def worker_overrides(settings: Settings) -> dict[str, str]:
    """Environment values that make a worker see the daemon's resolved settings.

    Workers rebuild Settings from their environment; values the daemon took from CLI
    flags (which may override a bad environment value) must reach them too.
    """
    out: dict[str, str] = {}
    for var in CLI_TO_ENV.values():
        attr = _DAEMON_FIELDS[var][0]
        value = getattr(settings, attr)
        out[var] = ",".join(value) if isinstance(value, tuple) else str(value)
    # Workers have no use for the token; keep it out of their (and their children's) env.
    out["EXAI_WS_TOKEN"] = ""
    return out


def load_settings(environ: Mapping[str, str], cli: Mapping[str, object] | None = None) -> Settings:
    """Build Settings from a merged environment and CLI flags (flags win)."""
    env = dict(environ)
    for flag, value in (cli or {}).items():
        if value is not None and flag in CLI_TO_ENV:
            env[CLI_TO_ENV[flag]] = str(value)
    values = _parse_fields(_DAEMON_FIELDS, env)
    if "pool" in values:
        values["pool_kind"], values["pool_address"] = values.pop("pool")
    values["provider_caps"] = _provider_caps(env)
    host = values.get("host", "127.0.0.1")
    if not host:
        raise SettingsError("EXAI_WS_HOST='': expected a host name or address")
    if not is_loopback_host(host) and not values.get("token"):
        raise SettingsError(
            f"EXAI_WS_HOST={host!r}: listening beyond loopback needs EXAI_WS_TOKEN, "
            "or any machine that can reach this port could run tools and spend provider "
            "credits; set a token or use 127.0.0.1"
        )
    return Settings(**values)


def load_shim_settings(environ: Mapping[str, str]) -> ShimSettings:
    """Build the shim's settings from a merged environment."""
    return ShimSettings(**_parse_fields(_SHIM_FIELDS, environ))


def ray_missing_message(pool: str) -> str:
    """What to say when `--pool ray…` is asked for without the ray extra installed."""
    return f"--pool {pool} needs Ray, which is not installed: pip install 'exai-broker[ray]'"
