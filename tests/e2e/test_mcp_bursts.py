"""Bursts of overlapping MCP calls with the daemon's default settings.

An MCP client that fires many tool calls at once (an agent fanning out) must see every
one of them succeed: calls beyond the caps (EXAI_WS_SESSION_MAX_INFLIGHT, 8 by
default; EXAI_WS_GLOBAL_MAX_INFLIGHT, 24) wait their turn instead of failing with
OVER_CAPACITY, because MCP clients do not retry that error. Waiting calls start in the
order they were sent, and sessions share a full daemon fairly. The op dialect, whose
clients retry on OVER_CAPACITY, is still told at once.

The clients are the real ones: the official Python SDK's `mcp.Client` and the
TypeScript SDK's Client (tests/fixtures/ts_burst.mjs), each launching `python -m shim`
as an editor would, and MCP straight over the daemon's WebSocket. No cap or timeout is
changed in the daemon's environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mcp
import pytest

from exai.settings import Settings
from tests.conftest import ROOT, STEP_S, DaemonFactory, DaemonProcess, scaled
from tests.e2e.sched_support import metrics_until, op_clients, op_error
from tests.e2e.test_scheduling_caps import assert_over_capacity
from tests.e2e.test_third_party_clients import TS_SDK, shim_params
from tests.support.health import read_health
from tests.support.jsonrpc import JsonObj, sdk_text
from tests.support.mcp_ws import McpWsClient, mcp_ws_clients
from tests.support.shim_driver import running_shim

pytestmark = pytest.mark.timeout(120)

DEFAULTS = Settings()
SESSION_CAP = DEFAULTS.session_max_inflight
GLOBAL_CAP = DEFAULTS.global_max_inflight
BURST = 64  # eight times the default session cap: most of a burst has to wait
SLEEP_S = 0.3
SLEPT = f"slept {SLEEP_S:g}"
TS_BURST = ROOT / "tests" / "fixtures" / "ts_burst.mjs"
COUNTING_ARGS = ["--server", "tests.fixtures.counting_tools"]


@dataclass(frozen=True)
class Answer:
    """What a client got for one call: the text of a success, or what went wrong."""

    text: str | None
    problem: str | None
    at: float  # when the answer arrived (one clock per test)


def assert_all_slept(answers: list[Answer], who: str, count: int = BURST) -> None:
    """Every call of the burst was answered with the sleep tool's success."""
    wrong = [
        f"call {i}: {a.problem or repr(a.text)}" for i, a in enumerate(answers) if a.text != SLEPT
    ]
    assert len(answers) == count, f"{who}: {len(answers)} answers for {count} calls"
    assert not wrong, f"{who}: {len(wrong)} of {count} calls failed:\n  " + "\n  ".join(wrong[:10])


async def gather_answers(calls: list[Callable[[], Awaitable[Answer]]], who: str) -> list[Answer]:
    """Run every call at once; all must be answered within a bounded time."""
    # 64 calls at 8 at a time are 8 rounds of 0.3 s; the bound leaves a loaded machine
    # plenty of room and still ends a hung burst well before the test timeout.
    async with asyncio.timeout(scaled(STEP_S * 2)):
        try:
            return list(await asyncio.gather(*(call() for call in calls)))
        except TimeoutError:
            raise AssertionError(f"{who}: the burst was not answered in time") from None


async def sdk_burst(client: mcp.Client, count: int = BURST) -> list[Answer]:
    """`count` overlapping sleep calls through an mcp.Client; their answers."""

    async def one() -> Answer:
        try:
            result = await client.call_tool("sleep", {"seconds": SLEEP_S})
        except Exception as exc:  # the answer is checked, not raised
            return Answer(None, f"{type(exc).__name__}: {exc}", time.monotonic())
        if result.is_error:
            return Answer(None, f"tool error: {sdk_text(result)}", time.monotonic())
        return Answer(sdk_text(result), None, time.monotonic())

    return await gather_answers([one] * count, "mcp.Client")


async def ws_burst(client: McpWsClient, count: int = BURST) -> list[Answer]:
    """`count` overlapping sleep calls on a direct MCP WebSocket session; their answers."""

    async def one() -> Answer:
        try:
            response = await client.call("sleep", {"seconds": SLEEP_S}, timeout_s=STEP_S * 2)
        except (ConnectionError, TimeoutError) as exc:
            return Answer(None, f"{type(exc).__name__}: {exc}", time.monotonic())
        return Answer(*_rpc_outcome(response), time.monotonic())

    return await gather_answers([one] * count, "MCP WebSocket session")


def _rpc_outcome(response: JsonObj) -> tuple[str | None, str | None]:
    result = response.get("result")
    if not isinstance(result, dict) or result.get("isError"):
        return None, json.dumps(response)[:400]
    return "".join(str(c.get("text", "")) for c in result.get("content", [])), None


