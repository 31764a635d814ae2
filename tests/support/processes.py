"""Process helpers on /proc: is a pid gone, which processes carry a tag, kill, memory."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

__all__ = [
    "group_pids",
    "kill_and_reap",
    "kill_quietly",
    "process_gone",
    "rss_bytes",
    "tagged_pids",
]


def process_gone(pid: int) -> bool:
    """True once `pid` has exited (gone, or a zombie nobody reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _live_processes() -> list[tuple[Path, list[str]]]:
    """(/proc entry, stat fields after the name) of every live process but us."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            found.append((entry, fields))
    return found


def tagged_pids(tag: str) -> list[int]:
    """Live processes (not us, not zombies) whose environment holds the line `tag`."""
    needle = tag.encode()
    found = []
    for entry, _ in _live_processes():
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def group_pids(pgid: int) -> list[int]:
    """Live processes (not us, not zombies) of process group `pgid`."""
    return [int(entry.name) for entry, fields in _live_processes() if int(fields[2]) == pgid]


def kill_quietly(pid: int) -> None:
    """SIGKILL `pid` if it is still there (no error when it is not)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def kill_and_reap(pids: list[int]) -> None:
    """SIGKILL each pid still alive (the last resort of a cleanup)."""
    for pid in pids:
        kill_quietly(pid)


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc/<pid>/status (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")
