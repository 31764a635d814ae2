"""The daemon's owned lifecycle: parts start in their declared order and stop in
reverse; a part that fails to start stops the ones already started.

Fake parts for the mechanism; the real Daemon in-process (no daemon process) for its
declared order and for a worker pool that cannot start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from broker.daemon import Daemon, serve
from broker.lifecycle import Lifecycle, Part
from broker.web.listener import bind_socket
from exai.exits import ExitCode
from exai.settings import load_settings
from tests.conftest import base_env


class Boom(RuntimeError):
    pass


def fake_part(
    name: str, events: list[str], *, fail_start: bool = False, fail_stop: bool = False
) -> Part:
    """A part that writes "start NAME" / "stop NAME" into `events`."""

    @contextlib.asynccontextmanager
    async def run() -> AsyncIterator[None]:
        await asyncio.sleep(0)
        if fail_start:
            events.append(f"failed {name}")
            raise Boom(name)
        events.append(f"start {name}")
        try:
            yield
        finally:
            await asyncio.sleep(0)
            events.append(f"stop {name}")
            if fail_stop:
                raise Boom(name)

    return Part(name, run)


async def test_parts_start_in_the_declared_order_and_stop_in_reverse() -> None:
    events: list[str] = []
    parts = [fake_part(name, events) for name in ("files", "pool", "listener")]
    async with Lifecycle(parts) as lifecycle:
        assert lifecycle.complete
        assert events == ["start files", "start pool", "start listener"]
        events.append("serving")
    assert events == [
        "start files",
        "start pool",
        "start listener",
        "serving",
        "stop listener",
        "stop pool",
        "stop files",
    ]


async def test_a_part_that_fails_to_start_stops_the_ones_already_started() -> None:
    """The pool fails: the files part, started before it, is stopped; the listener after
    it never starts; the pool's error reaches the caller and the body never runs."""
    events: list[str] = []
    parts = [
        fake_part("files", events),
        fake_part("web", events),
        fake_part("pool", events, fail_start=True),
        fake_part("listener", events),
    ]
    with pytest.raises(Boom, match="pool"):
        async with Lifecycle(parts):
            events.append("serving")
    assert events == ["start files", "start web", "failed pool", "stop web", "stop files"]


async def test_a_stop_that_fails_does_not_keep_the_others_running() -> None:
    events: list[str] = []
    parts = [fake_part("files", events), fake_part("pool", events, fail_stop=True)]
    with pytest.raises(Boom, match="pool"):
        async with Lifecycle(parts):
            pass
    assert events == ["start files", "start pool", "stop pool", "stop files"]


async def test_a_stop_requested_while_starting_starts_nothing_more() -> None:
    """A signal during start-up: the parts not started yet stay so, those started stop."""
    events: list[str] = []
    stop = asyncio.Event()

    @contextlib.asynccontextmanager
    async def signal_arrives() -> AsyncIterator[None]:
        stop.set()
        events.append("start signals")
        yield
        events.append("stop signals")

    parts = [Part("signals", signal_arrives), fake_part("pool", events)]
    async with Lifecycle(parts, stop=stop) as lifecycle:
        assert not lifecycle.complete
        assert lifecycle.started == ["signals"]
    assert events == ["start signals", "stop signals"]


# --- the daemon's own parts ----------------------------------------------------------


@contextlib.asynccontextmanager
async def built_daemon(tmp_path: Path, **environ: str) -> AsyncIterator[Daemon]:
    settings = load_settings({"EXAI_WS_PORT": "0", "EXAI_LOG_DIR": str(tmp_path), **environ})
    with bind_socket(settings.host, settings.port) as sock:
        yield Daemon(settings, base_env(), sock)


async def test_the_daemon_declares_its_shutdown_order(tmp_path: Path) -> None:
    """Stopping runs the parts backwards, so what a user relies on at shutdown follows
    from the declared order: calls drain while the port is still held, clients hear
    about failed calls before the 1001 close, the workers stop after the clients are
    told, the final health snapshot comes after the metrics are flushed, and signals
    stay handled until the very end (a second Ctrl+C changes nothing)."""
    async with built_daemon(tmp_path) as daemon:
        names = [part.name for part in daemon.parts()]
    stops = list(reversed(names))

    def before(first: str, then: str) -> bool:
        return stops.index(first) < stops.index(then)

    assert stops[0] == "accepting" and stops[-1] == "signals"
    assert before("accepting", "listener")
    assert before("listener", "calls")
    assert before("calls", "clients")
    assert before("clients", "worker pool")
    assert before("worker pool", "metrics writer")
    assert before("metrics writer", "health file")
    assert len(set(names)) == len(names)


async def test_the_daemon_is_built_whole_before_anything_starts(tmp_path: Path) -> None:
    """Before `run`, the snapshot is already complete: the real port, not ready, no
    workers running, nothing dropped."""
    async with built_daemon(tmp_path) as daemon:
        snapshot = daemon.snapshot()
    assert snapshot["port"] == daemon.port != 0
    assert snapshot["ready"] is False and snapshot["draining"] is False
    assert [w["pid"] for w in snapshot["workers"]] == [None] * len(snapshot["workers"])
    assert snapshot["frames_dropped"] == 0
    assert snapshot["health_file_failures"] == 0


async def test_a_pool_that_cannot_start_exits_pool_failed_and_frees_everything(
    tmp_path: Path,
) -> None:
    """Workers that cannot load their tool server: the daemon returns POOL_FAILED
    without ever being ready, its port is free again at once, and the health file
    holds its final snapshot (not ready)."""
    port_probe = socket.socket()
    port_probe.bind(("127.0.0.1", 0))
    port = port_probe.getsockname()[1]
    port_probe.close()
    settings = load_settings(
        {
            "EXAI_WS_PORT": str(port),
            "EXAI_LOG_DIR": str(tmp_path),
            "EXAI_WORKERS": "1",
            "EXAI_SERVER": "no_such_tool_server_module",
        }
    )
    code = await asyncio.wait_for(serve(settings, base_env()), 60)
    assert code == ExitCode.POOL_FAILED
    bind_socket("127.0.0.1", port).close()
    final = json.loads((tmp_path / "ws_daemon.health.json").read_text())
    assert final["ready"] is False and final["port"] == port


async def test_a_taken_port_starts_nothing(tmp_path: Path) -> None:
    """Another daemon holds the port: BIND_FAILED, and not even a health file is written
    (it would overwrite the running daemon's)."""
    with bind_socket("127.0.0.1", 0) as taken:
        port = taken.getsockname()[1]
        settings = load_settings({"EXAI_WS_PORT": str(port), "EXAI_LOG_DIR": str(tmp_path)})
        assert await serve(settings, base_env()) == ExitCode.BIND_FAILED
    assert not (tmp_path / "ws_daemon.health.json").exists()
