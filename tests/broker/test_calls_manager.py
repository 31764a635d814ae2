"""Unit tests for broker.calls.manager: a call's every way out, with fake workers.

No sockets and no daemon: a real CallManager, Scheduler and SessionRegistry, a fake
supervisor whose workers record what they are sent, and an event loop whose clock
moves only when a test says so, so timeouts and queue waits fire on demand instead
of after real sleeps. What is asserted is what a client would notice: the frames it
gets, and that capacity is free again afterwards.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import msgspec
import orjson
import pytest

from broker.calls.catalog import Catalog
from broker.calls.manager import CallManager, CallRecord
from broker.calls.scheduler import Scheduler
from broker.calls.session import Session, SessionRegistry
from broker.router.codec import Dialect, FrameCodec
from exai.errors import ErrorCode, WorkerLost
from exai.ipc import Call, Cancel, Progress, Ready, Result, SessionEnded
from exai.settings import Settings

TOOLS = [
    {
        "name": "echo",
        "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}},
    },
    {"name": "kimi_chat", "inputSchema": {"type": "object"}},
    {"name": "glm_chat", "inputSchema": {"type": "object"}},
]
CATALOG = Catalog.from_ready(Ready(1, orjson.dumps(TOOLS), server_name="test"))
OK_RESULT = b'{"content":[{"type":"text","text":"hi"}],"isError":false}'
TOOL_ERROR = b'{"content":[{"type":"text","text":"kaput"}],"isError":true}'


# --- fakes ---------------------------------------------------------------------------


class VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock moves only in `advance`: timers fire on demand."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock and run one loop iteration: every timer now due fires."""
        self.now += seconds
        self.call_soon(self.stop)
        self.run_forever()


class FakeWorker:
    """A worker slot as the manager sees it, recording every message it is sent."""

    def __init__(self, slot: int, live: bool = True) -> None:
        self.slot = slot
        self.state = "ready" if live else "starting"
        self.calls: set[int] = set()
        self.cancelled: dict[int, float] = {}
        self.served = 0
        self.sent: list[Any] = []

    @property
    def live(self) -> bool:
        return self.state == "ready"

    def send(self, message: Any) -> None:
        self.sent.append(message)

    def received(self, kind: type) -> list[Any]:
        return [m for m in self.sent if isinstance(m, kind)]


class FakeSupervisor:
    """The supervisor's side of the call path, with workers that never run anything."""

    def __init__(self, workers: int = 1, live: bool = True) -> None:
        self.workers = [FakeWorker(slot, live) for slot in range(workers)]

    def live_workers(self) -> list[FakeWorker]:
        return [w for w in self.workers if w.live]

    def note_dispatch(self, worker: FakeWorker) -> None:
        worker.served += 1

    def cancel_call(self, worker: FakeWorker, call_id: int) -> None:
        if call_id in worker.calls and call_id not in worker.cancelled:
            worker.cancelled[call_id] = 0.0
            worker.send(Cancel(call_id))


class Client:
    """One session and the frames it received, decoded."""

    def __init__(self, session: Session, dialect: Dialect, frames: list[bytes]) -> None:
        self.session = session
        self.dialect = dialect
        self.raw = frames

    @property
    def frames(self) -> list[dict[str, Any]]:
        return [json.loads(f) for f in self.raw]

    def answers(self, rid: Any) -> list[dict[str, Any]]:
        """The final answers (results or errors) this client got for request `rid`."""
        if self.dialect is Dialect.OP:
            return [f for f in self.frames if f["op"] == "call_tool_res" and f["request_id"] == rid]
        return [f for f in self.frames if "op" not in f and f.get("id") == rid]

    def answer(self, rid: Any) -> dict[str, Any]:
        """The one answer to `rid` (fails unless there is exactly one)."""
        answers = self.answers(rid)
        assert len(answers) == 1, self.frames
        return answers[0]


def error_code(answer: dict[str, Any]) -> str:
    """The ErrorCode name of a failed answer in either dialect ("ok" when it succeeded)."""
    if "op" in answer:
        return str(answer["error"]["code"]) if "error" in answer else "ok"
    if "error" in answer:
        return str(answer["error"]["data"]["code"])
    return "ok"


