"""Reliability: the files the daemon writes — a health file that is always whole JSON,
metrics that rotate within bounds, and a metrics file that cannot be written."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.conftest import DaemonFactory, async_wait_for, free_port
from tests.e2e.reliability_support import rpc_text
from tests.support.health import health_until
from tests.support.mcp_ws import mcp_ws_clients

METRICS = "ws_daemon.metrics.jsonl"


def test_health_file_is_always_complete_json_while_rewritten_fast(
    daemon_factory: DaemonFactory,
) -> None:
    """Read the health file in a tight loop for ~2 s while it is replaced every 50 ms."""
    daemon = daemon_factory(workers=1, env={"EXAI_HEALTH_INTERVAL": "0.05"})
    reads = 0
    stamps: set[float] = set()
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        text = daemon.health_path.read_text()
        try:
            snapshot = json.loads(text)
        except ValueError as exc:
            raise AssertionError(f"read {reads + 1} saw a partial health file: {text!r}") from exc
        assert snapshot["pid"] == daemon.proc.pid
        stamps.add(snapshot["t"])
        reads += 1
    assert reads >= 100
    assert len(stamps) >= 10, "the health file was not rewritten while being read"
    # No temp files are left next to it.
    leftovers = [p.name for p in daemon.log_dir.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) <= 1, leftovers


async def test_metrics_rotate_within_bounds(
    daemon_factory: DaemonFactory,
) -> None:
    """~200 calls with a 4 KiB limit and 2 backups: .1 and .2 exist, no .3, all lines parse."""
    limit = 4096
    daemon = daemon_factory(
        workers=2,
        env={"EXAI_METRICS_MAX_BYTES": str(limit), "EXAI_METRICS_BACKUPS": "2"},
    )
    async with mcp_ws_clients(daemon, 1) as (client,):
        for i in range(200):
            assert rpc_text(await client.call("echo", {"text": f"m{i}"})) == f"m{i}"
    await health_until(daemon, lambda h: h["metrics_written"] >= 200, "200 metrics lines written")
    files = [daemon.log_dir / name for name in (METRICS, f"{METRICS}.1", f"{METRICS}.2")]
    assert all(f.is_file() for f in files), sorted(p.name for p in daemon.log_dir.iterdir())
    assert not (daemon.log_dir / f"{METRICS}.3").exists()
    kept = 0
    for path in files:
        data = path.read_bytes()
        assert 0 < len(data) < 2 * limit, f"{path.name} is {len(data)} bytes"
        assert data.endswith(b"\n"), f"{path.name} ends with a partial line"
        for line in data.decode().splitlines():
            record = json.loads(line)
            assert record["tool"] == "echo" and record["outcome"] == "ok"
            kept += 1
    # The three files hold the newest lines, a consistent slice of the 200.
    assert 0 < kept <= 200


async def test_unwritable_metrics_file_does_not_break_calls(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """The metrics path is a directory: calls succeed, the daemon stays up, it logs why."""
    log_dir = tmp_path / "blocked-logs"
    (log_dir / METRICS).mkdir(parents=True)
    daemon = daemon_factory(
        workers=1, port=free_port(), args=["--log-dir", str(log_dir)], wait_ready=False
    )
    daemon.log_dir = log_dir  # the last --log-dir wins
    daemon.wait_ready()
    async with mcp_ws_clients(daemon, 1) as (client,):
        for i in range(20):
            assert rpc_text(await client.call("echo", {"text": f"x{i}"})) == f"x{i}"
    await async_wait_for(
        lambda: "cannot write" in daemon.stderr() and METRICS in daemon.stderr(),
        15,
        "the metrics failure to be logged",
    )
    assert daemon.proc.poll() is None
    health = await health_until(daemon, lambda h: h["calls_total"] == 20, "20 calls counted")
    assert health["metrics_written"] == 0
    assert (log_dir / METRICS).is_dir()
    assert daemon.stop() == 0
