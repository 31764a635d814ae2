"""`python -m benchmarks.hosted`: a hosted stdio MCP server, directly and through the broker.

The server is the stock SDK stdio echo server of the `sdk-stdio` baseline. Directly,
each client starts its own copy and talks to it over stdio; through the broker, the
daemon hosts it (`--server-cmd`, `--workers N` shared instances) and clients come over
the WebSocket (`ws-mcp`) or through a real shim (`shim`). Each round runs every mode
at every concurrency back to back, so a round's cells see the same machine; the table
gives per-mode medians over the rounds and the median of the paired per-round ratios
to the direct cell. It also counts the daemon's context switches per call: how often
a call wakes it.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.daemon import DaemonProcess, running_daemon
from benchmarks.generator import SDK_STDIO_ARGS
from benchmarks.report import machine_info, write_json
from benchmarks.runner import CellPlan, run_cell

__all__ = ["main"]

REPO_ROOT = Path(__file__).resolve().parent.parent
DIRECT = "sdk-stdio"


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hosted", description=__doc__)
    add = parser.add_argument
    add("--clients", type=_ints, default=[1, 8, 32], help="concurrencies (1,8,32)")
    add("--modes", default="ws-mcp,shim", help="broker modes next to sdk-stdio (ws-mcp,shim)")
    add("--workers", type=int, default=2, help="shared instances of the hosted server (2)")
    add("--rounds", type=int, default=5, help="rounds of every cell (5)")
    add("--duration", type=float, default=3.0, help="seconds measured per cell (3)")
    add("--warmup", type=float, default=1.0, help="seconds of unmeasured calls first (1)")
    add("--payload", type=int, default=100, help="bytes of echo text (100)")
    add("--out", type=Path, help="JSON file (default benchmarks/out/hosted-<timestamp>.json)")
    return parser


def _switches(pid: int) -> int:
    """Voluntary plus involuntary context switches of `pid` so far (Linux), else 0."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return sum(
        int(line.split()[1])
        for line in text.splitlines()
        if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"))
    )


async def _cell(plan: CellPlan, daemon: DaemonProcess, log_dir: Path) -> dict[str, Any]:
    before = _switches(daemon.pid)
    row = await run_cell(plan, daemon, REPO_ROOT, log_dir)
    calls = row["daemon"]["calls_total_delta"]
    switches = _switches(daemon.pid) - before
    row["daemon_switches_per_call"] = switches / calls if calls and plan.mode != DIRECT else None
    return row


async def _rounds(args: argparse.Namespace, daemon: DaemonProcess, log_dir: Path) -> list[Any]:
    modes = [DIRECT, *[m for m in args.modes.split(",") if m and m != DIRECT]]
    rows = []
    for round_no in range(args.rounds):
        for clients in args.clients:
            for mode in modes:
                plan = CellPlan(
                    mode=mode,
                    clients=clients,
                    procs=1,
                    scenario=f"echo{args.payload}",
                    warmup_s=args.warmup,
                    duration_s=args.duration,
                    call_timeout_s=30.0,
                    workers=None if mode == DIRECT else args.workers,
                )
                row = await _cell(plan, daemon, log_dir)
                row["round"] = round_no
                rows.append(row)
                print(
                    f"round {round_no} {mode:9} c={clients:<3} {row['calls_per_s']:8.0f} calls/s"
                    f"  p50 {row['latency_ms']['p50'] or 0:.2f} ms  errors {row['error_count']}",
                    file=sys.stderr,
                    flush=True,
                )
    return rows


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (mode, clients): medians over the rounds, and the median paired ratio."""
    direct = {
        (r["round"], r["clients"]): r for r in rows if r["mode"] == DIRECT and r["calls_per_s"]
    }
    cells: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault((row["mode"], row["clients"]), []).append(row)
    table = []
    for (mode, clients), group in cells.items():
        ratios = [
            r["calls_per_s"] / direct[(r["round"], clients)]["calls_per_s"]
            for r in group
            if (r["round"], clients) in direct
        ]
        p50s = [r["latency_ms"]["p50"] for r in group if r["latency_ms"]["p50"] is not None]
        switches = [r["daemon_switches_per_call"] for r in group if r["daemon_switches_per_call"]]
        table.append(
            {
                "mode": mode,
                "clients": clients,
                "rounds": len(group),
                "calls_per_s_median": statistics.median(r["calls_per_s"] for r in group),
                "p50_ms_median": statistics.median(p50s) if p50s else None,
                "ratio_to_direct_median": statistics.median(ratios) if ratios else None,
                "errors": sum(r["error_count"] for r in group),
                "daemon_switches_per_call_median": (
                    statistics.median(switches) if switches else None
                ),
            }
        )
    return sorted(table, key=lambda t: (t["clients"], t["mode"] != DIRECT, t["mode"]))


def format_summary(table: Sequence[dict[str, Any]]) -> str:
    head = (
        f"{'mode':10} {'clients':>7} {'rounds':>6} {'calls/s':>9} {'p50 ms':>7}"
        f" {'x direct':>8} {'daemon csw/call':>15} {'errors':>6}"
    )
    lines = [head, "-" * len(head)]
    for t in table:
        ratio = t["ratio_to_direct_median"]
        switches = t["daemon_switches_per_call_median"]
        p50 = t["p50_ms_median"]
        lines.append(
            f"{t['mode']:10} {t['clients']:>7} {t['rounds']:>6} {t['calls_per_s_median']:>9.0f}"
            f" {p50 if p50 is not None else 0:>7.2f}"
            f" {'-' if ratio is None else f'{ratio:.2f}':>8}"
            f" {'-' if switches is None else f'{switches:.2f}':>15} {t['errors']:>6}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or REPO_ROOT / "benchmarks" / "out" / f"hosted-{stamp}.json"
    log_dir = out.with_suffix(".logs")
    env = {
        "EXAI_SERVER_CMD": shlex.join([sys.executable, *SDK_STDIO_ARGS]),
        "EXAI_WS_SESSION_MAX_INFLIGHT": "64",
        "EXAI_WS_GLOBAL_MAX_INFLIGHT": "1024",
    }
    with running_daemon(args.workers, log_dir, env, REPO_ROOT) as daemon:
        rows = asyncio.run(_rounds(args, daemon, log_dir))
    table = summarize(rows)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    document = {
        "benchmark": "hosted",
        "machine": machine_info(REPO_ROOT),
        "config": config,
        "summary": table,
        "rows": rows,
    }
    write_json(out, document)
    print(format_summary(table))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
