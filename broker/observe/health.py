"""The health snapshot file, replaced atomically so a reader never sees half of it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiofiles
import aiofiles.os
import orjson

__all__ = ["HealthFile"]

log = logging.getLogger("broker.observe.health")


class HealthFile:
    """Rewrites `path` with `snapshot()` every interval while `run` runs.

    `failures` counts the writes the disk refused; the snapshot reports it, so a live
    GET /health says when the file on disk has gone stale.
    """

    def __init__(
        self, path: Path, snapshot: Callable[[], dict[str, Any]], interval_s: float
    ) -> None:
        self.path = path
        self.snapshot = snapshot
        self.interval_s = interval_s
        self.failures = 0
        self._closing = asyncio.Event()

    async def write(self) -> None:
        """Write one snapshot: temp file in the same folder, then rename over the old one."""
        data = orjson.dumps(self.snapshot(), option=orjson.OPT_INDENT_2)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            async with aiofiles.open(tmp, "wb") as fh:
                await fh.write(data)
            await aiofiles.os.replace(tmp, self.path)
        except OSError as exc:
            self.failures += 1
            log.error("cannot write health file %s: %s", self.path, exc)

    async def run(self) -> None:
        """Rewrite the snapshot every interval until `close`."""
        while not self._closing.is_set():
            await self.write()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.interval_s)

    async def close(self, runner: asyncio.Task[None] | None) -> None:
        """Stop `run` and write the last snapshot.

        `run` is let finish rather than cancelled: a cancelled write goes on in its
        thread and would race the last one for the temp file.
        """
        self._closing.set()
        if runner is not None:
            try:
                await runner
            except Exception:  # it already stopped writing; the last snapshot still goes
                log.exception("the health writer had failed")
        await self.write()
