"""Unit tests for broker.admin.report: what `python -m broker report` computes from metrics lines.

Everything here runs in-process on synthetic metrics files; no daemon is started.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.admin.report import (
    default_files,
    format_summary,
    parse_since,
    percentile,
    plot,
    read_records,
    report_main,
    summarize,
)

METRICS = "ws_daemon.metrics.jsonl"


def record(
    t: float,
    tool: str = "echo",
    provider: str | None = None,
    outcome: str = "ok",
    latency_ms: float = 1.0,
    queue_ms: float = 0.0,
    session: str = "s" * 32,
) -> dict[str, Any]:
    """One metrics line as the daemon writes it."""
    return {
        "t": t,
        "session": session,
        "tool": tool,
        "provider": provider,
        "model": None,
        "outcome": outcome,
        "latency_ms": latency_ms,
        "queue_ms": queue_ms,
        "worker": 0,
        "bytes_in": 10,
        "bytes_out": 20,
    }


def write_lines(path: Path, records: list[dict[str, Any]], extra: Sequence[str] = ()) -> Path:
    """Write records (then any raw extra lines) as a metrics file."""
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "".join(extra))
    return path


# --- --since ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("30m", 1800),
        ("1h", 3600),
        ("2d", 172800),
        ("45", 45),
        ("1.5h", 5400),
        (" 2 m ", 120),
        ("0s", 0),
    ],
)
def test_parse_since_accepts_durations(text: str, seconds: float) -> None:
    """--since takes a number with an optional s/m/h/d unit (bare numbers are seconds)."""
    assert parse_since(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "-1h", "1w", "yesterday", "1 hour", "1h30m", "1e3s"])
def test_parse_since_refuses_anything_else_with_a_hint(text: str) -> None:
    """A bad --since names the value and shows the accepted forms."""
    with pytest.raises(ValueError) as info:
        parse_since(text)
    assert repr(text) in str(info.value)
    assert "90s, 30m, 1h or 2d" in str(info.value)


# --- percentiles -------------------------------------------------------------------------


def test_percentile_of_nothing_is_zero() -> None:
    assert percentile([], 50) == 0.0


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([7.0], 50, 7.0),
        ([7.0], 99, 7.0),
        ([1.0, 2.0, 3.0], 50, 2.0),
        (list(range(1, 101)), 50, 50),
        (list(range(1, 101)), 90, 90),
        (list(range(1, 101)), 100, 100),
        ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], 90, 7.0),
        (list(range(1, 201)), 99, 198),
    ],
)
def test_percentile_is_nearest_rank(values: list[float], q: float, expected: float) -> None:
    """p-th percentile of sorted values = the ceil(p/100 * n)-th smallest."""
    assert percentile(values, q) == expected


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        (list(range(1, 101)), 99, 99),  # p99 of 100 calls reported as the maximum
        (list(range(1, 11)), 50, 5),  # median of 1..10 reported as 6
        ([1.0, 2.0, 3.0, 4.0], 25, 1.0),
    ],
)
def test_percentile_is_nearest_rank_when_the_rank_is_an_odd_integer(
    values: list[float], q: float, expected: float
) -> None:
    """When q*n/100 is a whole odd number k, the k-th value is the percentile: p99 of
    100 latencies must not be the slowest call, the median of 1..10 is 5."""
    assert percentile(values, q) == expected


@given(st.lists(st.floats(0, 1e6), min_size=1, max_size=300), st.sampled_from([50, 90, 99]))
def test_percentile_is_always_one_of_the_values_and_ordered(values: list[float], q: float) -> None:
    """Whatever the sample, a percentile is one of its values, within its range, and
    p50 <= p90 <= p99."""
    values.sort()
    got = percentile(values, q)
    assert got in values and values[0] <= got <= values[-1]
    assert percentile(values, 50) <= percentile(values, 90) <= percentile(values, 99)


# --- summarize ---------------------------------------------------------------------------


def synthetic() -> list[dict[str, Any]]:
    """14 calls over 100 s: 7 echo (fast), 4 kimi chat (2 failing), 3 glm chat, from
    three sessions of different activity."""
    busy, mid, quiet = "a" * 32, "b" * 32, "c" * 32
    records = [
        record(1000.0 + n, "echo", None, latency_ms=float(n + 1), session=busy) for n in range(7)
    ]
    records += [
        record(1020.0, "chat", "kimi", latency_ms=100, queue_ms=10, session=busy),
        record(1030.0, "chat", "kimi", latency_ms=200, queue_ms=30, session=mid),
        record(1040.0, "chat", "kimi", "OVER_CAPACITY", 0, queue_ms=0, session=mid),
        record(1050.0, "chat", "kimi", "TIMEOUT", 300, queue_ms=20, session=busy),
        record(1060.0, "chat", "glm", latency_ms=50, queue_ms=5, session=quiet),
        record(1070.0, "chat", "glm", latency_ms=60, queue_ms=5, session=mid),
        record(1100.0, "chat", "glm", "OVER_CAPACITY", 0, queue_ms=2, session=mid),
    ]
    return records


def test_summarize_counts_per_tool_and_provider_with_errors_and_latency() -> None:
    """Per tool and per provider: calls, errors, p50/p90/p99 latency, mean queue time."""
    summary = summarize(synthetic())
    assert summary["calls"] == 14
    assert summary["window_s"] == 100.0
    assert summary["calls_per_s"] == 0.14
    assert list(summary["tools"]) == ["chat", "echo"]
    echo = summary["tools"]["echo"]
    assert echo == {
        "calls": 7,
        "errors": 0,
        "p50_ms": 4.0,
        "p90_ms": 7.0,
        "p99_ms": 7.0,
        "queue_mean_ms": 0.0,
    }
    chat = summary["tools"]["chat"]
    assert chat["calls"] == 7 and chat["errors"] == 3
    assert chat["p50_ms"] == 60.0 and chat["p99_ms"] == 300.0
    assert chat["queue_mean_ms"] == round(72 / 7, 3)
    providers = summary["providers"]
    assert list(providers) == ["glm", "kimi", "none"]
    assert providers["none"]["calls"] == 7
    assert providers["kimi"]["calls"] == 4 and providers["kimi"]["errors"] == 2
    assert providers["kimi"]["queue_mean_ms"] == 15.0
    assert providers["glm"]["calls"] == 3 and providers["glm"]["errors"] == 1
    assert providers["glm"]["p50_ms"] == 50.0


def test_summarize_lists_error_codes_and_busiest_sessions_most_first() -> None:
    """Error codes and sessions are ranked by count; at most five sessions are listed."""
    records = synthetic() + [record(1200.0 + n, session=f"{n:032d}") for n in range(6)]
    summary = summarize(records)
    assert summary["errors_by_code"] == {"OVER_CAPACITY": 2, "TIMEOUT": 1}
    assert list(summary["errors_by_code"]) == ["OVER_CAPACITY", "TIMEOUT"]
    busiest = summary["busiest_sessions"]
    assert busiest[:3] == [
        {"session": "a" * 32, "calls": 9},
        {"session": "b" * 32, "calls": 4},
        {"session": "c" * 32, "calls": 1},
    ]
    assert len(busiest) == 5


def test_summarize_of_nothing_and_of_partial_records() -> None:
    """No records: zero calls and no rate. Records missing provider/outcome/latency count
    as provider "none", outcome ok and 0 ms."""
    empty = summarize([])
    assert empty["calls"] == 0 and empty["calls_per_s"] is None
    assert empty["tools"] == {} and empty["busiest_sessions"] == []
    partial = summarize([{"t": 5.0, "tool": "version"}])
    assert partial["tools"]["version"]["calls"] == 1
    assert partial["tools"]["version"]["errors"] == 0
    assert partial["providers"]["none"]["p50_ms"] == 0.0
    assert partial["busiest_sessions"] == [{"session": "?", "calls": 1}]


def test_format_summary_prints_aligned_tables() -> None:
    """The text report: a headline, a tool table, a provider table, errors, sessions."""
    text = format_summary(summarize(synthetic()))
    lines = text.splitlines()
    assert lines[0] == "14 calls over 100.0 s (0.14/s)"
    header = next(line for line in lines if line.startswith("tool "))
    echo = next(line for line in lines if line.startswith("echo "))
    assert len(header) == len(echo)
    assert echo.split() == ["echo", "7", "0", "4.00", "7.00", "7.00", "0.00"]
    assert any(line.startswith("provider ") for line in lines)
    assert "errors by code: OVER_CAPACITY 2, TIMEOUT 1" in lines
    assert lines[-1].startswith("busiest sessions: aaaaaaaa (9), bbbbbbbb (4)")


# --- reading files -----------------------------------------------------------------------


def test_read_records_skips_bad_lines_and_missing_files(tmp_path: Path) -> None:
    """Lines that are not JSON objects (garbage, arrays, a half-written last line, blank
    lines) are skipped; a file that does not exist is skipped; good lines are kept."""
    path = write_lines(
        tmp_path / METRICS,
        [record(1.0), record(2.0)],
        ["not json\n", "[1, 2]\n", "\n", '"text"\n', json.dumps(record(3.0)) + "\n", '{"t": 4'],
    )
    got = list(read_records([tmp_path / "missing.jsonl", path]))
    assert [r["t"] for r in got] == [1.0, 2.0, 3.0]


def test_read_records_skips_records_with_a_bad_timestamp(tmp_path: Path) -> None:
    """A line that is JSON but whose "t" is not a number is a bad line too: skipped, not a
    crash of the whole report."""
    path = write_lines(tmp_path / METRICS, [record(1.0), {"t": "soon"}, {"t": None}, record(2.0)])
    assert [r["t"] for r in read_records([path])] == [1.0, 2.0]


def test_read_records_keeps_only_the_since_window(tmp_path: Path) -> None:
    """Records before since_t are left out; the boundary itself is kept."""
    path = write_lines(tmp_path / METRICS, [record(t) for t in (10.0, 20.0, 30.0, 40.0)])
    assert [r["t"] for r in read_records([path], since_t=30.0)] == [30.0, 40.0]
    assert list(read_records([path], since_t=41.0)) == []


def test_default_files_are_the_rotated_backups_oldest_first_then_the_live_file(
    tmp_path: Path,
) -> None:
    """With backups .1 (newest) to .11 (oldest), the report reads .11, .10, ... .1 and
    then the live file, so records come out in time order (numeric, not text, order)."""
    t = 0.0
    for index in range(11, 0, -1):
        write_lines(tmp_path / f"{METRICS}.{index}", [record(t), record(t + 1)])
        t += 2
    write_lines(tmp_path / METRICS, [record(t)])
    files = default_files(tmp_path)
    assert [p.name for p in files] == [f"{METRICS}.{i}" for i in range(11, 0, -1)] + [METRICS]
    times = [r["t"] for r in read_records(files)]
    assert times == sorted(times) and len(times) == 23


# --- report_main -------------------------------------------------------------------------


def test_report_main_json_with_since_reads_the_log_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`report --json --since 1h` on the log dir counts only the last hour, across the
    live file and its backup."""
    now = time.time()
    write_lines(tmp_path / f"{METRICS}.1", [record(now - 7200), record(now - 1800, "chat", "glm")])
    write_lines(tmp_path / METRICS, [record(now - 10, outcome="TIMEOUT"), record(now - 5)])
    assert report_main(["--json", "--since", "1h"], str(tmp_path)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["calls"] == 3
    assert summary["tools"]["echo"]["calls"] == 2
    assert summary["tools"]["echo"]["errors"] == 1
    assert summary["providers"]["glm"]["calls"] == 1
    assert report_main(["--json"], str(tmp_path)) == 0
    assert json.loads(capsys.readouterr().out)["calls"] == 4


def test_report_main_refuses_a_bad_since(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert report_main(["--since", "soon"], str(tmp_path)) == 2
    assert "--since 'soon'" in capsys.readouterr().err


def test_plot_without_matplotlib_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without matplotlib, --plot stops with the pip command that installs it."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(SystemExit) as info:
        plot([record(1.0)], tmp_path / "out.png")
    assert "pip install -e '.[plot]'" in str(info.value.code)
    assert not (tmp_path / "out.png").exists()
