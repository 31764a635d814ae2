"""Target `raw-post` of `python -m benchmarks.http`: the ceiling for MCP over HTTP here.

`python -m benchmarks.raw_post_server` binds 127.0.0.1:0, prints `{"port": N}` on one
stdout line once it listens, and runs until SIGTERM/SIGINT. `POST /mcp` answers a
`tools/call` with a CallToolResult echoing `arguments.text` as JSON, `initialize` with
a fixed result, and anything without an id with 202. No session, no router, no worker:
what aiohttp and one JSON parse and dump cost on this machine.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from benchmarks.loopback_app import run_app

__all__ = ["main"]

_INIT_RESULT = {
    "protocolVersion": "2025-06-18",
    "capabilities": {"tools": {}},
    "serverInfo": {"name": "raw-post", "version": "0"},
}


def _reply(request_id: Any, result: Any) -> web.Response:
    body = orjson.dumps({"jsonrpc": "2.0", "id": request_id, "result": result})
    return web.Response(body=body, content_type="application/json")


async def _post(request: web.Request) -> web.Response:
    message = orjson.loads(await request.read())
    if "id" not in message:
        return web.Response(status=202)
    if message.get("method") == "initialize":
        return _reply(message["id"], _INIT_RESULT)
    text = message.get("params", {}).get("arguments", {}).get("text", "")
    return _reply(message["id"], {"content": [{"type": "text", "text": text}]})


def main() -> None:
    app = web.Application()
    app.router.add_post("/mcp", _post)
    run_app(app)


if __name__ == "__main__":
    main()
