"""`python -m benchmarks.stdio_cost`: the CPU the stock stdio echo server spends per call.

Every target of `python -m benchmarks.http` that is not `raw-post` ends in
`benchmarks/stdio_echo_server.py` (the mcp SDK's lowlevel server on its stdio
transport), so that server's own CPU per `tools/call` bounds what any of them can do,
whatever sits in front of it. This spawns one such server, initializes it, and drives
it alone with a minimal JSON-lines client (no SDK, so the client costs little),
keeping `--inflight` requests written ahead of the answers. The server's user + system
CPU (`/proc/<pid>/stat`, all its threads) over the measured calls, divided by the
calls, is its cost per call; it runs one Python thread at a time, so one instance can
never do more than 1 / that calls/s.

With `--http FILE` (the JSON of a `benchmarks.http` run) it also works out what that
means for the broker-hosted target: the ceiling with one hosted instance, with two on
two cores once the broker's own CPU per call is added, and how that compares with 3x
the faster peer's calls/s in that run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from benchmarks.dialects import mcp_initialize
from benchmarks.generator import SDK_STDIO_ARGS
from benchmarks.procstat import cpu_seconds, machine_busy_seconds
from benchmarks.report import machine_info, write_json

__all__ = ["ceilings", "main"]

REPO_ROOT = Path(__file__).resolve().parent.parent
HOSTED = "broker-hosted"
PEERS = ("supergateway", "mcp-proxy")
INITIALIZE_ID = 0
TARGET_RATIO = 3.0


class ServerError(RuntimeError):
    """The stdio server closed its output or answered something other than the echo."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.stdio_cost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--calls", type=int, default=5000, help="measured calls per round (5000)")
    add("--warmup", type=int, default=500, help="unmeasured calls before each round (500)")
    add("--rounds", type=int, default=3, help="measured rounds per depth (3)")
    add(
        "--inflight",
        type=lambda text: [int(p) for p in text.split(",") if p.strip()],
        default=[32],
        help="requests kept in flight, comma-separated depths (32)",
    )
    add("--payload", type=int, default=100, help="bytes of echo text (100)")
    add("--http", type=Path, help="JSON of a benchmarks.http run, for the ceiling arithmetic")
    add("--out", type=Path, help="JSON file (default benchmarks/out/stdio-cost-<timestamp>.json)")
    return parser


# --- the client -----------------------------------------------------------------------


def _line(message: Mapping[str, Any]) -> bytes:
    return orjson.dumps(message) + b"\n"


def _call(request_id: int, text: str) -> bytes:
    params = {"name": "echo", "arguments": {"text": text}}
    return _line({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params})


