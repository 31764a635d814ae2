"""`--pool ray`: the same broker with its tool hosts as Ray actors.

Everything here runs inside a loopback-only network namespace (`make test-ray`); see
ray_support. A private cluster is what `--pool ray` starts by itself; `ray:ADDRESS`
joins clusters these tests start with `ray start`, on 127.0.0.1 and 127.0.0.2.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    ROOT,
    DaemonProcess,
    async_wait_for,
    free_port,
    mcp_client,
    scaled,
    start_daemon,
)
from tests.e2e.ray_support import (
    ray_env,
    ray_home,
    require_isolated_ray,
    started_cluster,
)
from tests.e2e.sched_support import (
    SERVER_ARGS,
    STEP_S,
    Files,
    marker_until,
    rpc_error,
    rpc_text,
)
from tests.e2e.test_many_servers import instance_pids, rpc_failure, server_entry
from tests.support.health import health_until
from tests.support.jsonrpc import sdk_text
from tests.support.mcp_ws import McpWsClient, mcp_ws_clients
from tests.support.processes import cmdline, group_pids, parent_pid

require_isolated_ray()

pytestmark = pytest.mark.ray

OVER_CAPACITY = -32050
TIMEOUT = -32051
WORKER_LOST = -32052
CALL_TIMEOUT_S = 4.0


def _stop(daemon: DaemonProcess) -> None:
    with contextlib.suppress(Exception):
        daemon.stop(timeout_s=30.0)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(daemon.proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def ray_daemon(root: Path, pool: str, workers: int = 2, **env: str) -> Iterator[DaemonProcess]:
    """A broker with the tagged test tools on a Ray pool, stopped afterwards."""
    root.mkdir(parents=True, exist_ok=True)
    daemon = start_daemon(
        root,
        workers=workers,
        env={**ray_env(ray_home(root)), **env},
        args=[*SERVER_ARGS, "--pool", pool],
    )
    try:
        yield daemon
    finally:
        _stop(daemon)


@pytest.fixture(scope="module")
def private_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One broker on its own private Ray cluster, shared by the tests that do not break it."""
    root = tmp_path_factory.mktemp("ray-private")
    with ray_daemon(root, "ray", EXAI_WS_CALL_TIMEOUT=str(CALL_TIMEOUT_S)) as daemon:
        yield daemon


@contextlib.asynccontextmanager
async def ws_client(daemon: DaemonProcess) -> AsyncIterator[McpWsClient]:
    async with mcp_ws_clients(daemon, 1) as clients:
        yield clients[0]


async def _pid_of(client: McpWsClient, continuation: str) -> int:
    """The pid of the tool host a conversation is pinned to."""
    response = await client.call("version", {"continuation_id": continuation})
    return int(json.loads(rpc_text(response))["worker_pid"])


# --- the foundation, through Ray ------------------------------------------------------


async def test_sdk_clients_through_shims_on_a_ray_pool(private_pool: DaemonProcess) -> None:
    """Two real SDK clients through real shims: tools, overlapping calls (up to the
    session cap) and progress behave exactly as with the local pool."""
    env = private_pool.shim_env()
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async with mcp_client(env) as first, mcp_client(env) as second:
        names = {tool.name for tool in (await first.list_tools()).tools}
        assert {"echo", "sleep", "kimi_wait", "version"} <= names
        calls = [
            session.call_tool("echo", {"text": f"{n}-{i}"})
            for n, session in enumerate((first, second))
            for i in range(8)
        ]
        results = await asyncio.wait_for(asyncio.gather(*calls), scaled(STEP_S))
        assert [r.content[0].text for r in results] == [
            f"{n}-{i}" for n in range(2) for i in range(8)
        ]
        slept = await first.call_tool(
            "sleep", {"seconds": 0.3, "steps": 3}, progress_callback=on_progress
        )
        assert slept.content[0].text == "slept 0.3"
        assert progress == [1, 2, 3]

    health = private_pool.health()
    assert health["pool"] == "ray"
    assert [w["state"] for w in health["workers"]] == ["ready"]


