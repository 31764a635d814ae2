"""Per hosted server figures: the latency window, how they reach the snapshot, the
Prometheus series, `python -m broker status` and `python -m broker report --by server`.

All in-process and synchronous; no daemon is started.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker.admin.commands import format_status
from broker.admin.report import format_summary, report_main, summarize
from broker.observe.by_server import NO_CALLS, WINDOW_CALLS, WINDOW_S, ServerLatencies
from broker.observe.prometheus import PrometheusMetrics
from broker.observe.snapshot import _servers
from exai.exits import ExitCode

# --- the latency window ------------------------------------------------------------------


def test_figures_count_calls_and_errors_with_nearest_rank_percentiles() -> None:
    """Calls and errors per server; p50/p99 of its latencies; other servers apart."""
    stats = ServerLatencies()
    for n in range(100):
        stats.add("git", 1000.0, float(n + 1), ok=n % 10 != 0)
    stats.add("web", 1000.0, 7.0, ok=True)
    shown = stats.snapshot(1001.0)
    assert shown["git"] == {"calls": 100, "errors": 10, "p50_ms": 50.0, "p99_ms": 99.0}
    assert shown["web"] == {"calls": 1, "errors": 0, "p50_ms": 7.0, "p99_ms": 7.0}
    assert ServerLatencies().snapshot(0.0) == {}


def test_the_window_keeps_only_the_last_calls() -> None:
    """Past WINDOW_CALLS calls the oldest latencies are forgotten; the counts are not."""
    stats = ServerLatencies()
    for _ in range(WINDOW_CALLS):
        stats.add("git", 10.0, 1000.0, ok=True)
    for _ in range(WINDOW_CALLS):
        stats.add("git", 10.0, 2.0, ok=True)
    assert stats.snapshot(11.0)["git"] == {
        "calls": 2 * WINDOW_CALLS,
        "errors": 0,
        "p50_ms": 2.0,
        "p99_ms": 2.0,
    }


def test_a_server_gone_quiet_shows_no_latency_but_keeps_its_counts() -> None:
    """Calls older than WINDOW_S do not make the percentiles: none in the window is None,
    not 0 ms."""
    stats = ServerLatencies()
    stats.add("git", 100.0, 500.0, ok=False)
    stats.add("git", 100.0 + WINDOW_S, 3.0, ok=True)
    assert stats.snapshot(100.0 + WINDOW_S)["git"]["p99_ms"] == 500.0
    assert stats.snapshot(100.5 + WINDOW_S)["git"] == {
        "calls": 2,
        "errors": 1,
        "p50_ms": 3.0,
        "p99_ms": 3.0,
    }
    assert stats.snapshot(200.0 + 2 * WINDOW_S)["git"] == {**NO_CALLS, "calls": 2, "errors": 1}


class FakeHosting:
    """A single hosted server's snapshot, as Hosting.snapshot gives it."""

    def snapshot(self) -> dict[str, Any]:
        return {"name": "git", "state": "ready", "restarts": 0, "instances": []}


def test_the_snapshot_merges_figures_into_each_servers_entry() -> None:
    """Each entry of "servers" gets its server's calls, errors and p50/p99; a server with
    no call yet gets zeros and no latency."""
    stats = ServerLatencies()
    stats.add("git", 10.0, 4.0, ok=True)
    [entry] = _servers(FakeHosting(), stats.snapshot(11.0))  # type: ignore[arg-type]
    assert entry == {
        "name": "git",
        "state": "ready",
        "restarts": 0,
        "instances": [],
        "calls": 1,
        "errors": 0,
        "p50_ms": 4.0,
        "p99_ms": 4.0,
    }
    [idle] = _servers(FakeHosting(), {})  # type: ignore[arg-type]
    assert idle["calls"] == 0 and idle["p50_ms"] is None
    assert _servers(None, {}) == []


# --- Prometheus --------------------------------------------------------------------------