async def assert_the_cap_was_full(daemon: DaemonProcess, count: int = BURST) -> None:
    """The daemon ran every sleep call, and some of them waited for a free slot: the
    burst really went past the cap, so its success is the queue's doing."""
    lines = await metrics_until(
        daemon, lambda m: m["tool"] == "sleep", f"{count} sleep metrics lines", count=count
    )
    assert {m["outcome"] for m in lines} == {"ok"}, lines
    # Calls past the eighth cannot start before one of the first eight has slept.
    waited = [m for m in lines if m["queue_ms"] >= SLEEP_S * 1000 / 2]
    assert waited, f"no call waited for a slot: {[m['queue_ms'] for m in lines]}"


# --- one client, one burst -----------------------------------------------------------


async def test_python_sdk_client_burst_through_a_shim_all_succeed(
    daemon_factory: DaemonFactory,
) -> None:
    """The official Python SDK client sends 64 overlapping sleep calls through one shim:
    every one answers "slept 0.3", none fails with OVER_CAPACITY or any other error."""
    daemon = daemon_factory()
    async with mcp.Client(shim_params(daemon), read_timeout_seconds=scaled(STEP_S)) as client:
        version = client.protocol_version
        answers = await sdk_burst(client)
    assert_all_slept(answers, f"mcp.Client on {version}")
    await assert_the_cap_was_full(daemon)