class Broker:
    """A CallManager on a virtual clock, with fake workers and real sessions."""

    def __init__(self, loop: VirtualLoop, *, workers: int = 1, live: bool = True, **opts: Any):
        defaults: dict[str, Any] = {
            "call_timeout_s": 30.0,
            "session_max_inflight": 8,
            "global_max_inflight": 24,
            "provider_caps": {"kimi": 2, "glm": 2},
        }
        self.loop = loop
        self.settings = Settings(**{**defaults, **opts})
        self.scheduler = Scheduler(
            session_cap=self.settings.session_max_inflight,
            global_cap=self.settings.global_max_inflight,
            provider_caps=self.settings.provider_caps,
            queue_max_depth=self.settings.queue_max_depth,
        )
        self.supervisor = FakeSupervisor(workers, live)
        self.records: list[CallRecord] = []
        self.sessions = SessionRegistry(resume_grace_s=60.0, outbox_max_bytes=1 << 20)
        self._next_session = 0

        async def build() -> CallManager:
            return CallManager(
                self.settings,
                self.scheduler,
                self.supervisor,  # type: ignore[arg-type]
                FrameCodec(),
                self.records.append,
            )

        self.manager = loop.run_until_complete(build())
        self.manager.catalog = CATALOG

    # --- clients -----------------------------------------------------------------------

    def client(self, dialect: Dialect = Dialect.OP, *, acks: bool = False) -> Client:
        self._next_session += 1
        frames: list[bytes] = []
        session, _, _ = self.sessions.open(f"session-{self._next_session}", frames.append, acks)
        return Client(session, dialect, frames)

    def call(
        self, client: Client, rid: Any, tool: str = "echo", arguments: bytes = b'{"text":"hi"}'
    ) -> None:
        """The client asks for one call, as the router hands it over."""
        request_id = msgspec.Raw(json.dumps(rid).encode())
        token = request_id if client.dialect is Dialect.OP else None
        self.manager.submit(
            client.session, client.dialect, request_id, tool, msgspec.Raw(arguments), token
        )

    # --- workers -----------------------------------------------------------------------

    def dispatched(self) -> list[Call]:
        """Every Call message any worker was sent, oldest first."""
        calls = [m for w in self.supervisor.workers for m in w.received(Call)]
        return sorted(calls, key=lambda c: c.call_id)

    def last_call_id(self) -> int:
        return self.dispatched()[-1].call_id

    def worker_of(self, call_id: int) -> FakeWorker:
        return next(w for w in self.supervisor.workers if call_id in w.calls)

    def reply(self, call_id: int, **result: Any) -> None:
        """The worker holding `call_id` sends its Result."""
        worker = self.worker_of(call_id)
        self.manager.handle_worker_message(worker, Result(call_id, **result))  # type: ignore[arg-type]

    def succeed(self, call_id: int, payload: bytes = OK_RESULT) -> None:
        self.reply(call_id, result=payload)

    def lose(self, worker: FakeWorker) -> None:
        """The worker process dies, as the supervisor reports it."""
        lost = set(worker.calls)
        worker.calls.clear()
        worker.cancelled.clear()
        worker.state = "dead"
        self.manager.handle_worker_lost(worker, lost, "worker process 1 exited (signal 9)")  # type: ignore[arg-type]

    def ready(self, worker: FakeWorker) -> None:
        worker.state = "ready"
        self.manager.handle_worker_ready(worker)  # type: ignore[arg-type]

    # --- checks ------------------------------------------------------------------------

    def assert_capacity_free(self) -> None:
        """No call holds a cap, none waits in a queue, none is in flight."""
        scheduler = self.scheduler
        assert scheduler.inflight_global == 0
        assert scheduler.inflight_by_session == {}
        assert set(scheduler.inflight_by_provider.values()) <= {0}
        assert scheduler.queued_total == 0
        assert self.manager.inflight() == 0

    def outcomes(self) -> list[str]:
        return [r.outcome for r in self.records]