def scrape_state(servers: list[dict[str, Any]]) -> dict[str, Any]:
    """The parts of a health snapshot the scrape-time gauges read."""
    return {
        "inflight": {"global": 0, "providers": {}},
        "capacity": {"global": 8, "session": 4, "providers": {}},
        "queued": 0,
        "sessions": 0,
        "sessions_detached": 0,
        "workers": [],
        "servers": servers,
        "metrics_dropped": 0,
        "bad_frames": 0,
        "frames_dropped": 0,
    }


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def test_prometheus_labels_calls_by_server_and_shows_each_servers_state() -> None:
    """exai_calls_total has a server label ("none" for the daemon's own tools);
    exai_server_up is 1 for a ready server only; exai_server_restarts per server."""
    servers = [
        {"name": "git", "state": "ready", "restarts": 0},
        {"name": "web", "state": "failed", "restarts": 3},
    ]
    metrics = PrometheusMetrics(lambda: scrape_state(servers))
    metrics.observe("git__log", None, "ok", 2.0, 0.0, "git")
    metrics.observe("git__log", None, "ok", 3.0, 0.0, "git")
    metrics.observe("version", None, "ok", 1.0, 0.0, None)
    text = metrics.render().decode()
    calls = samples(text, "exai_calls_total")
    common = (("outcome", "ok"), ("provider", "none"))
    assert calls == {
        (*common, ("server", "git"), ("tool", "git__log")): 2.0,
        (*common, ("server", "none"), ("tool", "version")): 1.0,
    }
    assert samples(text, "exai_server_up") == {(("server", "git"),): 1.0, (("server", "web"),): 0.0}
    assert samples(text, "exai_server_restarts_total") == {
        (("server", "git"),): 0.0,
        (("server", "web"),): 3.0,
    }
    assert samples(text, "exai_servers") == {
        (("state", "failed"),): 1.0,
        (("state", "ready"),): 1.0,
    }


# --- python -m broker status -------------------------------------------------------------


def status_snapshot(**overrides: Any) -> dict[str, Any]:
    """A live daemon's health: two ready workers, no servers unless told."""
    snapshot: dict[str, Any] = {
        "t": time.time(),
        "pid": 4242,
        "version": "1.0",
        "host": "127.0.0.1",
        "port": 8765,
        "uptime_s": 12.0,
        "draining": False,
        "sessions": 1,
        "sessions_detached": 0,
        "inflight": {"global": 0, "providers": {}},
        "capacity": {"global": 8, "session": 4, "providers": {}},
        "queued": 0,
        "workers": [
            {"slot": 0, "pid": 11, "state": "ready", "inflight": 0, "restarts": 0},
            {"slot": 1, "pid": 12, "state": "ready", "inflight": 0, "restarts": 0},
        ],
        "servers": [],
        "servers_file": None,
        "calls_total": 0,
    }
    snapshot.update(overrides)
    return snapshot


def hosted(name: str, state: str, **overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name,
        "state": state,
        "isolation": "shared",
        "restarts": 0,
        "failure": None,
        "undelivered": 0,
        "instances": [],
        "prefix": name,
        "calls": 0,
        "errors": 0,
        "p50_ms": None,
        "p99_ms": None,
    }
    entry.update(overrides)
    return entry


def test_status_lists_each_server_and_a_failed_ones_failure_but_stays_up() -> None:
    """One line per hosted server after the daemon's lines; a failed server's failure
    text (its stderr tail) follows, indented. Every server failed, workers up: UP, 0."""
    servers = [
        hosted(
            "git",
            "ready",
            instances=[
                {"pid": 21, "in_flight": 2, "owner": None},
                {"pid": 22, "in_flight": 1, "owner": "s1"},
            ],
            restarts=1,
            p50_ms=1.5,
            p99_ms=40.0,
        ),
        hosted(
            "web",
            "failed",
            prefix="",
            restarts=5,
            failure="exited with code 1 before it was ready\nstderr:\nImportError: no x",
        ),
    ]
    text, code = format_status(
        status_snapshot(servers=servers, servers_file="/etc/exai/servers.json"), "live"
    )
    assert code == ExitCode.OK
    lines = text.splitlines()
    assert lines[0].startswith("UP: ")
    start = next(i for i, line in enumerate(lines) if line.startswith("server "))
    assert lines[start:] == [
        "server git ready prefix git, instances 2, in flight 3, restarts 1, "
        "p50 1.5 ms, p99 40.0 ms",
        "server web failed prefix (none), instances 0, in flight 0, restarts 5, p50 - ms, p99 - ms",
        "    exited with code 1 before it was ready",
        "    stderr:",
        "    ImportError: no x",
        "servers file: /etc/exai/servers.json",
    ]
    only_failed = status_snapshot(servers=[servers[1]])
    assert format_status(only_failed, "live")[1] == ExitCode.OK


