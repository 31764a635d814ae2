"""The printed table and the JSON file of a run, with the machine it ran on."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

__all__ = [
    "add_ratios",
    "format_extras",
    "format_table",
    "machine_info",
    "scaling",
    "write_chart",
    "write_json",
]

COLUMNS = (
    "scenario",
    "w",
    "mode",
    "clients",
    "calls/s",
    "x raw-ws",
    "x sdk-stdio",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "max ms",
    "ovh p99",
    "errors",
    "daemon cpu",
    "workers cpu",
    "client cpu",
    "other cpu",
    "daemon us/call",
    "workers us/call",
    "daemon MiB",
    "workers MiB",
)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _errors(errors: Mapping[str, int]) -> str:
    if not errors:
        return "0"
    return " ".join(f"{code}={n}" for code, n in errors.items())


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def add_ratios(rows: Sequence[dict[str, Any]]) -> None:
    """Each row's calls/s over the raw-ws and the sdk-stdio row of the same scenario and
    concurrency (`ratio_raw_ws`, `ratio_sdk_stdio`; None when that cell was not run)."""
    base: dict[tuple[str, str, int], float] = {}
    for row in rows:
        if row["mode"] in ("raw-ws", "sdk-stdio"):
            base.setdefault((row["mode"], row["scenario"], row["clients"]), row["calls_per_s"])
    for row in rows:
        for mode, key in (("raw-ws", "ratio_raw_ws"), ("sdk-stdio", "ratio_sdk_stdio")):
            ref = base.get((mode, row["scenario"], row["clients"]))
            row[key] = row["calls_per_s"] / ref if ref else None


def pool_comparison(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each non-local pool's calls/s and p50 next to the local pool's, same cell."""
    local = {
        (r["scenario"], r["mode"], r["clients"], r["workers"]): r
        for r in rows
        if r.get("pool") == "local"
    }
    out = []
    for row in rows:
        if row.get("pool") in (None, "local"):
            continue
        ref = local.get((row["scenario"], row["mode"], row["clients"], row["workers"]))
        if ref is None:
            continue
        out.append(
            {
                "scenario": row["scenario"],
                "mode": row["mode"],
                "clients": row["clients"],
                "workers": row["workers"],
                "pool": row["pool"],
                "calls_per_s": {"local": ref["calls_per_s"], row["pool"]: row["calls_per_s"]},
                "p50_ms": {
                    "local": ref["latency_ms"]["p50"],
                    row["pool"]: row["latency_ms"]["p50"],
                },
                "ratio_vs_local": (
                    row["calls_per_s"] / ref["calls_per_s"] if ref["calls_per_s"] else None
                ),
            }
        )
    return out


