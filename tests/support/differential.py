"""Differential testing: one scripted MCP conversation, several ways to reach a server.

A *script* (an async function of a `Conversation`) sends the same JSON-RPC requests,
with the same ids and progress tokens, over any `Transport`:

- `StdioTransport`: the server process itself, spawned here (newline-delimited JSON on
  its stdin/stdout) — the reference;
- `WsTransport`: the daemon hosting that server, over a direct WebSocket ("mcp");
- `ShimTransport`: the daemon through a real `python -m shim` (stdio).

Each request is one *step*. While a step runs, every server→client request is answered
at once with the same canned answer on every path (and recorded: method + params), and
every notification is recorded. After the response, the step waits for the events the
reference transcript saw in that step, then sends a *barrier* (a cheap tool call whose
response means the hosted instance has processed everything before it) and ends.

Transcripts compare as canonical JSON text (sorted keys, no spaces), so 1 and 1.0,
true and 1, an absent field and a null one all differ. Request ids are normalized: a
response carrying exactly the id the harness sent (same value, same JSON type) records
"<id>"; any other id is kept verbatim and so differs. Progress tokens are never
normalized — they must come back as the client sent them. List cursors are opaque:
a `nextCursor` string records "<cursor>" (its presence still counts), and each path
follows its own cursor values.

Notifications and server requests compare per method, in order within a method. A
transcript's steps carry names, so a report says which request, on which path, saw
what instead of what (`format_differences`, with JSON paths for long values).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from tests.conftest import ROOT, STEP_S, DaemonProcess, base_env, scaled
from tests.support.jsonrpc import JsonObj
from tests.support.shim_driver import ShimDriver
from tests.support.ws_peer import WsPeer

__all__ = [
    "CANNED_ANSWERS",
    "CLIENT_CAPABILITIES",
    "PROTOCOL_VERSION",
    "ROOTS",
    "Conversation",
    "Difference",
    "Script",
    "ShimTransport",
    "StdioTransport",
    "StepRecord",
    "Transcript",
    "Transport",
    "WsTransport",
    "canonical",
    "compare",
    "format_differences",
    "json_paths_differing",
    "python_module_command",
    "run_script",
]

PROTOCOL_VERSION = "2025-11-25"
CLIENT_CAPABILITIES: JsonObj = {
    "roots": {"listChanged": True},
    "sampling": {},
    "elicitation": {},
}
CLIENT_INFO: JsonObj = {"name": "differential", "version": "1.0.0"}

ROOTS: list[JsonObj] = [
    {"uri": "file:///work/alpha", "name": "alpha"},
    {"uri": "file:///work/beta"},
]
# The answer every path gives to each server→client request method.
CANNED_ANSWERS: dict[str, JsonObj] = {
    "sampling/createMessage": {
        "role": "assistant",
        "content": {"type": "text", "text": "canned sample"},
        "model": "canned-model",
        "stopReason": "endTurn",
    },
    "elicitation/create": {
        "action": "accept",
        "content": {"answer": "forty-two", "name": "Ada", "check": True, "integer": 7},
    },
    "roots/list": {"roots": ROOTS},
    "ping": {},
}
METHOD_NOT_FOUND = -32601

# After one expected event failed to come, the verdict is "different" already: later
# waits for expected events are short, so a broken path fails fast instead of slowly.
MISSED_GRACE_S = 1.0
LINE_LIMIT_BYTES = 64 * 1024 * 1024
ID_MARK = "<id>"
CURSOR_MARK = "<cursor>"


def canonical(value: Any) -> str:
    """JSON text that keeps every distinction a client can see (1 vs 1.0, absent vs
    null, true vs 1) and none it cannot (key order, spacing)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _id_key(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# --- transports -----------------------------------------------------------------------


class Transport(Protocol):
    """One client connection: frames out, frames in (None once it closed)."""

    label: str

    async def send(self, frame: JsonObj) -> None:
        """Write one JSON-RPC frame."""
        ...

    async def receive(self) -> JsonObj | None:
        """The next frame from the peer; None once nothing more can come."""
        ...

    async def aclose(self) -> None:
        """Close the connection and stop whatever process it started."""
        ...

    def diagnostics(self) -> str:
        """What the other side wrote to stderr (the tail), for failure messages."""
        ...


def _tail(path: Path | None, limit: int = 3000) -> str:
    if path is None or not path.exists():
        return ""
    return path.read_text(errors="replace")[-limit:]


class StdioTransport:
    """A stdio MCP server process spawned by the harness (the direct path)."""

    def __init__(self, proc: asyncio.subprocess.Process, stderr_path: Path) -> None:
        self.label = "direct"
        self.proc = proc
        self.stderr_path = stderr_path

    @classmethod
    async def start(cls, command: str, stderr_path: Path) -> StdioTransport:
        """Spawn `command` (a shell-like command line) in the repo root."""
        argv = shlex.split(command)
        with open(stderr_path, "wb") as err:  # noqa: ASYNC230 - once per server
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                env=base_env(),
                cwd=str(ROOT),
                limit=LINE_LIMIT_BYTES,
                start_new_session=True,
            )
        return cls(proc, stderr_path)

    async def send(self, frame: JsonObj) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(frame).encode() + b"\n")
        await self.proc.stdin.drain()

    async def receive(self) -> JsonObj | None:
        assert self.proc.stdout is not None
        while True:
            raw = await self.proc.stdout.readline()
            if not raw:
                return None
            line = raw.strip()
            if not line:
                continue
            message = json.loads(line)
            assert isinstance(message, dict), f"the server wrote a non-object line: {line[:300]!r}"
            return message

    async def aclose(self) -> None:
        if self.proc.returncode is None:
            assert self.proc.stdin is not None
            with contextlib.suppress(Exception):
                self.proc.stdin.close()
                await self.proc.stdin.wait_closed()
            try:
                await asyncio.wait_for(self.proc.wait(), scaled(5.0))
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                await asyncio.wait_for(self.proc.wait(), 10.0)

    def diagnostics(self) -> str:
        return _tail(self.stderr_path)


