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

__all__ = ["format_table", "machine_info", "write_json"]

COLUMNS = (
    "mode",
    "clients",
    "calls/s",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "max ms",
    "errors",
    "daemon cpu",
    "workers cpu",
    "client cpu",
    "other cpu",
    "daemon us/call",
)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _errors(errors: Mapping[str, int]) -> str:
    if not errors:
        return "0"
    return " ".join(f"{code}={n}" for code, n in errors.items())


def _cells(row: Mapping[str, Any]) -> list[str]:
    latency, cpu = row["latency_ms"], row["cpu"]
    client = [v for v in (cpu.get("generators_pct"), cpu.get("shims_pct")) if v is not None]
    return [
        row["mode"],
        str(row["clients"]),
        f"{row['calls_per_s']:.0f}",
        _ms(latency["p50"]),
        _ms(latency["p90"]),
        _ms(latency["p99"]),
        _ms(latency["max"]),
        _errors(row["errors"]),
        _pct(cpu.get("daemon_pct")),
        _pct(cpu.get("workers_pct")),
        _pct(sum(client) if client else None),
        _pct(cpu.get("other_pct")),
        "-" if cpu.get("daemon_us_per_call") is None else f"{cpu['daemon_us_per_call']:.0f}",
    ]


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Fixed-width table; CPU columns are % of one core over the measurement window."""
    body = [list(COLUMNS), *(_cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in body) for i in range(len(COLUMNS))]

    def render(line: list[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i in (0, 7) else cell.rjust(w)
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
