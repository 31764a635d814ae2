"""Process helpers on /proc: is a pid gone, which processes carry a tag, who is below
whom, a command line, kill, memory."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

__all__ = [
    "cmdline",
    "descendants",
    "group_pids",
    "kill_and_reap",
    "kill_quietly",
    "parent_pid",
    "process_gone",
    "process_running",
    "rss_bytes",
    "tagged_pids",
]

_EXITED = ("Z", "X")  # a zombie nobody reaped yet, or dead


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def process_gone(pid: int) -> bool:
    """True once `pid` has exited (gone, or a zombie nobody reaped yet)."""
    fields = _stat_fields(pid)
    return fields is None or fields[0] in _EXITED


def process_running(pid: int) -> bool:
    """True while `pid` exists and has not exited."""
    return not process_gone(pid)


def parent_pid(pid: int) -> int | None:
    """The parent of `pid`, or None if it is gone."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[1])


def cmdline(pid: int) -> list[str]:
    """The command line of `pid` (empty if it is gone or has none)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


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
        if fields[0] not in _EXITED:
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


def descendants(root_pid: int) -> list[int]:
    """Live processes below `root_pid` in the process tree (children, grandchildren, …)."""
    parents = {int(entry.name): int(fields[1]) for entry, fields in _live_processes()}

    def below(pid: int) -> bool:
        for _ in range(64):  # bounded: a pid reused mid-scan cannot loop forever
            if pid not in parents:
                return False
            pid = parents[pid]
            if pid == root_pid:
                return True
        return False

    return sorted(pid for pid in parents if below(pid))


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
