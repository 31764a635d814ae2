"""One load-generator process calling a named tool: `python -m benchmarks.fleet_load CONFIG`.

The same closed loop and MCP-over-WebSocket clients as `benchmarks.generator`, and
the same JSON-lines exchange with its parent (`ready`, then `{"start_at": EPOCH}` on
stdin, then `result`), but the tool, its arguments and the text of a good answer
come from the config instead of a scenario name, so any hosted tool can be driven.
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

import aiohttp
import orjson

from benchmarks.clients import McpWsClient
from benchmarks.closedloop import Window, drive
from benchmarks.dialects import Scenario
from benchmarks.generator import OPEN_FAILED

__all__ = ["ToolLoadConfig", "main"]


@dataclasses.dataclass(frozen=True, slots=True)
class ToolLoadConfig:
    clients: int
    port: int
    tool: str
    arguments_json: str
    expected_text: str
    warmup_s: float
    duration_s: float
    call_timeout_s: float

    def to_json(self) -> str:
        return orjson.dumps(dataclasses.asdict(self)).decode()


def _emit(event: dict[str, object]) -> None:
    sys.stdout.buffer.write(orjson.dumps(event) + b"\n")
    sys.stdout.buffer.flush()


async def _read_start_at() -> float:
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if not line:
        raise SystemExit("parent closed stdin before the start signal")
    return float(orjson.loads(line)["start_at"])


async def run(config: ToolLoadConfig) -> None:
    """Open every client, say ready, wait for the start, run the window, report."""
    plan = Scenario(config.tool, config.tool, config.arguments_json, config.expected_text)
    tag = uuid.uuid4().hex[:8]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        url = f"ws://127.0.0.1:{config.port}/"
        clients = [McpWsClient(http, url, plan, f"fleet-{tag}-{i}") for i in range(config.clients)]
        try:
            outcomes = await asyncio.gather(*(c.open() for c in clients), return_exceptions=True)
            opened = [c for c, o in zip(clients, outcomes, strict=True) if o is None]
            _emit({"event": "ready", "opened": len(opened)})
            start_at = await _read_start_at()
            # Map the parent's wall-clock start onto our monotonic clock once.
            start = time.perf_counter() + (start_at - time.time())
            window = Window(start + config.warmup_s, start + config.warmup_s + config.duration_s)
            await asyncio.sleep(max(0.0, start - time.perf_counter()))
            results = await asyncio.gather(
                *(drive(c, window, config.call_timeout_s) for c in opened)
            )
        finally:
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    errors: Counter[str] = Counter()
    if len(opened) < len(clients):
        errors[OPEN_FAILED] += len(clients) - len(opened)
    for r in results:
        errors.update(r.errors)
    _emit(
        {
            "event": "result",
            "latencies_ms": [round(x, 4) for r in results for x in r.latencies_ms],
            "errors": dict(errors),
            "opened": len(opened),
        }
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    config = ToolLoadConfig(**orjson.loads(args[0]))
    runner = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    runner(run(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
