"""Reliability soak: 16 clients for 60 s while workers are killed and the daemon restarts.

12 JSON-lines drivers and 4 real SDK clients, each through its own `python -m shim`,
call echo / sleep / record (unique keys) back to back. Every ~5 s a ready worker is
killed with SIGKILL; once, the daemon is stopped and a new one takes the same port.
Every call must end in its correct result or a typed error, no `record` key may run
twice, and the daemon's memory must stay bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError

from tests.conftest import DaemonFactory, DaemonProcess, mcp_client, scaled
from tests.e2e.reliability_support import (
    COUNTING_ARGS,
    TYPED_CODES,
    ShimDriver,
    read_counts,
    shim_drivers,
)
from tests.support.health import health_until, read_health
from tests.support.processes import cmdline, rss_bytes

DRIVERS = 12
SDK_CLIENTS = 4
LOAD_S = 60.0
KILL_EVERY_S = 5.0
RESTART_AT_S = 25.0
WARMUP_S = 8.0  # after the restart, before the RSS baseline
CALL_DEADLINE_S = 30.0
WORKERS = 3
JSONRPC_CODES = {"OVER_CAPACITY": -32050, "WORKER_LOST": -32052, "SHUTTING_DOWN": -32053,
                 "UNAVAILABLE": -32054}  # fmt: skip


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """How one call ended, as its client saw it."""

    client: str
    tool: str
    key: str
    ok: bool
    code: str | None = None
    detail: str = ""


@dataclasses.dataclass
class Soak:
    """Shared state of one soak run."""

    counts: Path
    stop_at: float
    daemon: DaemonProcess
    outcomes: list[Outcome] = dataclasses.field(default_factory=list)
    kills: int = 0
    restarted: bool = False
    rss_warm: int = 0

    def plan(self, rng: random.Random, client: str, n: int) -> tuple[str, dict[str, Any], str]:
        """A random call: (tool, arguments, the text a correct answer has)."""
        key = f"{client}-{n}"
        roll = rng.random()
        if roll < 0.4:
            return "echo", {"text": key}, key
        if roll < 0.7:
            seconds = round(rng.uniform(0.05, 0.4), 2)
            return "sleep", {"seconds": seconds}, f"slept {seconds:g}"
        seconds = round(rng.uniform(0.0, 0.3), 2)
        args = {"key": key, "seconds": seconds, "path": str(self.counts)}
        return "record", args, f"recorded {key}"


def _typed(code: int, data: Any) -> str | None:
    """The error's code name when it is one of the typed errors a client may get."""
    name = data.get("code") if isinstance(data, dict) else None
    return name if name in TYPED_CODES and JSONRPC_CODES[name] == code else None


async def _driver_client(soak: Soak, shim: ShimDriver, name: str) -> list[Any]:
    """Back-to-back calls through a JSON-lines driver; returns the request ids it used."""
    rng = random.Random(name)
    rids: list[Any] = []
    n = 0
    while time.monotonic() < soak.stop_at:
        n += 1
        tool, args, expected = soak.plan(rng, name, n)
        rid = await shim.call(tool, args)
        rids.append(rid)
        key = str(args.get("key") or args.get("text") or "")
        try:
            response = await shim.response(rid, CALL_DEADLINE_S)
        except TimeoutError:
            soak.outcomes.append(Outcome(name, tool, key, False, None, "no answer"))
            continue
        if "result" in response:
            result = response["result"]
            text = "".join(c.get("text", "") for c in result.get("content", []))
            good = text == expected and not result.get("isError")
            soak.outcomes.append(Outcome(name, tool, key, good, None, "" if good else text))
        else:
            error = response.get("error", {})
            code = _typed(error.get("code", 0), error.get("data"))
            soak.outcomes.append(Outcome(name, tool, key, False, code, str(error)))
    return rids


async def _sdk_client(soak: Soak, env: dict[str, str], name: str) -> None:
    """Back-to-back calls through the real mcp SDK ClientSession."""
    rng = random.Random(name)
    async with mcp_client(env) as session:
        await session.list_tools()
        n = 0
        while time.monotonic() < soak.stop_at:
            n += 1
            tool, args, expected = soak.plan(rng, name, n)
            key = str(args.get("key") or args.get("text") or "")
            try:
                result = await asyncio.wait_for(
                    session.call_tool(tool, args), scaled(CALL_DEADLINE_S)
                )
            except MCPError as exc:
                code = _typed(exc.error.code, exc.error.data)
                soak.outcomes.append(Outcome(name, tool, key, False, code, str(exc.error)))
                continue
            except TimeoutError:
                soak.outcomes.append(Outcome(name, tool, key, False, None, "no answer"))
                continue
            text = "".join(getattr(c, "text", "") for c in result.content)
            good = text == expected and not result.is_error
            soak.outcomes.append(Outcome(name, tool, key, good, None, "" if good else text))


def _is_worker(pid: int) -> bool:
    """True if `pid` runs a worker (and not whatever process took over a recycled pid)."""
    return any("workers" in part for part in cmdline(pid))


