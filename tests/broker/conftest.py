"""Fixtures shared by the broker's unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.broker.test_calls_manager import VirtualLoop


@pytest.fixture
def loop() -> Iterator[VirtualLoop]:
    """A virtual-clock loop, closed afterwards."""
    event_loop = VirtualLoop()
    try:
        yield event_loop
    finally:
        event_loop.close()
