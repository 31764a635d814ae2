"""The cluster-wide provider ledger's rules (the class the ledger actor runs)."""

from __future__ import annotations

import pytest

from workers import ray_actors
from workers.ray_actors import ProviderLedger


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(ray_actors.time, "monotonic", clock)
    return clock


def test_a_provider_cap_counts_every_broker(clock: Clock) -> None:
    ledger = ProviderLedger()
    first = ledger.acquire("broker-a", "kimi", 2, 15.0)
    second = ledger.acquire("broker-b", "kimi", 2, 15.0)
    assert first and second and first != second
    assert ledger.acquire("broker-a", "kimi", 2, 15.0) is None
    assert ledger.acquire("broker-b", "kimi", 2, 15.0) is None
    # Other providers have caps of their own.
    assert ledger.acquire("broker-a", "glm", 1, 15.0)
    assert ledger.usage() == {"kimi": 2, "glm": 1}


def test_a_released_slot_is_free_again_and_release_is_idempotent(clock: Clock) -> None:
    ledger = ProviderLedger()
    lease = ledger.acquire("broker-a", "kimi", 1, 15.0)
    assert lease is not None
    ledger.release(lease)
    ledger.release(lease)
    assert ledger.acquire("broker-b", "kimi", 1, 15.0) is not None
    assert ledger.usage() == {"kimi": 1}


def test_a_silent_broker_loses_its_leases_after_its_ttl(clock: Clock) -> None:
    ledger = ProviderLedger()
    assert ledger.acquire("dead", "kimi", 1, 3.0)
    clock.now += 2.0
    assert ledger.acquire("alive", "kimi", 1, 3.0) is None
    clock.now += 1.5
    assert ledger.acquire("alive", "kimi", 1, 3.0) is not None


def test_renewing_keeps_leases_past_the_ttl(clock: Clock) -> None:
    ledger = ProviderLedger()
    assert ledger.acquire("busy", "kimi", 1, 3.0)
    for _ in range(5):
        clock.now += 2.0
        ledger.renew("busy", 3.0)
        assert ledger.acquire("other", "kimi", 1, 3.0) is None
    assert ledger.usage() == {"kimi": 1}


def test_a_broker_leaving_cleanly_frees_its_slots_at_once(clock: Clock) -> None:
    ledger = ProviderLedger()
    assert ledger.acquire("leaving", "kimi", 2, 15.0)
    assert ledger.acquire("leaving", "kimi", 2, 15.0)
    assert ledger.acquire("staying", "glm", 2, 15.0)
    ledger.drop_holder("leaving")
    assert ledger.usage() == {"glm": 1}
