"""Token auth, token rotation, bind safety and secrets on a real daemon.

Covers both ways of presenting the token (op `hello`, and the MCP style bearer
header or `?token=` checked before the upgrade), the shim end to end with a right
and a wrong token, rotation over the wire and through `python -m broker
rotate-token`, the refusal to listen beyond loopback without a token, and that
neither the token nor a provider key ever lands in a log file.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path

import aiohttp
import pytest

from exai.settings import SettingsError, load_settings
from tests.conftest import DaemonFactory, DaemonProcess, base_env, free_port, mcp_client, scaled
from tests.e2e.security_support import (
    connect,
    daemon_logs,
    echo_mcp,
    echo_op,
    flatten_exceptions,
    mcp_session,
    op_hello,
    recv_close,
    recv_json,
)
from tests.support.cli import run_python


def new_token(prefix: str = "tok") -> str:
    """A random token that cannot appear in a log by accident."""
    return f"{prefix}-{secrets.token_hex(12)}"


def secret_free_logs(daemon: DaemonProcess, *secrets: str) -> str:
    """The daemon's logs (stderr and log folder), checked to hold none of `secrets`."""
    logs = daemon_logs(daemon)
    for secret in secrets:
        assert secret not in logs, f"{secret[:4]}… reached the daemon's logs"
    return logs


async def expect_http_refusal(
    http: aiohttp.ClientSession,
    daemon: DaemonProcess,
    status: int,
    **kwargs: object,
) -> None:
    """The WebSocket upgrade is refused with `status` before any frame is exchanged."""
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        ws = await connect(http, daemon, **kwargs)  # type: ignore[arg-type]
        await ws.close()
    assert info.value.status == status, info.value


