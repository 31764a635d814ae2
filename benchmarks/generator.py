"""One load-generator process: `python -m benchmarks.generator CONFIG_JSON`.

Talks to its parent in JSON lines: it opens its clients and prints
`{"event": "ready", ...}`, reads `{"start_at": EPOCH}` from stdin, runs the warm-up
and the measurement window, closes its clients and prints `{"event": "result", ...}`.
Nothing else goes to stdout; diagnostics go to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

import aiohttp
import orjson

from benchmarks.clients import McpWsClient, OpWsClient, RawWsClient
from benchmarks.closedloop import LoadClient, LoopResult, Window, drive
from benchmarks.dialects import scenario
from benchmarks.procstat import total_cpu_seconds
from benchmarks.shimclient import ShimClient, shim_environment

__all__ = ["BASELINE_MODES", "MODES", "SDK_STDIO_ARGS", "GeneratorConfig", "main"]

MODES = ("raw-ws", "ws-op", "ws-mcp", "sdk-stdio", "shim")
BASELINE_MODES = ("raw-ws", "sdk-stdio")  # no broker involved
SDK_STDIO_ARGS = ("-m", "benchmarks.stdio_echo_server")
OPEN_FAILED = "OPEN_FAILED"


@dataclasses.dataclass(frozen=True, slots=True)
class GeneratorConfig:
    mode: str
    clients: int
    port: int  # the daemon's, or the raw echo server's for raw-ws
    scenario: str
    warmup_s: float
    duration_s: float
    call_timeout_s: float
    repo_root: str
    index: int = 0

    def to_json(self) -> str:
        return orjson.dumps(dataclasses.asdict(self)).decode()


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.buffer.write(orjson.dumps(event) + b"\n")
    sys.stdout.buffer.flush()


def _make_clients(config: GeneratorConfig, http: aiohttp.ClientSession) -> list[LoadClient]:
    plan = scenario(config.scenario)
    url = f"ws://127.0.0.1:{config.port}/"
    tag = uuid.uuid4().hex[:8]
    names = [f"bench-{tag}-{config.index}-{i}" for i in range(config.clients)]
    if config.mode == "raw-ws":
        return [RawWsClient(http, url, plan, name) for name in names]
    if config.mode == "ws-op":
        return [OpWsClient(http, url, plan, name) for name in names]
    if config.mode == "ws-mcp":
        return [McpWsClient(http, url, plan, name) for name in names]
    env = shim_environment(config.port)
    args = SDK_STDIO_ARGS if config.mode == "sdk-stdio" else ("-m", "shim")
    return [ShimClient(env, config.repo_root, plan, args) for _ in range(config.clients)]


def _child_pids(clients: Sequence[LoadClient]) -> list[int]:
    return [c.pid for c in clients if isinstance(c, ShimClient) and c.pid is not None]


async def _read_start_at() -> float:
    loop = asyncio.get_running_loop()
    line = await loop.run_in_executor(None, sys.stdin.readline)
    if not line:
        raise SystemExit("parent closed stdin before the start signal")
    return float(orjson.loads(line)["start_at"])


@dataclasses.dataclass(slots=True)
class CpuMeter:
    """Own and children's CPU seconds between the two `mark` calls."""

    child_pids: list[int]
    marks: list[tuple[float, float | None]] = dataclasses.field(default_factory=list)

    def mark(self) -> None:
        self.marks.append((time.process_time(), total_cpu_seconds(self.child_pids)))

    def spent(self) -> tuple[float | None, float | None]:
        if len(self.marks) < 2:
            return None, None
        (own0, kids0), (own1, kids1) = self.marks[0], self.marks[-1]
        kids = kids1 - kids0 if kids0 is not None and kids1 is not None else None
        return own1 - own0, kids


async def _meter_window(meter: CpuMeter, window: Window) -> None:
    await asyncio.sleep(max(0.0, window.start - time.perf_counter()))
    meter.mark()
    await asyncio.sleep(max(0.0, window.end - time.perf_counter()))
    meter.mark()


async def _open_all(config: GeneratorConfig, clients: list[LoadClient]) -> list[LoadClient]:
    """Open every client concurrently; report the ones that failed and keep the rest."""
    outcomes = await asyncio.gather(*(c.open() for c in clients), return_exceptions=True)
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    for exc in failures[:3]:
        print(f"generator {config.index}: open failed: {exc!r}", file=sys.stderr)
    return [c for c, o in zip(clients, outcomes, strict=True) if o is None]


async def _measure(
    config: GeneratorConfig, opened: list[LoadClient], start_at: float
) -> tuple[list[LoopResult], CpuMeter]:
    # Map the parent's wall-clock start onto our monotonic clock once.
    start = time.perf_counter() + (start_at - time.time())
    window = Window(start + config.warmup_s, start + config.warmup_s + config.duration_s)
    meter = CpuMeter(_child_pids(opened))
    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    metering = asyncio.ensure_future(_meter_window(meter, window))
    results = await asyncio.gather(*(drive(c, window, config.call_timeout_s) for c in opened))
    await metering
    return list(results), meter


def _result_event(
    config: GeneratorConfig, open_failed: int, results: list[LoopResult], meter: CpuMeter
) -> dict[str, Any]:
    errors: Counter[str] = Counter()
    if open_failed:
        errors[OPEN_FAILED] += open_failed
    for r in results:
        errors.update(r.errors)
    own_cpu_s, children_cpu_s = meter.spent()
    return {
        "event": "result",
        "index": config.index,
        "latencies_ms": [round(x, 4) for r in results for x in r.latencies_ms],
        "errors": dict(errors),
        "clients_gone": sum(r.gone for r in results),
        "cpu_s": own_cpu_s,
        "children_cpu_s": children_cpu_s,
    }


async def run(config: GeneratorConfig) -> None:
    """Open, say ready, wait for the start signal, measure, close, report."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        clients = _make_clients(config, http)
        try:
            opened = await _open_all(config, clients)
            open_failed = len(clients) - len(opened)
            _emit({"event": "ready", "opened": len(opened), "open_failed": open_failed})
            results, meter = await _measure(config, opened, await _read_start_at())
        finally:
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    _emit(_result_event(config, open_failed, results, meter))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    config = GeneratorConfig(**orjson.loads(args[0]))
    runner = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    runner(run(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