def test_status_without_a_servers_file_names_the_default_location(tmp_path: Path) -> None:
    """No servers file: the line says so and where one would be looked for."""
    environ = {"XDG_CONFIG_HOME": str(tmp_path), "HOME": str(tmp_path)}
    text, code = format_status(status_snapshot(), "live", environ)
    assert code == ExitCode.OK
    assert not any(line.startswith("server ") for line in text.splitlines())
    default = tmp_path / "exai-broker" / "servers.json"
    assert text.splitlines()[-1] == f"servers file: none (default location: {default})"


def test_status_is_down_without_ready_workers_whatever_the_servers() -> None:
    """Ready servers do not make a daemon without ready workers healthy."""
    workers = [{"slot": 0, "pid": 11, "state": "starting", "inflight": 0, "restarts": 0}]
    snapshot = status_snapshot(workers=workers, servers=[hosted("git", "ready")])
    assert format_status(snapshot, "live")[1] == ExitCode.FAILED


# --- python -m broker report --by server -------------------------------------------------


def metrics_line(t: float, tool: str, server: str | None, latency_ms: float, outcome: str) -> str:
    line: dict[str, Any] = {
        "t": t,
        "session": "s" * 32,
        "tool": tool,
        "provider": None,
        "model": None,
        "outcome": outcome,
        "latency_ms": latency_ms,
        "queue_ms": 0.0,
        "worker": None,
        "bytes_in": 10,
        "bytes_out": 20,
    }
    if server is not None:
        line["server"] = server
    return json.dumps(line) + "\n"


@pytest.fixture
def metrics_file(tmp_path: Path) -> Path:
    """Three git calls (one failed), one web call, two of the daemon's own calls (one
    written before the server field existed, one with it null)."""
    path = tmp_path / "ws_daemon.metrics.jsonl"
    path.write_text(
        metrics_line(1.0, "git__log", "git", 10.0, "ok")
        + metrics_line(2.0, "git__log", "git", 30.0, "EXEC_ERROR")
        + metrics_line(3.0, "git__diff", "git", 20.0, "ok")
        + metrics_line(4.0, "web__get", "web", 100.0, "ok")
        + metrics_line(5.0, "version", None, 1.0, "ok")
        + json.dumps({"t": 6.0, "tool": "echo", "latency_ms": 2.0, "server": None})
        + "\n"
    )
    return path


def test_report_by_server_groups_calls_by_the_server_field(
    metrics_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`report --by server --json`: one group per server, lines without a server count
    as "(daemon)"; no tool or provider tables unless asked for."""
    assert report_main(["--json", "--by", "server", str(metrics_file)], "/nonexistent") == 0
    summary = json.loads(capsys.readouterr().out)
    assert "tools" not in summary and "providers" not in summary
    servers = summary["servers"]
    assert list(servers) == ["(daemon)", "git", "web"]
    assert servers["git"]["calls"] == 3 and servers["git"]["errors"] == 1
    assert servers["git"]["p50_ms"] == 20.0 and servers["git"]["p99_ms"] == 30.0
    assert servers["web"]["calls"] == 1
    assert servers["(daemon)"]["calls"] == 2


def test_report_by_server_prints_a_server_table_and_by_repeats(
    metrics_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The text report has a server table; `--by tool --by server` prints both."""
    assert report_main(["--by", "server", str(metrics_file)], "/nonexistent") == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("server ") for line in lines)
    assert not any(line.startswith(("tool ", "provider ")) for line in lines)
    git = next(line for line in lines if line.startswith("git "))
    assert git.split() == ["git", "3", "1", "20.00", "30.00", "30.00", "0.00"]
    both = format_summary(summarize([], by=("tool", "server"))).splitlines()
    assert [line.split()[0] for line in both if line.endswith("queue ms")] == ["tool", "server"]


def test_report_refuses_an_unknown_grouping(
    metrics_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        report_main(["--by", "model", str(metrics_file)], "/nonexistent")
    assert exc.value.code == 2
    assert "--by" in capsys.readouterr().err