@pytest.fixture
def make(loop: VirtualLoop) -> Callable[..., Broker]:
    """A factory of brokers on the test's loop."""

    def factory(**opts: Any) -> Broker:
        return Broker(loop, **opts)

    return factory


# --- the ordinary path ---------------------------------------------------------------


def test_op_call_is_acked_then_answered_with_outputs_and_text(make: Callable[..., Broker]) -> None:
    """call_tool_ack at once, then call_tool_res built from the worker's result, byte for byte."""
    broker = make()
    client = broker.client()
    broker.call(client, "r-1")
    assert client.raw == [b'{"op":"call_tool_ack","request_id":"r-1"}']
    call = broker.dispatched()[0]
    assert (call.tool, call.arguments, call.session_id, call.want_progress) == (
        "echo",
        b'{"text":"hi"}',
        client.session.id,
        True,
    )
    broker.succeed(call.call_id)
    assert client.raw[1] == (
        b'{"op":"call_tool_res","request_id":"r-1","outputs":[{"type":"text","text":"hi"}],'
        b'"text":"hi","isError":false}'
    )
    assert broker.outcomes() == ["ok"]
    broker.assert_capacity_free()


def test_op_tool_error_carries_exec_error_and_structured_content(
    make: Callable[..., Broker],
) -> None:
    """A tool result flagged isError answers with EXEC_ERROR and the tool's text."""
    broker = make()
    client = broker.client()
    broker.call(client, 5)
    payload = (
        b'{"content":[{"type":"text","text":"kaput"}],"isError":true,"structuredContent":{"a":1}}'
    )
    broker.reply(broker.last_call_id(), result=payload, is_error=True)
    assert client.raw[-1] == (
        b'{"op":"call_tool_res","request_id":5,"outputs":[{"type":"text","text":"kaput"}],'
        b'"text":"kaput","isError":true,"structuredContent":{"a":1},'
        b'"error":{"code":"EXEC_ERROR","message":"kaput"}}'
    )
    assert broker.outcomes() == ["EXEC_ERROR"]


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b'{"content":[],"isError":null}', id="isError-null"),
        pytest.param(b'{"content":"hi"}', id="content-a-string"),
        pytest.param(b'{"content":[1,"two"]}', id="content-not-objects"),
        pytest.param(b'{"content":[{"type":"text"', id="not-json"),
    ],
)
def test_a_malformed_op_result_is_an_exec_error_and_frees_its_capacity(
    make: Callable[..., Broker], payload: bytes
) -> None:
    """A result the op answer cannot be built from fails that call with EXEC_ERROR; the
    capacity comes back once and the next result from the same worker is delivered."""
    broker = make(session_max_inflight=2, global_max_inflight=2)
    first, second = broker.client(), broker.client()
    broker.call(first, 1)
    bad = broker.last_call_id()
    broker.call(second, 2)
    good = broker.last_call_id()
    # Both results as one read of the worker's pipe delivers them.
    broker.succeed(bad, payload)
    broker.succeed(good)
    answer = first.answer(1)
    assert answer["error"]["code"] == "EXEC_ERROR"
    assert "malformed" in answer["error"]["message"]
    assert error_code(second.answer(2)) == "ok"
    assert sorted(broker.outcomes()) == ["EXEC_ERROR", "ok"]
    broker.assert_capacity_free()


def text_result(text_bytes: int) -> bytes:
    """A tool result of one text item `text_bytes` long."""
    return b'{"content":[{"type":"text","text":"' + b"x" * text_bytes + b'"}]}'


