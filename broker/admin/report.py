"""`python -m broker report`: what the metrics JSONL says about recent calls."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from broker.observe.files import METRICS_FILE
from broker.observe.percentiles import percentile

__all__ = ["GROUPINGS", "parse_since", "percentile", "read_records", "report_main", "summarize"]

# What a report can group calls by: the metrics line's field, the summary's key for its
# table, and the name of the group of lines without that field.
GROUPINGS = {
    "tool": ("tools", "none"),
    "provider": ("providers", "none"),
    # The daemon's own tools are served by no hosted server.
    "server": ("servers", "(daemon)"),
}
_DEFAULT_BY = ("tool", "provider")
# One group's latencies, queue times and error count (in a list, to be added to in place).
_Group = tuple[list[float], list[float], list[int]]

_SINCE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str) -> float:
    """'90s', '30m', '1h', '2d' (or bare seconds) → seconds."""
    match = _SINCE_RE.match(text)
    if not match:
        raise ValueError(f"--since {text!r}: expected a duration like 90s, 30m, 1h or 2d")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def default_files(log_dir: Path) -> list[Path]:
    base = log_dir / METRICS_FILE
    backups = sorted(
        log_dir.glob(f"{METRICS_FILE}.*"),
        key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0,
    )
    return [*backups, base]


def read_records(paths: Iterable[Path], since_t: float = 0.0) -> Iterator[dict[str, Any]]:
    """Every well-formed record at or after `since_t`; bad lines are skipped."""
    for path in paths:
        try:
            handle = path.open("rb")
        except OSError:
            continue
        with handle:
            for line in handle:
                try:
                    record = json.loads(line)
                    if isinstance(record, dict) and float(record.get("t", 0)) >= since_t:
                        yield record
                except (ValueError, TypeError):
                    continue


def _stats(latencies: list[float], queues: list[float], errors: int) -> dict[str, Any]:
    latencies.sort()
    return {
        "calls": len(latencies),
        "errors": errors,
        "p50_ms": round(percentile(latencies, 50), 3),
        "p90_ms": round(percentile(latencies, 90), 3),
        "p99_ms": round(percentile(latencies, 99), 3),
        "queue_mean_ms": round(sum(queues) / len(queues), 3) if queues else 0.0,
    }


def _table(grouped: dict[str, _Group]) -> dict[str, dict[str, Any]]:
    return {
        name: _stats(lat, queue, errs[0]) for name, (lat, queue, errs) in sorted(grouped.items())
    }


def summarize(records: Iterable[dict[str, Any]], by: Sequence[str] = _DEFAULT_BY) -> dict[str, Any]:
    """Counts and latencies per group of each GROUPINGS field in `by` (per tool and per
    provider unless told), error codes, busiest sessions."""
    groups: dict[str, dict[str, _Group]] = {
        field: defaultdict(lambda: ([], [], [0])) for field in by
    }
    missing = {field: GROUPINGS[field][1] for field in by}
    codes: Counter[str] = Counter()
    sessions: Counter[str] = Counter()
    first = last = None
    total = 0
    for record in records:
        total += 1
        t = float(record.get("t", 0))
        first = t if first is None else min(first, t)
        last = t if last is None else max(last, t)
        outcome = str(record.get("outcome", "ok"))
        failed = outcome != "ok"
        if failed:
            codes[outcome] += 1
        sessions[str(record.get("session", "?"))] += 1
        for field, grouped in groups.items():
            lat, queue, errs = grouped[str(record.get(field) or missing[field])]
            lat.append(float(record.get("latency_ms", 0.0)))
            queue.append(float(record.get("queue_ms", 0.0)))
            errs[0] += failed
    span_s = (last - first) if first is not None and last is not None else 0.0
    return {
        "calls": total,
        "window_s": round(span_s, 1),
        "calls_per_s": round(total / span_s, 2) if span_s > 0 else None,
        **{GROUPINGS[field][0]: _table(grouped) for field, grouped in groups.items()},
        "errors_by_code": dict(codes.most_common()),
        "busiest_sessions": [{"session": s, "calls": n} for s, n in sessions.most_common(5)],
    }


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"{summary['calls']} calls over {summary['window_s']} s"
        + (f" ({summary['calls_per_s']}/s)" if summary["calls_per_s"] else "")
    ]
    for title, (key, _) in GROUPINGS.items():
        if key not in summary:
            continue
        lines.append("")
        lines.append(
            f"{title:<24}{'calls':>8}{'errors':>8}{'p50 ms':>10}{'p90 ms':>10}"
            f"{'p99 ms':>10}{'queue ms':>10}"
        )
        for name, row in summary[key].items():
            lines.append(
                f"{name:<24}{row['calls']:>8}{row['errors']:>8}{row['p50_ms']:>10.2f}"
                f"{row['p90_ms']:>10.2f}{row['p99_ms']:>10.2f}{row['queue_mean_ms']:>10.2f}"
            )
    lines.append("")
    lines.append(
        "errors by code: "
        + (", ".join(f"{c} {n}" for c, n in summary["errors_by_code"].items()) or "none")
    )
    lines.append(
        "busiest sessions: "
        + ", ".join(f"{s['session'][:8]} ({s['calls']})" for s in summary["busiest_sessions"])
    )
    return "\n".join(lines)


def plot(records: list[dict[str, Any]], out: Path) -> None:
    """Latency (p50/p99 per interval) and throughput over time, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install -e '.[plot]'") from None
    if not records:
        raise SystemExit("no calls in the window: nothing to plot")
    records.sort(key=lambda r: float(r.get("t", 0)))
    t0 = float(records[0]["t"])
    span = max(1.0, float(records[-1]["t"]) - t0)
    bucket_s = max(1.0, span / 60)
    buckets: dict[int, list[float]] = defaultdict(list)
    for r in records:
        buckets[int((float(r["t"]) - t0) // bucket_s)].append(float(r.get("latency_ms", 0)))
    xs = sorted(buckets)
    fig, (ax1, ax2) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
    ax1.plot(
        [x * bucket_s for x in xs], [percentile(sorted(buckets[x]), 50) for x in xs], label="p50"
    )
    ax1.plot(
        [x * bucket_s for x in xs], [percentile(sorted(buckets[x]), 99) for x in xs], label="p99"
    )
    ax1.set_ylabel("latency (ms)")
    ax1.legend()
    ax2.bar(
        [x * bucket_s for x in xs], [len(buckets[x]) / bucket_s for x in xs], width=bucket_s * 0.9
    )
    ax2.set_ylabel("calls/s")
    ax2.set_xlabel("seconds since first call")
    fig.tight_layout()
    fig.savefig(out)


def report_main(argv: Sequence[str], log_dir: str) -> int:
    parser = argparse.ArgumentParser(prog="python -m broker report")
    parser.add_argument("files", nargs="*", help="metrics JSONL files (default: the log dir's)")
    parser.add_argument("--since", help="only calls in this last window, e.g. 1h or 30m")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument(
        "--by",
        action="append",
        choices=list(GROUPINGS),
        help="group calls by this field; repeat for several tables (default: tool, provider)",
    )
    parser.add_argument("--plot", metavar="PNG", help="draw latency and throughput over time")
    args = parser.parse_args(argv)
    try:
        since_t = time.time() - parse_since(args.since) if args.since else 0.0
    except ValueError as exc:
        print(f"exai-broker: {exc}", file=sys.stderr)
        return 2
    files = [Path(f) for f in args.files] or default_files(Path(log_dir))
    records = list(read_records(files, since_t))
    summary = summarize(records, args.by or _DEFAULT_BY)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    if args.plot:
        plot(records, Path(args.plot))
        print(f"wrote {args.plot}")
    return 0
