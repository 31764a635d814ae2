"""Helpers for the operations e2e tests (test_operations_*.py).

- HTTP, Prometheus-text and /proc helpers with deadlines: `fetch`, `Metrics`,
  `read_metrics`, `broker_daemon_pids`.
- Re-exported for the operations tests: the op-dialect client (defined in
  tests.support.op_client), the JSON-lines shim driver (tests.support.shim_driver) and
  the command runner (tests.support.cli). The browser is in tests.support.browser, the
  generic /proc helpers in tests.support.processes.
"""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, RUN_ID, STEP_S, scaled
from tests.support.cli import run_python
from tests.support.op_client import op_client
from tests.support.processes import cmdline, tagged_pids
from tests.support.shim_driver import ShimDriver

__all__ = [
    "ARTIFACTS",
    "STEP_S",
    "Metrics",
    "ShimDriver",
    "broker_daemon_pids",
    "fetch",
    "op_client",
    "read_metrics",
    "run_python",
]

ARTIFACTS = ROOT / "test-artifacts"


# --- processes -------------------------------------------------------------------------


def broker_daemon_pids(extra_tag: str | None = None) -> list[int]:
    """Daemons (`python -m broker` with no subcommand) started by this test run.

    `extra_tag` ("NAME=value") narrows it to daemons whose environment also holds it.
    """
    pids = tagged_pids(f"EXAI_TEST_RUN_ID={RUN_ID}")
    if extra_tag is not None:
        pids = sorted(set(pids) & set(tagged_pids(extra_tag)))
    return [pid for pid in pids if cmdline(pid)[1:3] == ["-m", "broker"]]


# --- HTTP and Prometheus ---------------------------------------------------------------


async def fetch(
    http: aiohttp.ClientSession, port: int, path: str, token: str | None = None
) -> tuple[int, str]:
    """GET http://127.0.0.1:<port><path>; the status and body."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=scaled(STEP_S))
    async with http.get(f"http://127.0.0.1:{port}{path}", headers=headers, timeout=timeout) as resp:
        return resp.status, await resp.text()


class Metrics:
    """One parsed /metrics scrape."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}

    def samples(self, sample_name: str) -> list[tuple[dict[str, str], float]]:
        """Every (labels, value) of the sample called `sample_name`."""
        return [
            (dict(s.labels), float(s.value))
            for family in self.families.values()
            for s in family.samples
            if s.name == sample_name
        ]

    def value(self, sample_name: str, **labels: str) -> float | None:
        """The value of the one sample with exactly these labels (None if absent)."""
        for sample_labels, value in self.samples(sample_name):
            if sample_labels == labels:
                return value
        return None


async def read_metrics(http: aiohttp.ClientSession, port: int) -> Metrics:
    """GET /metrics (200), parsed."""
    status, text = await fetch(http, port, "/metrics")
    assert status == 200, (status, text)
    return Metrics(text)
