"""`python -m benchmarks.load`: closed-loop load through every way into the daemon.

One daemon per worker count (started here, own process group, diagnostic tools on)
serves the cells; each cell is one scenario, one mode at one concurrency, run by separate
generator processes. Baselines without the broker (a raw aiohttp WebSocket echo server,
the mcp SDK's own stdio server) run in the same run so every figure has a ratio.
Prints a table and writes the same rows, with machine info, as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from benchmarks.daemon import (
    DaemonError,
    DaemonProcess,
    attached_daemon,
    running_daemon,
    running_echo_server,
)
from benchmarks.dialects import SCENARIOS, scenario
from benchmarks.generator import BASELINE_MODES, MODES, SDK_STDIO_ARGS
from benchmarks.probes import idle_sessions, startup
from benchmarks.report import (
    add_ratios,
    format_extras,
    format_table,
    machine_info,
    pool_comparison,
    scaling,
    write_chart,
    write_json,
)
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


def _pools(text: str) -> list[str]:
    pools = [p.strip() for p in text.split(",") if p.strip()]
    if not pools or any(p not in ("local", "ray") and not p.startswith("ray:") for p in pools):
        raise argparse.ArgumentTypeError(f"pools are local, ray or ray:ADDRESS; got {text!r}")
    return pools


def _scenarios(text: str) -> list[str]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    try:
        for value in values:
            scenario(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if not values:
        raise argparse.ArgumentTypeError(f"scenarios are {', '.join(SCENARIOS)}; got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__)
    add = parser.add_argument
    add("--clients", type=_int_list, help="concurrency list (default 1,8,64; --quick 1,8)")
    add("--modes", type=_modes, default=list(MODES), help=f"{','.join(MODES)} (default all)")
    add(
        "--scenario",
        type=_scenarios,
        help="echo100,echo64k,sleep50,cpu or echo<N>[k] (default echo<--payload>, i.e. echo100)",
    )
    add("--duration", type=float, help="seconds measured per cell (default 5; --quick 2)")
    add("--warmup", type=float, default=1.0, help="seconds of unmeasured calls first (1)")
    add("--workers", type=int, default=4, help="daemon worker processes (4)")
    add(
        "--workers-list",
        type=_int_list,
        help="rerun every cell per worker count, a fresh daemon each (e.g. 1,2,4)",
    )
    add("--payload", type=int, default=100, help="bytes of echo text for the default scenario")
    add("--startup", type=int, default=0, metavar="N", help="time N shim start-ups (0: off)")
    add(
        "--idle-sessions",
        type=int,
        default=0,
        metavar="N",
        help="open N idle WS sessions and report daemon + workers RSS per session (0: off)",
    )
    add("--png", type=Path, help="also draw calls/s as a PNG chart (needs matplotlib)")
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
    add(
        "--pools",
        type=_pools,
        default=["local"],
        help="rerun every daemon cell per worker pool, e.g. local,ray (ray needs the ray "
        "extra; run it in a loopback-only namespace, see benchmarks/README.md)",
    )
    add(
        "--hosted",
        action="store_true",
        help="the daemon hosts the stock SDK stdio server of the sdk-stdio baseline "
        "(--server-cmd): ws-mcp and shim cells go through the broker to the same server "
        "that sdk-stdio talks to directly",
    )
    add("--out", type=Path, help="JSON file (default benchmarks/out/load-<timestamp>.json)")
    return parser


def _worker_counts(args: argparse.Namespace) -> list[int | None]:
    if args.attach:
        return [None]
    return list(args.workers_list or [args.workers])


def _plans(
    args: argparse.Namespace, workers: int | None, first: bool, pool: str | None = None
) -> list[CellPlan]:
    """The cells for one daemon. Baselines do not involve the daemon: they run with the
    first worker count only; raw-ws only echoes, so it runs for echo scenarios only."""
    clients = args.clients or ([1, 8] if args.quick else [1, 8, 64])
    duration_s = args.duration or (2.0 if args.quick else 5.0)
    scenarios = args.scenario or [f"echo{args.payload}"]
    return [
        CellPlan(
            mode=mode,
            clients=c,
            procs=args.procs,
            scenario=name,
            warmup_s=args.warmup,
            duration_s=duration_s,
            call_timeout_s=args.call_timeout,
            workers=None if mode in BASELINE_MODES else workers,
            pool=None if mode in BASELINE_MODES else pool,
        )
        for name in scenarios
        for mode in args.modes
        for c in clients
        if (first or mode not in BASELINE_MODES) and (mode != "raw-ws" or scenario(name).is_echo)
    ]


class Progress:
    """A progress bar over the cells (tqdm), with one summary line per finished cell."""

    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=total, unit="cell", file=sys.stderr, dynamic_ncols=True)

    def start(self, plan: CellPlan) -> None:
        self._bar.set_description(_label(plan).strip())

    def finish(self, plan: CellPlan, row: dict[str, Any]) -> None:
        idle = "" if row["daemon"]["idle_after"] else "  (daemon NOT idle afterwards)"
        self._bar.write(
            f"{_label(plan)} {row['calls_per_s']:9.0f} calls/s"
            f"  p50 {row['latency_ms']['p50'] or 0:.2f} ms  errors {row['error_count']}{idle}",
            file=sys.stderr,
        )
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()


def _label(plan: CellPlan) -> str:
    workers = "-" if plan.workers is None else str(plan.workers)
    mode = plan.mode if plan.pool in (None, "local") else f"{plan.mode}@{plan.pool}"
    return f"{plan.scenario:8} w={workers:2} {mode:9} c={plan.clients:<4}"


async def _run_cells(
    plans: Sequence[CellPlan],
    daemon: DaemonProcess,
    log_dir: Path,
    echo_server: tuple[int, int] | None,
    progress: Progress,
) -> list[dict[str, Any]]:
    rows = []
    for plan in plans:
        progress.start(plan)
        row = await run_cell(plan, daemon, REPO_ROOT, log_dir, echo_server)
        rows.append(row)
        progress.finish(plan, row)
    return rows


async def _probes(args: argparse.Namespace, daemon: DaemonProcess, extras: dict[str, Any]) -> None:
    if args.startup > 0:
        print(f"startup: {args.startup} spawns of shim and sdk-stdio", file=sys.stderr)
        extras["startup"] = [
            await startup(daemon.port, REPO_ROOT, args.startup, ("-m", "shim")),
            await startup(daemon.port, REPO_ROOT, args.startup, SDK_STDIO_ARGS),
        ]
    if args.idle_sessions > 0:
        print(f"idle sessions: opening {args.idle_sessions}", file=sys.stderr, flush=True)
        extras["idle_sessions"] = await idle_sessions(daemon, args.idle_sessions)


def _run_all(
    args: argparse.Namespace, env: dict[str, str], log_dir: Path, extras: dict[str, Any]
) -> list[dict[str, Any]]:
    counts = _worker_counts(args)
    pools: list[str | None] = [None] if args.attach else list(args.pools)
    daemons = [(pool, w) for pool in pools for w in counts]
    plans = {d: _plans(args, d[1], i == 0, d[0]) for i, d in enumerate(daemons)}
    progress = Progress(sum(len(p) for p in plans.values()))
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        stack.callback(progress.close)
        echo_server = None
        if "raw-ws" in args.modes:
            echo_server = stack.enter_context(running_echo_server(log_dir, REPO_ROOT))
        for i, (pool, workers) in enumerate(daemons):
            if workers is None or pool is None:
                target = attached_daemon(args.attach, log_dir)
            else:
                where = log_dir
                if len(counts) > 1:
                    where = where / f"workers-{workers}"
                if len(pools) > 1:
                    where = where / f"pool-{pool.replace(':', '_')}"
                target = running_daemon(workers, where, env, REPO_ROOT, pool)
            with target as daemon:
                rows += asyncio.run(
                    _run_cells(plans[(pool, workers)], daemon, log_dir, echo_server, progress)
                )
                if i == 0:
                    asyncio.run(_probes(args, daemon, extras))
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
    env = {
        "EXAI_WS_SESSION_MAX_INFLIGHT": str(args.session_cap),
        "EXAI_WS_GLOBAL_MAX_INFLIGHT": str(args.global_cap),
    }
    if args.hosted:
        env["EXAI_SERVER_CMD"] = shlex.join([sys.executable, *SDK_STDIO_ARGS])
    if args.idle_sessions:
        # Room for the idle sessions above the product's 512 connections.
        env["EXAI_WS_MAX_CONNECTIONS"] = str(max(512, args.idle_sessions + 64))
    counts = _worker_counts(args)
    who = (
        f"daemon on port {args.attach}"
        if args.attach
        else f"daemon with {'/'.join(str(c) for c in counts)} workers"
    )
    print(f"{who}; logs in {log_dir}", file=sys.stderr, flush=True)
    extras: dict[str, Any] = {}
    try:
        rows = _run_all(args, env, log_dir, extras)
        add_ratios(rows)
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
            "workers": None if args.attach else _worker_counts(args),
            "pools": None if args.attach else args.pools,
            "attached_port": args.attach,
            "scenarios": sorted({row["scenario"] for row in rows}),
            "procs": args.procs,
            "warmup_s": args.warmup,
            "session_cap": args.session_cap,
            "global_cap": args.global_cap,
            "call_timeout_s": args.call_timeout,
            "log_dir": str(log_dir),
            "notes": "calls_per_s and latency count good calls only; cpu is % of one core "
            "over the measurement window; ratio_raw_ws / ratio_sdk_stdio: calls_per_s over "
            "that baseline at the same scenario and clients; for raw-ws the daemon cpu "
            "column is the echo server's; sdk-stdio servers count as client cpu",
        },
        "rows": rows,
        **extras,
        "scaling": scaling(rows),
        "pools": pool_comparison(rows),
    }
    write_json(out, document)
    print(format_table(rows))
    extra_lines = format_extras(document)
    if extra_lines:
        print(f"\n{extra_lines}")
    print(f"\nJSON: {out}")
    if args.png:
        drawn = write_chart(args.png, rows)
        print(f"chart: {args.png}" if drawn else "chart: matplotlib not importable, skipped")
    return 0


def run() -> None:
    """Entry point for `python -m benchmarks.load`."""
    sys.exit(main())


if __name__ == "__main__":
    run()
