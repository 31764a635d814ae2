"""The Streamable HTTP load generator of `python -m benchmarks.http`, one process per cell.

`python -m benchmarks.http_load '<json config>'` opens `clients` connections, each with
its own MCP session (initialize, then notifications/initialized, keeping Mcp-Session-Id
when the server gives one), prints `{"event": "ready"}`, waits for `{"start_at": T}` on
stdin (wall clock, shared with sibling generators), then runs the closed loop of
`closedloop.drive` until the window ends and prints `{"event": "result"}`.

Plain aiohttp rather than an MCP SDK client: the figures are meant to be the servers',
and an SDK client's own per-call cost would be most of them at the top end.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import sys
import time
from collections import Counter
from typing import Any

import aiohttp
import orjson

from benchmarks.closedloop import ClientGone, Window, drive

__all__ = ["HttpEchoClient", "LoadConfig", "main"]

PROTOCOL_VERSION = "2025-06-18"
OPEN_FAILED = "OPEN_FAILED"
BAD_RESULT = "BAD_RESULT"
SSE = "text/event-stream"
SESSION_HEADER = "Mcp-Session-Id"


@dataclasses.dataclass(frozen=True, slots=True)
class LoadConfig:
    url: str
    clients: int
    accept: str
    payload: int
    warmup_s: float
    duration_s: float
    call_timeout_s: float
    open_timeout_s: float

    @classmethod
    def from_json(cls, text: str | bytes) -> LoadConfig:
        return cls(**orjson.loads(text))

    def to_json(self) -> str:
        return orjson.dumps(dataclasses.asdict(self)).decode()


class CallFailed(Exception):
    """An answer that is not the expected JSON-RPC response; `code` names why."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def _answer(message: Any, request_id: int) -> dict[str, Any] | None:
    """`message` when it is the response to `request_id` (progress and other
    server messages may share the stream)."""
    if (
        isinstance(message, dict)
        and message.get("id") == request_id
        and ("result" in message or "error" in message)
    ):
        return message
    return None


async def _read_sse(response: aiohttp.ClientResponse, request_id: int) -> dict[str, Any]:
    """The response carried by an SSE stream: the event whose `data:` is it."""
    data: list[bytes] = []
    while True:
        line = await response.content.readline()
        if not line:
            raise CallFailed("SSE_NO_ANSWER")
        line = line.rstrip(b"\r\n")
        if line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
            continue
        if line or not data:
            continue  # another field, a comment, or an empty event
        try:
            found = _answer(orjson.loads(b"\n".join(data)), request_id)
        except orjson.JSONDecodeError as exc:
            raise CallFailed("SSE_BAD_JSON") from exc
        data = []
        if found is not None:
            # Drain to the end so the connection can carry the next request.
            await response.read()
            return found