class _WsFrames(WsPeer):
    """A WsPeer that queues every parsed frame (None once the connection closed)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        super().__init__(ws)
        self.frames: asyncio.Queue[JsonObj | None] = asyncio.Queue()
        self.start_reading()

    def handle_frame(self, frame: Any) -> None:
        self.frames.put_nowait(frame if isinstance(frame, dict) else {"<non-object>": frame})

    def handle_close(self) -> None:
        self.frames.put_nowait(None)


class WsTransport:
    """MCP straight over the daemon's WebSocket (subprotocol "mcp")."""

    def __init__(self, http: aiohttp.ClientSession, peer: _WsFrames, daemon: DaemonProcess):
        self.label = "ws"
        self.http = http
        self.peer = peer
        self.daemon = daemon

    @classmethod
    async def start(cls, daemon: DaemonProcess) -> WsTransport:
        """Connect to `daemon` offering the "mcp" subprotocol."""
        http = aiohttp.ClientSession()
        try:
            ws = await http.ws_connect(
                daemon.url,
                protocols=("mcp",),
                timeout=aiohttp.ClientWSTimeout(ws_close=5),
                max_msg_size=LINE_LIMIT_BYTES,
            )
        except BaseException:
            await http.close()
            raise
        return cls(http, _WsFrames(ws), daemon)

    async def send(self, frame: JsonObj) -> None:
        await self.peer.send_json(frame)

    async def receive(self) -> JsonObj | None:
        frame = await self.peer.frames.get()
        if frame is None:
            self.peer.frames.put_nowait(None)
        return frame

    async def aclose(self) -> None:
        await self.peer.aclose()
        await self.http.close()

    def diagnostics(self) -> str:
        return self.daemon.stderr()[-3000:]