async def test_conversations_stick_to_one_tool_host(private_pool: DaemonProcess) -> None:
    """A continuation_id always reaches the same actor; calls spread over both hosts."""
    async with ws_client(private_pool) as client:
        pinned = {key: await _pid_of(client, key) for key in ("a", "b", "c", "d")}
        for key, pid in pinned.items():
            assert await _pid_of(client, key) == pid
    assert len(set(pinned.values())) == 2, pinned


# --- cancellation and timeouts stop the remote coroutine --------------------------------


@pytest.mark.parametrize("progress", [False, True], ids=["plain", "streaming-progress"])
async def test_client_cancel_stops_the_remote_call(
    private_pool: DaemonProcess, tmp_path: Path, progress: bool
) -> None:
    """Both ways a call runs on an actor (one round trip, or a stream when the client
    asked for progress) stop remotely when the client cancels."""
    marker = Files(tmp_path).path("cancelled")
    params: dict[str, Any] = {
        "name": "plain_wait",
        "arguments": {"seconds": 3 * CALL_TIMEOUT_S, "marker": str(marker)},
    }
    if progress:
        params["_meta"] = {"progressToken": "p"}
    async with ws_client(private_pool) as client:
        request_id, answer = await client.send_request("tools/call", params)
        await marker_until(marker, "started")
        await client.cancel(request_id)
        # The tool's own coroutine, in the actor, saw the cancellation.
        await marker_until(marker, "cancelled")
        await health_until(private_pool, lambda h: h["inflight"]["global"] == 0, "capacity back")
        assert not answer.done(), "a cancelled MCP request gets no response"
        assert rpc_text(await client.call("echo", {"text": "after"})) == "after"


async def test_timeout_stops_the_remote_call(private_pool: DaemonProcess, tmp_path: Path) -> None:
    marker = Files(tmp_path).path("timed-out")
    async with ws_client(private_pool) as client:
        response = await client.call(
            "plain_wait", {"seconds": 3 * CALL_TIMEOUT_S, "marker": str(marker)}
        )
        assert rpc_error(response)["code"] == TIMEOUT
        await marker_until(marker, "cancelled")


# --- failures ----------------------------------------------------------------------------


async def test_killed_actor_is_worker_lost_then_the_pool_heals(
    private_pool: DaemonProcess, tmp_path: Path
) -> None:
    marker = Files(tmp_path).path("victim")
    async with ws_client(private_pool) as client:
        victim = await _pid_of(client, "victim")
        _, answer = await client.start_call(
            "plain_wait",
            {"seconds": 3 * CALL_TIMEOUT_S, "marker": str(marker), "continuation_id": "victim"},
        )
        await marker_until(marker, "started")
        os.kill(victim, signal.SIGKILL)
        error = rpc_error(await asyncio.wait_for(answer, scaled(STEP_S)))
        assert error["code"] == WORKER_LOST
        assert error["data"]["code"] == "WORKER_LOST"
        # The other host answers at once; the session never noticed anything else.
        for i in range(5):
            assert rpc_text(await client.call("echo", {"text": str(i)})) == str(i)

        rounds = itertools.count()

        async def two_hosts_again() -> bool:
            # Fresh conversations each round: ones placed while the host was still down
            # stay (rightly) pinned to the other host.
            n = next(rounds)
            pids = {await _pid_of(client, f"after-{n}-{i}") for i in range(6)}
            return len(pids) == 2 and victim not in pids

        await async_wait_for(two_hosts_again, STEP_S, "Ray to restart the killed actor")
    assert private_pool.proc.poll() is None