@pytest.mark.parametrize("dialect", [Dialect.OP, Dialect.MCP])
def test_the_size_limit_is_on_the_answer_frame_not_the_payload(
    make: Callable[..., Broker], dialect: Dialect
) -> None:
    """A payload under the limit whose answer frame is over it (an op frame carries the
    text twice) is RESULT_TOO_LARGE; an answer frame right at the limit is sent."""
    limit = 64 * 1024
    # How often the text appears in the answer frame.
    copies = 2 if dialect is Dialect.OP else 1
    broker = make(max_frame_bytes=limit)
    client = broker.client(dialect)
    broker.call(client, "empty")
    broker.succeed(broker.last_call_id(), text_result(0))
    overhead = len(client.raw[-1]) - len(b'"empty"')
    fitting = (limit - overhead - len(b"1")) // copies

    broker.call(client, 1)
    broker.succeed(broker.last_call_id(), text_result(fitting + 1))
    assert len(text_result(fitting + 1)) < limit
    assert error_code(client.answer(1)) == "RESULT_TOO_LARGE"

    broker.call(client, 2)
    broker.succeed(broker.last_call_id(), text_result(fitting))
    assert error_code(client.answer(2)) == "ok"
    assert limit - copies < len(client.raw[-1]) <= limit
    assert max(len(frame) for frame in client.raw) <= limit
    broker.assert_capacity_free()


def test_mcp_call_answer_is_the_worker_result_spliced(make: Callable[..., Broker]) -> None:
    """An MCP client gets no ack and a JSON-RPC result holding the worker's bytes as they are."""
    broker = make()
    client = broker.client(Dialect.MCP)
    broker.call(client, 41)
    assert client.raw == []
    assert broker.dispatched()[0].want_progress is False
    payload = b'{"content": [ ], "isError": false}'
    broker.succeed(broker.last_call_id(), payload)
    assert client.raw == [b'{"jsonrpc":"2.0","id":41,"result":' + payload + b"}"]


def test_progress_reaches_the_client_in_its_dialect_until_the_call_is_done(
    make: Callable[..., Broker],
) -> None:
    """Op clients get progress frames; MCP clients notifications/progress with their token;
    progress after the answer is dropped."""
    broker = make()
    op = broker.client()
    broker.call(op, "p")
    op_call = broker.last_call_id()
    broker.manager.handle_worker_message(broker.worker_of(op_call), Progress(op_call, 1.0, 4.0))  # type: ignore[arg-type]
    assert op.raw[-1] == (
        b'{"op":"progress","request_id":"p","progress":1.0,"total":4.0,"message":null}'
    )
    mcp = broker.client(Dialect.MCP)
    request_id = msgspec.Raw(b"9")
    broker.manager.submit(
        mcp.session, Dialect.MCP, request_id, "echo", msgspec.Raw(b"{}"), msgspec.Raw(b'"tok"')
    )
    mcp_call = broker.last_call_id()
    worker = broker.worker_of(mcp_call)
    broker.manager.handle_worker_message(worker, Progress(mcp_call, 0.5, None, "half"))  # type: ignore[arg-type]
    assert json.loads(mcp.raw[-1]) == {
        "jsonrpc": "2.0",
        "method": "notifications/progress",
        "params": {"progressToken": "tok", "progress": 0.5, "message": "half"},
    }
    broker.succeed(mcp_call)
    frames = len(mcp.raw)
    broker.manager.handle_worker_message(worker, Progress(mcp_call, 0.9))  # type: ignore[arg-type]
    assert len(mcp.raw) == frames


def test_a_resent_request_id_joins_the_running_call(make: Callable[..., Broker]) -> None:
    """The same request id while its call runs is acked again but never runs twice."""
    broker = make()
    client = broker.client()
    broker.call(client, "dup")
    broker.call(client, "dup")
    assert len(broker.dispatched()) == 1
    assert [f["op"] for f in client.frames] == ["call_tool_ack", "call_tool_ack"]
    broker.succeed(broker.last_call_id())
    assert len(client.answers("dup")) == 1
    broker.assert_capacity_free()


def test_a_shim_resending_an_answered_id_gets_the_same_answer(make: Callable[..., Broker]) -> None:
    """For sessions that retry (acks on), a finished id is answered again from memory."""
    broker = make()
    shim = broker.client(Dialect.MCP, acks=True)
    broker.call(shim, 3)
    broker.succeed(broker.last_call_id())
    broker.call(shim, 3)
    assert len(broker.dispatched()) == 1
    assert shim.raw[0] == shim.raw[1]


