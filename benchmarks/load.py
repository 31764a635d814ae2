"""`python -m benchmarks.load`: closed-loop echo load through every way into the daemon.

One daemon (started here, own process group, diagnostic tools on) serves the whole
run; each cell is one mode at one concurrency, run by separate generator processes.
Prints a table and writes the same rows, with machine info, as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from benchmarks.daemon import DaemonError, DaemonProcess, attached_daemon, running_daemon
from benchmarks.generator import MODES
from benchmarks.report import format_table, machine_info, write_json
from benchmarks.runner import CellPlan, run_cell

__all__ = ["main", "run"]

REPO_ROOT = Path(__file__).resolve().parent.parent
EXIT_INTERRUPTED = 130
EXIT_DAEMON = 3
EXIT_FAILED = 1


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,8,64, got {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def _modes(text: str) -> list[str]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [v for v in values if v not in MODES]
    if unknown or not values:
        raise argparse.ArgumentTypeError(f"modes are {', '.join(MODES)}; got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__)
    add = parser.add_argument
    add("--clients", type=_int_list, help="concurrency list (default 1,8,64; --quick 1,8)")
    add("--modes", type=_modes, default=list(MODES), help="ws-op,ws-mcp,shim (default all)")
    add("--duration", type=float, help="seconds measured per cell (default 5; --quick 2)")
    add("--warmup", type=float, default=1.0, help="seconds of unmeasured calls first (1)")
    add("--workers", type=int, default=4, help="daemon worker processes (4)")
    add("--payload", type=int, default=100, help="bytes of echo text per call (100)")
    add("--procs", type=int, default=1, help="generator processes per cell (1)")
    add(
        "--session-cap",
        type=int,
        default=64,
        help="EXAI_WS_SESSION_MAX_INFLIGHT for the daemon (64; the product default is 8)",
    )
    add(
        "--global-cap",
        type=int,
        default=1024,
        help="EXAI_WS_GLOBAL_MAX_INFLIGHT for the daemon (1024; the product default is 24)",
    )
    add("--call-timeout", type=float, default=30.0, help="client-side deadline per call (30 s)")
    add("--quick", action="store_true", help="2 s per cell, clients 1,8")
    add(
        "--attach",
        type=int,
        metavar="PORT",
        help="measure an already running daemon on 127.0.0.1:PORT instead of starting one "
        "(it needs EXAI_DIAGNOSTIC_TOOLS=1; --workers and the caps are then ignored)",
    )
    add("--out", type=Path, help="JSON file (default benchmarks/out/load-<timestamp>.json)")
    return parser


def _plans(args: argparse.Namespace) -> list[CellPlan]:
    clients = args.clients or ([1, 8] if args.quick else [1, 8, 64])
    duration_s = args.duration or (2.0 if args.quick else 5.0)
    return [
        CellPlan(
            mode=mode,
            clients=c,
            procs=args.procs,
            payload_bytes=args.payload,
            warmup_s=args.warmup,
            duration_s=duration_s,
            call_timeout_s=args.call_timeout,
        )
        for mode in args.modes
        for c in clients
    ]


async def _run_cells(
    plans: Sequence[CellPlan], daemon: DaemonProcess, log_dir: Path
) -> list[dict[str, Any]]:
    rows = []
    for plan in plans:
        row = await run_cell(plan, daemon, REPO_ROOT, log_dir)
        rows.append(row)
        idle = "" if row["daemon"]["idle_after"] else "  (daemon NOT idle afterwards)"
        print(
            f"  {plan.mode:7} c={plan.clients:<4} {row['calls_per_s']:9.0f} calls/s"
            f"  p50 {row['latency_ms']['p50'] or 0:.2f} ms  errors {row['error_count']}{idle}",
            file=sys.stderr,
            flush=True,
        )
    return rows


def _raise_interrupt(signum: int, frame: object) -> NoReturn:
    # SIGTERM/SIGHUP take the same path as Ctrl+C, so every `finally` cleans up.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _raise_interrupt)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or REPO_ROOT / "benchmarks" / "out" / f"load-{stamp}.json"
    log_dir = out.with_suffix(".logs")
    plans = _plans(args)
    env = {
        "EXAI_WS_SESSION_MAX_INFLIGHT": str(args.session_cap),
        "EXAI_WS_GLOBAL_MAX_INFLIGHT": str(args.global_cap),
    }
    who = f"daemon on port {args.attach}" if args.attach else f"daemon with {args.workers} workers"
    print(f"{len(plans)} cells, {who}; logs in {log_dir}", file=sys.stderr, flush=True)
    target = (
        attached_daemon(args.attach, log_dir)
        if args.attach
        else running_daemon(args.workers, log_dir, env, REPO_ROOT)
    )
    try:
        with target as daemon:
            rows = asyncio.run(_run_cells(plans, daemon, log_dir))
    except DaemonError as exc:
        print(f"benchmark: {exc}", file=sys.stderr)
        return EXIT_DAEMON
    except (OSError, RuntimeError, TimeoutError) as exc:
        # The daemon stopped answering /health, or a generator died: see the logs.
        print(f"benchmark failed: {exc!r}; logs in {log_dir}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("benchmark: interrupted; daemon and clients stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    document = {
        "benchmark": "load",
        "machine": machine_info(REPO_ROOT),
        "config": {
            "workers": None if args.attach else args.workers,
            "attached_port": args.attach,
            "payload_bytes": args.payload,
            "procs": args.procs,
            "warmup_s": args.warmup,
            "session_cap": args.session_cap,
            "global_cap": args.global_cap,
            "call_timeout_s": args.call_timeout,
            "log_dir": str(log_dir),
            "notes": "calls_per_s and latency count good calls only; cpu is % of one core "
            "over the measurement window",
        },
        "rows": rows,
    }
    write_json(out, document)
    print(format_table(rows))
    print(f"\nJSON: {out}")
    return 0


def run() -> None:
    """Entry point for `python -m benchmarks.load`."""
    sys.exit(main())


if __name__ == "__main__":
    run()
