"""A short run of `python -m benchmarks.fleet --quick`, so the benchmark keeps working as
the code changes. It checks that every section ran and that its figures make sense,
never how fast or how small anything was."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, base_env, scaled

pytestmark = pytest.mark.slow

FOOTPRINT_SERVERS = 4


def _run_quick(out: Path) -> tuple[dict[str, Any], str]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.fleet", "--quick", "--out", str(out)],
        cwd=ROOT,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=scaled(240),
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def _check_footprint(section: dict[str, Any]) -> None:
    clients = section["clients"]
    status_quo, daemon = section["status_quo"], section["daemon"]
    assert len(section["servers"]) == FOOTPRINT_SERVERS
    # Every client started its own copy of every server; the daemon hosts one of each,
    # next to itself, its worker and one shim per client.
    assert status_quo["processes"] >= FOOTPRINT_SERVERS * clients
    assert daemon["processes"] >= FOOTPRINT_SERVERS + 2 + clients
    roles = [p["role"] for p in daemon["by_process"]]
    assert roles.count("daemon") >= FOOTPRINT_SERVERS + 2
    for side in (status_quo, daemon):
        assert side["rss_bytes"] > 0
        assert side["pss_bytes"] is None or 0 < side["pss_bytes"] <= side["rss_bytes"]
        assert all(p["rss_bytes"] for p in side["by_process"])
        assert len(side["tools_listed_per_client"]) == clients
    comparison = section["comparison"]
    assert comparison["processes_ratio"] > 0 and comparison["rss_ratio"] > 0
    assert isinstance(comparison["processes_pass"], bool)
    # Clients on /mcp start no shim: the daemon's tree is the whole side.
    over_http = section["daemon_http"]
    assert over_http["processes"] >= FOOTPRINT_SERVERS + 2
    assert {p["role"] for p in over_http["by_process"]} == {"daemon"}
    assert len(over_http["tools_listed_per_client"]) == clients
    assert over_http["processes"] < daemon["processes"]
    assert section["comparison_http"]["rss_ratio"] > 0


def _check_listing(section: dict[str, Any], requests: int) -> None:
    hung = section["hung"]
    assert len(section["requests"]) == requests
    # The hung server never came up, so none of its tools were ever listed.
    assert section["states_at_end"][hung] != "ready"
    assert section["hung_tools_listed"] == 0
    for row in section["requests"]:
        assert row["latency_ms"] > 0
        assert row["tools_by_server"]["builtin"] > 0
    latency = section["latency_ms"]
    assert 0 < latency["min"] <= latency["p50"] <= latency["max"]
    assert isinstance(section["pass"], bool)


def _check_router(section: dict[str, Any], clients: list[int]) -> None:
    assert section["tools"]["prefixed"] == f"{section['server']}__{section['tools']['single']}"
    rows = section["rows"]
    assert {(r["mode"], r["clients"]) for r in rows} == {
        (m, c) for m in ("single", "prefixed") for c in clients
    }
    for row in rows:
        # Every call answered with the hosted instance's own pid: the right server.
        assert row["ok"] > 0 and row["error_count"] == 0, row
        assert row["clients_opened"] == row["clients"], row
        assert row["idle_after"], row
    for entry in section["summary"]:
        assert entry["ratio_median"] > 0
        assert isinstance(entry["pass"], bool)


def test_quick_run_measures_every_section(tmp_path: Path) -> None:
    document, stdout = _run_quick(tmp_path / "fleet.json")
    quick = document["config"]
    _check_footprint(document["footprint"])
    _check_listing(document["listing"], quick["listings"])
    _check_router(document["router"], quick["clients"])
    for heading in ("Processes and memory", "tools/list", "Prefix routing"):
        assert heading in stdout