async def test_killed_bridge_is_restarted_without_restarting_the_broker(tmp_path: Path) -> None:
    with ray_daemon(tmp_path / "bridge", "ray", workers=1) as daemon:
        before = await health_until(
            daemon, lambda h: h["workers"][0]["state"] == "ready", "the bridge"
        )
        bridge = before["workers"][0]["pid"]
        os.kill(bridge, signal.SIGKILL)
        after = await health_until(
            daemon,
            lambda h: h["workers"][0]["restarts"] == 1 and h["workers"][0]["state"] == "ready",
            "a new bridge",
            timeout_s=60.0,
        )
        assert after["workers"][0]["pid"] != bridge
        # The dead bridge's private cluster went with it (its process group).
        await async_wait_for(lambda: not group_pids(bridge), 30.0, "the old cluster to go")
        async with ws_client(daemon) as client:
            assert rpc_text(await client.call("echo", {"text": "again"})) == "again"
        assert daemon.proc.poll() is None


@pytest.mark.timeout(300)
async def test_dead_node_costs_its_calls_then_calls_succeed_on_the_rest(tmp_path: Path) -> None:
    with (
        started_cluster(tmp_path, extra_nodes=1) as (address, nodes),
        ray_daemon(tmp_path / "broker", f"ray:{address}", workers=2) as daemon,
    ):
        head, second = nodes
        marker = Files(tmp_path).path("on-second-node")
        async with ws_client(daemon) as client:
            pinned = {f"k{i}": await _pid_of(client, f"k{i}") for i in range(6)}
            on_second = [k for k, pid in pinned.items() if pid in second.pids()]
            on_head = [k for k, pid in pinned.items() if pid in head.pids()]
            assert on_second and on_head, f"tool hosts not spread over both nodes: {pinned}"
            _, answer = await client.start_call(
                "plain_wait",
                {"seconds": 120, "marker": str(marker), "continuation_id": on_second[0]},
            )
            await marker_until(marker, "started")
            second.kill()
            error = rpc_error(await asyncio.wait_for(answer, scaled(60)))
            assert error["code"] == WORKER_LOST, error
            for i in range(5):
                assert rpc_text(await client.call("echo", {"text": str(i)})) == str(i)
            survivors = {await _pid_of(client, f"after-{i}") for i in range(4)}
            assert survivors and all(pid in head.pids() for pid in survivors)
        assert daemon.proc.poll() is None


def test_unreachable_cluster_stops_the_broker_saying_where(tmp_path: Path) -> None:
    port = free_port()
    daemon = start_daemon(tmp_path, args=["--pool", f"ray:127.0.0.1:{port}"], wait_ready=False)
    try:
        assert daemon.proc.wait(scaled(60)) != 0
    finally:
        _stop(daemon)
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in daemon.stderr()


# --- provider caps shared across brokers -------------------------------------------------


@pytest.mark.timeout(300)
async def test_two_brokers_share_one_provider_cap(tmp_path: Path) -> None:
    caps = {"EXAI_WS_KIMI_MAX_INFLIGHT": "1", "EXAI_RAY_LEASE_TTL": "3"}
    files = Files(tmp_path)
    with (
        started_cluster(tmp_path) as (address, _),
        ray_daemon(tmp_path / "a", f"ray:{address}", workers=1, **caps) as first,
        ray_daemon(tmp_path / "b", f"ray:{address}", workers=1, **caps) as second,
    ):
        async with ws_client(first) as a, ws_client(second) as b:
            release, marker = files.release("a"), files.path("a")
            _, held = await a.start_call(
                "kimi_wait", {"seconds": 120, "release": str(release), "marker": str(marker)}
            )
            await marker_until(marker, "started")
            refused = rpc_error(await b.call("kimi_wait", {"seconds": 0}))
            assert refused["code"] == OVER_CAPACITY
            assert refused["data"]["provider"] == "kimi"
            assert refused["data"]["scope"] == "provider"
            assert "cluster-wide" in refused["message"]
            Files.let_go(release)
            assert "kimi_wait done" in rpc_text(await asyncio.wait_for(held, scaled(STEP_S)))
            assert "kimi_wait done" in rpc_text(await b.call("kimi_wait", {"seconds": 0}))

            # A broker that dies holding a slot loses it after the lease TTL.
            marker = files.path("dies")
            _, orphaned = await a.start_call("kimi_wait", {"seconds": 120, "marker": str(marker)})
            await marker_until(marker, "started")
            os.kill(first.health()["workers"][0]["pid"], signal.SIGKILL)
            os.killpg(first.proc.pid, signal.SIGKILL)

            async def slot_free() -> bool:
                response = await b.call("kimi_wait", {"seconds": 0})
                return "result" in response

            await async_wait_for(slot_free, STEP_S, "the dead broker's lease to expire")
            orphaned.cancel()


