"""Unit tests for broker.calls.scheduler: caps, all-or-nothing admission, fair queues, and a
state-machine property test over thousands of mixed call outcomes."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from broker.calls.scheduler import Lease, Rejection, Scheduler, Waiter


def make(
    session_cap: int = 8,
    global_cap: int = 24,
    caps: dict[str, int] | None = None,
    depth: int = 256,
) -> Scheduler:
    """A scheduler with the design's default caps unless told otherwise."""
    return Scheduler(
        session_cap=session_cap,
        global_cap=global_cap,
        provider_caps={"kimi": 6, "glm": 4} if caps is None else caps,
        queue_max_depth=depth,
    )


def lease(outcome: Lease | Rejection) -> Lease:
    """Assert a call was admitted and return its lease."""
    assert isinstance(outcome, Lease), outcome
    return outcome


def rejection(outcome: Lease | Waiter | Rejection) -> Rejection:
    """Assert a call was refused and return why."""
    assert isinstance(outcome, Rejection), outcome
    return outcome


def waiter(outcome: Waiter | Rejection) -> Waiter:
    """Assert a call was queued and return its waiter."""
    assert isinstance(outcome, Waiter), outcome
    return outcome


# --- caps ----------------------------------------------------------------------------


def test_session_cap_rejects_with_session_scope() -> None:
    """A session at its cap is refused with scope session; other sessions still run."""
    s = make(session_cap=2)
    lease(s.try_acquire("a", None, 0))
    lease(s.try_acquire("a", None, 0))
    r = rejection(s.try_acquire("a", None, 0))
    assert (r.scope, r.provider) == ("session", None)
    assert r.retry_after_ms > 0
    lease(s.try_acquire("b", None, 0))


def test_provider_cap_rejects_with_provider_scope() -> None:
    """A full provider refuses with scope provider naming it; other providers still run."""
    s = make(caps={"kimi": 1, "glm": 1})
    lease(s.try_acquire("a", "kimi", 0))
    r = rejection(s.try_acquire("b", "kimi", 0))
    assert (r.scope, r.provider) == ("provider", "kimi")
    assert r.retry_after_ms > 0
    assert "kimi" in r.describe()
    lease(s.try_acquire("b", "glm", 0))
    lease(s.try_acquire("b", None, 0))


def test_global_cap_rejects_with_global_scope() -> None:
    """The daemon-wide cap refuses with scope global once all sessions together reach it."""
    s = make(session_cap=2, global_cap=3)
    lease(s.try_acquire("a", None, 0))
    lease(s.try_acquire("b", "kimi", 0))
    lease(s.try_acquire("c", "glm", 0))
    r = rejection(s.try_acquire("d", None, 0))
    assert r.scope == "global"
    assert r.retry_after_ms > 0


def test_retry_after_stays_positive_after_instant_calls() -> None:
    """Even when calls finish instantly the hint never drops to zero."""
    s = make(caps={"kimi": 1})
    for _ in range(50):
        s.release(lease(s.try_acquire("a", "kimi", 5.0)), 5.0)
    s.try_acquire("a", "kimi", 5.0)
    assert rejection(s.try_acquire("b", "kimi", 5.0)).retry_after_ms > 0


def test_rejection_by_provider_takes_no_other_slot() -> None:
    """All or nothing: a call refused by its provider cap holds no session or global slot."""
    s = make(caps={"kimi": 1})
    lease(s.try_acquire("a", "kimi", 0))
    before = (s.inflight_global, dict(s.inflight_by_session), dict(s.inflight_by_provider))
    rejection(s.try_acquire("b", "kimi", 0))
    assert (s.inflight_global, dict(s.inflight_by_session), dict(s.inflight_by_provider)) == before
    assert s.inflight_by_session.get("b", 0) == 0


