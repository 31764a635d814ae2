"""Processes and memory of a set of stdio servers, with every client starting its own
copies (the status quo) and with one daemon hosting them for every client.

Status quo: each client starts each server, runs the MCP handshake, lists its tools
and makes one call, all clients at once. Daemon: one daemon (`--workers 1`) hosts the
servers from a servers file; each client starts one shim instead, lists the merged
tools and makes the same calls as `<name>__<tool>`. Daemon over HTTP: the same daemon,
with each client on its Streamable HTTP endpoint (`/mcp`) as editors that speak HTTP
connect, so no shim. Every side is measured while every client is still connected:
the process trees (the servers' or the daemon's, plus the shims) with their RSS and
PSS. The clients themselves are this process on every side, and are not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from benchmarks.daemon import DaemonProcess
from benchmarks.fleet_procs import measure
from benchmarks.fleet_servers import (
    REPO_ROOT,
    ServerSpec,
    hosting_daemon,
    wait_servers,
    write_servers_file,
)
from benchmarks.fleet_stdio import PeerError, StdioPeer
from benchmarks.shimclient import SHIM_ARGS, shim_environment

__all__ = ["PROCESS_TARGET", "RSS_TARGET", "compare", "run_footprint"]

PROCESS_TARGET = 1 / 3  # daemon side's processes at most this share of the status quo's
RSS_TARGET = 0.40  # ... and its memory at most this share


def _tool_names(listing: dict[str, Any]) -> list[str]:
    return [t["name"] for t in listing.get("tools", [])]


async def _status_quo_client(peers: Sequence[StdioPeer], servers: Sequence[ServerSpec]) -> int:
    """One client's servers: start, handshake, list, call each; returns tools listed."""
    await asyncio.gather(*(p.start() for p in peers))
    await asyncio.gather(*(p.initialize() for p in peers))
    listings = await asyncio.gather(*(p.request("tools/list") for p in peers))
    for peer, spec, listing in zip(peers, servers, listings, strict=True):
        if spec.tool not in _tool_names(listing):
            raise PeerError(f"{peer.label}: {spec.tool} not listed")
    await asyncio.gather(
        *(p.call_tool(s.tool, s.arguments) for p, s in zip(peers, servers, strict=True))
    )
    return sum(len(_tool_names(x)) for x in listings)


async def _status_quo(servers: Sequence[ServerSpec], clients: int, log_dir: Path) -> dict[str, Any]:
    by_client = [
        [
            StdioPeer(f"client{c}/{s.name}", s.argv, s.cwd, os.environ, log_dir / "status-quo.log")
            for s in servers
        ]
        for c in range(clients)
    ]
    every = [p for peers in by_client for p in peers]
    started = time.perf_counter()
    try:
        tools = await asyncio.gather(*(_status_quo_client(p, servers) for p in by_client))
        ready_s = time.perf_counter() - started
        tree = measure([(p.label, [p.pid]) for p in every])
    finally:
        await asyncio.gather(*(p.close() for p in every), return_exceptions=True)
    return {**tree.to_json(), "ready_s": ready_s, "tools_listed_per_client": tools}


async def _shim_client(peer: StdioPeer, servers: Sequence[ServerSpec]) -> int:
    await peer.start()
    await peer.initialize()
    names = _tool_names(await peer.request("tools/list"))
    for spec in servers:
        if f"{spec.name}__{spec.tool}" not in names:
            raise PeerError(f"{peer.label}: {spec.name}__{spec.tool} not listed")
    for spec in servers:
        await peer.call_tool(f"{spec.name}__{spec.tool}", spec.arguments)
    return len(names)


@contextlib.asynccontextmanager
async def _fleet_daemon(
    servers: Sequence[ServerSpec], log_dir: Path, label: str
) -> AsyncIterator[tuple[DaemonProcess, float]]:
    """A daemon hosting `servers` from a servers file, once they are all ready, and
    the seconds that took."""
    config = write_servers_file(log_dir / f"{label}-servers.json", servers)
    with hosting_daemon(log_dir / f"{label}-daemon", {"EXAI_CONFIG": str(config)}) as daemon:
        yield daemon, await asyncio.to_thread(wait_servers, daemon, [s.name for s in servers])


async def _daemon_side(
    servers: Sequence[ServerSpec], clients: int, log_dir: Path
) -> dict[str, Any]:
    async with _fleet_daemon(servers, log_dir, "footprint") as (daemon, servers_ready_s):
        argv = (sys.executable, *SHIM_ARGS)
        env = shim_environment(daemon.port)
        shims = [
            StdioPeer(f"shim{c}", argv, str(REPO_ROOT), env, log_dir / "shims.log")
            for c in range(clients)
        ]
        started = time.perf_counter()
        try:
            tools = await asyncio.gather(*(_shim_client(s, servers) for s in shims))
            ready_s = time.perf_counter() - started
            tree = measure([("daemon", [daemon.pid]), *((s.label, [s.pid]) for s in shims)])
        finally:
            await asyncio.gather(*(s.close() for s in shims), return_exceptions=True)
    return {
        **tree.to_json(),
        "servers_ready_s": servers_ready_s,
        "ready_s": ready_s,
        "tools_listed_per_client": tools,
    }


