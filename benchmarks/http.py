"""`python -m benchmarks.http`: MCP Streamable HTTP servers under closed-loop load.

Every target is an MCP server at an HTTP URL on 127.0.0.1 serving the same `echo`:

| target | server |
|---|---|
| `broker-hosted` | the daemon's `/mcp` hosting `benchmarks/stdio_echo_server.py` (`--server-cmd`) |
| `broker-builtin` | the daemon's `/mcp`, its built-in `echo`; the client accepts JSON only |
| `supergateway` | npm `supergateway` in front of the same stdio server |
| `mcp-proxy` | PyPI `mcp-proxy` in front of the same stdio server |
| `raw-post` | `benchmarks/raw_post_server.py`: a bare aiohttp POST handler, the ceiling |

Each round runs every target at every concurrency back to back (target order rotating
from round to round), so a round's cells see the same machine; the table gives
medians over the rounds and medians of the paired per-round ratios: `broker-hosted`
over the faster of supergateway and mcp-proxy in that round, every target over
raw-post. The peers are installed by hand (see benchmarks/README.md); a missing one is
skipped with a note.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from benchmarks.daemon import DaemonError, DaemonProcess, running_daemon, stop
from benchmarks.generator import SDK_STDIO_ARGS
from benchmarks.http_load import LoadConfig
from benchmarks.procstat import machine_busy_seconds, total_cpu_seconds
from benchmarks.report import machine_info, write_json
from benchmarks.runner import read_event, reap, spawn_generator, split_clients
from benchmarks.stats import summarise

__all__ = ["TARGETS", "main", "summarize"]

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE = REPO_ROOT / ".cache"
NODE_PREFIX = CACHE / "bench-node"
PEER_VENV = CACHE / "bench-venv"
SUPERGATEWAY_JS = NODE_PREFIX / "node_modules" / "supergateway" / "dist" / "index.js"
MCP_PROXY = PEER_VENV / "bin" / "mcp-proxy"

HOSTED, BUILTIN, SUPERGATEWAY, MCP_PROXY_NAME, RAW = (
    "broker-hosted",
    "broker-builtin",
    "supergateway",
    "mcp-proxy",
    "raw-post",
)
TARGETS = (HOSTED, BUILTIN, SUPERGATEWAY, MCP_PROXY_NAME, RAW)
PEERS = (SUPERGATEWAY, MCP_PROXY_NAME)
ACCEPT_BOTH = "application/json, text/event-stream"
READY_TIMEOUT_S = 60.0
START_DELAY_S = 0.3
# supergateway --stateful starts one stdio server (an mcp SDK import, about 1 s of CPU)
# per session, all of a cell's at once.
OPEN_TIMEOUT_S = 30.0
OPEN_TIMEOUT_PER_CLIENT_S = 2.0
IDLE_TIMEOUT_S = 10.0
STREAM_LIMIT_BYTES = 256 * 1024 * 1024

# supergateway has no listen-address option and Express listens on every interface;
# this preload makes a bare `listen(port, ...)` a loopback one.
_LOOPBACK_LISTEN_JS = (
    'import net from "node:net";'
    "const listen = net.Server.prototype.listen;"
    "net.Server.prototype.listen = function (...a) {"
    'if (typeof a[0] === "number" && typeof a[1] !== "string") a.splice(1, 0, "127.0.0.1");'
    "return listen.apply(this, a); };"
)


@dataclasses.dataclass(slots=True)
class Target:
    """A running server: where to POST, what to accept, whose CPU is the server's."""

    name: str
    url: str
    accept: str
    pid: int
    daemon: DaemonProcess | None = None


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(names) - set(TARGETS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown targets {unknown}; choose from {TARGETS}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.http",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--targets", type=_names, default=list(TARGETS), help="comma-separated (all five)")
    add("--clients", type=_ints, default=[1, 8, 32, 64], help="concurrencies (1,8,32,64)")
    add("--rounds", type=int, default=3, help="rounds of every cell (3)")
    add("--duration", type=float, default=3.0, help="seconds measured per cell (3)")
    add("--warmup", type=float, default=1.0, help="seconds of unmeasured calls first (1)")
    add("--payload", type=int, default=100, help="bytes of echo text (100)")
    add("--workers", type=int, default=2, help="daemon workers = hosted instances (2)")
    add("--procs", type=int, default=1, help="load generator processes per cell (1)")
    add("--call-timeout", type=float, default=30.0, help="seconds before a call is an error")
    add(
        "--supergateway-mode",
        choices=("stateful", "stateless"),
        default="stateful",
        help="stateful (default): one stdio server per session; stateless starts one per POST",
    )
    add("--out", type=Path, help="JSON file (default benchmarks/out/http-<timestamp>.json)")
    return parser


