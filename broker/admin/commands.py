"""Commands that talk to a running daemon: `status` and `rotate-token`."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from broker.fleet.config import default_config_path
from broker.observe.files import HEALTH_FILE
from exai.exits import ExitCode
from exai.net import http_url, reachable_host, ws_url
from exai.settings import Settings

__all__ = ["format_status", "read_status", "rotate_token"]


def _http_base(settings: Settings) -> str:
    return http_url(reachable_host(settings.host), settings.port)


async def read_status(
    settings: Settings, timeout_s: float = 3.0
) -> tuple[dict[str, Any] | None, str]:
    """The daemon's health from GET /health, else from the health file; with the source."""
    headers = {"Authorization": f"Bearer {settings.token}"} if settings.token else {}
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    error = ""
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(f"{_http_base(settings)}/health", headers=headers) as resp,
        ):
            if resp.status in (200, 503):
                return dict(await resp.json()), "live"
            error = f"GET /health answered HTTP {resp.status}"
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        error = f"no daemon answers at {_http_base(settings)} ({type(exc).__name__})"
    path = Path(settings.log_dir) / HEALTH_FILE
    try:
        snapshot = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, error
    return dict(snapshot), f"file ({error})"


def format_status(
    snapshot: dict[str, Any] | None, source: str, environ: Mapping[str, str] | None = None
) -> tuple[str, int]:
    """A human-readable summary and the exit code: 0 healthy, 1 down. Hosted servers
    are listed but do not count: workers up and every server failed is still UP.
    `environ` places the default servers file (the process environment when None)."""
    if snapshot is None:
        return f"DOWN: {source}; no health file either", ExitCode.FAILED
    age_s = time.time() - float(snapshot.get("t", 0))
    if not source.startswith("live"):
        return (
            f"DOWN: {source}; last health snapshot is {age_s:.0f} s old "
            f"(pid {snapshot.get('pid')})",
            ExitCode.FAILED,
        )
    inflight = snapshot.get("inflight", {})
    capacity = snapshot.get("capacity", {})
    providers = ", ".join(
        f"{name} {inflight.get('providers', {}).get(name, 0)}/{cap}"
        for name, cap in capacity.get("providers", {}).items()
    )
    workers = snapshot.get("workers", [])
    live = sum(1 for w in workers if w.get("state") == "ready")
    lines = [
        f"{'DRAINING' if snapshot.get('draining') else 'UP'}: "
        f"exai-broker {snapshot.get('version')} pid {snapshot.get('pid')} "
        f"on {snapshot.get('host')}:{snapshot.get('port')}, "
        f"up {snapshot.get('uptime_s', 0):.0f} s",
        f"sessions {snapshot.get('sessions', 0)} attached, "
        f"{snapshot.get('sessions_detached', 0)} waiting to resume",
        f"in flight {inflight.get('global', 0)}/{capacity.get('global')} (per session "
        f"{capacity.get('session')}); providers: {providers}; queued {snapshot.get('queued', 0)}",
        f"workers {live}/{len(workers)} ready: "
        + ", ".join(
            f"#{w.get('slot')} pid {w.get('pid')} {w.get('state')} "
            f"inflight {w.get('inflight')} restarts {w.get('restarts')}"
            for w in workers
        ),
        f"calls {snapshot.get('calls_total', 0)}; "
        f"errors {snapshot.get('errors_by_code') or 'none'}; "
        f"metrics lines dropped {snapshot.get('metrics_dropped', 0)}; "
        f"answers dropped while detached {snapshot.get('frames_dropped', 0)}",
    ]
    for server in snapshot.get("servers") or []:
        lines.extend(_server_lines(server))
    servers_file = snapshot.get("servers_file")
    lines.append(
        f"servers file: {servers_file}"
        if servers_file
        else f"servers file: none (default location: {default_config_path(environ)})"
    )
    # A daemon hosting one server runs no workers: its server serving is what counts.
    serving = live > 0 or (
        not workers and any(s.get("state") == "ready" for s in snapshot.get("servers", []))
    )
    healthy = not snapshot.get("draining") and serving
    return "\n".join(lines), ExitCode.OK if healthy else ExitCode.FAILED


def _server_lines(server: dict[str, Any]) -> list[str]:
    """One line for a hosted server; a failed one's failure (stderr tail and all)
    follows, indented."""
    instances = server.get("instances") or []
    in_flight = sum(int(i.get("in_flight", 0)) for i in instances)
    lines = [
        f"server {server.get('name')} {server.get('state')} "
        f"prefix {server.get('prefix') or '(none)'}, instances {len(instances)}, "
        f"in flight {in_flight}, restarts {server.get('restarts', 0)}, "
        f"p50 {_ms(server.get('p50_ms'))}, p99 {_ms(server.get('p99_ms'))}"
    ]
    failure = server.get("failure")
    if server.get("state") == "failed" and failure:
        lines.extend(f"    {line}" for line in str(failure).splitlines())
    return lines


def _ms(value: Any) -> str:
    # None: no call in the recent window, so no latency to show.
    return "- ms" if value is None else f"{float(value):.1f} ms"


async def rotate_token(
    settings: Settings, old: str, new: str, timeout_s: float = 5.0
) -> tuple[bool, str]:
    """Ask the running daemon to replace its token; (ok, message)."""
    url = ws_url(reachable_host(settings.host), settings.port, "/")
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=timeout_s)) as ws,
        ):
            await ws.send_json({"op": "hello", "token": old})
            ack = json.loads(await ws.receive_str(timeout=timeout_s))
            if not ack.get("ok"):
                return False, f"the daemon refused the old token ({ack.get('error')})"
            await ws.send_json({"op": "rotate_token", "old": old, "new": new})
            reply = json.loads(await ws.receive_str(timeout=timeout_s))
    except (aiohttp.ClientError, TimeoutError, OSError, TypeError) as exc:
        return False, f"cannot reach the daemon at {url}: {type(exc).__name__}: {exc}"
    if reply.get("ok"):
        return True, (
            "token rotated: new connections need the new token. Set EXAI_WS_TOKEN to it for "
            "the daemon and every shim, or the next daemon restart brings the old one back."
        )
    error = reply.get("error") or {}
    return False, f"rotation refused: {error.get('message', reply)}"
