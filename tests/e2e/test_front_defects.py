"""The daemon's front door on a real daemon: connection slots against sockets that never
authenticate, and tokens kept off command lines.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import DaemonFactory, DaemonProcess, base_env, scaled

TOKEN = f"tok-{secrets.token_hex(12)}"


async def receive_json(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=scaled(10.0))
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    answer: dict[str, Any] = json.loads(msg.data)
    return answer


async def op_hello(ws: aiohttp.ClientWebSocketResponse, token: str) -> dict[str, Any]:
    await ws.send_str(json.dumps({"op": "hello", "token": token}))
    return await receive_json(ws)


async def list_tools(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    await ws.send_str(json.dumps({"op": "list_tools"}))
    return await receive_json(ws)


@pytest.fixture
def small_daemon(daemon_factory: DaemonFactory) -> DaemonProcess:
    """A daemon with a token, three connection slots and a hello timeout far away."""
    return daemon_factory(
        workers=1,
        env={
            "EXAI_WS_TOKEN": TOKEN,
            "EXAI_WS_MAX_CONNECTIONS": "3",
            "EXAI_WS_HELLO_TIMEOUT": "600",
        },
    )


async def test_sockets_that_never_say_hello_cannot_lock_token_holders_out(
    small_daemon: DaemonProcess, http: aiohttp.ClientSession
) -> None:
    """With every slot held by a silent socket, a bearer-token holder and an op client
    with its token in hello still get in (the oldest silent sockets give way); once
    every slot is authenticated, the next upgrade is refused with 503."""
    url = small_daemon.url
    silent = [await http.ws_connect(url) for _ in range(3)]
    bearer = await http.ws_connect(url, headers={"Authorization": f"Bearer {TOKEN}"})
    # The oldest silent socket was told why, then closed.
    refused = await receive_json(silent[0])
    assert refused["op"] == "hello_ack" and refused["ok"] is False
    assert refused["code"] == "OVER_CAPACITY"
    closing = await silent[0].receive(timeout=scaled(10.0))
    assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 1013
    assert (await list_tools(bearer))["op"] == "list_tools_res"

    hello = await http.ws_connect(url)
    assert (await op_hello(hello, TOKEN))["ok"] is True
    assert (await receive_json(silent[1]))["code"] == "OVER_CAPACITY"

    third = await http.ws_connect(url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert (await list_tools(third))["op"] == "list_tools_res"
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(url)
    assert info.value.status == 503
    for ws in (*silent, bearer, hello, third):
        await ws.close()


def cmdline(pid: int) -> bytes:
    """What any local user can read of a process's command line."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


async def test_tokens_can_stay_off_every_command_line(
    daemon_factory: DaemonFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """The daemon reads its token from --token-file, and rotate-token takes the old token
    from EXAI_WS_TOKEN and the new one from standard input: neither command line holds
    a token, and the rotation works."""
    old, new = f"old-{secrets.token_hex(12)}", f"new-{secrets.token_hex(12)}"
    token_file = tmp_path / "token"
    token_file.write_text(old + "\n")
    daemon = daemon_factory(workers=1, args=["--token-file", str(token_file)])
    assert old.encode() not in cmdline(daemon.proc.pid)
    ws = await http.ws_connect(daemon.url)
    assert (await op_hello(ws, old))["ok"] is True
    await ws.close()

    rotate = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broker",
        "rotate-token",
        "--port",
        str(daemon.port),
        env={**base_env(), "EXAI_WS_TOKEN": old},
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        # It waits for its standard input, so its command line is there to read.
        seen = cmdline(rotate.pid)
        out, err = await asyncio.wait_for(rotate.communicate(new.encode() + b"\n"), scaled(30.0))
    finally:
        if rotate.returncode is None:
            rotate.kill()
            await rotate.wait()
    assert old.encode() not in seen and new.encode() not in seen
    assert rotate.returncode == 0, err
    assert b"token rotated" in out

    ws = await http.ws_connect(daemon.url)
    assert (await op_hello(ws, new))["ok"] is True
    await ws.close()
    ws = await http.ws_connect(daemon.url)
    assert (await op_hello(ws, old))["code"] == "UNAUTHORIZED"
    await ws.close()


async def call_tool(ws: aiohttp.ClientWebSocketResponse, rid: int, name: str) -> dict[str, Any]:
    """One op call: its ack, then its result frame."""
    await ws.send_str(json.dumps({"op": "call_tool", "request_id": rid, "name": name}))
    ack = await receive_json(ws)
    assert ack == {"op": "call_tool_ack", "request_id": rid}
    return await receive_json(ws)


async def test_a_malformed_tool_result_is_an_exec_error_and_frees_its_slot(
    daemon_factory: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    """Each malformed result answers its op call with EXEC_ERROR; with one slot in the
    whole daemon, every next call still runs, so no slot was kept."""
    daemon = daemon_factory(
        workers=1,
        args=["--server", "tests.fixtures.malformed_results"],
        env={"EXAI_WS_GLOBAL_MAX_INFLIGHT": "1", "EXAI_WS_SESSION_MAX_INFLIGHT": "1"},
    )
    ws = await http.ws_connect(daemon.url)
    assert (await op_hello(ws, ""))["ok"] is True
    for rid, name in enumerate(("null_is_error", "string_content", "scalar_content"), 1):
        answer = await call_tool(ws, rid, name)
        assert answer["op"] == "call_tool_res" and answer["request_id"] == rid
        assert answer["error"]["code"] == "EXEC_ERROR", answer
        fine = await call_tool(ws, 100 + rid, "fine")
        assert (fine["text"], fine["isError"]) == ("fine", False), fine
    await ws.close()
