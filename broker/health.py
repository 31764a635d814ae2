"""The health snapshot file, replaced atomically so a reader never sees half of it."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiofiles
import aiofiles.os
import orjson

__all__ = ["HealthFile"]

log = logging.getLogger("broker.health")


class HealthFile:
    def __init__(
        self, path: Path, snapshot: Callable[[], dict[str, Any]], interval_s: float
    ) -> None:
        self.path = path
        self.snapshot = snapshot
        self.interval_s = interval_s
        self.failures = 0

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
        while True:
            await self.write()
            await asyncio.sleep(self.interval_s)