def scaling(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """calls/s of each (scenario, mode, clients) per worker count, over the fewest workers."""
    groups: dict[tuple[str, str, int], dict[int, float]] = {}
    for row in rows:
        if row.get("workers") is not None and row.get("pool") in (None, "local"):
            key = (row["scenario"], row["mode"], row["clients"])
            groups.setdefault(key, {})[row["workers"]] = row["calls_per_s"]
    out = []
    for (scen, mode, clients), by_workers in groups.items():
        if len(by_workers) < 2:
            continue
        least = min(by_workers)
        ref = by_workers[least]
        out.append(
            {
                "scenario": scen,
                "mode": mode,
                "clients": clients,
                "calls_per_s": {str(w): v for w, v in sorted(by_workers.items())},
                "ratio_vs_workers": least,
                "ratios": {
                    str(w): (v / ref if ref else None) for w, v in sorted(by_workers.items())
                },
            }
        )
    return out


def format_extras(document: Mapping[str, Any]) -> str:
    """Start-up, idle-session and scaling figures, as a few lines (empty when none ran)."""
    lines: list[str] = []
    for item in document.get("startup") or []:
        lines.append(
            f"startup {' '.join(item['command'])}: p50 {_ms(item['p50_ms'])} ms, "
            f"p90 {_ms(item['p90_ms'])} ms, max {_ms(item['max_ms'])} ms "
            f"over {item['spawns']} spawns ({item['failures']} failed)"
        )
    idle = document.get("idle_sessions")
    if idle:
        mib = 1024 * 1024

        def _mb(value: int | None) -> str:
            return "-" if value is None else f"{value / mib:.1f} MiB"

        def _b(value: float | None) -> str:
            return "-" if value is None else f"{value:.0f} B"

        b, a = idle["before"], idle["after"]
        lines.append(
            f"idle sessions {idle['opened']}/{idle['requested']}: daemon RSS "
            f"{_mb(b['daemon_rss'])} -> {_mb(a['daemon_rss'])} "
            f"({_b(idle['daemon_bytes_per_session'])}/session), workers RSS "
            f"{_mb(b['workers_rss'])} -> {_mb(a['workers_rss'])} "
            f"({_b(idle['workers_bytes_per_session'])}/session)"
        )
    for item in document.get("pools") or []:
        pool = item["pool"]
        lines.append(
            f"pool {pool} vs local, {item['scenario']} {item['mode']} c={item['clients']}: "
            f"{item['calls_per_s'][pool]:.0f} vs {item['calls_per_s']['local']:.0f} calls/s "
            f"({_ratio(item['ratio_vs_local'])}x), p50 {_ms(item['p50_ms'][pool])} vs "
            f"{_ms(item['p50_ms']['local'])} ms"
        )
    for item in document.get("scaling") or []:
        ratios = ", ".join(f"{w}w {v:.2f}x" for w, v in item["ratios"].items() if v is not None)
        lines.append(
            f"scaling {item['scenario']} {item['mode']} c={item['clients']}: {ratios} "
            f"(vs {item['ratio_vs_workers']} worker(s))"
        )
    return "\n".join(lines)


def write_chart(path: Path, rows: Sequence[Mapping[str, Any]]) -> bool:
    """Bar chart of calls/s per mode and concurrency, one panel per scenario and worker
    count (log scale: baselines and sleep differ by orders of magnitude); False when
    matplotlib is not importable."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    # Baselines (no workers) appear in every panel of their scenario.
    panels = sorted({(r["scenario"], r.get("workers") or 0) for r in rows})
    panels = [
        (scen, w) for scen, w in panels if w or not any(x[0] == scen and x[1] for x in panels)
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 3.2 * len(panels)), squeeze=False)
    for ax, (scen, workers) in zip(axes[:, 0], panels, strict=True):
        cells = [
            r for r in rows if r["scenario"] == scen and (r.get("workers") or 0) in (0, workers)
        ]
        modes = list(dict.fromkeys(r["mode"] for r in cells))
        clients = sorted({r["clients"] for r in cells})
        width = 0.8 / max(1, len(modes))
        for i, mode in enumerate(modes):
            values = {r["clients"]: r["calls_per_s"] for r in cells if r["mode"] == mode}
            xs = [j + i * width for j, c in enumerate(clients) if c in values]
            ax.bar(xs, [values[c] for c in clients if c in values], width, label=mode)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(clients))])
        ax.set_xticklabels([f"c={c}" for c in clients])
        ax.set_ylabel("calls/s")
        ax.set_yscale("log")
        ax.set_title(f"{scen}, {workers or '-'} workers")
        ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _cells(row: Mapping[str, Any]) -> list[str]:
    latency, cpu = row["latency_ms"], row["cpu"]
    client = [v for v in (cpu.get("generators_pct"), cpu.get("shims_pct")) if v is not None]
    return [
        row.get("scenario", "-"),
        "-" if row.get("workers") is None else str(row["workers"]),
        row["mode"] if row.get("pool") in (None, "local") else f"{row['mode']}@{row['pool']}",
        str(row["clients"]),
        f"{row['calls_per_s']:.0f}",
        _ratio(row.get("ratio_raw_ws")),
        _ratio(row.get("ratio_sdk_stdio")),
        _ms(latency["p50"]),
        _ms(latency["p90"]),
        _ms(latency["p99"]),
        _ms(latency["max"]),
        _ms(row.get("overhead_p99_ms")),
        _errors(row["errors"]),
        _pct(cpu.get("daemon_pct")),
        _pct(cpu.get("workers_pct")),
        _pct(sum(client) if client else None),
        _pct(cpu.get("other_pct")),
        _us(cpu.get("daemon_us_per_call")),
        _us(cpu.get("workers_us_per_call")),
        _mib((row.get("rss") or {}).get("server")),
        _mib((row.get("rss") or {}).get("workers")),
    ]


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}"


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Fixed-width table; CPU columns are % of one core over the measurement window."""
    body = [list(COLUMNS), *(_cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in body) for i in range(len(COLUMNS))]

    def render(line: list[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i in (0, 2, 12) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([render(body[0]), rule, *(render(line) for line in body[1:])])


def _git(repo_root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=repo_root, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(repo_root: Path) -> dict[str, Any]:
    status = _git(repo_root, "status", "--porcelain", "--untracked-files=no")
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "cpu_count": os.cpu_count(),
        "git_commit": _git(repo_root, "rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "packages": {name: _version(name) for name in ("aiohttp", "uvloop", "orjson", "msgspec")},
    }


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