def test_rejection_by_global_takes_no_provider_slot() -> None:
    """A call refused by the global cap leaves its provider counter alone."""
    s = make(global_cap=1)
    lease(s.try_acquire("a", None, 0))
    rejection(s.try_acquire("b", "glm", 0))
    assert s.inflight_by_provider["glm"] == 0
    assert s.inflight_by_session.get("b", 0) == 0


def test_release_is_idempotent() -> None:
    """A second release of the same lease changes nothing (outcomes may race)."""
    s = make()
    one = lease(s.try_acquire("a", "kimi", 0))
    lease(s.try_acquire("a", "kimi", 0))
    s.release(one, 1)
    assert (s.inflight_global, s.inflight_by_provider["kimi"], s.inflight_by_session["a"]) == (
        1,
        1,
        1,
    )
    assert s.release(one, 2) == []
    assert (s.inflight_global, s.inflight_by_provider["kimi"], s.inflight_by_session["a"]) == (
        1,
        1,
        1,
    )


def test_release_frees_the_slot_for_the_next_call() -> None:
    """After a release the same cap admits another call."""
    s = make(caps={"glm": 1})
    first = lease(s.try_acquire("a", "glm", 0))
    rejection(s.try_acquire("b", "glm", 0))
    s.release(first, 1)
    lease(s.try_acquire("b", "glm", 1))


@pytest.mark.parametrize("provider", [None, "openai"])
def test_untagged_or_uncapped_calls_never_touch_provider_counters(provider: str | None) -> None:
    """Calls with no provider (or one without a cap) count only against session and global."""
    s = make(session_cap=100, global_cap=100)
    leases = [lease(s.try_acquire("a", provider, 0)) for _ in range(20)]
    assert s.inflight_by_provider == {"kimi": 0, "glm": 0}
    assert s.inflight_global == 20
    for one in leases:
        s.release(one, 1)
    assert s.inflight_by_provider == {"kimi": 0, "glm": 0}
    assert (s.inflight_global, s.inflight_by_session) == (0, {})


# --- queue mode ----------------------------------------------------------------------


def test_release_grants_the_waiter_it_made_room_for() -> None:
    """A queued call is admitted by the release that frees its cap, with its payload."""
    s = make(caps={"kimi": 1})
    running = lease(s.try_acquire("a", "kimi", 0))
    w = waiter(s.enqueue("b", "kimi", "call-1", 0))
    assert s.queued("kimi") == 1
    granted = s.release(running, 1)
    assert [(g.payload, g.session_id) for g, _ in granted] == [("call-1", "b")]
    assert granted[0][1].session_id == "b"
    assert not w.active
    assert s.queued("kimi") == 0
    assert s.inflight_by_provider["kimi"] == 1


def test_round_robin_across_sessions() -> None:
    """A session with 10 waiters cannot starve one with a single waiter."""
    s = make(session_cap=100, global_cap=100, caps={"kimi": 1})
    running = lease(s.try_acquire("x", "kimi", 0))
    for i in range(10):
        waiter(s.enqueue("A", "kimi", f"A{i}", 0))
    waiter(s.enqueue("B", "kimi", "B0", 0))
    order: list[str] = []
    current = running
    while s.queued_total:
        granted = s.release(current, 1)
        assert len(granted) == 1
        order.append(granted[0][0].payload)
        current = granted[0][1]
    assert order[0] == "A0"
    assert order.index("B0") <= 1
    assert [p for p in order if p.startswith("A")] == [f"A{i}" for i in range(10)]


def test_round_robin_within_one_grant_pass() -> None:
    """When several slots are free at once, grants alternate between sessions."""
    s = make(session_cap=100, global_cap=100, caps={"glm": 4})
    for i in range(6):
        waiter(s.enqueue("A", "glm", f"A{i}", 0))
    for i in range(2):
        waiter(s.enqueue("B", "glm", f"B{i}", 0))
    granted = s.grant_waiters(1)
    assert [w.payload for w, _ in granted] == ["A0", "B0", "A1", "B1"]
    assert s.inflight_by_provider["glm"] == 4
    assert s.queued("glm") == 4