# --- a servers file on the Ray pool -------------------------------------------------


def _counter_config(path: Path) -> Path:
    entry = {
        "command": sys.executable,
        "args": ["-m", "tests.fixtures.counter_server"],
        "cwd": str(ROOT),
    }
    path.write_text(json.dumps({"mcpServers": {"counter": entry}}))
    return path


async def test_a_servers_file_runs_its_servers_as_ray_actors(tmp_path: Path) -> None:
    """`--pool ray --config F`: the file's stdio server runs in a ServerProcess actor,
    and one client sees and calls it beside the pool's own tools. Killed mid-call, the
    call gets WORKER_LOST and the server comes back in a new actor, counting from 1."""
    config = _counter_config(tmp_path / "servers.json")
    root = tmp_path / "broker"
    root.mkdir()
    daemon = start_daemon(
        root,
        workers=1,
        env=ray_env(ray_home(root)),
        args=[*SERVER_ARGS, "--pool", "ray", "--config", str(config)],
    )
    try:
        health = await health_until(
            daemon,
            lambda h: (e := server_entry(h, "counter")) is not None and e["state"] == "ready",
            "the counter ready",
            timeout_s=scaled(STEP_S),
        )
        (victim,) = instance_pids(health, "counter")
        counter = server_entry(health, "counter")
        assert counter is not None and counter["instances"][0].get("node"), counter
        actor = parent_pid(victim)
        assert actor is not None and actor != daemon.proc.pid
        assert " ".join(cmdline(actor)).startswith("ray::ServerProcess"), cmdline(actor)
        running = asyncio.Event()

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            running.set()

        async with mcp_client(daemon.shim_env()) as session:
            names = {t.name for t in (await session.list_tools()).tools}
            counted = await session.call_tool("counter__increment", {})
            version = await session.call_tool("version", {})
            pid = await session.call_tool("counter__pid", {})
            slow = asyncio.create_task(
                session.call_tool("counter__slow", {"seconds": 60}, progress_callback=on_progress)
            )
            async with asyncio.timeout(scaled(STEP_S)):
                await running.wait()
            os.kill(victim, signal.SIGKILL)
            async with asyncio.timeout(scaled(15)):
                lost = await rpc_failure(slow)
            restarted = await health_until(
                daemon,
                lambda h: (
                    (e := server_entry(h, "counter")) is not None
                    and e["state"] == "ready"
                    and e["restarts"] >= 1
                ),
                "the counter's restart",
                timeout_s=scaled(STEP_S),
            )
            after = await session.call_tool("counter__increment", {})
        assert {"counter__increment", "version"} <= names
        assert sdk_text(counted) == "1" and not version.is_error
        assert int(sdk_text(pid)) == victim
        assert isinstance(lost.data, dict) and lost.data["code"] == "WORKER_LOST", lost
        (new_pid,) = instance_pids(restarted, "counter")
        new_actor = parent_pid(new_pid)
        assert new_pid != victim and new_actor is not None
        assert " ".join(cmdline(new_actor)).startswith("ray::ServerProcess")
        assert sdk_text(after) == "1", "a new instance counts from 1"
    finally:
        _stop(daemon)