def run_ts_burst(daemon: DaemonProcess, count: int = BURST) -> dict[str, Any]:
    """Run tests/fixtures/ts_burst.mjs against the daemon; the record it prints."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    if not (TS_SDK / "dist" / "esm" / "client" / "index.js").is_file():
        pytest.skip("@modelcontextprotocol/sdk is not installed locally (run `make node-tools`)")
    env = daemon.shim_env(
        TS_CLIENT_PYTHON=sys.executable,
        TS_CLIENT_CWD=str(ROOT),
        TS_CLIENT_STEP_S=str(scaled(STEP_S)),
        TS_SDK_DIR=str(TS_SDK),
    )
    proc = subprocess.run(
        [node, str(TS_BURST), str(count), str(SLEEP_S)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=scaled(STEP_S * 2),
        check=False,
    )
    stderr = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, f"ts_burst exited {proc.returncode}:\n{stderr}"
    record: dict[str, Any] = json.loads(proc.stdout)
    assert "fatal" not in record, f"{record['fatal']}\n{stderr}"
    return record


def test_typescript_sdk_client_burst_through_a_shim_all_succeed(
    daemon_factory: DaemonFactory,
) -> None:
    """The TypeScript SDK client sends 64 overlapping sleep calls through one shim:
    every one answers "slept 0.3" with isError false, and the client reports no
    transport error."""
    daemon = daemon_factory()
    record = run_ts_burst(daemon)
    answers = [
        Answer(c["ok"], None, c["atMs"])
        if "ok" in c and c.get("isError") is False
        else Answer(None, c.get("error") or f"isError {c.get('isError')}: {c.get('ok')}", 0)
        for c in record["calls"]
    ]
    assert_all_slept(answers, f"TypeScript SDK {record['sdkVersion']}")
    assert record["transportErrors"] == [], record["transportErrors"]
    assert "closeError" not in record, record["closeError"]
    asyncio.run(assert_the_cap_was_full(daemon))


async def test_direct_websocket_session_burst_all_succeed(daemon_factory: DaemonFactory) -> None:
    """A client speaking MCP straight to the daemon's WebSocket (no shim) sends 64
    overlapping sleep calls: every one answers "slept 0.3"."""
    daemon = daemon_factory()
    async with mcp_ws_clients(daemon, 1) as (client,):
        answers = await ws_burst(client)
        assert_all_slept(answers, "MCP WebSocket session")
        stray = [f for f in client.notifications if f.get("method") != "notifications/progress"]
        assert not stray, f"frames that answer no call: {stray[:5]}"
    await assert_the_cap_was_full(daemon)


# --- several clients at once -----------------------------------------------------------


def assert_none_starved(bursts: dict[str, list[Answer]]) -> None:
    """Each client got its first answer before every other client got its last one:
    no client's burst waited behind another's whole burst."""
    for who, answers in bursts.items():
        first = min(a.at for a in answers)
        for other, theirs in bursts.items():
            if other != who:
                last = max(a.at for a in theirs)
                assert first < last, (
                    f"{who} got its first answer only after {other} got all of its answers"
                )


async def sleeps_per_session(daemon: DaemonProcess, sessions: int) -> dict[str, int]:
    """Once every sleep call is in the metrics: how many each session ran (all ok)."""
    lines = await metrics_until(
        daemon,
        lambda m: m["tool"] == "sleep",
        f"{sessions * BURST} sleep metrics lines",
        count=sessions * BURST,
    )
    assert {m["outcome"] for m in lines} == {"ok"}, lines
    per_session: dict[str, int] = {}
    for m in lines:
        per_session[m["session"]] = per_session.get(m["session"], 0) + 1
    assert len(per_session) == sessions, per_session
    return per_session


async def test_two_shim_clients_bursting_together_are_both_served(
    daemon_factory: DaemonFactory,
) -> None:
    """Two Python SDK clients, each through its own shim, send 64 overlapping sleep calls
    at the same time: both get all 64 answers, and neither waits for the other's burst
    to end before its own calls are answered."""
    daemon = daemon_factory()
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                mcp.Client(shim_params(daemon), read_timeout_seconds=scaled(STEP_S))
            )
            for _ in range(2)
        ]
        first, second = await asyncio.gather(*(sdk_burst(c) for c in clients))
    assert_all_slept(first, "first client")
    assert_all_slept(second, "second client")
    assert_none_starved({"first client": first, "second client": second})
    lines = await sleeps_per_session(daemon, 2)
    assert sorted(lines.values()) == [BURST, BURST], lines


async def test_four_sessions_filling_the_daemon_share_it(daemon_factory: DaemonFactory) -> None:
    """Four direct MCP sessions send 64 overlapping sleep calls each, more than the
    daemon runs at once (24 by default): every call of every session succeeds, the
    daemon is full meanwhile, and each session is answered before the others finish."""
    daemon = daemon_factory()
    peak = {"global": 0, "queued": 0}

    async def watch() -> None:
        # Sampled from the health file while the bursts run, to show they filled the
        # daemon (the global cap), not only each session's own cap.
        while True:
            health = read_health(daemon)
            if health is not None:
                peak["global"] = max(peak["global"], health["inflight"]["global"])
                peak["queued"] = max(peak["queued"], health.get("queued", 0))
            await asyncio.sleep(0.05)

    async with mcp_ws_clients(daemon, 4) as clients:
        watcher = asyncio.create_task(watch())
        try:
            bursts = await asyncio.gather(*(ws_burst(c) for c in clients))
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    named = {f"session {i}": answers for i, answers in enumerate(bursts)}
    for who, answers in named.items():
        assert_all_slept(answers, who)
    assert_none_starved(named)
    assert peak["global"] == GLOBAL_CAP, peak
    assert peak["queued"] > 0, peak
    assert sorted((await sleeps_per_session(daemon, 4)).values()) == [BURST] * 4


# --- arrival order -------------------------------------------------------------------


async def send_records_through_shim(daemon: DaemonProcess, journal: Path) -> list[JsonObj]:
    """Send BURST `record` calls, keys 0…63 in that order, through a shim; the answers."""
    async with running_shim(daemon.shim_env()) as shim:
        await shim.initialize()
        rids = [
            await shim.call("record", {"key": str(i), "seconds": 0.1, "path": str(journal)})
            for i in range(BURST)
        ]
        async with asyncio.timeout(scaled(STEP_S * 2)):
            return list(await asyncio.gather(*(shim.response(rid) for rid in rids)))


async def send_records_over_websocket(daemon: DaemonProcess, journal: Path) -> list[JsonObj]:
    """Send BURST `record` calls, keys 0…63 in that order, on a direct MCP session."""
    async with mcp_ws_clients(daemon, 1) as (client,):
        futures = [
            (
                await client.start_call(
                    "record", {"key": str(i), "seconds": 0.1, "path": str(journal)}
                )
            )[1]
            for i in range(BURST)
        ]
        async with asyncio.timeout(scaled(STEP_S * 2)):
            return list(await asyncio.gather(*futures))


@pytest.mark.parametrize(
    "send",
    [
        pytest.param(send_records_through_shim, id="shim"),
        pytest.param(send_records_over_websocket, id="websocket"),
    ],
)
async def test_waiting_calls_start_in_the_order_they_were_sent(
    daemon_factory: DaemonFactory,
    tmp_path: Path,
    send: Callable[[DaemonProcess, Path], Awaitable[list[JsonObj]]],
) -> None:
    """64 calls sent in order on one session start in exactly that order, the eight
    that run at once and the 56 that wait alike, and all succeed. Each call writes its
    key to a journal the moment it starts."""
    # One worker: with two, two calls let in at the same instant could start in either
    # order, which says nothing about the order the daemon let them in.
    daemon = daemon_factory(workers=1, args=COUNTING_ARGS)
    journal = tmp_path / "starts.txt"
    responses = await send(daemon, journal)
    texts = [_rpc_outcome(r) for r in responses]
    assert texts == [(f"recorded {i}", None) for i in range(BURST)], texts
    started = journal.read_text().splitlines()
    assert started == [str(i) for i in range(BURST)], started


# --- the op dialect ------------------------------------------------------------------


async def test_op_client_is_still_told_at_once_when_its_session_is_full(
    daemon_factory: DaemonFactory,
) -> None:
    """An op-dialect session running 8 calls (its default cap) gets OVER_CAPACITY (scope
    session, with a retry hint) for a ninth at once, while the eight still run: op
    clients retry by themselves, so their calls do not wait in the queue."""
    daemon = daemon_factory()
    async with op_clients(daemon, "op") as (client,):
        # Long enough never to end by itself while the test looks; cancelled below.
        held = [await client.start("sleep", {"seconds": 300}) for _ in range(SESSION_CAP)]
        for call in held:
            await call.wait_ack()  # acknowledged: admitted and running
        refused = await client.call("sleep", {"seconds": 0})
        assert_over_capacity(op_error(refused), "session", None)
        assert not any(call.result.done() for call in held)
        for call in held:
            await client.cancel(call.request_id)
        for call in held:
            assert op_error(await call.wait())["code"] == "CANCELLED"