class HttpEchoClient:
    """One keep-alive connection and one MCP session, calling `echo` in a loop."""

    def __init__(self, config: LoadConfig, index: int) -> None:
        self.config = config
        self.text = ("x" * config.payload)[: config.payload]
        self.headers = {"Accept": config.accept, "Content-Type": "application/json"}
        self.ids = itertools.count(1)
        self.prefix = (
            b'{"jsonrpc":"2.0","method":"tools/call","params":{"name":"echo","arguments":'
            + orjson.dumps({"text": self.text})
            + b'},"id":'
        )
        self.http: aiohttp.ClientSession | None = None
        self.index = index

    async def _post(self, body: bytes, request_id: int | None) -> dict[str, Any] | None:
        assert self.http is not None
        try:
            async with self.http.post(self.config.url, data=body, headers=self.headers) as response:
                if response.status == 202 and request_id is None:
                    await response.read()
                    return None
                if response.status != 200:
                    await response.read()
                    raise CallFailed(f"HTTP_{response.status}")
                if SESSION_HEADER in response.headers:
                    self.headers[SESSION_HEADER] = response.headers[SESSION_HEADER]
                if request_id is None:
                    await response.read()
                    return None
                if response.content_type == SSE:
                    return await _read_sse(response, request_id)
                raw = await response.read()
                try:
                    found = _answer(orjson.loads(raw), request_id)
                except orjson.JSONDecodeError as exc:
                    raise CallFailed("BAD_JSON") from exc
                if found is None:
                    raise CallFailed(BAD_RESULT)
                return found
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise ClientGone(str(exc)) from exc

    async def open(self) -> None:
        # One connection per client, kept alive: a session's calls share it as an
        # MCP client's would.
        connector = aiohttp.TCPConnector(limit=1, force_close=False)
        self.http = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None)
        )
        init = orjson.dumps(
            {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": PROTOCOL_VERSION,
                    "capabilities": {},
                    "clientInfo": {"name": "benchmarks.http_load", "version": "0"},
                },
            }
        )
        answer = await self._post(init, 0)
        result = (answer or {}).get("result")
        if not isinstance(result, dict):
            raise CallFailed(f"INIT_REFUSED {answer}")
        self.headers["MCP-Protocol-Version"] = str(result.get("protocolVersion", PROTOCOL_VERSION))
        await self._post(b'{"jsonrpc":"2.0","method":"notifications/initialized"}', None)

    async def call(self) -> str | None:
        request_id = next(self.ids)
        try:
            answer = await self._post(self.prefix + str(request_id).encode() + b"}", request_id)
        except CallFailed as failed:
            return failed.code
        assert answer is not None
        if "error" in answer:
            error = answer["error"]
            return f"RPC_{error.get('code') if isinstance(error, dict) else error}"
        result = answer["result"]
        try:
            if result.get("isError") or result["content"][0]["text"] != self.text:
                return BAD_RESULT
        except (AttributeError, KeyError, IndexError, TypeError):
            return BAD_RESULT
        return None

    async def close(self) -> None:
        if self.http is None:
            return
        if SESSION_HEADER in self.headers:
            # Ends the session, so servers that keep a process per session stop it.
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self.http.delete(
                    self.config.url,
                    headers=self.headers,
                    timeout=aiohttp.ClientTimeout(total=5),
                ) as response:
                    await response.read()
        await self.http.close()


def _emit(event: str, **fields: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps({"event": event, **fields}) + b"\n")
    sys.stdout.buffer.flush()


async def _open_one(client: HttpEchoClient, timeout_s: float) -> str | None:
    try:
        async with asyncio.timeout(timeout_s):
            await client.open()
    except (CallFailed, ClientGone, TimeoutError, aiohttp.ClientError) as exc:
        print(f"client {client.index}: open failed: {exc!r}", file=sys.stderr, flush=True)
        return OPEN_FAILED
    return None


async def _run(config: LoadConfig) -> None:
    clients = [HttpEchoClient(config, i) for i in range(config.clients)]
    try:
        failures = await asyncio.gather(*(_open_one(c, config.open_timeout_s) for c in clients))
        opened = [c for c, failed in zip(clients, failures, strict=True) if failed is None]
        _emit("ready", opened=len(opened))
        line = await asyncio.to_thread(sys.stdin.buffer.readline)
        start_at = float(orjson.loads(line)["start_at"])
        # Wall clock across processes, perf_counter for the window inside this one.
        t0 = time.perf_counter() + max(0.0, start_at - time.time())
        window = Window(t0 + config.warmup_s, t0 + config.warmup_s + config.duration_s)
        await asyncio.sleep(max(0.0, t0 - time.perf_counter()))
        cpu_before = time.process_time()
        results = await asyncio.gather(*(drive(c, window, config.call_timeout_s) for c in opened))
        cpu_s = time.process_time() - cpu_before
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    errors: Counter[str] = Counter()
    errors[OPEN_FAILED] += len(clients) - len(opened)
    for result in results:
        errors.update(result.errors)
    _emit(
        "result",
        latencies_ms=[x for r in results for x in r.latencies_ms],
        errors={k: v for k, v in errors.items() if v},
        clients_gone=sum(r.gone for r in results),
        cpu_s=cpu_s,
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    config = LoadConfig.from_json(args[0])
    runner = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    runner(_run(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