class ShimTransport:
    """The daemon through a real `python -m shim` on stdio."""

    def __init__(self, driver: ShimDriver, daemon: DaemonProcess) -> None:
        self.label = "shim"
        self.driver = driver
        self.daemon = daemon

    @classmethod
    async def start(cls, daemon: DaemonProcess, stderr_path: Path) -> ShimTransport:
        """Start a shim that talks to `daemon`."""
        driver = await ShimDriver.start(daemon.shim_env(), stderr_path)
        return cls(driver, daemon)

    async def send(self, frame: JsonObj) -> None:
        await self.driver.send(frame)

    async def receive(self) -> JsonObj | None:
        while True:
            with contextlib.suppress(TimeoutError):
                return await self.driver.read_line(timeout_s=3600.0)

    async def aclose(self) -> None:
        await self.driver.aclose()

    def diagnostics(self) -> str:
        return f"shim:\n{self.driver.stderr()[-2000:]}\ndaemon:\n{self.daemon.stderr()[-2000:]}"


# --- transcripts ----------------------------------------------------------------------


@dataclass
class StepRecord:
    """What one step sent and what came back while it ran (canonical JSON texts)."""

    name: str
    request: str
    response: str | None = None
    notifications: list[str] = field(default_factory=list)
    server_requests: list[str] = field(default_factory=list)
    strays: list[str] = field(default_factory=list)
    # Compare notifications of a method as a set (for servers that repeat them on a timer).
    dedupe: frozenset[str] = frozenset()
    # Part of the handshake: compared only when the script says so (see `Conversation`).
    handshake: bool = False
    # False for a request the client cancelled (a server answers none).
    answer_expected: bool = True

    def event_counts(self) -> Counter[str]:
        """How many notifications / server requests of each method the step saw."""
        counts: Counter[str] = Counter()
        for text in self.notifications:
            counts["notification " + json.loads(text)["method"]] += 1
        for text in self.server_requests:
            counts["request " + json.loads(text)["method"]] += 1
        return counts


@dataclass
class Transcript:
    """Every step of one conversation, in order."""

    label: str
    steps: list[StepRecord] = field(default_factory=list)

    def by_name(self) -> dict[str, StepRecord]:
        """The steps by name (names are unique within a script)."""
        return {step.name: step for step in self.steps}


@dataclass(frozen=True)
class Difference:
    """One place where a path's transcript differs from the reference."""

    step: str
    what: str
    expected: str
    got: str


