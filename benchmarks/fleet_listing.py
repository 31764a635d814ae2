"""`tools/list` latency while one hosted server never answers `initialize`.

The servers file has good servers and one that reads its stdin forever. As soon as
the daemon says it is ready, one MCP client connects over the WebSocket, runs the
handshake and sends `tools/list` requests one after another, timing each from send to
answer; the first goes out while the hung server is still starting. Each listing's
tools are counted per server, and the hung server's state is read at the start and
at the end.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from benchmarks.dialects import MCP_INITIALIZED, mcp_initialize
from benchmarks.fleet_servers import ServerSpec, hosting_daemon, server_states, write_servers_file
from benchmarks.stats import percentile

__all__ = ["LIST_TARGET_S", "run_listing"]

LIST_TARGET_S = 1.0  # no listing may take longer, hung server or not
ANSWER_TIMEOUT_S = 30.0


async def _answer(ws: aiohttp.ClientWebSocketResponse, request_id: int) -> dict[str, Any]:
    while True:
        msg = await ws.receive(timeout=ANSWER_TIMEOUT_S)
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise RuntimeError(f"websocket {msg.type.name} before answer {request_id}")
        frame = orjson.loads(msg.data)
        if isinstance(frame, dict) and frame.get("id") == request_id and "method" not in frame:
            if not isinstance(frame.get("result"), dict):
                raise RuntimeError(f"request {request_id} answered {frame.get('error')}")
            return frame


def _by_server(tools: list[dict[str, Any]], names: Sequence[str]) -> dict[str, int]:
    counts = {name: 0 for name in ("builtin", *names)}
    for tool in tools:
        prefix, sep, _ = tool["name"].partition("__")
        counts[prefix if sep and prefix in counts else "builtin"] += 1
    return counts


async def _listings(
    port: int, requests: int, names: Sequence[str], ready_at: float
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"ws://127.0.0.1:{port}/", protocols=("mcp",)) as ws,
    ):
        t0 = time.perf_counter()
        await ws.send_str(mcp_initialize(0))
        await _answer(ws, 0)
        initialize_ms = (time.perf_counter() - t0) * 1000.0
        await ws.send_str(MCP_INITIALIZED)
        for request_id in range(1, requests + 1):
            frame = orjson.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/list"})
            sent = time.perf_counter()
            await ws.send_str(frame.decode())
            answer = await _answer(ws, request_id)
            done = time.perf_counter()
            rows.append(
                {
                    "latency_ms": (done - sent) * 1000.0,
                    "since_ready_ms": (sent - ready_at) * 1000.0,
                    "tools_by_server": _by_server(answer["result"].get("tools", []), names),
                }
            )
    return {"initialize_ms": initialize_ms, "requests": rows}


async def run_listing(
    good: Sequence[ServerSpec], hung: ServerSpec, requests: int, log_dir: Path
) -> dict[str, Any]:
    """Time `requests` listings from the moment the daemon is ready."""
    names = [s.name for s in (*good, hung)]
    config = write_servers_file(log_dir / "listing-servers.json", [*good, hung])
    spawned_at = time.perf_counter()
    with hosting_daemon(log_dir / "listing-daemon", {"EXAI_CONFIG": str(config)}) as daemon:
        ready_at = time.perf_counter()
        states_at_start = server_states(daemon)
        measured = await _listings(daemon.port, requests, names, ready_at)
        states_at_end = server_states(daemon)
    latencies = sorted(r["latency_ms"] for r in measured["requests"])
    return {
        "servers": names,
        "hung": hung.name,
        # From spawning the daemon to its health file saying ready (and naming its port):
        # the soonest a client can connect.
        "daemon_ready_ms": (ready_at - spawned_at) * 1000.0,
        **measured,
        "states_at_start": states_at_start,
        "states_at_end": states_at_end,
        "latency_ms": {
            "p50": statistics.median(latencies),
            "p90": percentile(latencies, 90),
            "max": latencies[-1],
            "min": latencies[0],
        },
        "target_max_ms": LIST_TARGET_S * 1000.0,
        "pass": latencies[-1] <= LIST_TARGET_S * 1000.0,
        "hung_tools_listed": sum(r["tools_by_server"][hung.name] for r in measured["requests"]),
    }
