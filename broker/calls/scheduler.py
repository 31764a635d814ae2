"""Admission control: session, global and provider caps, and fair waiting queues.

Pure: no event loop, no clock of its own (callers pass `now` in seconds). A call
takes all its caps at once or none, and gives them back exactly once through its
Lease, whatever the outcome. When queueing is on, waiters are kept per provider and
served round-robin across sessions, so one busy session cannot starve another and a
flood on one provider never holds back another provider's calls.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict, deque
from collections.abc import Mapping
from typing import Any, Literal

__all__ = ["SERVER_LANE", "Lease", "Rejection", "Scheduler", "Scope", "Waiter", "server_lane"]

Scope = Literal["session", "global", "provider", "server"]

# A hosted server's cap (`maxInflight`) is kept like a provider's, under this prefix:
# the same fair queue per lane, the same single lease.
SERVER_LANE = "server:"


def server_lane(server: str) -> str:
    return SERVER_LANE + server


_INITIAL_HOLD_MS = 100.0
_EWMA_ALPHA = 0.2


@dataclasses.dataclass(slots=True, eq=False)
class Lease:
    """The caps one admitted call holds. Give it back with `Scheduler.release`."""

    session_id: str
    provider: str | None
    acquired_at: float
    released: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Rejection:
    scope: Scope
    provider: str | None
    retry_after_ms: int

    def describe(self) -> str:
        if self.scope == "server" and self.provider is not None:
            return (
                f"server {self.provider.removeprefix(SERVER_LANE)} is at its in-flight limit "
                "(maxInflight in the servers file)"
            )
        if self.scope == "provider":
            return f"provider {self.provider} is at its in-flight limit"
        return f"{self.scope} in-flight limit reached"


@dataclasses.dataclass(slots=True, eq=False)
class Waiter:
    """A queued call. `payload` is the caller's own object, handed back on grant."""

    session_id: str
    provider: str | None
    enqueued_at: float
    payload: Any
    active: bool = True