def _by_method(texts: list[str], dedupe: frozenset[str]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for text in texts:
        method = json.loads(text).get("method", "?")
        bucket = grouped.setdefault(method, [])
        if method in dedupe and text in bucket:
            continue
        bucket.append(text)
    if dedupe:
        for method in dedupe & grouped.keys():
            grouped[method].sort()
    return grouped


def compare(
    expected: Transcript, actual: Transcript, *, include_handshake: bool = True
) -> list[Difference]:
    """Every difference between two transcripts of the same script.

    Responses compare exactly; notifications and server requests compare per method,
    in arrival order within a method (the interleaving of different methods may differ:
    a router may deliver a list_changed and a log line in either order).

    Without `include_handshake` the handshake steps are not compared (a hosted shared
    instance had its handshake with the broker, before this client came), and a server
    request the reference saw there may come once later instead, when the server needs
    the answer it did not get then (server-everything asks for roots after its
    handshake, and again when a tool needs them and it has none).
    """
    found: list[Difference] = []
    got_steps = actual.by_name()
    deferred: Counter[str] = Counter()
    if not include_handshake:
        deferred.update(t for s in expected.steps if s.handshake for t in s.server_requests)
    for step in expected.steps:
        if step.handshake and not include_handshake:
            continue
        other = got_steps.get(step.name)
        if other is None:
            found.append(Difference(step.name, "step", "ran", "never ran"))
            continue
        if step.request != other.request:
            found.append(Difference(step.name, "request sent", step.request, other.request))
        if step.response != other.response:
            found.append(Difference(step.name, "response", str(step.response), str(other.response)))
        for kind, mine, theirs in (
            ("notifications", step.notifications, other.notifications),
            ("server requests", step.server_requests, _deferred(other, step, deferred)),
            ("stray frames", step.strays, other.strays),
        ):
            want = _by_method(mine, step.dedupe)
            have = _by_method(theirs, step.dedupe)
            for method in sorted(want.keys() | have.keys()):
                if want.get(method, []) != have.get(method, []):
                    found.append(
                        Difference(
                            step.name,
                            f"{kind} {method}",
                            _as_list(want.get(method, [])),
                            _as_list(have.get(method, [])),
                        )
                    )
    names = {s.name for s in expected.steps}
    for step in actual.steps:
        if step.name not in names:
            found.append(Difference(step.name, "step", "absent", "ran"))
    return found


def _as_list(texts: list[str]) -> str:
    """Canonical frames as one canonical JSON list (not a list of strings)."""
    return "[" + ",".join(texts) + "]"


def _deferred(got: StepRecord, want: StepRecord, deferred: Counter[str]) -> list[str]:
    """`got`'s server requests minus the extra ones a deferred handshake request
    explains (each allowance is used once)."""
    unmatched = Counter(want.server_requests)
    kept: list[str] = []
    for text in got.server_requests:
        if unmatched[text] > 0:
            unmatched[text] -= 1
        elif deferred[text] > 0:
            deferred[text] -= 1
            continue
        kept.append(text)
    return kept


def _keyed(items: list[Any]) -> dict[str, Any] | None:
    """A list of objects named by "name" or "uri" (tools, resources…) as a dict by that
    key, so one extra element is reported as itself, not as every later one differing."""
    for key in ("name", "uri", "uriTemplate"):
        if items and all(isinstance(i, dict) and isinstance(i.get(key), str) for i in items):
            keys = [i[key] for i in items]
            if len(set(keys)) == len(keys):
                return dict(zip(keys, items, strict=True))
    return None


def json_paths_differing(want: Any, have: Any, path: str = "$", limit: int = 8) -> list[str]:
    """Where two JSON values differ, as "path: expected -> got" lines (at most `limit`)."""
    out: list[str] = []

    def walk(a: Any, b: Any, where: str) -> None:
        if len(out) >= limit:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(a.keys() | b.keys()):
                if k not in b:
                    out.append(f"{where}.{k}: {_shorten(canonical(a[k]), 160)} -> (absent)")
                elif k not in a:
                    out.append(f"{where}.{k}: (absent) -> {_shorten(canonical(b[k]), 160)}")
                else:
                    walk(a[k], b[k], f"{where}.{k}")
            return
        if isinstance(a, list) and isinstance(b, list):
            ka, kb = _keyed(a), _keyed(b)
            if ka is not None and kb is not None and list(ka) != list(kb):
                if sorted(ka) == sorted(kb):
                    out.append(f"{where}: order {list(ka)} -> {list(kb)}")
                walk(ka, kb, where)
                return
            if len(a) != len(b):
                out.append(f"{where}: {len(a)} items -> {len(b)} items")
            for i, (x, y) in enumerate(zip(a, b, strict=False)):
                walk(x, y, f"{where}[{i}]")
            return
        if canonical(a) != canonical(b):
            out.append(f"{where}: {_shorten(canonical(a), 160)} -> {_shorten(canonical(b), 160)}")

    walk(want, have, path)
    return out


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 20] + f"… ({len(text)} chars)"


def format_differences(
    label: str, differences: list[Difference], limit: int = 600, diagnostics: str = ""
) -> str:
    """A readable report of `differences` (each value shortened to `limit` chars)."""
    lines = [f"{len(differences)} difference(s) on {label}:"]
    for d in differences:
        lines.append(f"- [{d.step}] {d.what}")
        if len(d.expected) + len(d.got) > limit:
            try:
                paths = json_paths_differing(json.loads(d.expected), json.loads(d.got))
            except ValueError:
                paths = []
            if paths:
                lines.extend(f"    {p}" for p in paths)
                continue
        lines.append(f"    expected: {_shorten(d.expected, limit)}")
        lines.append(f"    got:      {_shorten(d.got, limit)}")
    if diagnostics:
        lines.append("--- stderr tail ---")
        lines.append(diagnostics)
    return "\n".join(lines)