def test_waiters_on_a_full_provider_do_not_block_another_provider() -> None:
    """A flood of kimi waiters never holds back a glm waiter whose cap has room."""
    s = make(session_cap=100, global_cap=100, caps={"kimi": 1, "glm": 1})
    lease(s.try_acquire("x", "kimi", 0))
    glm_running = lease(s.try_acquire("y", "glm", 0))
    for i in range(20):
        waiter(s.enqueue("A", "kimi", f"kimi{i}", 0))
    waiter(s.enqueue("B", "glm", "glm0", 0))
    granted = s.release(glm_running, 1)
    assert [w.payload for w, _ in granted] == ["glm0"]
    assert s.queued("kimi") == 20


def test_session_capped_waiter_does_not_block_other_sessions() -> None:
    """A waiter stuck behind its own session cap lets another session's waiter through."""
    s = make(session_cap=1, global_cap=100, caps={"kimi": 1})
    running = lease(s.try_acquire("A", None, 0))  # A is at its session cap
    kimi = lease(s.try_acquire("C", "kimi", 0))
    waiter(s.enqueue("A", "kimi", "A0", 0))
    waiter(s.enqueue("B", "kimi", "B0", 0))
    granted = s.release(kimi, 1)
    assert [w.payload for w, _ in granted] == ["B0"]
    assert s.release(running, 1) == []  # kimi is full again, A keeps waiting
    assert s.queued("kimi") == 1


def test_withdraw_removes_a_waiter() -> None:
    """A withdrawn waiter (timed out, cancelled, session gone) is never granted."""
    s = make(caps={"kimi": 1})
    running = lease(s.try_acquire("a", "kimi", 0))
    gone = waiter(s.enqueue("b", "kimi", "gone", 0))
    kept = waiter(s.enqueue("c", "kimi", "kept", 0))
    assert s.withdraw(gone) is True
    assert s.withdraw(gone) is False
    assert s.queued("kimi") == 1
    assert [w.payload for w, _ in s.release(running, 1)] == ["kept"]
    assert s.withdraw(kept) is False  # already granted: nothing to withdraw
    assert s.queued_total == 0


def test_queue_max_depth_refuses_more_waiters() -> None:
    """A provider queue at its depth limit refuses with a positive retry hint."""
    s = make(caps={"kimi": 1}, depth=2)
    lease(s.try_acquire("a", "kimi", 0))
    waiter(s.enqueue("b", "kimi", 1, 0))
    waiter(s.enqueue("c", "kimi", 2, 0))
    r = rejection(s.enqueue("d", "kimi", 3, 0))
    assert r.retry_after_ms > 0
    assert r.provider == "kimi"
    assert s.queued("kimi") == 2
    waiter(s.enqueue("d", "glm", 4, 0))  # another provider's queue is separate


# --- property: thousands of mixed outcomes -------------------------------------------

SESSIONS = ("s1", "s2", "s3", "s4")
PROVIDERS = ("kimi", "glm", None, "openai")  # openai: tagged but without a cap
CAPS = {"kimi": 2, "glm": 1}
SESSION_CAP = 3
GLOBAL_CAP = 5
QUEUE_DEPTH = 4
# At the scheduler level every outcome is a release (running call) or a withdraw (queued).
RUN_OUTCOMES = ("result", "tool_error", "timeout", "cancel", "worker_lost", "disconnect")