class Scheduler:
    """Counts in-flight calls against their caps and decides who runs next."""

    def __init__(
        self,
        *,
        session_cap: int,
        global_cap: int,
        provider_caps: Mapping[str, int],
        queue_max_depth: int = 256,
    ) -> None:
        self.session_cap = session_cap
        self.global_cap = global_cap
        self.provider_caps = dict(provider_caps)
        self.queue_max_depth = queue_max_depth
        self.inflight_global = 0
        self.inflight_by_provider: dict[str, int] = dict.fromkeys(self.provider_caps, 0)
        self.inflight_by_session: dict[str, int] = {}
        # provider key ("" = untagged) -> session id -> that session's waiters, oldest first
        self._queues: OrderedDict[str, OrderedDict[str, deque[Waiter]]] = OrderedDict()
        self._queued: dict[str, int] = {}
        self._hold_ms: dict[str, float] = {}

    # --- immediate admission -------------------------------------------------------

    def blocking_scope(self, session_id: str, provider: str | None) -> Scope | None:
        """The first cap that would refuse this call now, or None if it fits."""
        if self.inflight_by_session.get(session_id, 0) >= self.session_cap:
            return "session"
        cap = self.provider_caps.get(provider) if provider is not None else None
        if cap is not None and provider is not None and self.inflight_by_provider[provider] >= cap:
            return "server" if provider.startswith(SERVER_LANE) else "provider"
        if self.inflight_global >= self.global_cap:
            return "global"
        return None

    def set_cap(self, lane: str, cap: int) -> None:
        """Add or change a lane's cap (a hosted server's, when the servers file changes)."""
        self.provider_caps[lane] = cap
        self.inflight_by_provider.setdefault(lane, 0)

    def try_acquire(self, session_id: str, provider: str | None, now: float) -> Lease | Rejection:
        """Take every cap the call needs, or none and say which one is full."""
        scope = self.blocking_scope(session_id, provider)
        if scope is not None:
            return self._reject(scope, provider)
        return self._take(session_id, provider, now)

    def release(self, lease: Lease, now: float) -> list[tuple[Waiter, Lease]]:
        """Give a lease back (a second release is a no-op) and admit waiters that now fit."""
        if lease.released:
            return []
        lease.released = True
        self.inflight_global -= 1
        left = self.inflight_by_session[lease.session_id] - 1
        if left:
            self.inflight_by_session[lease.session_id] = left
        else:
            del self.inflight_by_session[lease.session_id]
        key = lease.provider or ""
        if lease.provider is not None and lease.provider in self.provider_caps:
            self.inflight_by_provider[lease.provider] -= 1
        held_ms = max(0.0, (now - lease.acquired_at) * 1000.0)
        previous = self._hold_ms.get(key, _INITIAL_HOLD_MS)
        self._hold_ms[key] = previous + _EWMA_ALPHA * (held_ms - previous)
        return self.grant_waiters(now) if self._queues else []

    # --- queueing --------------------------------------------------------------------

    def enqueue(
        self, session_id: str, provider: str | None, payload: Any, now: float
    ) -> Waiter | Rejection:
        """Queue a call that may wait; refused when its provider's queue is full."""
        key = provider or ""
        if self._queued.get(key, 0) >= self.queue_max_depth:
            return self._reject(self.blocking_scope(session_id, provider) or "global", provider)
        waiter = Waiter(session_id, provider, now, payload)
        sessions = self._queues.setdefault(key, OrderedDict())
        sessions.setdefault(session_id, deque()).append(waiter)
        self._queued[key] = self._queued.get(key, 0) + 1
        return waiter

    def withdraw(self, waiter: Waiter) -> bool:
        """Remove a waiter (timed out, cancelled, session gone). False if already gone."""
        if not waiter.active:
            return False
        waiter.active = False
        key = waiter.provider or ""
        sessions = self._queues[key]
        waiters = sessions[waiter.session_id]
        waiters.remove(waiter)
        if not waiters:
            del sessions[waiter.session_id]
        if not sessions:
            del self._queues[key]
        self._queued[key] -= 1
        return True

    def grant_waiters(self, now: float) -> list[tuple[Waiter, Lease]]:
        """Admit queued calls while caps allow, one per session per turn, round-robin."""
        granted: list[tuple[Waiter, Lease]] = []
        progress = True
        while progress and self._queues:
            progress = False
            for key in list(self._queues):
                sessions = self._queues.get(key)
                if sessions is None:
                    continue
                for session_id in list(sessions):
                    waiter = sessions[session_id][0]
                    if self.blocking_scope(session_id, waiter.provider) is not None:
                        continue
                    self.withdraw(waiter)
                    if session_id in sessions:
                        sessions.move_to_end(session_id)
                    granted.append((waiter, self._take(session_id, waiter.provider, now)))
                    progress = True
                    break
                if key in self._queues:
                    self._queues.move_to_end(key)
        return granted

    def queued(self, provider: str | None = None) -> int:
        return self._queued.get(provider or "", 0)

    @property
    def queued_total(self) -> int:
        return sum(self._queued.values())

    # --- internals -------------------------------------------------------------------

    def _take(self, session_id: str, provider: str | None, now: float) -> Lease:
        self.inflight_global += 1
        self.inflight_by_session[session_id] = self.inflight_by_session.get(session_id, 0) + 1
        if provider is not None and provider in self.provider_caps:
            self.inflight_by_provider[provider] += 1
        return Lease(session_id, provider, now)

    def _reject(self, scope: Scope, provider: str | None) -> Rejection:
        cap = {
            "session": self.session_cap,
            "global": self.global_cap,
            "provider": self.provider_caps.get(provider or "", 1),
            "server": self.provider_caps.get(provider or "", 1),
        }[scope]
        hold_ms = self._hold_ms.get(
            (provider or "") if scope in ("provider", "server") else "", _INITIAL_HOLD_MS
        )
        # With `cap` slots each held ~hold_ms, one frees up every hold_ms / cap on average.
        retry_ms = int(min(10_000.0, max(10.0, hold_ms / max(1, cap))))
        return Rejection(scope, provider, retry_ms)
