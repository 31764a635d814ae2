"""What routing by prefix costs: one hosted server alone against the same server among
others in a servers file.

Two daemons of the same build run side by side for the whole section: `single`
hosts the server with `--server-cmd` and is called with the bare tool name;
`prefixed` hosts it with two other servers from a servers file and is called with
`<name>__<tool>`. The tool is the counter fixture's `pid`, whose answer (the
instance's pid, read from `/health`) also proves that every call reached the right
server. Rounds alternate which daemon goes first (AB, BA, ...); each cell is one
`benchmarks.fleet_load` process in a closed loop over MCP-over-WebSocket, and the
daemon's own CPU is sampled over the measured window.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.daemon import DaemonError, DaemonProcess
from benchmarks.fleet_load import ToolLoadConfig
from benchmarks.fleet_servers import (
    REPO_ROOT,
    ServerSpec,
    hosting_daemon,
    server_states,
    wait_servers,
    write_servers_file,
)
from benchmarks.procstat import machine_busy_seconds, total_cpu_seconds
from benchmarks.runner import START_DELAY_S, read_event, reap, spawn_generator
from benchmarks.stats import summarise

__all__ = ["MODES", "RATIO_TARGET", "run_router", "summarize_router"]

SINGLE, PREFIXED = "single", "prefixed"
MODES = (SINGLE, PREFIXED)
RATIO_TARGET = 0.95  # prefixed calls/s at least this share of single's
READY_TIMEOUT_S = 30.0
IDLE_TIMEOUT_S = 10.0
CALL_TIMEOUT_S = 30.0


def _sole_server(daemon: DaemonProcess) -> str:
    """The name `/health` gives the one server a `--server-cmd` daemon hosts."""
    names = list(server_states(daemon))
    if len(names) != 1:
        raise DaemonError(f"expected one hosted server, /health lists {names}")
    return names[0]


def _instance_pid(daemon: DaemonProcess, server: str) -> int:
    for entry in daemon.health().get("servers", []):
        if entry["name"] == server and entry.get("instances"):
            return int(entry["instances"][0]["pid"])
    raise DaemonError(f"no running instance of {server} in /health")


async def _cpu_over(pids: Sequence[int], window: tuple[float, float]) -> list[float | None]:
    """CPU seconds each pid used over the wall-clock window, then the whole machine's."""
    marks = []
    for at in window:
        await asyncio.sleep(max(0.0, at - time.time()))
        marks.append([*(total_cpu_seconds([pid]) for pid in pids), machine_busy_seconds()])
    return [None if a is None or b is None else b - a for a, b in zip(*marks, strict=True)]


def _other_pct(
    machine_s: float | None, ours: Sequence[float | None], span_s: float
) -> float | None:
    if machine_s is None:
        return None
    return max(0.0, 100.0 * (machine_s - sum(v for v in ours if v is not None)) / span_s)


async def _wait_idle(daemon: DaemonProcess) -> bool:
    deadline = time.monotonic() + IDLE_TIMEOUT_S
    while time.monotonic() < deadline:
        health = await asyncio.to_thread(daemon.health)
        if health["sessions"] == 0 and health["inflight"]["global"] == 0:
            return True
        await asyncio.sleep(0.05)
    return False


async def _cell(target: dict[str, Any], clients: int, args: Any, log_dir: Path) -> dict[str, Any]:
    daemon: DaemonProcess = target["daemon"]
    config = ToolLoadConfig(
        clients=clients,
        port=daemon.port,
        tool=target["tool"],
        arguments_json="{}",
        expected_text=str(target["server_pid"]),
        warmup_s=args.warmup,
        duration_s=args.duration,
        call_timeout_s=CALL_TIMEOUT_S,
    )
    log = log_dir / f"load-{target['mode']}-c{clients}.log"
    proc = await spawn_generator("benchmarks.fleet_load", config.to_json(), log, REPO_ROOT)
    try:
        await read_event(proc, "ready", READY_TIMEOUT_S, log)
        start_at = time.time() + START_DELAY_S
        assert proc.stdin is not None
        proc.stdin.write(f'{{"start_at": {start_at!r}}}\n'.encode())
        await proc.stdin.drain()
        window = (start_at + args.warmup, start_at + args.warmup + args.duration)
        pids = [daemon.pid, target["server_pid"], proc.pid]
        daemon_s, server_s, generator_s, machine_s = await _cpu_over(pids, window)
        result = await read_event(proc, "result", args.duration + CALL_TIMEOUT_S + 30.0, log)
        await proc.wait()
    finally:
        await reap(proc)
    row = summarise(result["latencies_ms"], result["errors"], args.duration)
    ok = row["ok"]
    return {
        "mode": target["mode"],
        "tool": target["tool"],
        "clients": clients,
        "clients_opened": result["opened"],
        **row,
        "daemon_us_per_call": daemon_s * 1e6 / ok if daemon_s is not None and ok else None,
        "server_us_per_call": server_s * 1e6 / ok if server_s is not None and ok else None,
        # What the rest of the machine used meanwhile, in % of one core: a busy
        # neighbour shows here before it shows as a slow cell.
        "other_cpu_pct": _other_pct(machine_s, [daemon_s, server_s, generator_s], args.duration),
        "idle_after": await _wait_idle(daemon),
    }