class Model:
    """What the test believes is outstanding, checked against the scheduler's counters."""

    def __init__(self) -> None:
        self.sched = Scheduler(
            session_cap=SESSION_CAP,
            global_cap=GLOBAL_CAP,
            provider_caps=CAPS,
            queue_max_depth=QUEUE_DEPTH,
        )
        self.now = 0.0
        self.leases: list[Lease] = []
        self.released: list[Lease] = []
        self.waiters: list[Waiter] = []
        self.finished_waiters: list[Waiter] = []
        self.seq = 0

    def tick(self) -> float:
        self.now += 0.003
        return self.now

    def admit(self, grants: list[tuple[Waiter, Lease]]) -> None:
        for w, granted in grants:
            assert w in self.waiters, "granted a waiter that was not queued"
            assert not w.active
            assert (granted.session_id, granted.provider) == (w.session_id, w.provider)
            self.waiters.remove(w)
            self.finished_waiters.append(w)
            self.leases.append(granted)

    def submit(self, session: str, provider: str | None, queue: bool) -> None:
        outcome = self.sched.try_acquire(session, provider, self.tick())
        if isinstance(outcome, Lease):
            self.leases.append(outcome)
            return
        self.check_rejection(outcome, session, provider)
        if not queue:
            return
        self.seq += 1
        queued = self.sched.enqueue(session, provider, self.seq, self.now)
        if isinstance(queued, Waiter):
            assert queued.payload == self.seq
            self.waiters.append(queued)
        else:
            assert queued.retry_after_ms > 0
            assert self.sched.queued(provider) == QUEUE_DEPTH

    def check_rejection(self, r: Rejection, session: str, provider: str | None) -> None:
        """A rejection names a cap that really is full."""
        assert r.retry_after_ms > 0
        assert r.provider == provider
        if r.scope == "session":
            assert self.count(session=session) >= SESSION_CAP
        elif r.scope == "provider":
            assert provider in CAPS
            assert self.count(provider=provider) >= CAPS[provider]
        else:
            assert len(self.leases) >= GLOBAL_CAP

    def finish(self, index: int, twice: bool) -> None:
        done = self.leases.pop(index)
        self.admit(self.sched.release(done, self.tick()))
        self.released.append(done)
        if twice:
            assert self.sched.release(done, self.tick()) == []

    def release_again(self, index: int) -> None:
        before = self.snapshot()
        assert self.sched.release(self.released[index], self.tick()) == []
        assert self.snapshot() == before

    def withdraw(self, index: int) -> None:
        w = self.waiters.pop(index)
        assert self.sched.withdraw(w) is True
        self.finished_waiters.append(w)

    def withdraw_again(self, index: int) -> None:
        before = self.snapshot()
        assert self.sched.withdraw(self.finished_waiters[index]) is False
        assert self.snapshot() == before

    def disconnect(self, session: str) -> None:
        """The session's grace ran out: withdraw its waiters, release its running calls."""
        for w in [w for w in self.waiters if w.session_id == session]:
            self.withdraw(self.waiters.index(w))
        while True:
            mine = [i for i, held in enumerate(self.leases) if held.session_id == session]
            if not mine:
                break
            self.finish(mine[0], twice=False)

    def snapshot(self) -> tuple[object, ...]:
        s = self.sched
        return (
            s.inflight_global,
            dict(s.inflight_by_session),
            dict(s.inflight_by_provider),
            s.queued_total,
        )

    def count(self, *, session: str | None = None, provider: str | None = None) -> int:
        return sum(
            1
            for held in self.leases
            if (session is None or held.session_id == session)
            and (provider is None or held.provider == provider)
        )

    def check(self) -> None:
        """Counters match outstanding leases and waiters, and never exceed a cap."""
        s = self.sched
        assert s.inflight_global == len(self.leases) <= GLOBAL_CAP
        by_session = Counter(held.session_id for held in self.leases)
        assert s.inflight_by_session == dict(by_session)
        assert all(n <= SESSION_CAP for n in by_session.values())
        for provider, cap in CAPS.items():
            assert s.inflight_by_provider[provider] == self.count(provider=provider) <= cap
        assert set(s.inflight_by_provider) == set(CAPS)
        waiting = Counter(w.provider for w in self.waiters)
        for tag in PROVIDERS:
            assert s.queued(tag) == waiting[tag] <= QUEUE_DEPTH
        assert s.queued_total == len(self.waiters)
        assert all(w.active for w in self.waiters)
        # Work-conserving: nobody waits while every cap it needs has room.
        for w in self.waiters:
            assert s.blocking_scope(w.session_id, w.provider) is not None

    def drain(self) -> None:
        """Release every running call until all waiters ran; then everything is zero."""
        for _ in range(10_000):
            if not self.leases:
                break
            self.finish(0, twice=False)
            self.check()
        assert not self.waiters, "waiters left behind with every cap free"
        s = self.sched
        assert s.inflight_global == 0
        assert s.inflight_by_session == {}
        assert s.inflight_by_provider == dict.fromkeys(CAPS, 0)
        assert s.queued_total == 0
        assert s.grant_waiters(self.tick()) == []


