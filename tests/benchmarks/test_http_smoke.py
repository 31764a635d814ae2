"""A short run of `python -m benchmarks.http` with the targets that need no npm or PyPI
install, so the benchmark keeps working as the code changes. It checks that every
cell ran and answered correctly, never how fast."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, base_env, scaled

pytestmark = pytest.mark.slow

TARGETS = ["broker-hosted", "broker-builtin", "raw-post"]
CLIENTS = [1, 4]


def test_broker_targets_and_raw_post_answer_every_call(tmp_path: Path) -> None:
    out = tmp_path / "http.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.http",
            "--targets",
            ",".join(TARGETS),
            "--clients",
            ",".join(map(str, CLIENTS)),
            "--rounds",
            "1",
            "--duration",
            "0.5",
            "--warmup",
            "0.2",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=scaled(180),
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads(out.read_text())
    rows = document["rows"]
    assert {(r["target"], r["clients"]) for r in rows} == {(t, c) for t in TARGETS for c in CLIENTS}
    for row in rows:
        assert row["calls"] > 0 and row["ok"] == row["calls"], row
        assert row["error_count"] == 0, row
        assert row["clients_opened"] == row["clients"], row
    # The daemon ended every HTTP session the clients closed.
    for row in rows:
        if row["target"].startswith("broker-"):
            assert row["daemon"]["idle_after"], row
    hosted = [t for t in document["summary"] if t["target"] == "broker-hosted"]
    assert all(t["ratio_to_raw_post_median"] for t in hosted)
    assert "calls/s" in done.stdout and "broker-builtin" in done.stdout