def test_a_shim_is_acked_only_when_its_call_takes_a_while(
    make: Callable[..., Broker], loop: VirtualLoop
) -> None:
    """A quick answer replaces the shim's ack; a call still running after the ack delay gets
    `{"op":"ack"}` once."""
    broker = make()
    shim = broker.client(Dialect.MCP, acks=True)
    broker.call(shim, "quick")
    broker.succeed(broker.last_call_id())
    loop.advance(1.0)
    assert [f.get("op") for f in shim.frames] == [None]
    broker.call(shim, "slow")
    loop.advance(1.0)
    assert shim.raw[-1] == b'{"op":"ack","id":"slow"}'
    loop.advance(1.0)
    broker.succeed(broker.last_call_id())
    assert [f.get("op") for f in shim.frames] == [None, "ack", None]


# --- every way out releases capacity exactly once ------------------------------------
#
# Each scenario runs with one slot in all (global cap 1), so a leaked or double-freed
# slot shows: afterwards the counters must be zero and a new call must run at once.


def result_ok(broker: Broker, client: Client) -> str:
    broker.call(client, 1)
    broker.succeed(broker.last_call_id())
    return "ok"


def tool_error(broker: Broker, client: Client) -> str:
    broker.call(client, 1)
    broker.reply(broker.last_call_id(), result=TOOL_ERROR, is_error=True)
    return "EXEC_ERROR"


def worker_failure(broker: Broker, client: Client) -> str:
    broker.call(client, 1)
    broker.reply(broker.last_call_id(), error_code="TOOL_NOT_FOUND", error_message="gone")
    return "TOOL_NOT_FOUND"


def timeout(broker: Broker, client: Client) -> str:
    broker.call(client, 1)
    call_id = broker.last_call_id()
    worker = broker.worker_of(call_id)
    broker.loop.advance(broker.settings.call_timeout_s + 0.01)
    assert worker.received(Cancel) == [Cancel(call_id)]
    # The worker confirms the cancellation later: nothing more reaches the client.
    broker.reply(call_id, error_code="CANCELLED", error_message="cancelled")
    return "TIMEOUT"


def cancel_by_op_client(broker: Broker, client: Client) -> str:
    broker.call(client, 1)
    call_id = broker.last_call_id()
    worker = broker.worker_of(call_id)
    assert broker.manager.cancel(client.session, msgspec.Raw(b"1"), answer=True)
    assert not broker.manager.cancel(client.session, msgspec.Raw(b"1"), answer=True)
    assert worker.received(Cancel) == [Cancel(call_id)]
    return "CANCELLED"


def worker_lost(broker: Broker, client: Client) -> str:
    broker.call(client, 1)
    worker = broker.worker_of(broker.last_call_id())
    broker.lose(worker)
    broker.ready(worker)
    return "WORKER_LOST"


def result_too_large(broker: Broker, client: Client) -> str:
    broker.call(client, 1)
    text = "x" * broker.settings.max_frame_bytes
    payload = b'{"content":[{"type":"text","text":"' + text.encode() + b'"}]}'
    broker.succeed(broker.last_call_id(), payload)
    return "RESULT_TOO_LARGE"


def shutdown_fails_running_call(broker: Broker, client: Client) -> str:
    broker.call(client, 1)
    call = broker.manager.calls[broker.last_call_id()]
    error = WorkerLost("the daemon shut down", cause="daemon_shutdown")
    broker.manager.fail(call, error)
    broker.manager.fail(call, error)
    return "WORKER_LOST"


def shutdown_refuses_new_call(broker: Broker, client: Client) -> str:
    broker.manager.shutting_down = True
    broker.call(client, 1)
    assert broker.dispatched() == []
    broker.manager.shutting_down = False
    return "SHUTTING_DOWN"


def unknown_tool(broker: Broker, client: Client) -> str:
    broker.call(client, 1, tool="nope")
    return "TOOL_NOT_FOUND"


def invalid_arguments(broker: Broker, client: Client) -> str:
    broker.call(client, 1, arguments=b'{"text":5}')
    return "INVALID_ARGUMENTS"


def over_capacity(broker: Broker, client: Client) -> str:
    other = broker.client()
    broker.call(other, "busy")
    broker.call(client, 1)
    broker.succeed(broker.last_call_id())
    return "OVER_CAPACITY"


