"""The health file: the final snapshot at shutdown is whole and is the newest."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any

from broker.observe.health import HealthFile


async def test_closing_while_the_writer_runs_publishes_the_last_snapshot_whole(
    tmp_path: Path,
) -> None:
    counter = itertools.count()
    for round_ in range(30):
        path = tmp_path / f"health-{round_}.json"

        def snapshot() -> dict[str, Any]:
            # Snapshots of varying size: an interleaved write would leave a tail behind.
            n = next(counter)
            return {"n": n, "pad": "x" * (n % 7) * 500}

        health = HealthFile(path, snapshot, interval_s=0.001)
        runner = asyncio.get_running_loop().create_task(health.run())
        await asyncio.sleep(0.003 * (round_ % 4))
        await health.close(runner)
        final = json.loads(path.read_text())
        assert final["n"] == next(counter) - 1, "the last snapshot taken is the one on disk"