# --- starting and stopping the servers ----------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening_hosts(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp* spells them) listening on `port`."""
    hosts = set()
    for name in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
                fields = line.split()
                host, _, hex_port = fields[1].partition(":")
                if fields[3] == "0A" and int(hex_port, 16) == port:
                    hosts.add(host)
    return hosts


def _is_loopback(hex_host: str) -> bool:
    if len(hex_host) == 8:  # IPv4, little-endian: 127.x.x.x ends in 7F
        return hex_host.upper().endswith("7F")
    ipv6_loopback = "0" * 24 + "01000000"
    mapped_v4 = "0" * 16 + "FFFF0000"
    upper = hex_host.upper()
    return upper == ipv6_loopback or (upper.startswith(mapped_v4) and upper.endswith("7F"))


def _wait_listening(proc: subprocess.Popen[bytes], name: str, port: int, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DaemonError(f"{name} exited with {proc.returncode}; see {log}")
        hosts = _listening_hosts(port)
        if hosts:
            # Only loopback: a benchmark must not put a server on the machine's network.
            wide = sorted(h for h in hosts if not _is_loopback(h))
            if wide:
                raise DaemonError(f"{name} listens beyond loopback ({wide}); stopped it")
            return
        time.sleep(0.05)
    raise DaemonError(f"{name} not listening on 127.0.0.1:{port} after {READY_TIMEOUT_S:g} s")


@contextlib.contextmanager
def _process(
    name: str, command: Sequence[str], port: int, log_dir: Path, env: Mapping[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `command` (its own process group, so its children stop with it) until the
    block exits; ready once `port` listens on loopback only."""
    log = log_dir / f"{name}.stderr"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(
            list(command),
            cwd=REPO_ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_listening(proc, name, port, log)
        yield proc
    finally:
        stop(proc, grace_s=5.0)


@contextlib.contextmanager
def _raw_post(log_dir: Path) -> Iterator[tuple[int, int]]:
    with open(log_dir / "raw-post.stderr", "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.raw_post_server"],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        try:
            port = int(orjson.loads(line)["port"])
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise DaemonError(f"raw-post did not start ({line!r}); see {log_dir}") from exc
        yield proc.pid, port
    finally:
        stop(proc, grace_s=5.0)
        if proc.stdout is not None:
            proc.stdout.close()


def _stdio_command() -> list[str]:
    return [sys.executable, *SDK_STDIO_ARGS]


def _daemon_env(hosted: bool) -> dict[str, str]:
    # Caps raised so that the figures measure echo over HTTP rather than admission.
    env = {
        "EXAI_WS_SESSION_MAX_INFLIGHT": "64",
        "EXAI_WS_GLOBAL_MAX_INFLIGHT": "1024",
        "EXAI_WS_MAX_CONNECTIONS": "1024",
    }
    if hosted:
        env["EXAI_SERVER_CMD"] = shlex.join(_stdio_command())
    return env


def _start(
    name: str, stack: contextlib.ExitStack, args: argparse.Namespace, log_dir: Path
) -> Target:
    if name in (HOSTED, BUILTIN):
        folder = log_dir / name
        daemon = stack.enter_context(
            running_daemon(args.workers, folder, _daemon_env(name == HOSTED), REPO_ROOT)
        )
        accept = ACCEPT_BOTH if name == HOSTED else "application/json"
        url = f"http://127.0.0.1:{daemon.port}/mcp"
        return Target(name, url, accept, daemon.pid, daemon)
    if name == RAW:
        pid, port = stack.enter_context(_raw_post(log_dir))
        return Target(name, f"http://127.0.0.1:{port}/mcp", ACCEPT_BOTH, pid)
    port = _free_port()
    env = dict(os.environ)
    if name == SUPERGATEWAY:
        if not SUPERGATEWAY_JS.exists():
            raise FileNotFoundError(f"{SUPERGATEWAY_JS} (npm install --prefix {NODE_PREFIX})")
        env["HOME"] = str(NODE_PREFIX)
        preload = "data:text/javascript," + urllib.parse.quote(_LOOPBACK_LISTEN_JS)
        command = ["node", "--import", preload, str(SUPERGATEWAY_JS)]
        command += ["--stdio", shlex.join(_stdio_command())]
        command += ["--outputTransport", "streamableHttp", "--port", str(port)]
        command += ["--logLevel", "none"]
        if args.supergateway_mode == "stateful":
            command.append("--stateful")
    else:
        if not MCP_PROXY.exists():
            raise FileNotFoundError(f"{MCP_PROXY} (python3 -m venv {PEER_VENV}; pip install)")
        command = [str(MCP_PROXY), "--host", "127.0.0.1", "--port", str(port)]
        command += ["--log-level", "WARNING", "--cwd", str(REPO_ROOT), "--", *_stdio_command()]
    proc = stack.enter_context(_process(name, command, port, log_dir, env))
    return Target(name, f"http://127.0.0.1:{port}/mcp", ACCEPT_BOTH, proc.pid)


# --- one cell -------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _tree(pid: int) -> list[int]:
    """`pid` and all its descendants (the daemon's workers and hosted servers, a
    gateway's stdio servers): the whole server side of a target."""
    tree = _children()
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(tree.get(current, []))
    return found


async def _spawn(config: LoadConfig, log_path: Path) -> asyncio.subprocess.Process:
    return await spawn_generator("benchmarks.http_load", config.to_json(), log_path, REPO_ROOT)


async def _cpu_over(
    server_pid: int, client_pids: list[int], window: tuple[float, float]
) -> dict[str, float | None]:
    """Server tree, clients and whole machine CPU over the window, in % of one core."""
    pids: list[int] = []
    marks: list[tuple[float | None, float | None, float | None]] = []
    for at in window:
        await asyncio.sleep(max(0.0, at - time.time()))
        if not pids:
            pids = await asyncio.to_thread(_tree, server_pid) if server_pid else []
        marks.append(
            (total_cpu_seconds(pids), total_cpu_seconds(client_pids), machine_busy_seconds())
        )
    span_s = window[1] - window[0]

    def pct(i: int) -> float | None:
        a, b = marks[0][i], marks[1][i]
        return None if a is None or b is None else 100.0 * (b - a) / span_s

    return {"server_pct": pct(0), "clients_pct": pct(1), "machine_pct": pct(2)}


async def _daemon_after(daemon: DaemonProcess) -> dict[str, Any]:
    """The daemon once its sessions are gone (or IDLE_TIMEOUT_S passed): what was left."""
    deadline = time.monotonic() + IDLE_TIMEOUT_S
    while True:
        health = await asyncio.to_thread(daemon.health)
        idle = health["sessions"] == 0 and health["inflight"]["global"] == 0
        if idle or time.monotonic() > deadline:
            return {
                "idle": idle,
                "sessions": health["sessions"],
                "inflight_global": health["inflight"]["global"],
                "calls_total": health["calls_total"],
                "errors_by_code": health["errors_by_code"],
            }
        await asyncio.sleep(0.1)


async def run_cell(
    target: Target, clients: int, args: argparse.Namespace, log_dir: Path
) -> dict[str, Any]:
    before = await asyncio.to_thread(target.daemon.health) if target.daemon else None
    counts = split_clients(clients, args.procs)
    open_timeout_s = OPEN_TIMEOUT_S + OPEN_TIMEOUT_PER_CLIENT_S * clients
    procs: list[asyncio.subprocess.Process] = []
    logs: list[Path] = []
    try:
        for index, count in enumerate(counts):
            config = LoadConfig(
                url=target.url,
                clients=count,
                accept=target.accept,
                payload=args.payload,
                warmup_s=args.warmup,
                duration_s=args.duration,
                call_timeout_s=args.call_timeout,
                open_timeout_s=open_timeout_s,
            )
            logs.append(log_dir / f"load-{target.name}-c{clients}-{index}.log")
            procs.append(await _spawn(config, logs[-1]))
        pairs = list(zip(procs, logs, strict=True))
        readies = await asyncio.gather(
            *(read_event(p, "ready", open_timeout_s + 10.0, log) for p, log in pairs)
        )
        start_at = time.time() + START_DELAY_S
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(orjson.dumps({"start_at": start_at}) + b"\n")
            await p.stdin.drain()
        window_start = start_at + args.warmup
        window = (window_start, window_start + args.duration)
        cpu = await _cpu_over(target.pid, [p.pid for p in procs], window)
        results = await asyncio.gather(
            *(read_event(p, "result", args.call_timeout + 30.0, log) for p, log in pairs)
        )
        await asyncio.gather(*(p.wait() for p in procs))
    finally:
        await asyncio.gather(*(reap(p) for p in procs), return_exceptions=True)
    latencies = [x for r in results for x in r["latencies_ms"]]
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r["errors"])
    summary = summarise(latencies, errors, args.duration)
    ok_per_s = summary["calls_per_s"]
    server_pct = cpu["server_pct"]
    row: dict[str, Any] = {
        "target": target.name,
        "clients": clients,
        "procs": len(counts),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        **summary,
        "clients_opened": sum(r["opened"] for r in readies),
        "clients_gone": sum(r["clients_gone"] for r in results),
        "cpu": {
            **cpu,
            # The generators' own clock covers the warm-up as well as the window.
            "generator_cpu_pct": (
                100.0 * sum(r["cpu_s"] for r in results) / (args.warmup + args.duration)
            ),
            "server_us_per_call": (
                server_pct * 1e4 / ok_per_s if server_pct is not None and ok_per_s else None
            ),
        },
    }
    if target.daemon is not None and before is not None:
        after = await _daemon_after(target.daemon)
        delta = Counter(after["errors_by_code"])
        delta.subtract(before["errors_by_code"])
        row["daemon"] = {
            "calls_total_delta": after["calls_total"] - before["calls_total"],
            "errors_by_code_delta": {k: v for k, v in delta.items() if v},
            "idle_after": after["idle"],
            "sessions_after": after["sessions"],
            "inflight_after": after["inflight_global"],
        }
    return row


async def _rounds(
    targets: Sequence[Target], args: argparse.Namespace, log_dir: Path
) -> list[dict[str, Any]]:
    rows = []
    total = args.rounds * len(args.clients) * len(targets)
    for round_no in range(args.rounds):
        # Rotated so that no target always runs right after the same neighbour.
        shift = round_no % len(targets)
        order = [*targets[shift:], *targets[:shift]]
        for clients in args.clients:
            for target in order:
                row = await run_cell(target, clients, args, log_dir)
                row["round"] = round_no
                rows.append(row)
                p50 = row["latency_ms"]["p50"]
                print(
                    f"[{len(rows)}/{total}] round {round_no} {target.name:14} c={clients:<3}"
                    f" {row['calls_per_s']:8.0f} calls/s  p50 {p50 or 0:.2f} ms"
                    f"  errors {row['error_count']}",
                    file=sys.stderr,
                    flush=True,
                )
    return rows


# --- the summary ----------------------------------------------------------------------


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (target, clients): medians over the rounds and medians of paired ratios."""
    by_cell = {(r["round"], r["clients"], r["target"]): r for r in rows}
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["target"], row["clients"]), []).append(row)

    def ratio(row: dict[str, Any], refs: Sequence[str]) -> float | None:
        found = [by_cell.get((row["round"], row["clients"], name)) for name in refs]
        best = max((r["calls_per_s"] for r in found if r is not None), default=0.0)
        return row["calls_per_s"] / best if best else None

    table = []
    for (target, clients), group in groups.items():
        peer = [ratio(r, PEERS) for r in group] if target == HOSTED else []
        faster = Counter(
            max(
                (n for n in PEERS if (r["round"], clients, n) in by_cell),
                key=lambda n: by_cell[(r["round"], clients, n)]["calls_per_s"],
            )
            for r in group
            if any((r["round"], clients, n) in by_cell for n in PEERS)
        )
        errors: Counter[str] = Counter()
        for r in group:
            errors.update(r["errors"])
        table.append(
            {
                "target": target,
                "clients": clients,
                "rounds": len(group),
                "calls_per_s_median": statistics.median(r["calls_per_s"] for r in group),
                "calls_per_s_min": min(r["calls_per_s"] for r in group),
                "calls_per_s_max": max(r["calls_per_s"] for r in group),
                "p50_ms_median": _median([r["latency_ms"]["p50"] for r in group]),
                "p99_ms_median": _median([r["latency_ms"]["p99"] for r in group]),
                "ratio_to_faster_peer_median": _median(peer) if target == HOSTED else None,
                "faster_peer_by_round": dict(faster) if target == HOSTED else None,
                "ratio_to_raw_post_median": _median([ratio(r, (RAW,)) for r in group]),
                "server_cpu_pct_median": _median([r["cpu"]["server_pct"] for r in group]),
                "server_us_per_call_median": _median(
                    [r["cpu"]["server_us_per_call"] for r in group]
                ),
                "errors": dict(sorted(errors.items())),
                "error_count": sum(errors.values()),
            }
        )
    order = {name: i for i, name in enumerate(TARGETS)}
    return sorted(table, key=lambda t: (t["clients"], order[t["target"]]))


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_summary(table: Sequence[dict[str, Any]]) -> str:
    head = (
        f"{'target':14} {'C':>3} {'rounds':>6} {'calls/s':>8} {'p50 ms':>7} {'p99 ms':>7}"
        f" {'x peer':>6} {'x raw-post':>10} {'server cpu':>10} {'us/call':>7}  errors"
    )
    lines = [head, "-" * len(head)]
    for t in table:
        errors = " ".join(f"{k}={v}" for k, v in t["errors"].items()) or "0"
        cpu = t["server_cpu_pct_median"]
        lines.append(
            f"{t['target']:14} {t['clients']:>3} {t['rounds']:>6}"
            f" {t['calls_per_s_median']:>8.0f}"
            f" {_fmt(t['p50_ms_median'], '.2f'):>7} {_fmt(t['p99_ms_median'], '.2f'):>7}"
            f" {_fmt(t['ratio_to_faster_peer_median'], '.2f'):>6}"
            f" {_fmt(t['ratio_to_raw_post_median'], '.2f'):>10}"
            f" {'-' if cpu is None else f'{cpu:.0f}%':>10}"
            f" {_fmt(t['server_us_per_call_median'], '.0f'):>7}  {errors}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or REPO_ROOT / "benchmarks" / "out" / f"http-{stamp}.json"
    log_dir = out.with_suffix(".logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    skipped: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        # SIGTERM unwinds like Ctrl+C, so every server started here is stopped.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        targets = []
        for name in args.targets:
            try:
                targets.append(_start(name, stack, args, log_dir))
            except FileNotFoundError as exc:
                skipped[name] = f"not installed: {exc}"
                print(f"note: skipping {name}: {skipped[name]}", file=sys.stderr)
        rows = asyncio.run(_rounds(targets, args, log_dir))
    table = summarize(rows)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    document = {
        "benchmark": "http",
        "machine": machine_info(REPO_ROOT),
        "config": config,
        "skipped": skipped,
        "summary": table,
        "rows": rows,
    }
    write_json(out, document)
    print(format_summary(table))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