def queue_wait_expires(broker: Broker, client: Client) -> str:
    other = broker.client()
    broker.call(other, "busy")
    broker.call(client, 1)
    assert client.frames[0]["op"] == "call_tool_ack"
    broker.loop.advance(broker.settings.queue_timeout_s + 0.01)
    assert "in the queue" in client.answer(1)["error"]["message"]
    broker.succeed(broker.last_call_id())
    return "OVER_CAPACITY"


def queued_then_cancelled(broker: Broker, client: Client) -> str:
    other = broker.client()
    broker.call(other, "busy")
    broker.call(client, 1)
    assert broker.manager.cancel(client.session, msgspec.Raw(b"1"), answer=True)
    broker.succeed(broker.last_call_id())
    assert len(broker.dispatched()) == 1
    return "CANCELLED"


def held_without_worker_times_out(broker: Broker, client: Client) -> str:
    worker = broker.supervisor.workers[0]
    worker.state = "starting"
    broker.call(client, 1)
    assert broker.dispatched() == []
    broker.loop.advance(broker.settings.call_timeout_s + 0.01)
    broker.ready(worker)
    assert broker.dispatched() == []
    return "TIMEOUT"


def held_then_run_when_a_worker_is_ready(broker: Broker, client: Client) -> str:
    worker = broker.supervisor.workers[0]
    worker.state = "starting"
    broker.call(client, 1)
    broker.ready(worker)
    broker.succeed(broker.last_call_id())
    return "ok"


NO_QUEUE, QUEUE = 0.0, 2.0
# Each scenario, and the queue settings it means something under.
SCENARIOS: list[tuple[Callable[[Broker, Client], str], tuple[float, ...]]] = [
    (result_ok, (NO_QUEUE, QUEUE)),
    (tool_error, (NO_QUEUE, QUEUE)),
    (worker_failure, (NO_QUEUE, QUEUE)),
    (timeout, (NO_QUEUE, QUEUE)),
    (cancel_by_op_client, (NO_QUEUE, QUEUE)),
    (worker_lost, (NO_QUEUE, QUEUE)),
    (result_too_large, (NO_QUEUE, QUEUE)),
    (shutdown_fails_running_call, (NO_QUEUE, QUEUE)),
    (shutdown_refuses_new_call, (NO_QUEUE, QUEUE)),
    (unknown_tool, (NO_QUEUE, QUEUE)),
    (invalid_arguments, (NO_QUEUE, QUEUE)),
    # With the queue on, a full cap queues instead of refusing.
    (over_capacity, (NO_QUEUE,)),
    (queue_wait_expires, (QUEUE,)),
    (queued_then_cancelled, (QUEUE,)),
    (held_without_worker_times_out, (NO_QUEUE, QUEUE)),
    (held_then_run_when_a_worker_is_ready, (NO_QUEUE, QUEUE)),
]


@pytest.mark.parametrize(
    ("scenario", "queue_timeout_s"),
    [
        pytest.param(f, q, id=f"{f.__name__}-{'queue' if q else 'no-queue'}")
        for f, modes in SCENARIOS
        for q in modes
    ],
)
def test_every_way_out_answers_once_and_frees_capacity(
    make: Callable[..., Broker], scenario: Callable[[Broker, Client], str], queue_timeout_s: float
) -> None:
    """The client gets one answer with the outcome's code; afterwards no cap is held and
    the next call runs at once."""
    broker = make(
        session_max_inflight=1,
        global_max_inflight=1,
        queue_timeout_s=queue_timeout_s,
        max_frame_bytes=64 * 1024,
    )
    client = broker.client()
    expected = scenario(broker, client)
    assert error_code(client.answer(1)) == expected
    assert expected in broker.outcomes()
    broker.assert_capacity_free()
    # Capacity is really free: the next call is dispatched at once, and answered.
    follower = broker.client()
    dispatched = len(broker.dispatched())
    broker.call(follower, "next")
    assert len(broker.dispatched()) == dispatched + 1
    broker.succeed(broker.last_call_id())
    assert error_code(follower.answer("next")) == "ok"
    broker.assert_capacity_free()