# --- the scripted client ---------------------------------------------------------------


def _normalize_response(frame: JsonObj, sent_id: Any) -> JsonObj:
    out = dict(frame)
    if "id" in out and _id_key(out["id"]) == _id_key(sent_id):
        out["id"] = ID_MARK
    result = out.get("result")
    if isinstance(result, dict) and isinstance(result.get("nextCursor"), str):
        out["result"] = {**result, "nextCursor": CURSOR_MARK}
    return out


@dataclass
class _Pending:
    step: StepRecord
    sent_id: Any
    future: asyncio.Future[JsonObj]
    record: bool = True


class Conversation:
    """A scripted MCP client on one transport, recording a `Transcript`.

    `reference` (the transcript of the same script on the direct path) tells each step
    which notifications and server requests to wait for before its barrier.
    """

    def __init__(
        self,
        transport: Transport,
        barrier: tuple[str, JsonObj],
        reference: Transcript | None = None,
        *,
        handshake_traffic: bool = True,
        scrub: Callable[[Any], Any] | None = None,
    ) -> None:
        self.transport = transport
        self.barrier_call = barrier
        self.handshake_traffic = handshake_traffic
        self.scrub = scrub or (lambda value: value)
        self.reference = reference.by_name() if reference is not None else {}
        self.transcript = Transcript(transport.label)
        self._pending: dict[str, _Pending] = {}
        self._current: StepRecord | None = None
        self._changed = asyncio.Event()
        self._closed = False
        self._shut = False
        self._missed = False
        self._barriers = 0
        self._step_number = 0
        self._pump = asyncio.get_running_loop().create_task(self._read())

    # --- incoming ---------------------------------------------------------------------

    def _into_current(self) -> StepRecord:
        if self._current is None:
            self._current = StepRecord(name="(before the first step)", request="")
            self.transcript.steps.append(self._current)
        return self._current

    async def _read(self) -> None:
        why = "the connection closed"
        try:
            while (frame := await self.transport.receive()) is not None:
                await self._handle(frame)
                self._changed.set()
        except Exception as exc:
            why = f"the harness stopped reading: {exc!r}"
            raise
        finally:
            self._closed = True
            for pending in self._pending.values():
                if not pending.future.done():
                    pending.future.set_exception(ConnectionError(why))
                    pending.future.exception()
            self._changed.set()

    async def _handle(self, frame: JsonObj) -> None:
        method = frame.get("method")
        if isinstance(method, str) and "id" in frame:
            await self._answer_server_request(frame)
            return
        if isinstance(method, str):
            self._into_current().notifications.append(canonical(self.scrub(frame)))
            return
        pending = self._pending.get(_id_key(frame.get("id")))
        if pending is None or pending.future.done():
            self._into_current().strays.append(canonical(self.scrub(frame)))
            return
        if pending.record:
            normalized = _normalize_response(frame, pending.sent_id)
            pending.step.response = canonical(self.scrub(normalized))
        pending.future.set_result(frame)

    async def _answer_server_request(self, frame: JsonObj) -> None:
        method = frame["method"]
        recorded: JsonObj = {"method": method}
        if "params" in frame:
            recorded["params"] = frame["params"]
        self._into_current().server_requests.append(canonical(self.scrub(recorded)))
        answer: JsonObj = {"jsonrpc": "2.0", "id": frame["id"]}
        if method in CANNED_ANSWERS:
            answer["result"] = CANNED_ANSWERS[method]
        else:
            answer["error"] = {"code": METHOD_NOT_FOUND, "message": f"harness: no {method}"}
        await self.transport.send(answer)

    # --- waiting ----------------------------------------------------------------------

    async def _wait(self, check: Callable[[], bool], timeout_s: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not check():
            if self._closed:
                return check()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True

    def _expected_wait_s(self) -> float:
        return scaled(MISSED_GRACE_S) if self._missed else scaled(STEP_S)

    async def _await_reference_events(
        self, step: StepRecord, until: dict[str, int] | None = None
    ) -> None:
        ref = self.reference.get(step.name)
        want: Counter[str] = Counter(until or {})
        if ref is not None:
            want = ref.event_counts()
        if not want:
            return

        def arrived() -> bool:
            have = step.event_counts()
            return all(have[key] >= n for key, n in want.items())

        if not await self._wait(arrived, self._expected_wait_s()):
            self._missed = True

    # --- outgoing ---------------------------------------------------------------------

    def _next_id(self) -> Any:
        # Alternate JSON types: the client's ids must come back in the client's own form.
        self._step_number += 1
        n = self._step_number
        return n if n % 2 else f"req-{n}"

    async def _send_request(
        self, step: StepRecord, rid: Any, method: str, params: JsonObj | None, record: bool
    ) -> asyncio.Future[JsonObj]:
        frame: JsonObj = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            frame["params"] = params
        future: asyncio.Future[JsonObj] = asyncio.get_running_loop().create_future()
        self._pending[_id_key(rid)] = _Pending(step, rid, future, record)
        await self.transport.send(frame)
        return future

    async def _barrier(self) -> None:
        self._barriers += 1
        method, params = self.barrier_call
        step = self._current
        assert step is not None
        future = await self._send_request(
            step, f"barrier-{self._barriers}", method, params, record=False
        )
        await self._await_response(future, f"barrier after {step.name}")

    async def _await_response(self, future: asyncio.Future[JsonObj], what: str) -> JsonObj:
        try:
            return await asyncio.wait_for(asyncio.shield(future), scaled(STEP_S))
        except TimeoutError:
            strays = [t for step in self.transcript.steps for t in step.strays]
            raise AssertionError(
                f"{self.transport.label}: no response to {what}; frames that answered no "
                f"request of ours: {strays[-5:]}\n{self.transport.diagnostics()}"
            ) from None
        except ConnectionError as exc:
            raise AssertionError(
                f"{self.transport.label}: no response to {what}: {exc}\n"
                f"{self.transport.diagnostics()}"
            ) from None

    async def request(
        self,
        name: str,
        method: str,
        params: JsonObj | None = None,
        *,
        dedupe: frozenset[str] = frozenset(),
        handshake: bool = False,
        barrier: bool = True,
    ) -> JsonObj:
        """One step: send a request, wait for its response (and the events the
        reference saw), then a barrier. Returns the raw response frame."""
        record = {"method": method} if params is None else {"method": method, "params": params}
        step = StepRecord(name, canonical(record), dedupe=dedupe, handshake=handshake)
        assert step.name not in {s.name for s in self.transcript.steps}, name
        self.transcript.steps.append(step)
        self._current = step
        future = await self._send_request(step, self._next_id(), method, params, record=True)
        response = await self._await_response(future, f"{method} ({name})")
        await self._await_reference_events(step)
        if barrier:
            await self._barrier()
        return response

    async def cancelled(self, name: str, method: str, params: JsonObj) -> None:
        """A step whose request the client cancels at once (notifications/cancelled):
        whatever answer comes (a server sends none) is recorded; then a barrier."""
        record = {"method": method, "params": params}
        step = StepRecord(name, canonical(record), answer_expected=False)
        assert step.name not in {s.name for s in self.transcript.steps}, name
        self.transcript.steps.append(step)
        self._current = step
        rid = self._next_id()
        await self._send_request(step, rid, method, params, record=True)
        await self.notify("notifications/cancelled", {"requestId": rid, "reason": "differential"})
        await self._await_reference_events(step)
        await self._barrier()

    async def call(
        self,
        name: str,
        tool: str,
        arguments: JsonObj | None = None,
        *,
        progress_token: Any = None,
        omit_arguments: bool = False,
        dedupe: frozenset[str] = frozenset(),
    ) -> JsonObj:
        """A tools/call step (`omit_arguments`: no `arguments` key at all)."""
        params: JsonObj = {"name": tool}
        if not omit_arguments:
            params["arguments"] = arguments if arguments is not None else {}
        if progress_token is not None:
            params["_meta"] = {"progressToken": progress_token}
        return await self.request(name, "tools/call", params, dedupe=dedupe)

    async def settle(self, name: str, until: dict[str, int], *, handshake: bool = False) -> None:
        """A step that sends nothing but waits for traffic a server starts by itself (a
        timer after the handshake): for the events the reference saw, or without one for
        `until` ({"request roots/list": 1, "notification notifications/message": 1}),
        then a barrier. A handshake step on a conversation without handshake traffic
        waits for nothing."""
        step = StepRecord(name, "", handshake=handshake)
        self.transcript.steps.append(step)
        self._current = step
        if not handshake or self.handshake_traffic:
            await self._await_reference_events(step, until)
        await self._barrier()

    async def notify(self, method: str, params: JsonObj | None = None) -> None:
        """Send a notification (part of the current step)."""
        frame: JsonObj = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            frame["params"] = params
        await self.transport.send(frame)

    async def initialize(self) -> JsonObj:
        """The handshake step: initialize (2025-11-25, roots/sampling/elicitation) and
        notifications/initialized, then a barrier."""
        params = {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": CLIENT_CAPABILITIES,
            "clientInfo": CLIENT_INFO,
        }
        response = await self.request("initialize", "initialize", params, barrier=False)
        assert "result" in response, f"{self.transport.label}: initialize failed: {response}"
        # What the server sends once initialized is handshake traffic, a step of its own.
        step = StepRecord(
            "notifications/initialized",
            canonical({"method": "notifications/initialized"}),
            handshake=True,
        )
        self.transcript.steps.append(step)
        self._current = step
        await self.notify("notifications/initialized")
        # A first request before waiting: a hosted instance may start only once a
        # request needs it (then it sends its post-handshake traffic).
        await self._barrier()
        if self.handshake_traffic:
            await self._await_reference_events(step)
            await self._barrier()
        return response

    async def list_all(self, name: str, method: str) -> list[JsonObj]:
        """A paginated list: one step per page ("name#1", "name#2", …), each path
        following its own cursors. Returns the results."""
        results: list[JsonObj] = []
        cursor: str | None = None
        for page in range(1, 51):
            params = None if cursor is None else {"cursor": cursor}
            response = await self.request(f"{name}#{page}", method, params)
            result = response.get("result")
            if not isinstance(result, dict):
                break
            results.append(result)
            cursor = result.get("nextCursor")
            if not isinstance(cursor, str):
                break
        return results

    async def finish(self) -> Transcript:
        """A last barrier (late frames land in an "(end)" step), then close."""
        self._current = StepRecord("(end)", "")
        self.transcript.steps.append(self._current)
        with contextlib.suppress(AssertionError):
            await self._barrier()
        await self.aclose()
        # An empty "(end)" step is noise; keep it only when something arrived late.
        end = self.transcript.steps[-1]
        if not (end.notifications or end.server_requests or end.strays):
            self.transcript.steps.pop()
        return self.transcript

    async def aclose(self) -> None:
        """Close the transport and stop reading (once; later calls do nothing)."""
        if self._shut:
            return
        self._shut = True
        await self.transport.aclose()
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._pump


Script = Callable[[Conversation], Awaitable[None]]


async def run_script(
    transport: Transport,
    script: Script,
    barrier: tuple[str, JsonObj],
    reference: Transcript | None = None,
    *,
    handshake_traffic: bool = True,
    scrub: Callable[[Any], Any] | None = None,
) -> Transcript:
    """Run `script` on `transport` (closed afterwards); its transcript. Without
    `handshake_traffic` nothing waits for what a server sends after its handshake (a
    hosted instance's handshake was the broker's); `scrub` rewrites each frame before it
    is recorded (for values a server makes up, like the time of day)."""
    conversation = Conversation(
        transport, barrier, reference, handshake_traffic=handshake_traffic, scrub=scrub
    )
    try:
        await script(conversation)
        return await conversation.finish()
    finally:
        await conversation.aclose()


def python_module_command(module: str) -> str:
    """`python -m module` with this interpreter, as a command line."""
    return f"{shlex.quote(sys.executable)} -m {module}"
