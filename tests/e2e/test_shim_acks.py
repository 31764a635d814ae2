"""The ack a shim session gets for its calls: it stops the shim's RPC timer, so a call
still running is acknowledged, exactly once and before its answer; a call that answers
first needs no separate ack (the answer stops the timer too)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aiohttp

from tests.conftest import DaemonProcess, scaled


async def _frames_until_answers(
    ws: aiohttp.ClientWebSocketResponse, ids: set[str]
) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    answered: set[str] = set()
    while answered != ids:
        message = await asyncio.wait_for(ws.receive(), scaled(30))
        assert message.type is aiohttp.WSMsgType.TEXT, message
        frame = json.loads(message.data)
        frames.append(frame)
        if "result" in frame or "error" in frame:
            answered.add(frame["id"])
    return frames


async def test_running_calls_are_acked_once_before_their_answer(daemon: DaemonProcess) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(daemon.url)
        await ws.send_str(json.dumps({"op": "hello", "session_id": uuid.uuid4().hex, "acks": True}))
        hello = json.loads((await ws.receive()).data)
        assert hello["ok"] is True, hello
        calls = {"slow": ("sleep", {"seconds": 1.0})}
        calls |= {
            f"fast-{i}": ("echo", {"text": str(i)}) for i in range(6)
        }  # within the session cap (8)
        for request_id, (tool, arguments) in calls.items():
            frame = {
                "jsonrpc": "2.0",
                "id": request_id,
                "method": "tools/call",
                "params": {"name": tool, "arguments": arguments},
            }
            await ws.send_str(json.dumps(frame))
        frames = await _frames_until_answers(ws, set(calls))
        await ws.close()

    acks = [f["id"] for f in frames if f.get("op") == "ack"]
    answers = [f["id"] for f in frames if "result" in f]
    assert sorted(answers) == sorted(calls)
    assert len(acks) == len(set(acks)), f"an id was acked twice: {acks}"
    for request_id in acks:
        ack_at = frames.index({"op": "ack", "id": request_id})
        answer_at = next(
            i for i, f in enumerate(frames) if f.get("id") == request_id and "op" not in f
        )
        assert ack_at < answer_at, f"{request_id} was acked after its answer"
    # The one-second call was still running long after the ack was due.
    assert "slow" in acks