@pytest.mark.parametrize("ending", ["mcp-cancel", "session-end"])
def test_silent_endings_send_nothing_and_free_capacity(
    make: Callable[..., Broker], ending: str
) -> None:
    """An MCP cancel and a session's end stop the call on its worker without an answer."""
    broker = make(session_max_inflight=1, global_max_inflight=1)
    client = broker.client(Dialect.MCP)
    broker.call(client, 1)
    call_id = broker.last_call_id()
    worker = broker.worker_of(call_id)
    if ending == "mcp-cancel":
        assert broker.manager.cancel(client.session, msgspec.Raw(b"1"), answer=False)
    else:
        broker.manager.end_session(client.session)
    assert client.raw == []
    assert worker.received(Cancel) == [Cancel(call_id)]
    assert broker.outcomes() == ["CANCELLED"]
    broker.assert_capacity_free()
    broker.reply(call_id, error_code="CANCELLED")
    assert client.raw == [] and len(broker.records) == 1


def test_session_end_frees_queued_and_held_calls_too(make: Callable[..., Broker]) -> None:
    """Ending a session withdraws its queued calls and drops its held ones."""
    broker = make(session_max_inflight=2, global_max_inflight=2, queue_timeout_s=5.0)
    client = broker.client()
    broker.call(client, "running")
    broker.supervisor.workers[0].state = "starting"
    broker.call(client, "held")
    broker.call(client, "queued")
    assert broker.scheduler.queued_total == 1
    broker.manager.end_session(client.session)
    broker.assert_capacity_free()
    assert sorted(broker.outcomes()) == ["CANCELLED"] * 3
    broker.ready(broker.supervisor.workers[0])
    assert len(broker.dispatched()) == 1


def test_session_isolation_tells_workers_when_a_session_ends(make: Callable[..., Broker]) -> None:
    """With per-session servers the live workers hear SessionEnded; the session's calls
    stick to one worker until then."""
    broker = make(isolation="session", workers=3)
    client = broker.client()
    for rid in range(4):
        broker.call(client, rid)
    assert len({broker.worker_of(c.call_id).slot for c in broker.dispatched()}) == 1
    broker.manager.end_session(client.session)
    for worker in broker.supervisor.workers:
        assert worker.received(SessionEnded) == [SessionEnded(client.session.id)]


def test_a_conversation_sticks_to_its_worker_until_the_worker_dies(
    make: Callable[..., Broker],
) -> None:
    """Calls sharing a continuation_id go to the worker that served the first one, even when
    another is less loaded; once that worker died, the conversation is placed afresh."""
    broker = make(workers=2)
    client = broker.client()
    conversation = b'{"continuation_id":"c-1"}'
    broker.call(client, "first", arguments=conversation)
    home = broker.worker_of(broker.last_call_id())
    broker.call(client, "filler-1")
    other = broker.worker_of(broker.last_call_id())
    assert other is not home
    broker.succeed(broker.last_call_id())
    broker.call(client, "again", arguments=conversation)
    assert broker.worker_of(broker.last_call_id()) is home
    broker.lose(home)
    broker.ready(home)
    broker.call(client, "filler-2")
    assert broker.worker_of(broker.last_call_id()) is home
    # The restarted worker has no history of c-1: it goes where the load is least.
    broker.call(client, "after", arguments=conversation)
    assert broker.worker_of(broker.last_call_id()) is other


def test_released_capacity_goes_to_the_queued_call(make: Callable[..., Broker]) -> None:
    """A queued call runs as soon as a slot frees; its wait is in its record."""
    broker = make(session_max_inflight=1, global_max_inflight=1, queue_timeout_s=5.0)
    first, second = broker.client(), broker.client()
    broker.call(first, "a")
    broker.call(second, "b")
    assert len(broker.dispatched()) == 1
    assert second.frames == [{"op": "call_tool_ack", "request_id": "b"}]
    broker.succeed(broker.last_call_id())
    assert len(broker.dispatched()) == 2
    broker.succeed(broker.last_call_id())
    assert error_code(second.answer("b")) == "ok"
    # One ack only: the queued call was acked when it was queued, not again when run.
    assert [f["op"] for f in second.frames] == ["call_tool_ack", "call_tool_res"]
    broker.assert_capacity_free()