async def run_cli(*args: str, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    """Run `python -m broker ARGS`; (exit code, stdout, stderr), bounded in time."""
    done = await asyncio.to_thread(run_python, ["-m", "broker", *args], env, cwd)
    return done.returncode, done.stdout, done.stderr


async def shim_failure(env: dict[str, str], rpc_timeout_s: float) -> list[BaseException]:
    """Run the SDK client through a shim that must fail; the leaf exceptions it raised."""
    try:
        async with asyncio.timeout(scaled(rpc_timeout_s + 30.0)), mcp_client(env) as client:
            await client.list_tools()
    except Exception as exc:  # anyio may wrap the error in an exception group
        leaves = flatten_exceptions(exc)
        assert not any(isinstance(e, TimeoutError) for e in leaves), f"hung: {leaves!r}"
        return leaves
    raise AssertionError("the session opened with a wrong token")


def process_environs(pids: list[int]) -> list[bytes]:
    """The raw /proc environment blocks of these processes."""
    return [Path(f"/proc/{pid}/environ").read_bytes() for pid in pids]


# --- 1. token auth ---------------------------------------------------------------------


async def test_hello_needs_the_right_token(
    daemon_factory: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    """hello without or with a wrong token: hello_ack ok:false unauthorized, close 4003."""
    token = new_token()
    wrong = new_token("wrong")
    daemon = daemon_factory(workers=1, env={"EXAI_WS_TOKEN": token})
    for presented in (None, wrong, "", token.upper()):
        ws, ack = await op_hello(http, daemon, token=presented, session_id="s-refused")
        assert ack == {
            "op": "hello_ack",
            "ok": False,
            "error": "unauthorized",
            "code": "UNAUTHORIZED",
        }, presented
        frames, code = await recv_close(ws)
        assert frames == [] and code == 4003, (presented, frames, code)
    ws, ack = await op_hello(http, daemon, token=token, session_id="s-ok")
    async with ws:
        assert ack["ok"] is True and ack["session_id"] == "s-ok"
        await echo_op(ws, "authorized")
    assert "refused hello" in secret_free_logs(daemon, token, wrong)


async def test_mcp_style_token_is_checked_before_the_upgrade(
    daemon_factory: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    """Subprotocol mcp: a wrong bearer header or ?token= is HTTP 401; the right one works."""
    token = new_token()
    wrong = new_token("wrong")
    daemon = daemon_factory(workers=1, env={"EXAI_WS_TOKEN": token})
    for refused in (
        {"headers": {"Authorization": f"Bearer {wrong}"}},
        {"params": {"token": wrong}},
        {"params": {"token": ""}},
    ):
        await expect_http_refusal(http, daemon, 401, protocols=("mcp",), **refused)
    for accepted in (
        {"headers": {"Authorization": f"Bearer {token}"}},
        {"headers": {"authorization": f"bearer {token}"}},
        {"params": {"token": token}},
    ):
        ws = await mcp_session(http, daemon, **accepted)
        async with ws:
            await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
            listing = await recv_json(ws)
            assert "echo" in {t["name"] for t in listing["result"]["tools"]}
            await echo_mcp(ws, f"via {sorted(accepted)[0]}")
    assert "wrong token" in secret_free_logs(daemon, token, wrong)


async def test_mcp_style_without_any_token_is_not_served(
    daemon_factory: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    """Subprotocol mcp and no token at all: refused either at the upgrade or with 4003."""
    daemon = daemon_factory(workers=1, env={"EXAI_WS_TOKEN": new_token()})
    try:
        ws = await connect(http, daemon, protocols=("mcp",))
    except aiohttp.WSServerHandshakeError as exc:
        assert exc.status == 401
        return
    async with ws:
        await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        frames, code = await recv_close(ws)
        assert code == 4003
        assert all("result" not in f for f in frames), frames


async def test_mcp_style_without_any_token_gets_http_401(
    daemon_factory: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    """DESIGN: for MCP-style clients the token is checked before the upgrade (HTTP 401)."""
    daemon = daemon_factory(workers=1, env={"EXAI_WS_TOKEN": new_token()})
    await expect_http_refusal(http, daemon, 401, protocols=("mcp",))


async def test_first_frame_not_json_with_auth_on_closes_4000(
    daemon_factory: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    """DESIGN: opening failures are hello_ack ok:false then close 4000 for 'not JSON'."""
    daemon = daemon_factory(
        workers=1, env={"EXAI_WS_TOKEN": new_token(), "EXAI_WS_HELLO_TIMEOUT": "30"}
    )
    ws = await connect(http, daemon)
    async with ws:
        await ws.send_str("this is not json")
        frames, code = await recv_close(ws, timeout_s=5.0)
        assert code == 4000, (frames, code)
        assert frames and frames[-1].get("op") == "hello_ack" and frames[-1]["ok"] is False


async def test_first_frame_not_hello_with_auth_on_is_refused(
    daemon_factory: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    """Auth on, no token yet: an object that is neither hello nor a request closes 4001,
    an op or a JSON-RPC request closes 4003 - nothing is served before the token."""
    daemon = daemon_factory(workers=1, env={"EXAI_WS_TOKEN": new_token()})
    cases = [
        ({"hello": "there"}, 4001),
        ({"op": "list_tools"}, 4003),
        ({"op": "health"}, 4003),
        ({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, 4003),
        ({"op": "rotate_token", "old": "", "new": "mine"}, 4003),
    ]
    for frame, expected in cases:
        ws = await connect(http, daemon)
        async with ws:
            await ws.send_str(json.dumps(frame))
            frames, code = await recv_close(ws)
            assert code == expected, (frame, frames, code)
            assert all(f.get("op") == "hello_ack" and f["ok"] is False for f in frames), frames


async def test_shim_with_the_right_token_works_end_to_end(daemon_factory: DaemonFactory) -> None:
    """The real SDK client through a real shim carrying the daemon's token."""
    daemon = daemon_factory(workers=1, env={"EXAI_WS_TOKEN": new_token()})
    async with asyncio.timeout(scaled(60.0)), mcp_client(daemon.shim_env()) as client:
        tools = await client.list_tools()
        assert "echo" in {t.name for t in tools.tools}
        result = await client.call_tool("echo", {"text": "through the shim"})
        assert not result.is_error
        assert result.content[0].text == "through the shim"


async def test_shim_with_a_wrong_token_fails_clearly_and_fast(
    daemon_factory: DaemonFactory,
) -> None:
    """A wrong token: the client gets an error naming the refusal and the setting to fix,
    without waiting out the RPC timeout."""
    token = new_token()
    wrong = new_token("wrong")
    rpc_timeout_s = 2.0
    daemon = daemon_factory(workers=1, env={"EXAI_WS_TOKEN": token})
    env = daemon.shim_env(EXAI_WS_TOKEN=wrong, EXAI_SHIM_RPC_TIMEOUT=str(rpc_timeout_s))
    started = time.monotonic()
    leaves = await shim_failure(env, rpc_timeout_s)
    elapsed = time.monotonic() - started
    messages = " | ".join(str(e) for e in leaves)
    assert "401" in messages or "unauthorized" in messages.lower(), messages
    assert "EXAI_WS_TOKEN" in messages, messages
    assert wrong not in messages and token not in messages
    # Shim start-up (a few hundred ms) plus the RPC timeout, with a generous margin.
    assert elapsed < rpc_timeout_s + scaled(10.0), elapsed
    assert "wrong token" in secret_free_logs(daemon, token, wrong)


async def test_without_a_token_everything_is_open(
    daemon_factory: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    """Auth off: hello (with or without a token), MCP style, HTTP endpoints and the shim."""
    daemon = daemon_factory(workers=1)
    for presented in (None, "anything"):
        ws, ack = await op_hello(http, daemon, token=presented)
        async with ws:
            assert ack["ok"] is True
            await echo_op(ws, "open")
    ws = await mcp_session(http, daemon)
    async with ws:
        await echo_mcp(ws, "open mcp")
    ws = await mcp_session(http, daemon, headers={"Authorization": "Bearer whatever"})
    async with ws:
        await echo_mcp(ws, "a stray bearer header is ignored")
    for path in ("/health", "/metrics", "/"):
        async with http.get(f"http://127.0.0.1:{daemon.port}{path}") as resp:
            assert resp.status == 200, path
    async with asyncio.timeout(scaled(60.0)), mcp_client(daemon.shim_env()) as client:
        result = await client.call_tool("echo", {"text": "no token"})
        assert result.content[0].text == "no token"


# --- 2. rotation -----------------------------------------------------------------------


async def test_rotate_token_over_the_wire(
    daemon_factory: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    """rotate_token: T1 stops working for new connections and resumes, T2 works, open
    sessions keep working, a wrong old token or a bad new token is refused."""
    t1, t2 = new_token("t1"), new_token("t2")
    daemon = daemon_factory(workers=1, env={"EXAI_WS_TOKEN": t1, "EXAI_WS_RESUME_GRACE": "60"})
    rotator, ack = await op_hello(http, daemon, token=t1, session_id="rotator")
    bystander, ack2 = await op_hello(http, daemon, token=t1, session_id="bystander")
    dropped, ack3 = await op_hello(http, daemon, token=t1, session_id="dropped-shim")
    mcp_ws = await mcp_session(http, daemon, headers={"Authorization": f"Bearer {t1}"})
    assert ack["ok"] and ack2["ok"] and ack3["ok"]
    # A shim whose connection drops (not a goodbye): the session waits to be resumed.
    await dropped.close(code=4000)
    async with rotator, bystander, mcp_ws:
        for bad, code in (
            ({"op": "rotate_token", "old": "nope", "new": t2}, "UNAUTHORIZED"),
            ({"op": "rotate_token", "old": t1, "new": ""}, "INVALID_FRAME"),
            ({"op": "rotate_token", "old": t1, "new": "has space"}, "INVALID_FRAME"),
            ({"op": "rotate_token", "old": t1}, "INVALID_FRAME"),
        ):
            await rotator.send_str(json.dumps(bad))
            reply = await recv_json(rotator)
            assert reply["op"] == "error" and reply["error"]["code"] == code, (bad, reply)
        ws, still = await op_hello(http, daemon, token=t1)
        await ws.close()
        assert still["ok"] is True, "a refused rotation changed the token"

        await rotator.send_str(json.dumps({"op": "rotate_token", "old": t1, "new": t2}))
        assert await recv_json(rotator) == {"op": "rotate_token_res", "ok": True}

        ws, refused = await op_hello(http, daemon, token=t1)
        assert refused == {
            "op": "hello_ack",
            "ok": False,
            "error": "unauthorized",
            "code": "UNAUTHORIZED",
        }
        assert (await recv_close(ws))[1] == 4003
        await expect_http_refusal(
            http, daemon, 401, protocols=("mcp",), headers={"Authorization": f"Bearer {t1}"}
        )
        # The dropped shim comes back with the old token and its session id: refused.
        ws, refused = await op_hello(http, daemon, token=t1, session_id="dropped-shim")
        assert refused["ok"] is False and (await recv_close(ws))[1] == 4003

        ws, accepted = await op_hello(http, daemon, token=t2, session_id="dropped-shim")
        async with ws:
            assert accepted["ok"] is True and accepted["resumed"] is True
            await echo_op(ws, "resumed with the new token")
        fresh = await mcp_session(http, daemon, params={"token": t2})
        async with fresh:
            await echo_mcp(fresh, "new connection, new token")
        # Sessions opened before the rotation keep working.
        await echo_op(bystander, "still here")
        await echo_op(rotator, "still here too")
        await echo_mcp(mcp_ws, "mcp still here")

        base = f"http://127.0.0.1:{daemon.port}"
        async with http.get(f"{base}/health", headers={"Authorization": f"Bearer {t1}"}) as r:
            assert r.status == 401
        async with http.get(f"{base}/health", headers={"Authorization": f"Bearer {t2}"}) as r:
            assert r.status == 200
    assert "token rotated" in secret_free_logs(daemon, t1, t2)


async def test_rotate_token_cli(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    """`python -m broker rotate-token`: exit 0 and a note to change the env; wrong --old 1."""
    t2, t3 = new_token("t2"), new_token("t3")
    daemon = daemon_factory(workers=1, env={"EXAI_WS_TOKEN": t2})
    env = base_env(EXAI_WS_HOST="127.0.0.1", EXAI_WS_PORT=str(daemon.port))
    code, out, err = await run_cli("rotate-token", "--old", t2, "--new", t3, env=env, cwd=tmp_path)
    assert code == 0, (out, err)
    assert "EXAI_WS_TOKEN" in out and "rotated" in out, out
    assert t2 not in out + err and t3 not in out + err

    code, out, err = await run_cli(
        "rotate-token", "--old", "not-the-token", "--new", new_token(), env=env, cwd=tmp_path
    )
    assert code == 1, (out, err)
    assert "refused" in err, err

    async with aiohttp.ClientSession() as http:
        ws, ack = await op_hello(http, daemon, token=t2)
        assert ack["ok"] is False and (await recv_close(ws))[1] == 4003
        ws, ack = await op_hello(http, daemon, token=t3)
        async with ws:
            assert ack["ok"] is True
            await echo_op(ws, "after the CLI rotation")
    secret_free_logs(daemon, t2, t3)


async def test_rotate_token_is_refused_when_auth_is_off(
    daemon_factory: DaemonFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Auth off: rotate_token is an UNAUTHORIZED error frame and nothing gets locked."""
    daemon = daemon_factory(workers=1)
    ws, ack = await op_hello(http, daemon)
    async with ws:
        assert ack["ok"] is True
        await ws.send_str(json.dumps({"op": "rotate_token", "old": "", "new": "lockout"}))
        reply = await recv_json(ws)
        assert reply["op"] == "error" and reply["error"]["code"] == "UNAUTHORIZED", reply
        mcp = await mcp_session(http, daemon)
        async with mcp:
            await mcp.send_str(json.dumps({"op": "rotate_token", "old": "", "new": "lockout"}))
            reply = await recv_json(mcp)
            assert reply["op"] == "error" and reply["error"]["code"] == "UNAUTHORIZED", reply
            await echo_mcp(mcp, "mcp dialect unaffected")
        await echo_op(ws, "the session survives the refusal")
    for presented in (None, "lockout"):
        other, ack = await op_hello(http, daemon, token=presented)
        async with other:
            assert ack["ok"] is True, "auth was switched on by rotate_token"
    env = base_env(EXAI_WS_HOST="127.0.0.1", EXAI_WS_PORT=str(daemon.port))
    code, out, err = await run_cli(
        "rotate-token", "--old", "", "--new", "lockout", env=env, cwd=tmp_path
    )
    assert code == 1, (out, err)
    fresh = await mcp_session(http, daemon)
    async with fresh:
        await echo_mcp(fresh, "still open")


# --- 4. bind safety --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["--host", "0.0.0.0"], {}),
        (["--host", "::"], {}),
        ([], {"EXAI_WS_HOST": "0.0.0.0"}),
        (["--host", "192.0.2.10"], {}),
        (["--host", "0.0.0.0", "--token", ""], {"EXAI_WS_TOKEN": ""}),
    ],
    ids=["flag-any-v4", "flag-any-v6", "env-any-v4", "flag-documentation-address", "empty-token"],
)
async def test_non_loopback_host_without_token_exits_2_before_binding(
    tmp_path: Path, argv: list[str], env: dict[str, str]
) -> None:
    """No token, non-loopback host: exit 2 at once with a reason; no log folder is made."""
    log_dir = tmp_path / "logs-never"
    started = time.monotonic()
    code, out, err = await run_cli(
        *argv,
        "--port",
        str(free_port()),
        "--workers",
        "1",
        "--log-dir",
        str(log_dir),
        env=base_env(**env),
        cwd=tmp_path,
    )
    assert code == 2, (out, err)
    assert "EXAI_WS_TOKEN" in err and "loopback" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert time.monotonic() - started < scaled(15.0)
    # The refusal happens while parsing settings: logging (and binding) never started.
    assert not log_dir.exists()


def test_non_loopback_host_with_a_token_is_accepted_by_settings() -> None:
    """With a token the same host is allowed (checked on the settings only; never started)."""
    settings = load_settings({"EXAI_WS_HOST": "0.0.0.0", "EXAI_WS_TOKEN": new_token()})
    assert settings.host == "0.0.0.0"
    with pytest.raises(SettingsError, match="EXAI_WS_TOKEN"):
        load_settings({"EXAI_WS_HOST": "0.0.0.0"})


# --- 7. no secrets in files ------------------------------------------------------------


async def test_no_secrets_in_logs_or_files(
    daemon_factory: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    """The token and a provider key never reach the log folder or the daemon's stderr,
    through successful calls, refused logins and a provider call that fails."""
    token = new_token("tok")
    key = new_token("key")
    wrong = new_token("wrong")
    closed_port = free_port()
    daemon = daemon_factory(
        workers=2,
        env={
            "EXAI_WS_TOKEN": token,
            "GLM_API_KEY": key,
            "GLM_API_URL": f"http://127.0.0.1:{closed_port}/v4",
            "KIMI_API_URL": f"http://127.0.0.1:{closed_port}/v1",
            "EXAI_LOG_LEVEL": "DEBUG",
        },
    )
    # Workers need the provider key but never the daemon token.
    environs = process_environs(daemon.worker_pids())
    assert environs and all(token.encode() not in e for e in environs)
    assert all(key.encode() in e for e in environs)

    async with asyncio.timeout(scaled(90.0)):
        async with mcp_client(daemon.shim_env()) as client:
            echoed = await client.call_tool("echo", {"text": "hello"})
            assert echoed.content[0].text == "hello"
            chat = await client.call_tool("chat", {"prompt": "hi", "model": "glm-4.5"})
            assert chat.is_error, chat
            shown = " ".join(getattr(c, "text", "") for c in chat.content)
            assert "unreachable" in shown or "glm" in shown.lower(), shown
            assert key not in shown and token not in shown
            await client.call_tool("version", {})
        await shim_failure(daemon.shim_env(EXAI_WS_TOKEN=wrong, EXAI_SHIM_RPC_TIMEOUT="1"), 1.0)
        ws, ack = await op_hello(http, daemon, token=wrong)
        assert ack["ok"] is False
        await recv_close(ws)
        for refused in (
            {"headers": {"Authorization": f"Bearer {wrong}"}},
            {"params": {"token": wrong}},
        ):
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await connect(http, daemon, protocols=("mcp",), **refused)  # type: ignore[arg-type]
        async with http.get(f"http://127.0.0.1:{daemon.port}/health?token={wrong}") as resp:
            assert resp.status == 401
        async with http.get(
            f"http://127.0.0.1:{daemon.port}/metrics", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            assert resp.status == 200
            assert token not in await resp.text()
    assert daemon.stop() == 0
    files = [p for p in daemon.log_dir.rglob("*") if p.is_file()]
    assert any(p.name == "mcp_server.log" for p in files), files
    for path in files:
        data = path.read_bytes()
        for secret in (token, key, wrong):
            assert secret.encode() not in data, f"{secret[:4]}… found in {path.name}"
