"""The servers file, watched: each edit is applied as a diff of servers.

The file is polled (its modification time and size), which works the same on every
OS and file system, editors' atomic saves included. An edit that does not parse or
validate is refused with a log line naming what is wrong, and the running servers
stay as they are until the next good edit.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from broker.fleet.config import ConfigError, ServersConfig, load_servers

__all__ = ["POLL_INTERVAL_S", "watch_servers"]

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 1.0


class _Applies(Protocol):
    async def apply(self, config: ServersConfig) -> tuple[list[str], list[str], list[str]]: ...


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


async def watch_servers(
    path: Path,
    fleet: _Applies,
    environ: Mapping[str, str],
    interval_s: float = POLL_INTERVAL_S,
) -> None:
    """Apply every good edit of `path` to `fleet`, until cancelled."""
    seen = _stamp(path)
    while True:
        await asyncio.sleep(interval_s)
        stamp = _stamp(path)
        if stamp == seen:
            continue
        seen = stamp
        if stamp is None:
            log.warning("servers file %s is gone; the running servers stay", path)
            continue
        try:
            config = load_servers(path, environ=environ)
        except ConfigError as exc:
            log.error("servers file edit refused, the running servers stay: %s", exc)
            continue
        for note in config.notes:
            log.warning("%s", note)
        try:
            await fleet.apply(config)
        except Exception:
            log.exception("applying the servers file %s failed", path)
