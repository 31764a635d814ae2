"""Run one benchmark cell (one mode at one concurrency) against a running daemon.

Spawns the generator processes, starts them together, samples the daemon's and the
workers' CPU over the measurement window, gathers the latency samples, and checks
that the daemon is back to idle (no sessions, nothing in flight) afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from benchmarks.daemon import DaemonProcess
from benchmarks.dialects import scenario
from benchmarks.generator import GeneratorConfig
from benchmarks.procstat import machine_busy_seconds, rss_bytes, total_cpu_seconds
from benchmarks.stats import summarise

__all__ = ["CellPlan", "run_cell", "split_clients"]

START_DELAY_S = 0.3  # between "everyone is ready" and the common start
READY_TIMEOUT_S = 30.0
READY_TIMEOUT_PER_CLIENT_S = 0.5  # shims start one Python process each
# The mcp SDK server imports far more (about 1 s of CPU each), all at once per cell.
READY_TIMEOUT_PER_CLIENT_S_BY_MODE = {"sdk-stdio": 3.0}
IDLE_TIMEOUT_S = 10.0
STREAM_LIMIT_BYTES = 256 * 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class CellPlan:
    mode: str
    clients: int
    procs: int
    scenario: str
    warmup_s: float
    duration_s: float
    call_timeout_s: float
    workers: int | None = None  # the daemon's worker count, for the row
    pool: str | None = None  # the daemon's --pool, for the row (None for baselines)


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """Where a cell's clients connect and whose CPU counts as "daemon" / "workers"."""

    port: int
    server_pid: int | None  # None: no server of ours to watch (sdk-stdio: the clients' own)
    worker_pids: list[int]


def split_clients(clients: int, procs: int) -> list[int]:
    """Spread `clients` over at most `procs` generators as evenly as possible."""
    procs = max(1, min(procs, clients))
    return [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]


async def _spawn(config: GeneratorConfig, log_path: Path) -> asyncio.subprocess.Process:
    """Start a generator in its own process group (so it and its shims die together)."""
    return await spawn_generator(
        "benchmarks.generator", config.to_json(), log_path, config.repo_root
    )


async def spawn_generator(
    module: str, config_json: str, log_path: Path, cwd: str | Path
) -> asyncio.subprocess.Process:
    """`python -m module CONFIG` in its own process group, its stderr appended to
    `log_path`, its stdout the JSON-lines events the runner reads."""
    stderr_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            config_json,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr_fd,
            cwd=cwd,
            start_new_session=True,
            limit=STREAM_LIMIT_BYTES,
        )
    finally:
        os.close(stderr_fd)


async def read_event(
    proc: asyncio.subprocess.Process, event: str, timeout_s: float, log_path: Path
) -> dict[str, Any]:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout_s)
    if not line:
        raise RuntimeError(f"generator {proc.pid} exited before '{event}'; see {log_path}")
    message: dict[str, Any] = orjson.loads(line)
    if message.get("event") != event:
        raise RuntimeError(f"generator {proc.pid}: expected '{event}', got {message}")
    return message


async def reap(proc: asyncio.subprocess.Process) -> None:
    """Kill the generator's process group (it and its shims) if anything is left."""
    if proc.returncode is None and hasattr(os, "killpg"):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    elif proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    await proc.wait()


async def _sample_cpu(
    server_pid: int | None, worker_pids: list[int], window: tuple[float, float]
) -> dict[str, float | None]:
    """Daemon, worker and whole-machine CPU over the window, in % of one core."""
    marks: list[tuple[float | None, ...]] = []
    for at in window:
        await asyncio.sleep(max(0.0, at - time.time()))
        marks.append(
            (
                total_cpu_seconds([server_pid] if server_pid else []),
                total_cpu_seconds(worker_pids),
                machine_busy_seconds(),
            )
        )
    span_s = window[1] - window[0]

    def pct(i: int) -> float | None:
        a, b = marks[0][i], marks[1][i]
        return None if a is None or b is None else 100.0 * (b - a) / span_s

    return {"daemon_pct": pct(0), "workers_pct": pct(1), "machine_pct": pct(2)}


async def _wait_idle(daemon: DaemonProcess) -> dict[str, Any]:
    """Poll /health until no session and no call is left; report what was seen."""
    deadline = time.monotonic() + IDLE_TIMEOUT_S
    while True:
        health = await asyncio.to_thread(daemon.health)
        idle = health["sessions"] == 0 and health["inflight"]["global"] == 0
        if idle or time.monotonic() > deadline:
            return {
                "idle": idle,
                "sessions": health["sessions"],
                "sessions_detached": health.get("sessions_detached"),
                "inflight_global": health["inflight"]["global"],
                "calls_total": health["calls_total"],
                "errors_by_code": health["errors_by_code"],
                "workers": health["workers"],
            }
        await asyncio.sleep(0.1)


