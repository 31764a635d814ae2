"""Reliability: a shim's session survives a dropped connection, a stalled one and a
daemon restart, and the client gets every answer exactly once.

A JSON-lines driver talks to a real `python -m shim`; the shim reaches the daemon
through a loopback TCP proxy the test controls (cut, refuse, stall). The counting
tools (tests.fixtures.counting_tools) write one line per execution, so "ran exactly
once" is read from a file, not inferred.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DaemonFactory, DaemonProcess, async_wait_for, base_env, free_port, scaled
from tests.e2e.reliability_support import (
    COUNTING_ARGS,
    TYPED_CODES,
    JsonObj,
    ShimDriver,
    read_counts,
    rpc_error,
    rpc_text,
    shim_drivers,
    tcp_proxy,
)
from tests.support.health import health_until

WORKER_LOST = -32052
UNAVAILABLE = -32054


def _started(path: Path, *keys: str) -> Callable[[], bool]:
    return lambda: all(read_counts(path).get(k, 0) >= 1 for k in keys)


def _finished_ok(daemon: DaemonProcess, tool: str) -> int:
    """Calls of `tool` the daemon finished with a result (its metrics lines)."""
    return sum(1 for m in daemon.metrics_lines() if m["tool"] == tool and m["outcome"] == "ok")


async def test_dropped_connection_resumes_session_and_delivers_every_answer_once(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """Cut the shim's connection mid-call: after the reconnect every answer arrives once."""
    daemon = daemon_factory(workers=2, args=COUNTING_ARGS, env={"EXAI_HEALTH_INTERVAL": "0.05"})
    counts = tmp_path / "counts.txt"
    rec = str(counts)
    async with tcp_proxy(daemon.port) as proxy, shim_drivers(tmp_path) as start:
        shim: ShimDriver = await start(daemon.shim_env(EXAI_WS_PORT=str(proxy.port)))
        await shim.initialize()
        before = await shim.call_and_wait("record", {"key": "before", "path": rec})
        assert rpc_text(before) == "recorded before"

        # Two calls running when the connection drops: one finishes while the shim is
        # away (its answer is held), one still runs when it comes back (it is joined).
        short = await shim.call("record", {"key": "short", "seconds": 1.0, "path": rec})
        long = await shim.call("record", {"key": "long", "seconds": 8.0, "path": rec})
        await async_wait_for(_started(counts, "short", "long"), 15, "both calls to start")
        proxy.refusing = True
        assert proxy.cut() == 1
        await health_until(daemon, lambda h: h["sessions_detached"] == 1, "a detached session")
        # A call the client makes while the shim is disconnected waits in the shim.
        offline = await shim.call("record", {"key": "offline", "path": rec})
        await async_wait_for(
            lambda: _finished_ok(daemon, "record") >= 2,
            15,
            "the short call to finish while its session was detached",
        )
        assert not shim.answered(short), "an answer arrived through a cut connection"
        proxy.refusing = False
        await async_wait_for(lambda: proxy.accepted >= 2, 15, "the shim to reconnect")
        assert not shim.answered(long), "the long call should still run after the reconnect"

        answers = {rid: await shim.response(rid) for rid in (short, long, offline)}
        assert rpc_text(answers[short]) == "recorded short"
        assert rpc_text(answers[long]) == "recorded long"
        assert rpc_text(answers[offline]) == "recorded offline"
        # A last round trip after everything: any late duplicate would have arrived first.
        barrier = await shim.call_and_wait("echo", {"text": "barrier"})
        assert rpc_text(barrier) == "barrier"

        for rid in ("init", before["id"], short, long, offline):
            assert shim.count(rid) == 1, f"{rid} answered {shim.count(rid)} times"
        assert len(shim.responses) == len({str(r.get("id")) for r in shim.responses})
        assert read_counts(counts) == {"before": 1, "short": 1, "long": 1, "offline": 1}
        await health_until(
            daemon,
            lambda h: (
                h["sessions_detached"] == 0 and h["sessions"] == 1 and h["inflight"]["global"] == 0
            ),
            "the session to be attached again with nothing in flight",
        )
        assert "resumed=True" in daemon.stderr()