async def _rounds(targets: dict[str, dict[str, Any]], args: Any, log_dir: Path) -> list[Any]:
    rows = []
    for round_no in range(args.rounds):
        order = MODES if round_no % 2 == 0 else MODES[::-1]
        for clients in args.clients:
            for mode in order:
                row = await _cell(targets[mode], clients, args, log_dir)
                row["round"] = round_no
                rows.append(row)
                print(
                    f"router round {round_no} {mode:8} c={clients:<3} {row['calls_per_s']:7.0f}"
                    f" calls/s  p50 {row['latency_ms']['p50'] or 0:.2f} ms"
                    f"  errors {row['error_count']}  other cpu {row['other_cpu_pct'] or 0:.0f}%",
                    file=sys.stderr,
                    flush=True,
                )
    return rows


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _paired(cell: dict[str, list[dict[str, Any]]], key: str) -> list[float]:
    """prefixed / single of `key`, round by round, for the rounds that have both."""
    single = {r["round"]: r[key] for r in cell[SINGLE]}
    return [
        r[key] / single[r["round"]] for r in cell[PREFIXED] if r[key] and single.get(r["round"])
    ]


def summarize_router(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per clients: each mode's medians over the rounds, and the medians of the paired
    per-round ratios prefixed / single of calls/s (with the target) and of the
    daemon's CPU per call, which a busy neighbour disturbs least."""
    table = []
    for clients in sorted({r["clients"] for r in rows}):
        cell = {m: [r for r in rows if r["mode"] == m and r["clients"] == clients] for m in MODES}
        ratios = _paired(cell, "calls_per_s")
        entry: dict[str, Any] = {"clients": clients, "rounds": len(ratios)}
        for mode in MODES:
            group = cell[mode]
            entry[mode] = {
                "calls_per_s_median": _median([r["calls_per_s"] for r in group]),
                "p50_ms_median": _median([r["latency_ms"]["p50"] for r in group]),
                "p99_ms_median": _median([r["latency_ms"]["p99"] for r in group]),
                "daemon_us_per_call_median": _median([r["daemon_us_per_call"] for r in group]),
                "other_cpu_pct_median": _median([r["other_cpu_pct"] for r in group]),
                "errors": sum(r["error_count"] for r in group),
            }
        ratio = _median(ratios)
        entry["ratio_median"] = ratio
        entry["ratios"] = ratios
        entry["daemon_us_per_call_ratio_median"] = _median(_paired(cell, "daemon_us_per_call"))
        entry["ratio_target"] = RATIO_TARGET
        entry["pass"] = ratio is not None and ratio >= RATIO_TARGET
        table.append(entry)
    return table


async def run_router(
    server: ServerSpec, others: Sequence[ServerSpec], args: Any, log_dir: Path
) -> dict[str, Any]:
    """Both daemons up, the alternating rounds, the per-cell rows and the summary."""
    config = write_servers_file(log_dir / "router-servers.json", [server, *others])
    with contextlib.ExitStack() as stack:
        single = stack.enter_context(
            hosting_daemon(log_dir / "router-single", {"EXAI_SERVER_CMD": shlex.join(server.argv)})
        )
        prefixed = stack.enter_context(
            hosting_daemon(log_dir / "router-prefixed", {"EXAI_CONFIG": str(config)})
        )
        single_name = _sole_server(single)
        await asyncio.to_thread(wait_servers, single, [single_name])
        await asyncio.to_thread(wait_servers, prefixed, [server.name, *(s.name for s in others)])
        targets = {
            SINGLE: {
                "mode": SINGLE,
                "daemon": single,
                "tool": server.tool,
                "server_pid": _instance_pid(single, single_name),
            },
            PREFIXED: {
                "mode": PREFIXED,
                "daemon": prefixed,
                "tool": f"{server.name}__{server.tool}",
                "server_pid": _instance_pid(prefixed, server.name),
            },
        }
        rows = await _rounds(targets, args, log_dir)
    return {
        "server": server.name,
        "others": [s.name for s in others],
        "tools": {m: targets[m]["tool"] for m in MODES},
        "summary": summarize_router(rows),
        "rows": rows,
    }
