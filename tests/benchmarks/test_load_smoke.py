"""A short run of every part of `python -m benchmarks.load`, so the benchmark keeps
working as the code changes. It checks that every cell ran and answered correctly,
never how fast: timings belong to the benchmark itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, base_env, scaled

pytestmark = pytest.mark.slow

MODES = ["raw-ws", "ws-op", "ws-mcp", "sdk-stdio", "shim"]


def test_every_mode_scenario_and_probe_runs_without_errors(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.load",
            "--quick",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--clients",
            "2",
            "--modes",
            ",".join(MODES),
            "--scenario",
            "echo100,sleep50",
            "--workers-list",
            "1,2",
            "--startup",
            "2",
            "--idle-sessions",
            "20",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=scaled(300),
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads(out.read_text())
    rows = document["rows"]
    assert {row["mode"] for row in rows} == set(MODES)
    for row in rows:
        assert row["error_count"] == 0, row
        assert row["calls_per_s"] > 0, row
    # Daemon modes ran once per worker count; the baselines once.
    assert sorted(r["workers"] for r in rows if r["mode"] == "ws-mcp") == [1, 1, 2, 2]
    assert all(r.get("ratio_sdk_stdio") for r in rows if r["mode"] == "ws-mcp")
    # CPU per call and memory of the daemon and its workers, for every daemon cell.
    for row in rows:
        if row["mode"] in ("ws-op", "ws-mcp", "shim"):
            # Measured, though it may round to 0 at /proc's 10 ms tick for an idle worker.
            cpu = row["cpu"]
            assert cpu["daemon_us_per_call"] is not None, row
            assert cpu["workers_us_per_call"] is not None, row
            assert row["rss"]["server"] and row["rss"]["workers"], row
    assert [item["failures"] for item in document["startup"]] == [0, 0]
    assert document["idle_sessions"]["opened"] == 20
    assert document["idle_sessions"]["after"]["sessions"] == 20
    assert document["scaling"]
    # The table a person reads is printed too.
    assert "calls/s" in done.stdout and "ws-mcp" in done.stdout
