"""`python -m benchmarks.fleet`: many stdio MCP servers, each client with its own copies
against one daemon hosting them all from a servers file.

Three measurements in one run, one after another:

1. footprint: processes and memory (RSS and PSS) of four stdio servers for three
   clients, each client starting its own (the status quo), against one daemon
   (`--workers 1`) hosting them and three shims (`benchmarks/fleet_footprint.py`);
2. listing: `tools/list` latency from the moment the daemon is ready, with one
   hosted server that never answers `initialize` (`benchmarks/fleet_listing.py`);
3. router: calls/s of one hosted tool, hosted alone and called by its bare name
   against hosted beside two other servers and called as `<name>__<tool>`, in
   alternating paired rounds (`benchmarks/fleet_router.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.fleet_footprint import PROCESS_TARGET, RSS_TARGET, run_footprint
from benchmarks.fleet_listing import run_listing
from benchmarks.fleet_router import run_router
from benchmarks.fleet_servers import (
    COUNTER,
    FULL,
    HUNG,
    REPO_ROOT,
    TIME,
    everything_or_fallback,
)
from benchmarks.report import machine_info, write_json

__all__ = ["format_document", "main"]

MIB = 1024 * 1024
QUICK = {"rounds": 1, "duration": 0.5, "warmup": 0.2, "listings": 3, "clients": [1, 4]}


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fleet", description=__doc__)
    add = parser.add_argument
    add("--rounds", type=int, default=8, help="router rounds, each single and prefixed (8)")
    add("--duration", type=float, default=2.0, help="seconds measured per router cell (2)")
    add("--warmup", type=float, default=0.5, help="seconds of unmeasured calls first (0.5)")
    add("--clients", type=_ints, default=[1, 16], help="router concurrencies (1,16)")
    add("--listings", type=int, default=20, help="tools/list requests with a hung server (20)")
    add("--footprint-clients", type=int, default=3, help="clients in the footprint (3)")
    add("--quick", action="store_true", help="one short pass of everything (for the tests)")
    add("--out", type=Path, help="JSON file (default benchmarks/out/fleet-<timestamp>.json)")
    return parser


async def _run(args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    everything = everything_or_fallback()
    print("fleet: footprint", file=sys.stderr, flush=True)
    footprint = await run_footprint(
        [TIME, COUNTER, everything, FULL], args.footprint_clients, log_dir
    )
    print("fleet: tools/list with a hung server", file=sys.stderr, flush=True)
    listing = await run_listing([TIME, COUNTER], HUNG, args.listings, log_dir)
    print("fleet: prefix routing", file=sys.stderr, flush=True)
    router = await run_router(COUNTER, [TIME, FULL], args, log_dir)
    return {"footprint": footprint, "listing": listing, "router": router}


def _verdict(passed: bool) -> str:
    return "PASS" if passed else "MISS"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / MIB:.1f}"


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_footprint(section: dict[str, Any]) -> list[str]:
    sq, dm, cmp = section["status_quo"], section["daemon"], section["comparison"]
    lines = [
        f"1. Processes and memory: {len(section['servers'])} stdio servers"
        f" ({', '.join(section['servers'])}), {section['clients']} clients",
        "",
        "| side | processes | RSS MiB | PSS MiB | all clients ready s |",
        "|---|---|---|---|---|",
        f"| status quo (each client its own servers) | {sq['processes']} |"
        f" {_mib(sq['rss_bytes'])} | {_mib(sq['pss_bytes'])} | {sq['ready_s']:.2f} |",
        f"| daemon (`--workers 1`) + {section['clients']} shims | {dm['processes']} |"
        f" {_mib(dm['rss_bytes'])} | {_mib(dm['pss_bytes'])} | {dm['ready_s']:.2f} |",
        f"| daemon / status quo | {_num(cmp['processes_ratio'], '.2f')} |"
        f" {_num(cmp['rss_ratio'], '.2f')} | {_num(cmp['pss_ratio'], '.2f')} | |",
    ]
    http, cmp_http = section.get("daemon_http"), section.get("comparison_http")
    if http is not None and cmp_http is not None:
        lines += [
            f"| daemon (`--workers 1`), {section['clients']} clients on `/mcp` |"
            f" {http['processes']} | {_mib(http['rss_bytes'])} | {_mib(http['pss_bytes'])} |"
            f" {http['ready_s']:.2f} |",
            f"| daemon on `/mcp` / status quo | {_num(cmp_http['processes_ratio'], '.2f')} |"
            f" {_num(cmp_http['rss_ratio'], '.2f')} | {_num(cmp_http['pss_ratio'], '.2f')} | |",
        ]
    lines += [
        "",
        f"targets: processes <= {PROCESS_TARGET:.2f} {_verdict(cmp['processes_pass'])},"
        f" RSS <= {RSS_TARGET:.2f} {_verdict(cmp['rss_pass'])}"
        f" (PSS {_verdict(cmp['pss_pass'])}) with shims",
    ]
    if cmp_http is not None:
        lines.append(
            f"on `/mcp`: processes {_verdict(cmp_http['processes_pass'])},"
            f" RSS {_verdict(cmp_http['rss_pass'])} (PSS {_verdict(cmp_http['pss_pass'])})"
        )
    even = cmp["break_even_clients"]
    lines.append(
        "clients at which the daemon side meets each target (same per-process figures):"
        f" processes {even['processes'] or 'never'}, RSS {even['rss'] or 'never'},"
        f" PSS {even['pss'] or 'never'}"
    )
    return lines


def format_listing(section: dict[str, Any]) -> list[str]:
    latency = section["latency_ms"]
    requests = section["requests"]
    good = [s for s in section["servers"] if s != section["hung"]]
    complete = sum(all(r["tools_by_server"][s] > 0 for s in good) for r in requests)
    return [
        f"2. tools/list with `{section['hung']}` never answering initialize"
        f" ({len(requests)} requests, the first {requests[0]['since_ready_ms']:.0f} ms"
        f" after the daemon was ready, {section['daemon_ready_ms'] / 1000:.2f} s after its"
        " spawn)",
        "",
        f"p50 {latency['p50']:.1f} ms, p90 {latency['p90']:.1f} ms, max {latency['max']:.1f} ms"
        f" (target max <= {section['target_max_ms']:.0f} ms: {_verdict(section['pass'])});"
        f" listings with every good server's tools: {complete}/{len(requests)};"
        f" hung server {section['states_at_start'][section['hung']]}"
        f" -> {section['states_at_end'][section['hung']]}",
    ]


def format_router(section: dict[str, Any]) -> list[str]:
    tools = section["tools"]
    lines = [
        f"3. Prefix routing: `{tools['single']}` (--server-cmd, one server) against"
        f" `{tools['prefixed']}` (servers file: {section['server']},"
        f" {', '.join(section['others'])}); medians over the rounds, ratios the median"
        " of each round's prefixed / single",
        "",
        "| C | rounds | single calls/s | prefixed calls/s | prefixed/single | single p50 ms"
        " | prefixed p50 ms | daemon µs/call single / prefixed (ratio) | other cpu | errors"
        " | target >= 0.95 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in section["summary"]:
        a, b = t["single"], t["prefixed"]
        lines.append(
            f"| {t['clients']} | {t['rounds']} | {_num(a['calls_per_s_median'], ',.0f')} |"
            f" {_num(b['calls_per_s_median'], ',.0f')} | {_num(t['ratio_median'], '.3f')} |"
            f" {_num(a['p50_ms_median'], '.2f')} | {_num(b['p50_ms_median'], '.2f')} |"
            f" {_num(a['daemon_us_per_call_median'], '.0f')}"
            f" / {_num(b['daemon_us_per_call_median'], '.0f')}"
            f" ({_num(t['daemon_us_per_call_ratio_median'], '.2f')}) |"
            f" {_num(a['other_cpu_pct_median'], '.0f')}%"
            f" / {_num(b['other_cpu_pct_median'], '.0f')}% |"
            f" {a['errors'] + b['errors']} | {_verdict(t['pass'])} |"
        )
    return lines


def format_document(document: dict[str, Any]) -> str:
    """The three sections as Markdown tables and lines."""
    parts = [
        format_footprint(document["footprint"]),
        format_listing(document["listing"]),
        format_router(document["router"]),
    ]
    return "\n\n".join("\n".join(p) for p in parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    if args.footprint_clients < 1:
        raise SystemExit("--footprint-clients must be at least 1")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or REPO_ROOT / "benchmarks" / "out" / f"fleet-{stamp}.json"
    log_dir = out.with_suffix(".logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    sections = asyncio.run(_run(args, log_dir))
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    document = {
        "benchmark": "fleet",
        "machine": machine_info(REPO_ROOT),
        "config": config,
        "elapsed_s": time.perf_counter() - started,
        **sections,
    }
    write_json(out, document)
    print(format_document(document))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