async def _answer(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    """The next JSON-RPC response on the server's stdout (notifications are skipped)."""
    assert proc.stdout is not None
    while True:
        raw = await proc.stdout.readline()
        if not raw:
            raise ServerError(f"stdio server closed its output (exit {proc.returncode})")
        message: dict[str, Any] = orjson.loads(raw)
        if "id" in message:
            return message


async def _open(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdin is not None
    proc.stdin.write((mcp_initialize(INITIALIZE_ID) + "\n").encode())
    answer = await _answer(proc)
    if "result" not in answer:
        raise ServerError(f"initialize refused: {answer}")
    proc.stdin.write(_line({"jsonrpc": "2.0", "method": "notifications/initialized"}))
    await proc.stdin.drain()


async def _drive(proc: asyncio.subprocess.Process, calls: int, inflight: int, text: str) -> None:
    """`calls` echoes with `inflight` requests outstanding; every answer is checked."""
    assert proc.stdin is not None
    requests = [_call(i, text) for i in range(1, calls + 1)]
    first = min(inflight, calls)
    proc.stdin.write(b"".join(requests[:first]))
    sent = first
    for _ in range(calls):
        answer = await _answer(proc)
        content = answer.get("result", {}).get("content") or [{}]
        if content[0].get("text") != text:
            raise ServerError(f"bad answer: {answer}")
        if sent < calls:
            proc.stdin.write(requests[sent])
            sent += 1
            if proc.stdin.transport.get_write_buffer_size() > 1 << 16:
                await proc.stdin.drain()


async def _measure(args: argparse.Namespace, inflight: int) -> list[dict[str, Any]]:
    text = "x" * args.payload
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *SDK_STDIO_ARGS,
        cwd=REPO_ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        limit=1 << 20,
    )
    rows = []
    try:
        await _open(proc)
        for round_no in range(args.rounds):
            await _drive(proc, args.warmup, inflight, text)
            server_0, client_0 = cpu_seconds(proc.pid), time.process_time()
            busy_0, wall_0 = machine_busy_seconds(), time.perf_counter()
            await _drive(proc, args.calls, inflight, text)
            wall_s = time.perf_counter() - wall_0
            server_1, client_1, busy_1 = (
                cpu_seconds(proc.pid),
                time.process_time(),
                (machine_busy_seconds()),
            )
            if server_0 is None or server_1 is None:
                raise ServerError("no /proc/<pid>/stat for the stdio server (Linux only)")
            server_s, client_s = server_1 - server_0, client_1 - client_0
            other_pct = None
            if busy_0 is not None and busy_1 is not None:
                other_pct = max(0.0, (busy_1 - busy_0 - server_s - client_s) / wall_s * 100)
            rows.append(
                {
                    "inflight": inflight,
                    "round": round_no,
                    "calls": args.calls,
                    "wall_s": wall_s,
                    "calls_per_s": args.calls / wall_s,
                    "server_cpu_pct": server_s / wall_s * 100,
                    "server_us_per_call": server_s / args.calls * 1e6,
                    "client_us_per_call": client_s / args.calls * 1e6,
                    "other_cpu_pct": other_pct,
                    "loadavg": os.getloadavg(),
                }
            )
            print(
                f"[inflight {inflight} round {round_no}] {rows[-1]['calls_per_s']:.0f} calls/s,"
                f" server {rows[-1]['server_us_per_call']:.0f} us/call",
                file=sys.stderr,
            )
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), timeout=5.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    return rows


# --- the summary and the ceilings -----------------------------------------------------


