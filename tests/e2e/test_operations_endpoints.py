"""GET /health and GET /metrics as a monitoring system scrapes them from a real daemon.

/metrics is parsed with prometheus-client's own text parser, so anything a Prometheus
server would reject fails here too.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from mcp import MCPError

from tests.conftest import DaemonFactory, async_wait_for, mcp_client, scaled, wait_for
from tests.e2e.ops_support import STEP_S, Metrics, fetch, op_client, read_metrics

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(not Path("/proc").is_dir(), reason="checks processes in /proc"),
]


async def metrics_until(
    http: aiohttp.ClientSession, port: int, check: Callable[[Metrics], bool], what: str
) -> Metrics:
    """The first scrape for which `check` holds (fails after the deadline)."""
    loop_time = asyncio.get_running_loop().time
    end = loop_time() + scaled(STEP_S)
    while True:
        scrape = await read_metrics(http, port)
        if check(scrape):
            return scrape
        if loop_time() > end:
            raise AssertionError(f"timed out waiting for {what}; last scrape:\n{scrape.text}")
        await asyncio.sleep(0.05)


async def test_health_is_200_then_503_with_draining_while_shutdown_waits_for_a_call(
    daemon_factory: DaemonFactory,
) -> None:
    """/health answers 200 with the snapshot; after SIGTERM, while a long call is still
    allowed to finish, a monitor polling /health gets 503 with "draining": true (the
    health file says draining too); the call then completes and the daemon exits 0."""
    daemon = daemon_factory(workers=1, env={"EXAI_SHUTDOWN_GRACE": "60"})
    seconds = scaled(6.0)
    connector = aiohttp.TCPConnector(limit=1)  # a monitor keeps its connection open
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        op_client(daemon) as client,
    ):
        status, body = await fetch(http, daemon.port, "/health")
        health = json.loads(body)
        assert status == 200
        assert health["draining"] is False and health["ready"] is True
        assert health["pid"] == daemon.proc.pid and health["port"] == daemon.port

        sleep = await client.start("sleep", {"seconds": seconds})
        await async_wait_for(
            lambda: daemon.health()["inflight"]["global"] == 1, STEP_S, "the sleep to run"
        )
        daemon.proc.send_signal(signal.SIGTERM)

        draining: dict[str, object] = {}
        end = asyncio.get_running_loop().time() + scaled(STEP_S)
        while not draining:
            status, body = await fetch(http, daemon.port, "/health")
            if status == 503:
                draining = json.loads(body)
            elif asyncio.get_running_loop().time() > end:
                raise AssertionError(f"/health never answered 503 while draining: {status}")
            else:
                assert status == 200, (status, body)
                await asyncio.sleep(0.02)
        assert draining["draining"] is True
        assert draining["inflight"] == {"global": 1, "providers": {"kimi": 0, "glm": 0}}
        await async_wait_for(
            lambda: daemon.health().get("draining") is True, STEP_S, "the health file to drain"
        )

        result = await sleep.wait(timeout_s=seconds + STEP_S)
    assert "error" not in result and result["text"] == f"slept {seconds:g}", result
    assert daemon.stop(timeout_s=STEP_S) == 0


async def test_metrics_count_calls_by_tool_provider_and_outcome_with_histograms(
    daemon_factory: DaemonFactory,
) -> None:
    """After 3 echo calls, 1 failing call and 1 unknown tool, /metrics (Prometheus text
    that parses) counts each by tool, provider and outcome, and the latency and queue
    histograms hold one observation per call."""
    daemon = daemon_factory(workers=2)
    async with aiohttp.ClientSession() as http, mcp_client(daemon.shim_env()) as session:
        for n in range(3):
            assert not (await session.call_tool("echo", {"text": f"m{n}"})).is_error
        assert (await session.call_tool("fail", {"message": "on purpose"})).is_error
        with pytest.raises(MCPError):
            await session.call_tool("no_such_tool", {})

        async with http.get(f"http://127.0.0.1:{daemon.port}/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            scrape = Metrics(await resp.text())

        # The daemon's own tools are served by no hosted server: server="none".
        own = {"provider": "none", "server": "none"}
        assert scrape.value("exai_calls_total", tool="echo", outcome="ok", **own) == 3
        assert scrape.value("exai_calls_total", tool="fail", outcome="EXEC_ERROR", **own) == 1
        assert (
            scrape.value("exai_calls_total", tool="(unknown)", outcome="TOOL_NOT_FOUND", **own) == 1
        )
        assert sum(v for _, v in scrape.samples("exai_calls_total")) == 5

        assert scrape.value("exai_call_latency_seconds_count", tool="echo") == 3
        assert scrape.value("exai_call_latency_seconds_count", tool="fail") == 1
        echo_sum = scrape.value("exai_call_latency_seconds_sum", tool="echo")
        assert echo_sum is not None and echo_sum > 0
        buckets = sorted(
            (float(labels["le"]), value)
            for labels, value in scrape.samples("exai_call_latency_seconds_bucket")
            if labels["tool"] == "echo"
        )
        assert buckets[-1] == (float("inf"), 3)
        assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
        assert scrape.value("exai_call_queue_seconds_count", provider="none") == 5
        assert scrape.families["exai_call_queue_seconds"].type == "histogram"

        assert scrape.value("exai_sessions", state="attached") == 1
        assert scrape.value("exai_workers", state="ready") == 2
        assert scrape.families["exai_metrics_lines_dropped"].type == "counter"
        assert scrape.value("exai_metrics_lines_dropped_total") == 0
        assert scrape.value("exai_inflight_calls", cap="global") == 0
        assert scrape.value("exai_inflight_calls", cap="provider:kimi") == 0


async def test_metrics_inflight_sessions_and_worker_restarts_follow_the_daemon(
    daemon_factory: DaemonFactory,
) -> None:
    """exai_inflight_calls{cap="global"} is 1 while a sleep runs and 0 after it is
    cancelled; exai_sessions counts the open session; after kill -9 of a worker,
    exai_worker_restarts for its slot goes up by one and the pool is back to 2 ready."""
    daemon = daemon_factory(workers=2)
    async with aiohttp.ClientSession() as http:
        before = await read_metrics(http, daemon.port)
        assert before.value("exai_sessions", state="attached") == 0
        assert before.value("exai_inflight_calls", cap="global") == 0
        async with op_client(daemon) as client:
            sleep = await client.start("sleep", {"seconds": 300})
            running = await metrics_until(
                http,
                daemon.port,
                lambda m: m.value("exai_inflight_calls", cap="global") == 1,
                "the sleep to show as in flight",
            )
            assert running.value("exai_sessions", state="attached") == 1
            await client.cancel(sleep.request_id)
            cancelled = await sleep.wait()
            assert cancelled["error"]["code"] == "CANCELLED", cancelled
            await metrics_until(
                http,
                daemon.port,
                lambda m: m.value("exai_inflight_calls", cap="global") == 0,
                "the cancelled sleep to leave the global count",
            )

        victim = daemon.health()["workers"][0]
        slot = str(victim["slot"])
        assert before.value("exai_worker_restarts_total", slot=slot) == 0
        os.kill(victim["pid"], signal.SIGKILL)
        after = await metrics_until(
            http,
            daemon.port,
            lambda m: (
                m.value("exai_worker_restarts_total", slot=slot) == 1
                and m.value("exai_workers", state="ready") == 2
            ),
            "the killed worker to be restarted",
        )
    assert after.families["exai_worker_restarts"].type == "counter"
    others = [
        v for labels, v in after.samples("exai_worker_restarts_total") if labels["slot"] != slot
    ]
    assert others == [0]
    # The health file is written on its own beat, so it may still name the old worker.
    wait_for(lambda: victim["pid"] not in daemon.worker_pids(), 10.0, "the health file to follow")


async def test_unknown_tool_names_do_not_grow_metrics_label_sets(
    daemon_factory: DaemonFactory,
) -> None:
    """A client calling 30 made-up tool names must not add 30 label values to /metrics
    (each one a counter and a 17-bucket histogram, kept for the daemon's lifetime): any
    local process could grow the daemon's memory and every scrape without bound."""
    daemon = daemon_factory(workers=1)
    async with aiohttp.ClientSession() as http, op_client(daemon) as client:
        for n in range(30):
            result = await client.call(f"made_up_tool_{n}", {})
            assert result["error"]["code"] == "TOOL_NOT_FOUND", result
        scrape = await read_metrics(http, daemon.port)
    tools = {labels["tool"] for labels, _ in scrape.samples("exai_calls_total")}
    assert len(tools) <= 2, sorted(tools)


async def test_a_new_health_probe_during_draining_gets_503(
    daemon_factory: DaemonFactory,
) -> None:
    """A monitor that opens a new connection per probe (curl, a Kubernetes probe, a
    Prometheus scrape, `python -m broker status`) must see the documented 503 with
    "draining": true while the daemon waits for calls to finish, not a refused connection
    that looks like a crash."""
    daemon = daemon_factory(workers=1, env={"EXAI_SHUTDOWN_GRACE": "60"})
    seconds = scaled(6.0)
    async with op_client(daemon) as client:
        sleep = await client.start("sleep", {"seconds": seconds})
        await async_wait_for(
            lambda: daemon.health()["inflight"]["global"] == 1, STEP_S, "the sleep to run"
        )
        daemon.proc.send_signal(signal.SIGTERM)
        await async_wait_for(
            lambda: daemon.health().get("draining") is True, STEP_S, "the daemon to drain"
        )
        try:
            connector = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=connector) as fresh:
                status, body = await fetch(fresh, daemon.port, "/health")
        except aiohttp.ClientConnectionError as exc:
            raise AssertionError(f"a new connection to /health was refused: {exc}") from None
        finally:
            await sleep.wait(timeout_s=seconds + STEP_S)
    assert status == 503 and json.loads(body)["draining"] is True
