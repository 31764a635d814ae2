"""Conditions on the daemon's health snapshot (its health file)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.conftest import STEP_S, DaemonProcess, async_wait_for

__all__ = ["Health", "health_until", "read_health"]

Health = dict[str, Any]


def read_health(daemon: DaemonProcess) -> Health | None:
    """The daemon's health snapshot, or None while it is missing or unreadable."""
    try:
        return daemon.health()
    except (OSError, ValueError):
        return None


async def health_until(
    daemon: DaemonProcess, check: Callable[[Health], bool], what: str, timeout_s: float = STEP_S
) -> Health:
    """The first health snapshot for which `check` holds (fails after the deadline)."""

    def probe() -> Health | None:
        health = read_health(daemon)
        return health if health is not None and check(health) else None

    found: Health = await async_wait_for(probe, timeout_s, what)
    return found