def summarize(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per depth: medians over the rounds, and the one-core ceiling 1 / server CPU."""
    table = []
    for depth in sorted({r["inflight"] for r in rows}):
        group = [r for r in rows if r["inflight"] == depth]
        server_us = statistics.median(r["server_us_per_call"] for r in group)
        others = [r["other_cpu_pct"] for r in group if r["other_cpu_pct"] is not None]
        table.append(
            {
                "inflight": depth,
                "rounds": len(group),
                "calls_per_s_median": statistics.median(r["calls_per_s"] for r in group),
                "server_cpu_pct_median": statistics.median(r["server_cpu_pct"] for r in group),
                "server_us_per_call_median": server_us,
                "server_us_per_call_min": min(r["server_us_per_call"] for r in group),
                "client_us_per_call_median": statistics.median(
                    r["client_us_per_call"] for r in group
                ),
                "other_cpu_pct_median": statistics.median(others) if others else None,
                "one_core_calls_per_s": 1e6 / server_us,
            }
        )
    return table


def ceilings(server_us: float, http: Mapping[str, Any]) -> dict[str, Any]:
    """The broker-hosted ceilings implied by `server_us` and a benchmarks.http run.

    The http run's `us/call` for broker-hosted is its whole process tree (daemon,
    workers and hosted servers), so the broker's own share is that minus `server_us`.
    """
    summary = {(t["target"], t["clients"]): t for t in http["summary"]}
    out: dict[str, Any] = {"server_us_per_call": server_us, "by_clients": []}
    cpus = http["machine"].get("cpu_count") or 1
    for clients in sorted({c for _, c in summary}):
        hosted = summary.get((HOSTED, clients))
        peers = [summary[(p, clients)] for p in PEERS if (p, clients) in summary]
        if hosted is None or not peers or hosted["server_us_per_call_median"] is None:
            continue
        faster = max(peers, key=lambda t: t["calls_per_s_median"])
        tree_us = hosted["server_us_per_call_median"]
        rows = [r for r in http["rows"] if r["target"] == HOSTED and r["clients"] == clients]
        generator_us = statistics.median(
            r["cpu"]["clients_pct"] * 1e4 / r["calls_per_s"] for r in rows if r["calls_per_s"]
        )
        cores = min(cpus, http["config"].get("workers", 2))
        target = TARGET_RATIO * faster["calls_per_s_median"]
        out["by_clients"].append(
            {
                "clients": clients,
                "faster_peer": faster["target"],
                "faster_peer_calls_per_s": faster["calls_per_s_median"],
                "target_calls_per_s": target,
                "hosted_calls_per_s": hosted["calls_per_s_median"],
                "hosted_tree_us_per_call": tree_us,
                "broker_us_per_call": tree_us - server_us,
                "generator_us_per_call": generator_us,
                "one_instance_ceiling": 1e6 / server_us,
                "two_instance_ceiling": min(cores * 1e6 / server_us, cpus * 1e6 / tree_us),
                "two_instance_ceiling_with_generator": cpus * 1e6 / (tree_us + generator_us),
            }
        )
    return out


def format_table(table: Sequence[Mapping[str, Any]]) -> str:
    head = (
        f"{'inflight':>8} {'rounds':>6} {'calls/s':>8} {'server cpu':>10}"
        f" {'server us/call':>14} {'client us/call':>14} {'other cpu':>9} {'1-core max/s':>12}"
    )
    lines = [head, "-" * len(head)]
    for t in table:
        other = t["other_cpu_pct_median"]
        lines.append(
            f"{t['inflight']:>8} {t['rounds']:>6} {t['calls_per_s_median']:>8.0f}"
            f" {t['server_cpu_pct_median']:>9.0f}% {t['server_us_per_call_median']:>14.0f}"
            f" {t['client_us_per_call_median']:>14.0f}"
            f" {'-' if other is None else f'{other:.0f}%':>9} {t['one_core_calls_per_s']:>12.0f}"
        )
    return "\n".join(lines)


def format_ceilings(result: Mapping[str, Any]) -> str:
    lines = [f"\nstdio server: {result['server_us_per_call']:.0f} us/call"]
    for c in result["by_clients"]:
        lines += [
            f"C={c['clients']}: broker-hosted {c['hosted_calls_per_s']:.0f}/s,"
            f" whole tree {c['hosted_tree_us_per_call']:.0f} us/call"
            f" (broker {c['broker_us_per_call']:.0f} + server), generator"
            f" {c['generator_us_per_call']:.0f} us/call",
            f"  ceiling, one instance:            {c['one_instance_ceiling']:.0f}/s",
            f"  ceiling, two instances, 2 cores:  {c['two_instance_ceiling']:.0f}/s"
            f" ({c['two_instance_ceiling_with_generator']:.0f}/s with the generator's CPU)",
            f"  target 3 x {c['faster_peer']} ({c['faster_peer_calls_per_s']:.0f}/s):"
            f" {c['target_calls_per_s']:.0f}/s",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or REPO_ROOT / "benchmarks" / "out" / f"stdio-cost-{stamp}.json"
    loadavg_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    for depth in args.inflight:
        rows += asyncio.run(_measure(args, depth))
    table = summarize(rows)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    document: dict[str, Any] = {
        "benchmark": "stdio_cost",
        "machine": machine_info(REPO_ROOT),
        "config": config,
        "loadavg_before": loadavg_before,
        "loadavg_after": os.getloadavg(),
        "summary": table,
        "rows": rows,
    }
    print(format_table(table))
    if args.http is not None:
        # The deepest pipeline is the one closest to how a busy broker drives its servers.
        server_us = table[-1]["server_us_per_call_median"]
        document["ceilings"] = ceilings(server_us, orjson.loads(args.http.read_bytes()))
        document["ceilings"]["http_json"] = str(args.http)
        print(format_ceilings(document["ceilings"]))
    write_json(out, document)
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