class SchedulerMachine(RuleBasedStateMachine):
    """Random interleavings of admission, queueing and every call outcome."""

    def __init__(self) -> None:
        super().__init__()
        self.m = Model()

    @initialize()
    def start(self) -> None:
        self.m.check()

    @rule(
        session=st.sampled_from(SESSIONS), provider=st.sampled_from(PROVIDERS), queue=st.booleans()
    )
    def submit(self, session: str, provider: str | None, queue: bool) -> None:
        self.m.submit(session, provider, queue)

    @precondition(lambda self: self.m.leases)
    @rule(data=st.data(), outcome=st.sampled_from(RUN_OUTCOMES), twice=st.booleans())
    def finish(self, data: st.DataObject, outcome: str, twice: bool) -> None:
        index = data.draw(st.integers(0, len(self.m.leases) - 1))
        self.m.finish(index, twice)

    @precondition(lambda self: self.m.released)
    @rule(data=st.data())
    def release_again(self, data: st.DataObject) -> None:
        self.m.release_again(data.draw(st.integers(0, len(self.m.released) - 1)))

    @precondition(lambda self: self.m.waiters)
    @rule(data=st.data())
    def withdraw(self, data: st.DataObject) -> None:
        self.m.withdraw(data.draw(st.integers(0, len(self.m.waiters) - 1)))

    @precondition(lambda self: self.m.finished_waiters)
    @rule(data=st.data())
    def withdraw_again(self, data: st.DataObject) -> None:
        self.m.withdraw_again(data.draw(st.integers(0, len(self.m.finished_waiters) - 1)))

    @rule(session=st.sampled_from(SESSIONS))
    def disconnect(self, session: str) -> None:
        self.m.disconnect(session)

    @rule()
    def grant(self) -> None:
        assert self.m.sched.grant_waiters(self.m.tick()) == []

    @invariant()
    def counters_match(self) -> None:
        self.m.check()

    def teardown(self) -> None:
        self.m.drain()


SchedulerMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_scheduler_state_machine = SchedulerMachine.TestCase


@pytest.mark.parametrize("seed", range(5))
def test_long_random_operation_list(seed: int) -> None:
    """5000 random operations per seed; counters checked after each and zero at the end."""
    rng = random.Random(seed)
    m = Model()
    for _ in range(5000):
        op = rng.random()
        if op < 0.45:
            m.submit(rng.choice(SESSIONS), rng.choice(PROVIDERS), rng.random() < 0.6)
        elif op < 0.75 and m.leases:
            m.finish(rng.randrange(len(m.leases)), twice=rng.random() < 0.2)
        elif op < 0.85 and m.waiters:
            m.withdraw(rng.randrange(len(m.waiters)))
        elif op < 0.9 and m.released:
            m.release_again(rng.randrange(len(m.released)))
        elif op < 0.93 and m.finished_waiters:
            m.withdraw_again(rng.randrange(len(m.finished_waiters)))
        elif op < 0.96:
            m.disconnect(rng.choice(SESSIONS))
        m.check()
    m.drain()