async def _stalled_call(
    daemon_factory: DaemonFactory, tmp_path: Path, seconds: float, rpc_timeout: str
) -> tuple[ShimDriver, Any, JsonObj, Path]:
    """Stall the shim's connection, then make a `record` call: (shim, id, answer, counts)."""
    daemon = daemon_factory(workers=2, args=COUNTING_ARGS)
    counts = tmp_path / "counts.txt"
    async with tcp_proxy(daemon.port) as proxy, shim_drivers(tmp_path) as start:
        shim = await start(
            daemon.shim_env(EXAI_WS_PORT=str(proxy.port), EXAI_SHIM_RPC_TIMEOUT=rpc_timeout)
        )
        await shim.initialize()
        assert proxy.stall() == 1
        rid = await shim.call("record", {"key": "once", "seconds": seconds, "path": str(counts)})
        await async_wait_for(_started(counts, "once"), 15, "the call to start")
        answer = await shim.response(rid)
        # A last round trip: a late duplicate of the answer would have arrived before it.
        assert rpc_text(await shim.call_and_wait("echo", {"text": "barrier"})) == "barrier"
        # The shim gave up on the stalled connection and opened another one.
        assert proxy.accepted >= 2
        assert "retrying once" in shim.stderr()
    return shim, rid, answer, counts


@pytest.mark.parametrize(
    ("rpc_timeout", "seconds"),
    [("1", 0.0), ("1", 2.5), ("3", 0.0)],
    ids=["rpc1-finished-during-stall", "rpc1-still-running", "rpc3-finished-during-stall"],
)
async def test_retry_after_stalled_connection_never_runs_a_call_twice(
    daemon_factory: DaemonFactory,
    tmp_path: Path,
    rpc_timeout: str,
    seconds: float,
) -> None:
    """The shim's retry-once on a stalled connection: one execution, one answer."""
    shim, rid, answer, counts = await _stalled_call(daemon_factory, tmp_path, seconds, rpc_timeout)
    assert shim.count(rid) == 1, shim.responses
    assert read_counts(counts) == {"once": 1}
    if "error" in answer:
        assert rpc_error(answer).get("data", {}).get("code") in TYPED_CODES, answer
    else:
        assert rpc_text(answer) == "recorded once"


@pytest.mark.parametrize(
    ("rpc_timeout", "seconds"),
    [
        pytest.param("1", 0.0, id="rpc1-finished-during-stall"),
        # Still running when the retry arrives on the new connection: the retry joins it.
        pytest.param("3", 6.0, id="rpc3-joins-running-call"),
    ],
)
async def test_retry_after_stalled_connection_delivers_the_result(
    daemon_factory: DaemonFactory,
    tmp_path: Path,
    rpc_timeout: str,
    seconds: float,
) -> None:
    """The retried call's real result reaches the client, once."""
    shim, rid, answer, counts = await _stalled_call(daemon_factory, tmp_path, seconds, rpc_timeout)
    assert rpc_text(answer) == "recorded once"
    assert shim.count(rid) == 1
    assert read_counts(counts) == {"once": 1}


@dataclasses.dataclass
class RestartOutcome:
    """What a client saw across a daemon restart on the same port."""

    port: int
    rpc_timeout_s: float
    shim: ShimDriver
    unsafe: JsonObj
    safe: JsonObj
    fresh: JsonObj
    counts: dict[str, int]