class _Rendezvous:
    """Clients that have listed and called, and the signal for them to leave."""

    def __init__(self, clients: int) -> None:
        self.clients = clients
        self.called = 0
        self.all_called = asyncio.Event()
        self.leave = asyncio.Event()

    def arrived(self) -> None:
        self.called += 1
        if self.called == self.clients:
            self.all_called.set()


async def _http_client(url: str, servers: Sequence[ServerSpec], meet: _Rendezvous) -> int:
    """One client on /mcp: list, call each server's tool, then stay connected until the
    measurement is taken."""
    async with (
        streamable_http_client(url) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        names = {t.name for t in (await session.list_tools()).tools}
        for spec in servers:
            qualified = f"{spec.name}__{spec.tool}"
            if qualified not in names:
                raise PeerError(f"{url}: {qualified} not listed")
            if (await session.call_tool(qualified, spec.arguments)).is_error:
                raise PeerError(f"{url}: {qualified} failed")
        meet.arrived()
        await meet.leave.wait()
        return len(names)


async def _daemon_http_side(
    servers: Sequence[ServerSpec], clients: int, log_dir: Path
) -> dict[str, Any]:
    async with _fleet_daemon(servers, log_dir, "footprint-http") as (daemon, servers_ready_s):
        url = f"http://127.0.0.1:{daemon.port}/mcp"
        meet = _Rendezvous(clients)
        started = time.perf_counter()
        tasks = [asyncio.ensure_future(_http_client(url, servers, meet)) for _ in range(clients)]
        try:
            waiting = asyncio.ensure_future(meet.all_called.wait())
            await asyncio.wait([waiting, *tasks], return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            ready_s = time.perf_counter() - started
            tree = measure([("daemon", [daemon.pid])])
        finally:
            meet.leave.set()
            tools = await asyncio.gather(*tasks)
    return {
        **tree.to_json(),
        "servers_ready_s": servers_ready_s,
        "ready_s": ready_s,
        "tools_listed_per_client": tools,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _break_even(
    status_quo: dict[str, Any], daemon: dict[str, Any], clients: int, key: str, share: float
) -> int | None:
    """The fewest clients for which the daemon side is at most `share` of the status quo
    in `key`, taking the daemon's tree as fixed and each shim and each client's servers
    as what one more client adds (None when no number of clients gets there)."""

    def total(rows: list[dict[str, Any]]) -> float:
        return float(len(rows)) if key == "processes" else float(sum(r[key] or 0 for r in rows))

    fixed = total([r for r in daemon["by_process"] if r["role"] == "daemon"])
    per_shim = total([r for r in daemon["by_process"] if r["role"] != "daemon"]) / clients
    per_client = total(status_quo["by_process"]) / clients
    margin = share * per_client - per_shim
    # Rounded first so that an exact quotient (6 / (1/3)) is not taken up by float error.
    return None if margin <= 0 else max(1, math.ceil(round(fixed / margin, 6)))


def compare(status_quo: dict[str, Any], daemon: dict[str, Any], clients: int) -> dict[str, Any]:
    """The daemon side over the status quo, with the targets."""
    processes = _ratio(daemon["processes"], status_quo["processes"])
    rss = _ratio(daemon["rss_bytes"], status_quo["rss_bytes"])
    pss = _ratio(daemon["pss_bytes"], status_quo["pss_bytes"])
    return {
        "break_even_clients": {
            "processes": _break_even(status_quo, daemon, clients, "processes", PROCESS_TARGET),
            "rss": _break_even(status_quo, daemon, clients, "rss_bytes", RSS_TARGET),
            "pss": _break_even(status_quo, daemon, clients, "pss_bytes", RSS_TARGET),
        },
        "processes_ratio": processes,
        "rss_ratio": rss,
        "pss_ratio": pss,
        "processes_target": PROCESS_TARGET,
        "rss_target": RSS_TARGET,
        "processes_pass": processes is not None and processes <= PROCESS_TARGET,
        "rss_pass": rss is not None and rss <= RSS_TARGET,
        "pss_pass": pss is not None and pss <= RSS_TARGET,
    }


async def run_footprint(
    servers: Sequence[ServerSpec], clients: int, log_dir: Path
) -> dict[str, Any]:
    """Both sides, one after the other (never side by side, so that neither shares
    pages with the other's processes), and their comparison."""
    status_quo = await _status_quo(servers, clients, log_dir)
    daemon = await _daemon_side(servers, clients, log_dir)
    over_http = await _daemon_http_side(servers, clients, log_dir)
    return {
        "servers": [s.name for s in servers],
        "clients": clients,
        "status_quo": status_quo,
        "daemon": daemon,
        "comparison": compare(status_quo, daemon, clients),
        "daemon_http": over_http,
        "comparison_http": compare(status_quo, over_http, clients),
    }
