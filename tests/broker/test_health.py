"""The health file: the final snapshot at shutdown is whole and is the newest; a disk
that refuses the write is counted, not fatal."""

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


async def test_a_refused_write_is_counted_and_the_next_one_still_tried(tmp_path: Path) -> None:
    """The folder is gone: each write fails quietly and adds to `failures` (which the
    daemon's snapshot reports); once the folder is back, the file appears."""
    folder = tmp_path / "gone"
    health = HealthFile(folder / "health.json", lambda: {"ok": True}, interval_s=60.0)
    await health.write()
    await health.write()
    assert health.failures == 2
    folder.mkdir()
    await health.write()
    assert json.loads((folder / "health.json").read_text()) == {"ok": True}
    assert health.failures == 2