async def run_cell(
    plan: CellPlan,
    daemon: DaemonProcess,
    repo_root: Path,
    log_dir: Path,
    echo_server: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Run the cell and return its row (summary, CPU, daemon state after).

    `echo_server` is (pid, port) of the raw-ws baseline server, needed for that mode;
    its CPU then fills the "daemon" column. For sdk-stdio the servers are the clients'
    children and their CPU is in the client column.
    """
    before = await asyncio.to_thread(daemon.health)
    worker_pids = [w["pid"] for w in before["workers"] if w.get("pid")]
    target = Target(daemon.port, daemon.pid, worker_pids)
    if plan.mode == "raw-ws":
        if echo_server is None:
            raise RuntimeError("raw-ws needs the echo server")
        target = Target(echo_server[1], echo_server[0], [])
    elif plan.mode == "sdk-stdio":
        target = Target(daemon.port, None, [])
    counts = split_clients(plan.clients, plan.procs)
    procs: list[asyncio.subprocess.Process] = []
    logs: list[Path] = []
    try:
        for index, count in enumerate(counts):
            config = GeneratorConfig(
                mode=plan.mode,
                clients=count,
                port=target.port,
                scenario=plan.scenario,
                warmup_s=plan.warmup_s,
                duration_s=plan.duration_s,
                call_timeout_s=plan.call_timeout_s,
                repo_root=str(repo_root),
                index=index,
            )
            name = f"generator-{plan.scenario}-w{plan.workers}-{plan.mode}-c{plan.clients}"
            logs.append(log_dir / f"{name}-{index}.log")
            procs.append(await _spawn(config, logs[-1]))
        per_client_s = READY_TIMEOUT_PER_CLIENT_S_BY_MODE.get(plan.mode, READY_TIMEOUT_PER_CLIENT_S)
        ready_timeout_s = READY_TIMEOUT_S + per_client_s * plan.clients
        pairs = list(zip(procs, logs, strict=True))
        readies = await asyncio.gather(
            *(read_event(p, "ready", ready_timeout_s, log) for p, log in pairs)
        )
        start_at = time.time() + START_DELAY_S
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(orjson.dumps({"start_at": start_at}) + b"\n")
            await p.stdin.drain()
        window_start = start_at + plan.warmup_s
        window = (window_start, window_start + plan.duration_s)
        cpu = await _sample_cpu(target.server_pid, target.worker_pids, window)
        result_timeout_s = plan.call_timeout_s + 30.0
        results = await asyncio.gather(
            *(read_event(p, "result", result_timeout_s, log) for p, log in pairs)
        )
        await asyncio.gather(*(p.wait() for p in procs))
    finally:
        await asyncio.gather(*(reap(p) for p in procs), return_exceptions=True)
    after = await _wait_idle(daemon)
    row = _row(plan, readies, results, cpu, before, after)
    # Memory right after the cell: what this load made the daemon and workers hold.
    row["rss"] = {
        "server": rss_bytes(target.server_pid) if target.server_pid else None,
        "workers": sum(rss_bytes(pid) or 0 for pid in target.worker_pids) or None,
    }
    return row


def _row(
    plan: CellPlan,
    readies: list[dict[str, Any]],
    results: list[dict[str, Any]],
    cpu: dict[str, float | None],
    before: dict[str, Any],
    after: dict[str, Any],
) -> dict[str, Any]:
    latencies = [x for r in results for x in r["latencies_ms"]]
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r["errors"])
    span_s = plan.duration_s

    def pct_sum(key: str) -> float | None:
        values = [r[key] for r in results if r.get(key) is not None]
        return 100.0 * sum(values) / span_s if values else None

    summary = summarise(latencies, errors, plan.duration_s)
    p99 = summary["latency_ms"]["p99"]
    nominal_ms = scenario(plan.scenario).nominal_ms
    daemon_errors = Counter(after["errors_by_code"])
    daemon_errors.subtract(before["errors_by_code"])
    return {
        "mode": plan.mode,
        "scenario": plan.scenario,
        "workers": plan.workers,
        "pool": plan.pool,
        "clients": plan.clients,
        "procs": len(results),
        "duration_s": plan.duration_s,
        "warmup_s": plan.warmup_s,
        **summary,
        # p99 minus what the tool itself takes (sleep 50 ms, cpu 20 ms); None for echo.
        "overhead_p99_ms": p99 - nominal_ms if nominal_ms and p99 is not None else None,
        "clients_opened": sum(r["opened"] for r in readies),
        "clients_gone": sum(r["clients_gone"] for r in results),
        "cpu": _cpu(cpu, pct_sum("cpu_s"), pct_sum("children_cpu_s"), len(latencies) / span_s),
        "daemon": {
            "calls_total_delta": after["calls_total"] - before["calls_total"],
            "errors_by_code_delta": {k: v for k, v in daemon_errors.items() if v},
            "idle_after": after["idle"],
            "sessions_after": after["sessions"],
            "sessions_detached_after": after["sessions_detached"],
            "inflight_after": after["inflight_global"],
            "workers_after": after["workers"],
        },
    }


def _cpu(
    sampled: dict[str, float | None],
    generators_pct: float | None,
    shims_pct: float | None,
    ok_per_s: float,
) -> dict[str, float | None]:
    """Add the clients' share, what the rest of the machine used (other_pct), and the
    daemon's CPU per good call, which a busy machine disturbs less than calls/s."""
    ours = [sampled["daemon_pct"], sampled["workers_pct"], generators_pct, shims_pct]
    machine = sampled["machine_pct"]
    other = None if machine is None else max(0.0, machine - sum(v for v in ours if v is not None))

    def per_call(pct: float | None) -> float | None:
        return None if pct is None or ok_per_s <= 0 else pct * 1e4 / ok_per_s

    return {
        **sampled,
        "generators_pct": generators_pct,
        "shims_pct": shims_pct,
        "other_pct": other,
        "daemon_us_per_call": per_call(sampled["daemon_pct"]),
        "workers_us_per_call": per_call(sampled["workers_pct"]),
    }