async def _restart(daemon_factory: DaemonFactory, tmp_path: Path) -> RestartOutcome:
    """A `record` and a `record_idempotent` call in flight when daemon A stops; B takes over."""
    env = {"EXAI_SHUTDOWN_GRACE": "0.5"}
    first = daemon_factory(workers=2, args=COUNTING_ARGS, env=env)
    port = first.port
    counts = tmp_path / "counts.txt"
    rec = str(counts)
    # Long enough for daemon B to come up: a call cut by the stop waits at most this
    # long for a daemon to take it again (then it is answered UNAVAILABLE).
    rpc_timeout_s = scaled(15.0)
    async with shim_drivers(tmp_path) as start:
        shim = await start(first.shim_env(EXAI_SHIM_RPC_TIMEOUT=f"{rpc_timeout_s:g}"))
        await shim.initialize()
        assert rpc_text(await shim.call_and_wait("echo", {"text": "hi"})) == "hi"
        ok = await shim.call_and_wait("record", {"key": "ok", "path": rec})
        assert rpc_text(ok) == "recorded ok"

        unsafe = await shim.call("record", {"key": "unsafe", "seconds": 60, "path": rec})
        safe = await shim.call("record_idempotent", {"key": "safe", "seconds": 2, "path": rec})
        await async_wait_for(_started(counts, "unsafe", "safe"), 15, "both calls to start")
        assert first.stop() == 0
        second = daemon_factory(workers=2, args=COUNTING_ARGS, env=env, port=port)
        assert second.port == port
        safe_answer = await shim.response(safe)
        unsafe_answer = await shim.response(unsafe)
        # No re-initialize from the client: the shim replays it to the new daemon.
        fresh = await shim.call_and_wait("record", {"key": "fresh", "path": rec})
    return RestartOutcome(
        port,
        rpc_timeout_s,
        shim,
        unsafe_answer,
        safe_answer,
        fresh,
        read_counts(counts),
    )


async def test_daemon_restart_resends_idempotent_calls_and_never_reruns_others(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """Across a restart on the same port the client keeps working without re-initializing."""
    seen = await _restart(daemon_factory, tmp_path)
    assert rpc_text(seen.safe) == "recorded safe"
    assert "result" not in seen.unsafe
    assert rpc_error(seen.unsafe).get("data", {}).get("code") in TYPED_CODES
    assert rpc_text(seen.fresh) == "recorded fresh"
    shim = seen.shim
    assert not any(str(r.get("id", "")).startswith("exai-shim-replay") for r in shim.responses), (
        "the shim leaked the answer to its replayed initialize"
    )
    for response in (seen.unsafe, seen.safe, seen.fresh):
        assert shim.count(response["id"]) == 1
    # The unsafe call ran once (on A) and was not re-run; the idempotent one ran on both.
    assert seen.counts == {"ok": 1, "unsafe": 1, "safe": 2, "fresh": 1}


async def test_daemon_restart_answers_cut_unsafe_call_worker_lost(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """The cut non-idempotent call is WORKER_LOST (-32052) and says the daemon restarted."""
    seen = await _restart(daemon_factory, tmp_path)
    error = rpc_error(seen.unsafe)
    assert error["code"] == WORKER_LOST, seen.unsafe
    assert error.get("data", {}).get("code") == "WORKER_LOST"
    assert "restart" in error["message"]


async def test_call_while_no_daemon_runs_is_typed_unavailable_at_once(tmp_path: Path) -> None:
    """With nothing listening, a request fails at once with UNAVAILABLE."""
    port = free_port()
    env = base_env(EXAI_WS_HOST="127.0.0.1", EXAI_WS_PORT=str(port), EXAI_SHIM_RPC_TIMEOUT="1")
    async with shim_drivers(tmp_path) as start:
        shim = await start(env)
        started = time.monotonic()
        rid = await shim.call("echo", {"text": "anyone?"})
        error = rpc_error(await shim.response(rid))
        waited_s = time.monotonic() - started
        assert waited_s < scaled(2), waited_s
        assert f"ws://127.0.0.1:{port}" in error["message"]
        assert error["code"] == UNAVAILABLE, error
        assert error.get("data", {}).get("code") == "UNAVAILABLE"
