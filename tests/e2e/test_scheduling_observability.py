"""What an operator sees of scheduling: health in-flight counters and per-call metrics lines."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from exai.models import MODELS
from tests.conftest import DaemonFactory, async_wait_for
from tests.e2e.sched_support import (
    HOLD_S,
    STEP_S,
    Files,
    idle,
    marker_state,
    metrics_until,
    op_clients,
    op_error,
    op_text,
    provider_inflight,
    sched_env,
    start_tagged_daemon,
)
from tests.support.health import health_until

pytestmark = pytest.mark.timeout(180)

PROVIDER_OF = {m.name: m.provider for m in MODELS}


def line_of(lines: list[dict[str, Any]], session: str, tool: str) -> dict[str, Any]:
    mine = [m for m in lines if m["session"] == session and m["tool"] == tool]
    assert len(mine) == 1, (session, tool, lines)
    return mine[0]


async def test_health_and_metrics_show_providers_models_outcomes_and_queue_time(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """While a kimi call and a glm-4.6 model call run, health shows one in flight on each
    provider and one queued; metrics lines then carry the provider, the resolved model, the
    outcome code (ok, OVER_CAPACITY) and queue_ms, which for the queued call covers at least
    the time it visibly waited."""
    daemon = start_tagged_daemon(
        daemon_factory,
        sched_env(kimi=1, glm=1, EXAI_WS_QUEUE_TIMEOUT="120", EXAI_WS_QUEUE_MAX_DEPTH="1"),
    )
    files = Files(tmp_path)
    kimi_release, glm_release = files.release("kimi"), files.release("glm")
    kimi_marker, glm_marker = files.path("kimi"), files.path("glm")
    async with op_clients(daemon, "hold", "queued", "refused") as (hold, queued, refused):
        kimi_holder = await hold.start(
            "kimi_wait",
            {"seconds": HOLD_S, "release": str(kimi_release), "marker": str(kimi_marker)},
        )
        glm_holder = await hold.start(
            "think",
            {
                "model": "glm-4.6",
                "seconds": HOLD_S,
                "release": str(glm_release),
                "marker": str(glm_marker),
            },
        )
        await async_wait_for(
            lambda: marker_state(kimi_marker) == marker_state(glm_marker) == "started",
            STEP_S,
            "both holders to run",
        )
        waiting = await queued.start("kimi_wait", {"seconds": 0})
        await waiting.wait_ack()
        acked_at = time.monotonic()
        health = await health_until(daemon, lambda h: h["queued"] == 1, "one call queued")
        assert health["inflight"]["global"] == 2
        assert provider_inflight(health, "kimi") == 1
        assert provider_inflight(health, "glm") == 1
        assert health["capacity"]["providers"]["kimi"] == 1
        assert sum(w["inflight"] for w in health["workers"]) == 2

        # The queue (depth 1) is full: the next kimi call is refused at once.
        error = op_error(await refused.call("kimi_wait", {"seconds": 0}))
        assert error["code"] == "OVER_CAPACITY" and error["provider"] == "kimi", error

        released_at = time.monotonic()
        Files.let_go(kimi_release)
        assert op_text(await waiting.wait()).startswith("kimi_wait done")
        op_text(await kimi_holder.wait())
        Files.let_go(glm_release)
        assert op_text(await glm_holder.wait()) == "glm-4.6"
        health = await health_until(daemon, idle, "every counter back to zero")
        assert health["errors_by_code"].get("OVER_CAPACITY") == 1

    lines = await metrics_until(daemon, lambda m: True, "4 metrics lines", count=4)
    holder_line = line_of(lines, hold.session_id, "kimi_wait")
    queued_line = line_of(lines, queued.session_id, "kimi_wait")
    refused_line = line_of(lines, refused.session_id, "kimi_wait")
    think_line = line_of(lines, hold.session_id, "think")

    for line in (holder_line, queued_line, refused_line):
        assert line["provider"] == "kimi", line
        assert PROVIDER_OF[line["model"]] == "kimi", line
    assert (think_line["provider"], think_line["model"]) == ("glm", "glm-4.6")
    assert [m["outcome"] for m in (holder_line, queued_line, think_line)] == ["ok"] * 3
    assert refused_line["outcome"] == "OVER_CAPACITY"
    # The queued call waited at least from its ack until the holder was released.
    waited_ms = (released_at - acked_at) * 1000.0
    assert queued_line["queue_ms"] >= waited_ms - 1.0, (queued_line, waited_ms)
    assert queued_line["queue_ms"] > holder_line["queue_ms"]
    assert queued_line["latency_ms"] >= queued_line["queue_ms"]
    for line in lines:
        assert {"t", "worker", "bytes_in", "bytes_out", "latency_ms"} <= line.keys(), line
