"""Process trees and their memory, read from /proc (Linux).

A tree is a process and all its descendants, found by parent pid. Memory is summed
over the tree two ways: RSS (every resident page of every process, so shared pages
such as libpython's are counted once per process) and PSS (each shared page divided
among the processes that map it, so a sum over processes is not inflated).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["ProcessMark", "Tree", "kill_survivors", "mark", "measure", "tree_pids"]

_PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name, or None if it is gone."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    return stat[stat.rfind(")") + 2 :].split()


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def tree_pids(roots: Iterable[int]) -> list[int]:
    """`roots` that are alive and all their descendants, roots first."""
    children = _children()
    seen: list[int] = []
    stack = [pid for pid in roots if _stat_fields(pid) is not None]
    while stack:
        pid = stack.pop(0)
        if pid not in seen:
            seen.append(pid)
            stack.extend(sorted(children.get(pid, [])))
    return seen


def _command(pid: int) -> str:
    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return "?"
    parts = [Path(p).name if i == 0 else p for i, p in enumerate(raw.decode().split("\0")) if p]
    return " ".join(parts)[:120]


def _memory_kib(pid: int) -> tuple[int | None, int | None]:
    """(RSS, PSS) of `pid` in KiB: smaps_rollup when readable, else VmRSS and no PSS."""
    rss = pss = None
    with contextlib.suppress(OSError):
        for line in (_PROC / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    if rss is None:
        with contextlib.suppress(OSError):
            for line in (_PROC / str(pid) / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
    return rss, pss


@dataclasses.dataclass(frozen=True, slots=True)
class Tree:
    """The processes of a side (status quo or daemon) and what they hold."""

    processes: list[dict[str, Any]]

    @property
    def count(self) -> int:
        return len(self.processes)

    def total_bytes(self, key: str) -> int | None:
        values = [p[key] for p in self.processes]
        return None if not values or None in values else sum(values)

    def to_json(self) -> dict[str, Any]:
        return {
            "processes": self.count,
            "rss_bytes": self.total_bytes("rss_bytes"),
            "pss_bytes": self.total_bytes("pss_bytes"),
            "by_process": self.processes,
        }


def measure(groups: Sequence[tuple[str, Iterable[int]]]) -> Tree:
    """Every process of every (role, roots) group's trees, with its RSS and PSS."""
    rows: list[dict[str, Any]] = []
    for role, roots in groups:
        for pid in tree_pids(roots):
            rss, pss = _memory_kib(pid)
            rows.append(
                {
                    "role": role,
                    "pid": pid,
                    "command": _command(pid),
                    "rss_bytes": None if rss is None else rss * 1024,
                    "pss_bytes": None if pss is None else pss * 1024,
                }
            )
    return Tree(rows)


@dataclasses.dataclass(frozen=True, slots=True)
class ProcessMark:
    """A pid with its start time, so that a reused pid is never signalled."""

    pid: int
    start_ticks: str


def mark(roots: Iterable[int]) -> list[ProcessMark]:
    """Marks for every process of the trees under `roots`, as they are now."""
    marks = []
    for pid in tree_pids(roots):
        fields = _stat_fields(pid)
        if fields is not None:
            marks.append(ProcessMark(pid, fields[19]))
    return marks


def kill_survivors(marks: Iterable[ProcessMark]) -> list[int]:
    """SIGKILL every marked process still running (same pid, same start time)."""
    killed = []
    for m in marks:
        fields = _stat_fields(m.pid)
        if fields is None or fields[19] != m.start_ticks or fields[0] == "Z":
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(m.pid, signal.SIGKILL)
            killed.append(m.pid)
    return killed