async def _chaos(
    soak: Soak, restart: Callable[[], DaemonProcess], start: float, stop: asyncio.Event
) -> None:
    """Kill a ready worker every ~5 s; restart the daemon once, on the same port."""
    rng = random.Random(7)
    restarted_at = 0.0
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), KILL_EVERY_S)
        if stop.is_set():
            return
        now = time.monotonic()
        if not soak.restarted and now - start >= RESTART_AT_S:
            assert await asyncio.to_thread(soak.daemon.stop) == 0, soak.daemon.stderr()
            soak.daemon = await asyncio.to_thread(restart)
            soak.restarted = True
            restarted_at = time.monotonic()
            continue
        if soak.restarted and not soak.rss_warm and now - restarted_at >= WARMUP_S:
            soak.rss_warm = rss_bytes(soak.daemon.proc.pid)
        health = read_health(soak.daemon)
        ready = [w["pid"] for w in (health or {}).get("workers", []) if w["state"] == "ready"]
        ready = [pid for pid in ready if pid and _is_worker(pid)]
        if ready:
            with contextlib.suppress(ProcessLookupError):
                os.kill(rng.choice(ready), signal.SIGKILL)
                soak.kills += 1


@pytest.mark.slow
@pytest.mark.timeout(200)
async def test_soak_clients_survive_worker_kills_and_a_daemon_restart(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """16 clients x 60 s: correct answers or typed errors, no double runs, bounded RSS."""
    env = {"EXAI_SHUTDOWN_GRACE": "1", "EXAI_HEALTH_INTERVAL": "0.2"}
    first = daemon_factory(workers=WORKERS, env=env, args=COUNTING_ARGS)
    port = first.port

    def restart() -> DaemonProcess:
        return daemon_factory(workers=WORKERS, env=env, args=COUNTING_ARGS, port=port)

    start = time.monotonic()
    soak = Soak(tmp_path / "counts.txt", start + LOAD_S, first)
    shim_env = first.shim_env()
    stop = asyncio.Event()
    async with shim_drivers(tmp_path) as launch:
        drivers: list[ShimDriver] = []
        for _ in range(DRIVERS):
            driver = await launch(shim_env)
            await driver.initialize()
            drivers.append(driver)
        chaos = asyncio.ensure_future(_chaos(soak, restart, start, stop))
        loads = [
            asyncio.ensure_future(_driver_client(soak, d, f"d{i}")) for i, d in enumerate(drivers)
        ]
        sdk = [
            asyncio.ensure_future(_sdk_client(soak, shim_env, f"s{i}")) for i in range(SDK_CLIENTS)
        ]
        try:
            used = await asyncio.wait_for(
                asyncio.gather(*loads), scaled(LOAD_S + 2 * CALL_DEADLINE_S)
            )
            await asyncio.wait_for(asyncio.gather(*sdk), scaled(2 * CALL_DEADLINE_S))
        finally:
            stop.set()
            for task in (*loads, *sdk):
                task.cancel()
            await asyncio.gather(*loads, *sdk, return_exceptions=True)
            await asyncio.wait_for(chaos, scaled(60))
        # Every request a driver made was answered exactly once.
        doubled = [
            (d.pid, rid)
            for d, rids in zip(drivers, used, strict=True)
            for rid in rids
            if d.count(rid) != 1
        ]
        assert not doubled, f"answered other than once: {doubled[:10]}"
    rss_end = rss_bytes(soak.daemon.proc.pid)

    outcomes = soak.outcomes
    # Shown on failure (or with -s): what the run looked like.
    kinds = Counter(o.code or ("ok" if o.ok else "bad") for o in outcomes)
    print(
        f"soak: {len(outcomes)} calls {dict(kinds)}, {soak.kills} kills, "
        f"rss {soak.rss_warm >> 20} -> {rss_end >> 20} MiB"
    )
    bad = [o for o in outcomes if not o.ok and o.code is None]
    assert not bad, f"{len(bad)} calls ended wrongly, e.g. {bad[:5]}"
    assert soak.restarted and soak.kills >= 6, (soak.restarted, soak.kills)
    assert len(outcomes) >= 500, f"only {len(outcomes)} calls in {LOAD_S:g} s"
    assert sum(o.ok for o in outcomes) >= 0.8 * len(outcomes), Counter(o.code for o in outcomes)

    # No record key ran twice; every one the client saw succeed ran exactly once.
    counts = read_counts(soak.counts)
    assert all(n == 1 for n in counts.values()), [k for k, n in counts.items() if n > 1]
    succeeded = {o.key for o in outcomes if o.tool == "record" and o.ok}
    assert all(counts.get(k) == 1 for k in succeeded)

    # The restarted daemon is whole and idle, and its memory did not run away.
    await health_until(
        soak.daemon,
        lambda h: (
            h["inflight"]["global"] == 0
            and [w["state"] for w in h["workers"]] == ["ready"] * WORKERS
        ),
        "the restarted daemon to be idle with every worker ready",
    )
    assert soak.rss_warm, "no RSS baseline was taken after the restart"
    assert rss_end < 2 * soak.rss_warm + 50 * 1024 * 1024, (soak.rss_warm, rss_end)
