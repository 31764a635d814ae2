"""One-off measurements next to the load cells: shim start-up time and idle-session memory.

`startup` spawns a stdio server (`python -m shim`, or the SDK baseline) N times, one
after another, and times each from spawn to its `initialize` response. `idle_sessions`
opens N op-dialect WebSocket sessions (hello only) and reads the daemon's and its
workers' resident memory before and after.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.clients import OpWsClient
from benchmarks.daemon import DaemonProcess
from benchmarks.dialects import scenario
from benchmarks.procstat import rss_bytes
from benchmarks.shimclient import ShimClient, shim_environment
from benchmarks.stats import percentile

__all__ = ["idle_sessions", "startup"]

SETTLE_S = 0.5  # after opening / closing, before reading memory
OPEN_BATCH = 100  # sessions opened concurrently at a time


async def startup(port: int, repo_root: Path, spawns: int, args: Sequence[str]) -> dict[str, Any]:
    """Median / p90 / max ms from spawning `python *args` to its initialize response."""
    env = shim_environment(port)
    times_ms: list[float] = []
    failures = 0
    for _ in range(spawns):
        client = ShimClient(env, str(repo_root), scenario("echo100"), args)
        t0 = time.perf_counter()
        try:
            await client.open()
            times_ms.append((time.perf_counter() - t0) * 1000.0)
        except (ConnectionError, OSError, ValueError):
            failures += 1
        finally:
            await client.close()
    values = sorted(times_ms)
    return {
        "command": ["python", *args],
        "spawns": spawns,
        "failures": failures,
        "p50_ms": percentile(values, 50),
        "p90_ms": percentile(values, 90),
        "max_ms": values[-1] if values else None,
        "samples_ms": [round(v, 2) for v in times_ms],
    }


def _rss(pids: Iterable[int]) -> int | None:
    values = [v for v in (rss_bytes(p) for p in pids) if v is not None]
    return sum(values) if values else None


def _snapshot(daemon: DaemonProcess) -> dict[str, Any]:
    health = daemon.health()
    workers = [w["pid"] for w in health.get("workers", []) if w.get("pid")]
    return {
        "sessions": health.get("sessions"),
        "daemon_rss": rss_bytes(daemon.pid),
        "workers_rss": _rss(workers),
    }


async def idle_sessions(daemon: DaemonProcess, count: int) -> dict[str, Any]:
    """Open `count` idle sessions; RSS of daemon and workers before/after, bytes/session."""
    before = await asyncio.to_thread(_snapshot, daemon)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        clients = [
            OpWsClient(http, f"ws://127.0.0.1:{daemon.port}/", scenario("echo100"), f"idle-{i}")
            for i in range(count)
        ]
        opened = 0
        first_error: str | None = None
        try:
            for start in range(0, count, OPEN_BATCH):
                batch = clients[start : start + OPEN_BATCH]
                outcomes = await asyncio.gather(*(c.open() for c in batch), return_exceptions=True)
                opened += sum(1 for o in outcomes if o is None)
                failed = [o for o in outcomes if isinstance(o, BaseException)]
                if failed and first_error is None:
                    first_error = repr(failed[0])
            await asyncio.sleep(SETTLE_S)
            after = await asyncio.to_thread(_snapshot, daemon)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

    def per_session(key: str) -> float | None:
        a, b = before[key], after[key]
        return None if a is None or b is None or not opened else (b - a) / opened

    return {
        "requested": count,
        "opened": opened,
        "first_open_error": first_error,
        "before": before,
        "after": after,
        "daemon_bytes_per_session": per_session("daemon_rss"),
        "workers_bytes_per_session": per_session("workers_rss"),
    }
