"""CPU seconds used so far by other processes, read from /proc (Linux); None elsewhere."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["cpu_seconds", "machine_busy_seconds", "rss_bytes", "total_cpu_seconds"]

_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of `pid`, or None if it is gone or /proc is missing."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _TICKS_PER_S


def total_cpu_seconds(pids: Iterable[int]) -> float | None:
    """Sum over `pids`; None when none of them could be read."""
    readings = [s for s in (cpu_seconds(pid) for pid in pids) if s is not None]
    return sum(readings) if readings else None


def machine_busy_seconds() -> float | None:
    """CPU seconds the whole machine spent busy (all cores, not idle or iowait)."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0]
    except OSError:
        return None
    # cpu  user nice system idle iowait irq softirq steal guest guest_nice
    ticks = [int(x) for x in first.split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / _TICKS_PER_S


def rss_bytes(pid: int) -> int | None:
    """VmRSS of `pid` from /proc/<pid>/status, or None."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None