def test_provider_caps_are_taken_and_given_back(make: Callable[..., Broker]) -> None:
    """A provider's tools count against its cap; a full provider refuses only its own calls."""
    broker = make(provider_caps={"kimi": 1, "glm": 1})
    client = broker.client()
    broker.call(client, "k1", tool="kimi_chat", arguments=b"{}")
    assert broker.scheduler.inflight_by_provider["kimi"] == 1
    broker.call(client, "k2", tool="kimi_chat", arguments=b"{}")
    assert client.answer("k2")["error"]["provider"] == "kimi"
    broker.call(client, "g1", tool="glm_chat", arguments=b"{}")
    assert broker.scheduler.inflight_by_provider == {"kimi": 1, "glm": 1}
    for call in broker.dispatched():
        broker.succeed(call.call_id)
    broker.assert_capacity_free()


async def test_wait_idle_returns_when_the_last_call_ends() -> None:
    """wait_idle (the shutdown grace) ends when no call is in flight, or says it timed out."""
    broker_loop = asyncio.get_running_loop()
    settings = Settings(call_timeout_s=30.0)
    scheduler = Scheduler(session_cap=8, global_cap=8, provider_caps={})
    supervisor = FakeSupervisor()
    manager = CallManager(settings, scheduler, supervisor, FrameCodec(), lambda r: None)  # type: ignore[arg-type]
    manager.catalog = CATALOG
    session = SessionRegistry(60.0, 1 << 20).open("s", lambda f: None, False)[0]
    manager.submit(session, Dialect.OP, msgspec.Raw(b"1"), "echo", msgspec.Raw(b"{}"), None)
    assert not await manager.wait_idle(0.01)
    call_id = supervisor.workers[0].received(Call)[0].call_id
    broker_loop.call_soon(
        manager.handle_worker_message,
        supervisor.workers[0],
        Result(call_id, result=OK_RESULT),
    )
    assert await manager.wait_idle(5.0)
    assert manager.inflight() == 0


def test_error_answers_in_both_dialects_carry_the_code(make: Callable[..., Broker]) -> None:
    """A refused call is a call_tool_res error for op clients, a JSON-RPC error for MCP ones."""
    broker = make()
    op, mcp = broker.client(), broker.client(Dialect.MCP)
    broker.call(op, "x", tool="nope")
    broker.call(mcp, "x", tool="nope")
    assert op.raw == [
        b'{"op":"call_tool_res","error":{"message":"unknown tool \'nope\'",'
        b'"code":"TOOL_NOT_FOUND","tool":"nope"},"request_id":"x"}'
    ]
    assert json.loads(mcp.raw[0])["error"] == {
        "code": -32602,
        "message": "unknown tool 'nope'",
        "data": {"code": "TOOL_NOT_FOUND", "tool": "nope"},
    }
    assert broker.outcomes() == [ErrorCode.TOOL_NOT_FOUND] * 2


def test_closing_answers_queued_calls_first_and_starts_none(make: Callable[..., Broker]) -> None:
    """After the drain grace: a queued call gets SHUTTING_DOWN (it never ran) and the
    capacity the running call gives back when it is failed starts nothing."""
    broker = make(session_max_inflight=1, global_max_inflight=1, queue_timeout_s=60.0)
    first, second, third = broker.client(), broker.client(), broker.client()
    broker.call(first, "running")
    broker.call(second, "queued")
    broker.call(third, "queued-too")
    assert len(broker.dispatched()) == 1

    def cut(call: Any) -> WorkerLost:
        return WorkerLost("cut by the shutdown", cause="daemon_shutdown")

    broker.manager.close(list(broker.sessions.sessions.values()), cut)
    assert len(broker.dispatched()) == 1, "no call may start once closed"
    assert error_code(first.answer("running")) == "WORKER_LOST"
    assert error_code(second.answer("queued")) == "SHUTTING_DOWN"
    assert error_code(third.answer("queued-too")) == "SHUTTING_DOWN"
    assert broker.manager.inflight() == 0
    broker.assert_capacity_free()
