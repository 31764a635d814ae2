"""Fuzzing of issue #15: every dialect and HTTP endpoint of one live daemon, and hostile
tool results from both kinds of hosted server.

- The MCP and op dialects each get at least `FRAMES_PER_DIALECT` Hypothesis-generated
  frames (valid frames mutated field by field: wrong types, missing fields, huge and
  deep values, odd unicode and encodings; plus raw byte garbage) over one long-lived
  fuzzed connection. Every frame is followed by a sentinel ping, so each answer is
  matched to the frame it belongs to (a call's answer, which may come later, by its
  id): a request with an id gets exactly one typed error or result, a notification
  none, any other frame at most one, and every answer is well-formed and typed
  (`data.code` / `error.code` in exai.errors.ErrorCode). After every batch the daemon
  is alive and a neighbour on its own connections gets correct echo answers.
- Each HTTP endpoint gets at least `REQUESTS_PER_ENDPOINT` generated requests (methods,
  paths, headers, bodies, upgrades, raw garbage): every one is answered with a status
  below 500, and the neighbour keeps working.
- Every hostile tool of tests.fixtures.hostile_tools (worker-hosted) and every
  behaviour of tests.fixtures.hostile_stdio_server (hosted by the daemon) is called
  over both dialects while a neighbour calls echo: the caller gets a prompt typed
  error or a well-formed result, the neighbour its correct answer, and health shows
  no capacity left taken.

Failures are collected rather than raised mid-run (Hypothesis would otherwise try to
shrink against a live daemon); each names the exact frame or result.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import shlex
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from exai.errors import JSONRPC_CODES, ErrorCode
from tests.conftest import DaemonProcess, free_port, scaled, start_daemon
from tests.e2e.security_support import daemon_logs, echo_mcp, echo_op, mcp_session, op_hello
from tests.fixtures import hostile_stdio_server, hostile_tools

FRAMES_PER_DIALECT = 10_000
REQUESTS_PER_ENDPOINT = 10_000
ENDPOINTS = ("/", "/ws", "/health", "/metrics", "/mcp")
BATCH = (40, 60)  # frames per Hypothesis example
ANSWER_DEADLINE_S = 15.0  # for one frame's answers, or a call's
ERROR_CODES = frozenset(str(c) for c in ErrorCode)
# Nesting that JSON parsers (ours, and the daemon's) surely take, and surely refuse.
UNSURE_DEPTH = 800
TOO_DEEP = 1200
LOG_MARKERS = ("Traceback", "Exception in callback", "Task exception was never retrieved")

pytestmark = [pytest.mark.slow]


def _env_without_providers() -> dict[str, str]:
    closed = free_port()
    return {
        "KIMI_API_KEY": "",
        "MOONSHOT_API_KEY": "",
        "GLM_API_KEY": "",
        "ZHIPUAI_API_KEY": "",
        "KIMI_API_URL": f"http://127.0.0.1:{closed}/v1",
        "GLM_API_URL": f"http://127.0.0.1:{closed}/v4",
    }


def _short(data: Any, limit: int = 300) -> str:
    text = repr(data)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def _fuzz_settings(max_examples: int) -> Callable[[Any], Any]:
    return settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )


# --- hostile values ----------------------------------------------------------------------


def _nest_list(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def _nest_dict(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"a": value}
    return value


# Stands for 2000 nested arrays (too deep for json.dumps): spliced in once encoded.
DEEP_MARKER = "\u2603deep\u2603"
DEEP_TEXT = "[" * 2000 + "]" * 2000


def _splice_deep(text: str) -> str:
    for form in (json.dumps(DEEP_MARKER), json.dumps(DEEP_MARKER, ensure_ascii=False)):
        text = text.replace(form, DEEP_TEXT)
    return text


HOSTILE_POOL: list[Any] = [
    # integers around every boundary, and far past 64 bits
    0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30, 10**400,
    -(10**400),
    # floats
    0.0, -0.0, 1.5, 1e308, -1e308, 5e-324, 123456789.123456789,
    # strings: empty, NUL, lone surrogates, BOM, noncharacters, bidi, separators, astral
    "", " ", "\x00", "a\x00b", "\ud800", "\udfff\ud800", "\ufeff", "\ufffe\uffff",
    "\u202e\u202d", "\u2028\u2029", "\U0001f600", "\U0010ffff", "é", "e\u0301", "\x7f",
    "null", "true", "{}", "[]", '{"a":1}', "\\", '"', "\\u0000", "%s%n", "NaN",
    "-Infinity", "1e400", "0x1F", "tools/call", "echo", "initialize", "2.0",
    "a" * 4096, "ü" * 3000, "\U0001f4a9" * 1000,
    # containers: empty, odd, big, deep (64 is the daemon's documented frame limit,
    # 2000 is past what any parser takes)
    None, True, False, [], {}, [[]], [{}], {"": None}, {"jsonrpc": "2.0"},
    list(range(3000)), {f"k{i}": i for i in range(1000)}, [None] * 2000,
    _nest_list(63), _nest_list(64), _nest_list(65), _nest_list(200), _nest_list(500),
    DEEP_MARKER,
    _nest_dict(100),
]  # fmt: skip
HOSTILE = st.sampled_from(HOSTILE_POOL)
SMALL_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=5,
)
VALUES = st.one_of(HOSTILE, HOSTILE, SMALL_JSON)
ID_POOL: list[Any] = [
    0, 1, -1, 7, 2**63, 10**400, 1.5, -0.0, 1e308, "", "0", "é", "\x00", "a" * 300,
    None, True, False, [], {}, [1], {"a": 1},
]  # fmt: skip
IDS = st.one_of(st.sampled_from(ID_POOL), st.integers(-1000, 1000), st.text(max_size=12))
TEXTS = st.one_of(st.sampled_from([s for s in HOSTILE_POOL if isinstance(s, str)]), st.text())
# Only fast tools: a fuzzed call must not hold a slot for long.
TOOL_NAMES = st.one_of(
    st.sampled_from(["echo", "version", "listmodels", "fail", "nope", "", "ECHO", "echo "]),
    st.text(max_size=10),
)
METHODS = st.sampled_from(
    [
        "initialize", "ping", "tools/list", "tools/call", "notifications/cancelled",
        "notifications/initialized", "notifications/progress", "server/discover",
        "resources/list", "prompts/list", "logging/setLevel", "completion/complete",
        "sampling/createMessage", "", "rpc.discover",
    ]
) | st.text(max_size=16)  # fmt: skip
OPS = st.sampled_from(
    ["hello", "list_tools", "call_tool", "cancel", "health", "rotate_token", "progress",
     "call_tool_res", "error", "", "HELLO"]
) | st.text(max_size=10)  # fmt: skip
KNOWN_KEYS = st.sampled_from(
    ["jsonrpc", "id", "method", "params", "result", "error", "op", "request_id", "name",
     "arguments", "token", "session_id", "acks", "awaited", "old", "new", "_meta"]
)  # fmt: skip


# --- frame strategies --------------------------------------------------------------------


@st.composite
def mcp_template(draw: st.DrawFn) -> dict[str, Any]:
    """A valid MCP JSON-RPC frame: request, notification or response."""
    rid = draw(IDS)
    kind = draw(st.integers(0, 13))
    frame: dict[str, Any] = {"jsonrpc": "2.0", "id": rid}
    if kind == 0:
        frame["method"] = "initialize"
        frame["params"] = {
            "protocolVersion": draw(st.sampled_from(["2024-11-05", "2025-11-25", "1999", ""])),
            "capabilities": {},
            "clientInfo": {"name": "fuzz", "version": "0"},
        }
    elif kind in (1, 2):
        frame["method"] = "ping" if kind == 1 else "tools/list"
    elif kind in (3, 4, 5):
        frame["method"] = "tools/call"
        frame["params"] = {"name": "echo", "arguments": {"text": draw(TEXTS)}}
        if kind == 4:
            frame["params"]["_meta"] = {"progressToken": draw(IDS)}
        if kind == 5:
            frame["params"]["_meta"] = {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}
    elif kind == 6:
        frame["method"] = "tools/call"
        frame["params"] = {"name": draw(TOOL_NAMES), "arguments": draw(VALUES)}
    elif kind == 7:
        del frame["id"]
        frame["method"] = "notifications/cancelled"
        frame["params"] = {"requestId": draw(IDS), "reason": "fuzz"}
    elif kind == 8:
        del frame["id"]
        frame["method"] = draw(
            st.sampled_from(["notifications/initialized", "notifications/progress", "x/y"])
        )
        frame["params"] = {"progressToken": draw(IDS), "progress": draw(VALUES)}
    elif kind == 9:
        frame["method"] = draw(
            st.sampled_from(["server/discover", "resources/list", "prompts/list", "x/y"])
        )
    elif kind == 10:
        frame["method"] = "logging/setLevel"
        frame["params"] = {"level": draw(st.sampled_from(["debug", "error", "bogus", ""]))}
    elif kind == 11:
        frame["result"] = draw(VALUES)
    elif kind == 12:
        frame["error"] = {"code": draw(VALUES), "message": draw(TEXTS)}
    else:
        frame["method"] = "tools/call"
        frame["params"] = {
            "name": "echo",
            "arguments": {"text": "x"},
            "requestState": draw(TEXTS),
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"},
        }
    return frame


@st.composite
def op_template(draw: st.DrawFn) -> dict[str, Any]:
    """A valid op-dialect frame."""
    rid = draw(IDS)
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return {"op": "hello", "session_id": draw(TEXTS), "acks": draw(st.booleans())}
    if kind == 1:
        return {"op": "list_tools"}
    if kind == 2:
        return {"op": "health"}
    if kind in (3, 4, 5):
        return {"op": "call_tool", "request_id": rid, "name": "echo",
                "arguments": {"text": draw(TEXTS)}}  # fmt: skip
    if kind == 6:
        return {"op": "call_tool", "request_id": rid, "name": draw(TOOL_NAMES),
                "arguments": draw(VALUES)}  # fmt: skip
    if kind == 7:
        return {"op": "cancel", "request_id": rid}
    if kind == 8:
        return {"op": "rotate_token", "old": draw(TEXTS), "new": draw(TEXTS)}
    return {"op": draw(OPS), "request_id": rid}


@st.composite
def mutated(draw: st.DrawFn, template: st.SearchStrategy[dict[str, Any]]) -> Any:
    """A valid frame with fields replaced, removed, added or retyped, maybe wrapped."""
    frame = draw(template)
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.integers(0, 6))
        keys = sorted(frame)
        if action == 0 and keys:
            frame[draw(st.sampled_from(keys))] = draw(VALUES)
        elif action == 1 and keys:
            frame.pop(draw(st.sampled_from(keys)))
        elif action == 2:
            frame[draw(KNOWN_KEYS | st.text(max_size=6))] = draw(VALUES)
        elif action == 3:
            frame["id" if "jsonrpc" in frame else "request_id"] = draw(IDS | VALUES)
        elif action == 4:
            if "op" in frame:
                frame["op"] = draw(OPS)
            else:
                frame["method"] = draw(METHODS)
        elif action == 5:
            inner = frame.get("params", frame.get("arguments"))
            if isinstance(inner, dict):
                inner[draw(st.sampled_from(["name", "arguments", "_meta", "requestId", "x"]))] = (
                    draw(VALUES)
                )
        elif draw(st.integers(0, 4)) == 0:
            # A batch, or the frame inside another one.
            return [frame] if draw(st.booleans()) else {"jsonrpc": "2.0", "params": frame}
    return frame


RAW_SPECIALS: list[bytes] = [
    b"", b" ", b"\n", b"null", b"0", b"[]", b"[{}]", b"{}", b'""',
    b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', b'{"op":"health"}{"op":"health"}',
    b"\xef\xbb\xbf{}", b"{" * 100_000, b"[" * 50_000 + b"]" * 50_000,
    b'"' + b"a" * 100_000 + b'"', b"1" * 100_000, b"\x00" * 1000, b"\xff" * 10,
    b'{"jsonrpc":"2.0","id":1,"method":"ping"', b"\xed\xa0\x80", b"\xc0\xaf",
    b"\xf8\x88\x80\x80\x80",
]  # fmt: skip


@st.composite
def encoded(draw: st.DrawFn, frames: st.SearchStrategy[Any]) -> tuple[bytes, bool]:
    """One frame's bytes (in one of many encodings, or garbage) and whether it goes out
    as a binary WebSocket frame."""
    kind = draw(st.integers(0, 19))
    if kind >= 17:
        data = draw(
            st.sampled_from(RAW_SPECIALS)
            | st.binary(max_size=200)
            | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass"))
        )
        return data, draw(st.booleans())
    obj = draw(frames)
    text = _splice_deep(json.dumps(obj, ensure_ascii=kind % 2 == 0))
    data = text.encode("utf-8", "surrogatepass")
    if kind == 11:
        pretty = json.dumps(obj, ensure_ascii=False, indent=draw(st.integers(0, 2)))
        data = _splice_deep(pretty).encode("utf-8", "surrogatepass")
        data = draw(st.sampled_from([b"", b" ", b"\r\n", b"\t"])) + data + b" \n"
    elif kind == 12:
        data = text.encode(draw(st.sampled_from(["utf-16", "utf-16-be", "utf-32"])), "replace")
    elif kind == 13:
        data = draw(st.sampled_from([b"\xef\xbb\xbf", b"\x00", b"\xff\xfe"])) + data
    elif kind == 14 and data.startswith(b"{"):
        # A duplicated key: which one wins is the parser's choice.
        key = draw(st.sampled_from([b'"id"', b'"method"', b'"op"', b'"jsonrpc"', b'"params"']))
        data = b"{" + key + b":" + json.dumps(draw(IDS)).encode() + b"," + data[1:]
    elif kind == 15:
        data = data + draw(st.sampled_from([b"x", b"{}", b",", b"\x00", b"]", b" //c", b"\xff"]))
    elif kind == 16 and data:
        for _ in range(draw(st.integers(1, 3))):
            how = draw(st.integers(0, 4))
            at = draw(st.integers(0, len(data)))
            if how == 0:
                data = data[:at]
            elif how == 1 and at < len(data):
                data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
            elif how == 2:
                data = data[:at] + draw(st.binary(min_size=1, max_size=6)) + data[at:]
            elif how == 3:
                token = draw(st.sampled_from([b"NaN", b"Infinity", b"'x'", b"/*c*/", b"undefined"]))
                data = data[:at] + token + data[at:]
            else:
                data = data + data
    return data, draw(st.integers(0, 9)) == 0


MCP_FRAMES = encoded(mutated(mcp_template()))
OP_FRAMES = encoded(mutated(op_template()))


# --- the oracle: what a frame must be answered with -------------------------------------

_ABSENT = msgspec.Raw(b"")


class _Ids(msgspec.Struct):
    id: msgspec.Raw = _ABSENT
    request_id: msgspec.Raw = _ABSENT
    params: msgspec.Raw = _ABSENT


class _CancelView(msgspec.Struct):
    requestId: msgspec.Raw = _ABSENT


_IDS = msgspec.json.Decoder(_Ids)
_CANCEL = msgspec.json.Decoder(_CancelView)


class _NotJson(Exception):
    pass


class _Unsure(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class BigNum:
    """An integer too long for int() (Python caps digits); compared by its digits."""

    digits: str


def _parse_int(digits: str) -> Any:
    return int(digits) if len(digits) < 4000 else BigNum(digits)


def _reject_constant(name: str) -> Any:
    raise _NotJson(f"non-standard literal {name}")


class _Obj(dict[str, Any]):
    """A JSON object; `shadowed` keeps the values of keys given more than once (the last
    one counts, but each must still have the right type)."""

    shadowed: list[tuple[str, Any]]


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = _Obj(pairs)
    obj.shadowed = pairs if len(obj) != len(pairs) else []
    return obj


def _has_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if any("\ud800" <= c <= "\udfff" for c in item):
                return True
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
    return False


def _depth(data: bytes) -> int:
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def strict_json(data: bytes) -> Any:
    """`data` as RFC 8259 JSON; _NotJson if it is not, _Unsure where parsers may differ."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _NotJson("not UTF-8") from None
    if data.count(b"[") + data.count(b"{") > UNSURE_DEPTH:
        depth = _depth(data)
        if depth > TOO_DEEP:
            raise _NotJson("nested too deeply for any parser")
        if depth > UNSURE_DEPTH:
            raise _Unsure("nested about as deep as parsers go")
    try:
        value = json.loads(
            text, parse_int=_parse_int, parse_constant=_reject_constant, object_pairs_hook=_pairs
        )
    except RecursionError:
        raise _Unsure("too deep") from None
    except ValueError as exc:
        raise _NotJson(str(exc)) from None
    if _has_surrogate(value):
        raise _NotJson("a lone surrogate")  # not valid Unicode, so not valid JSON text
    return value


def _valid_id(value: Any) -> bool:
    """What JSON-RPC (and the op dialect) take as an id: a string or a number."""
    return isinstance(value, (str, int, float, BigNum)) and not isinstance(value, bool)


def _str_or_none(frame: dict[str, Any], key: str) -> bool:
    return frame.get(key) is None or isinstance(frame[key], str)


@dataclasses.dataclass
class Frame:
    """One fuzz frame and what its answers must be."""

    data: bytes
    binary: bool
    low: int = 1  # own terminal answers at least
    high: int = 1  # and at most
    call: bool = False  # its answer may come after its window (a call that runs)
    ids: frozenset[bytes] = frozenset()  # the raw ids it carries
    cancels: bytes | None = None  # the raw request id an MCP cancel would end silently
    key: tuple[str, bytes] | None = None  # what a call's late answer carries
    counted: int = 0

    def describe(self) -> str:
        return f"{'binary' if self.binary else 'text'} frame {_short(self.data)}"


ENVELOPE_STRINGS = ("jsonrpc", "method", "op")


def expect(data: bytes, binary: bool) -> Frame:
    """What the daemon must answer `data` with on an established session, from what the
    frame is (JSON-RPC 2.0 and the op dialect), not from how the router is written."""
    frame = Frame(data, binary)
    ids = _Ids()
    with contextlib.suppress(msgspec.DecodeError, RecursionError):
        ids = _IDS.decode(data)
        frame.ids = frozenset(bytes(r) for r in (ids.id, ids.request_id) if len(r))
    try:
        obj = strict_json(data)
    except _NotJson:
        return frame  # one error, whatever the dialect
    except _Unsure:
        frame.low = 0
        return frame
    if not isinstance(obj, dict):
        return frame
    envelope = [(k, obj.get(k)) for k in ENVELOPE_STRINGS]
    envelope += [(k, v) for k, v in getattr(obj, "shadowed", ()) if k in ENVELOPE_STRINGS]
    if not all(v is None or isinstance(v, str) for _, v in envelope):
        return frame  # the envelope itself is malformed: one error
    if obj.get("jsonrpc") is not None:
        if "id" not in obj:
            # A notification: never answered, even a broken one.
            frame.low = frame.high = 0
            params = obj.get("params")
            if (
                obj["jsonrpc"] == "2.0"
                and obj.get("method") == "notifications/cancelled"
                and isinstance(params, dict)
                and "requestId" in params
                and _str_or_none(params, "reason")
            ):
                with contextlib.suppress(msgspec.DecodeError):
                    frame.cancels = bytes(_CANCEL.decode(bytes(ids.params)).requestId)
            return frame
        if obj["jsonrpc"] != "2.0" or not _valid_id(obj["id"]):
            return frame
        if obj.get("method") is None:
            if "result" in obj or "error" in obj:
                frame.low = frame.high = 0  # a response to nothing we asked
            return frame
        frame.call = obj["method"] == "tools/call"
        frame.key = ("rpc", bytes(ids.id))
        return frame
    if obj.get("op") is not None:
        if any(k == "op" and v != obj["op"] for k, v in getattr(obj, "shadowed", ())):
            # "op" given twice with different values: which one wins is the parser's
            # choice (the daemon refuses such a frame with INVALID_FRAME).
            frame.low = 0
            return frame
        if obj["op"] == "cancel" and "request_id" in obj:
            frame.low = frame.high = 0  # its call answers (CANCELLED), the cancel does not
        elif obj["op"] == "call_tool":
            frame.call = _valid_id(obj.get("request_id")) and bool(obj.get("name"))
            frame.key = ("op", bytes(ids.request_id))
    return frame


# --- what the daemon sends: well-formed and typed ----------------------------------------

TERMINAL_OPS = frozenset(
    {"call_tool_res", "error", "list_tools_res", "health_res", "rotate_token_res", "hello_ack"}
)
NOTE_OPS = frozenset({"call_tool_ack", "progress", "ack"})


def check_rpc_error(error: Any, broker: bool = True) -> str | None:
    """Why `error` is not a typed JSON-RPC error object (None when it is)."""
    if not isinstance(error, dict):
        return f"the error is not an object: {_short(error)}"
    code, message = error.get("code"), error.get("message")
    if not isinstance(code, int) or isinstance(code, bool):
        return f"the error code is not an integer: {_short(error)}"
    if not isinstance(message, str):
        return f"the error message is not a string: {_short(error)}"
    data = error.get("data")
    if not broker and not (isinstance(data, dict) and "code" in data):
        return None  # a hosted server's own error, relayed
    if not isinstance(data, dict) or data.get("code") not in ERROR_CODES:
        return f"no known data.code in a broker error: {_short(error)}"
    wanted = {JSONRPC_CODES[ErrorCode(data["code"])]}
    if data["code"] == ErrorCode.INVALID_FRAME:
        wanted.add(-32700)
    if code not in wanted:
        return f"code {code} does not go with data.code {data['code']}: {_short(error)}"
    return None


def check_op_error(error: Any) -> str | None:
    if not isinstance(error, dict):
        return f"the op error is not an object: {_short(error)}"
    if error.get("code") not in ERROR_CODES or not isinstance(error.get("message"), str):
        return f"the op error has no known code or no message: {_short(error)}"
    return None


def check_call_tool_result(result: Any) -> str | None:
    """Why `result` is not an MCP CallToolResult (None when it is)."""
    if not isinstance(result, dict):
        return f"the tools/call result is not an object: {_short(result)}"
    content = result.get("content")
    if not isinstance(content, list) or not all(
        isinstance(c, dict) and isinstance(c.get("type"), str) for c in content
    ):
        return f"the result's content is not a list of content blocks: {_short(result)}"
    if "isError" in result and not isinstance(result["isError"], bool):
        return f"the result's isError is not a boolean: {_short(result)}"
    if "structuredContent" in result and not isinstance(result["structuredContent"], dict):
        return f"the result's structuredContent is not an object: {_short(result)}"
    return None


def check_op_frame(frame: dict[str, Any]) -> str | None:
    op = frame.get("op")
    if op not in TERMINAL_OPS and op not in NOTE_OPS:
        return f"an op frame of unknown kind: {_short(frame)}"
    if op == "error":
        return check_op_error(frame.get("error"))
    if op == "call_tool_res":
        if "outputs" not in frame:
            return check_op_error(frame.get("error"))
        if not (
            isinstance(frame["outputs"], list)
            and isinstance(frame.get("text"), str)
            and isinstance(frame.get("isError"), bool)
        ):
            return f"a malformed call_tool_res: {_short(frame)}"
        if frame["isError"]:
            return check_op_error(frame.get("error"))
    return None


def check_rpc_frame(frame: dict[str, Any], broker: bool = True) -> str | None:
    if frame.get("jsonrpc") != "2.0":
        return f"not a JSON-RPC 2.0 frame: {_short(frame)}"
    if "method" in frame:
        return None if isinstance(frame["method"], str) else f"a bad notification: {frame}"
    if "id" not in frame or (("result" in frame) == ("error" in frame)):
        return f"a response needs an id and exactly one of result and error: {_short(frame)}"
    if "error" in frame:
        return check_rpc_error(frame["error"], broker)
    return None


def parse_answer(data: str | bytes) -> tuple[dict[str, Any] | None, str | None]:
    """A daemon frame as a JSON object, or why it is not one."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    try:
        value = json.loads(raw, parse_int=_parse_int, parse_constant=_reject_constant)
    except (ValueError, _NotJson) as exc:
        return None, f"the daemon sent what is not JSON ({exc}): {_short(raw)}"
    if not isinstance(value, dict):
        return None, f"the daemon sent a non-object frame: {_short(value)}"
    return value, None


def answer_key(frame: dict[str, Any], raw: bytes) -> tuple[bool, tuple[str, bytes] | None]:
    """(is it a terminal answer, the (dialect, raw id) it carries)."""
    try:
        ids = _IDS.decode(raw)
    except msgspec.DecodeError:
        return False, None
    if "op" in frame:
        rid = bytes(ids.request_id)
        return frame["op"] in TERMINAL_OPS, ("op", rid) if rid else None
    if "method" in frame:
        return False, None
    rid = bytes(ids.id)
    return True, ("rpc", rid) if rid and rid != b"null" else None


# --- the live WebSocket fuzzer -----------------------------------------------------------


class WsFuzzer:
    """One fuzzed connection of one dialect, plus neighbours on their own connections."""

    def __init__(self, daemon: DaemonProcess, dialect: str) -> None:
        self.daemon = daemon
        self.dialect = dialect
        self.http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.neighbour_mcp: aiohttp.ClientWebSocketResponse | None = None
        self.neighbour_op: aiohttp.ClientWebSocketResponse | None = None
        self.failures: list[str] = []
        self.frames_sent = 0
        self.answers = 0
        self.batches = 0
        self.reconnects = 0
        self.outstanding: dict[tuple[str, bytes], tuple[Frame, float]] = {}
        self.silenced = 0
        self._sentinel = 0
        self._window: list[Frame] = []

    async def start(self) -> None:
        self.http = aiohttp.ClientSession()
        self.ws = await self._open()
        self.neighbour_mcp = await mcp_session(self.http, self.daemon)
        self.neighbour_op, ack = await op_hello(
            self.http, self.daemon, session_id=f"neighbour-{uuid.uuid4().hex}"
        )
        assert ack["ok"] is True, ack

    async def _open(self) -> aiohttp.ClientWebSocketResponse:
        assert self.http is not None
        if self.dialect == "mcp":
            return await mcp_session(self.http, self.daemon)
        ws, ack = await op_hello(self.http, self.daemon, session_id=f"fuzz-{uuid.uuid4().hex}")
        assert ack["ok"] is True, ack
        return ws

    async def close(self) -> None:
        for ws in (self.ws, self.neighbour_mcp, self.neighbour_op):
            if ws is not None:
                with contextlib.suppress(Exception):
                    await ws.close()
        if self.http is not None:
            await self.http.close()

    def fail(self, message: str) -> None:
        if len(self.failures) < 200 and message not in self.failures:
            self.failures.append(message)

    # sending

    async def run_batch(self, frames: list[Frame]) -> None:
        """Send the frames (a segment at a time: no two frames in flight share an id,
        as a re-sent id would join the call already running), check every answer."""
        self.batches += 1
        i = 0
        while i < len(frames):
            segment: list[Frame] = []
            seen: set[bytes] = set()
            while i < len(frames):
                frame = frames[i]
                busy = {k[1] for k in self.outstanding}
                if frame.ids & (seen | busy):
                    if segment:
                        break
                    await self._await_ids(frame.ids)
                    continue
                segment.append(frame)
                seen |= frame.ids
                i += 1
            await self._run_segment(segment)
        await self._check_neighbours()

    async def _run_segment(self, segment: list[Frame]) -> None:
        assert self.ws is not None
        sentinels: list[str] = []
        try:
            for frame in segment:
                if frame.binary:
                    await self.ws.send_bytes(frame.data)
                else:
                    await self.ws.send_frame(frame.data, aiohttp.WSMsgType.TEXT)
                self._sentinel += 1
                sentinel = f"\u00a7sentinel-{self._sentinel}"
                sentinels.append(sentinel)
                ping = {"jsonrpc": "2.0", "id": sentinel, "method": "ping"}
                await self.ws.send_str(json.dumps(ping))
                self.frames_sent += 1
        except (ConnectionError, aiohttp.ClientError) as exc:
            self.fail(f"sending failed ({exc!r}) at {segment[len(sentinels) - 1].describe()}")
            await self._reconnect()
            return
        self._window = list(segment)
        for frame, sentinel in zip(segment, sentinels, strict=True):
            if not await self._read_until(frame, sentinel):
                return
        self._window = []

    async def _reconnect(self) -> None:
        self.reconnects += 1
        self.outstanding.clear()
        with contextlib.suppress(Exception):
            if self.ws is not None:
                await self.ws.close()
        self.ws = await self._open()

    # reading

    async def _receive(self, deadline: float) -> tuple[dict[str, Any] | None, bytes, bool]:
        """The next data frame (parsed, raw), or (None, b"", False) once the socket is gone."""
        assert self.ws is not None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None, b"", True
            try:
                msg = await self.ws.receive(timeout=remaining)
            except TimeoutError:
                return None, b"", True
            if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                raw = (
                    msg.data.encode("utf-8", "surrogatepass")
                    if isinstance(msg.data, str)
                    else msg.data
                )
                parsed, why = parse_answer(raw)
                if parsed is None:
                    self.fail(f"{why} (window: {self._window_hint()})")
                    continue
                self.answers += 1
                return parsed, raw, False
            if msg.type is aiohttp.WSMsgType.ERROR:
                self.fail(f"the fuzzed connection failed: {msg.data!r} ({self._window_hint()})")
            else:
                self.fail(
                    f"the fuzzed connection was closed ({self.ws.close_code}) "
                    f"({self._window_hint()})"
                )
            return None, b"", False

    def _window_hint(self) -> str:
        return ", ".join(f.describe() for f in self._window[:3]) or "between frames"

    async def _read_until(self, frame: Frame, sentinel: str) -> bool:
        """Read up to `frame`'s sentinel pong, attributing what comes; False if the
        connection went away."""
        deadline = time.monotonic() + scaled(ANSWER_DEADLINE_S)
        while True:
            parsed, raw, timed_out = await self._receive(deadline)
            if parsed is None:
                if timed_out:
                    self.fail(f"no pong within {ANSWER_DEADLINE_S} s after {frame.describe()}")
                await self._reconnect()
                return False
            if parsed.get("id") == sentinel and "method" not in parsed:
                if parsed.get("result") != {}:
                    self.fail(f"a bad pong {_short(parsed)} after {frame.describe()}")
                self._close_window(frame)
                return True
            self._attribute(parsed, raw, frame)

    def _attribute(self, parsed: dict[str, Any], raw: bytes, frame: Frame | None) -> None:
        why = check_op_frame(parsed) if "op" in parsed else check_rpc_frame(parsed)
        terminal, key = answer_key(parsed, raw)
        owner = frame
        if key is not None and key in self.outstanding:
            owner = self.outstanding.pop(key)[0]
            owner.counted += 1
            if why is None and key[0] == "rpc" and "result" in parsed:
                why = check_call_tool_result(parsed["result"])
        elif terminal and frame is not None:
            frame.counted += 1
            if key is not None and key[1] not in frame.ids:
                why = why or f"an answer with an id its frame did not carry: {_short(parsed)}"
        elif terminal:
            why = why or f"an answer to no frame in flight: {_short(parsed)}"
        if why is not None:
            self.fail(f"{why}\n    for {owner.describe() if owner else 'no frame'}")

    def _close_window(self, frame: Frame) -> None:
        if frame.call and frame.counted == 0 and frame.key is not None:
            self.outstanding[frame.key] = (frame, time.monotonic())
        elif not frame.low <= frame.counted <= frame.high:
            self.fail(
                f"{frame.counted} answers (expected {frame.low}..{frame.high}) "
                f"to {frame.describe()}"
            )
        if frame.cancels is not None:
            for key in [k for k in self.outstanding if k[1] == frame.cancels]:
                # An MCP cancel: the call ends without an answer.
                del self.outstanding[key]
                self.silenced += 1

    async def _await_ids(self, ids: frozenset[bytes]) -> None:
        """Read until no call in flight carries one of `ids`."""
        deadline = time.monotonic() + scaled(ANSWER_DEADLINE_S)
        while any(k[1] in ids for k in self.outstanding):
            parsed, raw, timed_out = await self._receive(deadline)
            if parsed is None:
                if timed_out:
                    self._report_unanswered()
                await self._reconnect()
                return
            self._attribute(parsed, raw, None)

    async def drain(self) -> None:
        """Wait for every call still in flight to be answered."""
        deadline = time.monotonic() + scaled(ANSWER_DEADLINE_S)
        while self.outstanding:
            parsed, raw, timed_out = await self._receive(deadline)
            if parsed is None:
                if timed_out:
                    self._report_unanswered()
                self.outstanding.clear()
                return
            self._attribute(parsed, raw, None)

    def _report_unanswered(self) -> None:
        for frame, _ in self.outstanding.values():
            self.fail(f"a call was never answered: {frame.describe()}")
        self.outstanding.clear()

    async def _check_neighbours(self) -> None:
        assert self.neighbour_mcp is not None and self.neighbour_op is not None
        if self.daemon.proc.poll() is not None:
            self.fail(f"the daemon died:\n{self.daemon.stderr()[-3000:]}")
            raise AssertionError("\n".join(self.failures))
        try:
            await echo_mcp(self.neighbour_mcp, f"neighbour {self.batches} ✓")
            await echo_op(self.neighbour_op, f"neighbour {self.batches}")
        except (AssertionError, TimeoutError, ConnectionError, ValueError) as exc:
            self.fail(f"the neighbour was affected after batch {self.batches}: {exc!r}")

    async def inflight_settles(self) -> None:
        """health shows no call in flight or queued (the op neighbour asks)."""
        assert self.neighbour_op is not None
        health = await op_health(self.neighbour_op)
        if not capacity_free(health):
            self.fail(f"capacity still taken after the fuzz: {_short(health, 1500)}")


async def op_health(ws: aiohttp.ClientWebSocketResponse, timeout_s: float = 5.0) -> dict[str, Any]:
    """The health snapshot once no call is in flight (or the last one seen)."""
    deadline = time.monotonic() + scaled(timeout_s)
    while True:
        await ws.send_str(json.dumps({"op": "health"}))
        while True:
            msg = await ws.receive(timeout=scaled(10.0))
            assert msg.type is aiohttp.WSMsgType.TEXT, msg
            frame = json.loads(msg.data)
            if frame.get("op") == "health_res":
                break
        health: dict[str, Any] = frame["health"]
        if capacity_free(health) or time.monotonic() > deadline:
            return health
        await asyncio.sleep(0.05)


def capacity_free(health: dict[str, Any]) -> bool:
    """No call holds capacity: nothing in flight, queued, or on a worker or instance."""
    inflight = health["inflight"]
    return (
        inflight["global"] == 0
        and not any(inflight["providers"].values())
        and health["queued"] == 0
        and all(w["inflight"] == 0 for w in health["workers"])
        and all(i["in_flight"] == 0 for s in health["servers"] for i in s["instances"])
    )


@pytest.fixture(scope="module")
def fuzz_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One daemon (built-in tools) for the dialect and HTTP fuzzing."""
    daemon = start_daemon(
        tmp_path_factory.mktemp("fuzz-dialects"),
        workers=2,
        env={
            "EXAI_WS_CALL_TIMEOUT": "5",
            "EXAI_WS_HELLO_TIMEOUT": "5",
            # Each frame is judged by what answers it within its batch: a call over the
            # session cap must be refused then, not wait in the queue.
            "EXAI_WS_MCP_QUEUE_TIMEOUT": "0",
            **_env_without_providers(),
        },
    )
    try:
        yield daemon
    finally:
        daemon.stop(timeout_s=10.0)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A private event loop that sync (Hypothesis) test code drives step by step."""
    event_loop = asyncio.new_event_loop()
    try:
        yield event_loop
    finally:
        event_loop.run_until_complete(event_loop.shutdown_asyncgens())
        event_loop.close()


def assert_clean_logs(daemon: DaemonProcess) -> None:
    logs = daemon_logs(daemon)
    for marker in LOG_MARKERS:
        at = logs.find(marker)
        assert at < 0, logs[max(0, at - 2000) : at + 3000]


def run_dialect_fuzz(daemon: DaemonProcess, loop: asyncio.AbstractEventLoop, dialect: str) -> None:
    strategy = MCP_FRAMES if dialect == "mcp" else OP_FRAMES
    fuzzer = WsFuzzer(daemon, dialect)
    started = time.monotonic()
    loop.run_until_complete(fuzzer.start())
    try:

        @_fuzz_settings(FRAMES_PER_DIALECT // BATCH[0] + 50)
        @given(st.lists(strategy, min_size=BATCH[0], max_size=BATCH[1]))
        def fuzz(batch: list[tuple[bytes, bool]]) -> None:
            if fuzzer.frames_sent >= FRAMES_PER_DIALECT:
                return
            frames = [expect(data, binary) for data, binary in batch]
            loop.run_until_complete(fuzzer.run_batch(frames))

        fuzz()
        loop.run_until_complete(fuzzer.drain())
        loop.run_until_complete(fuzzer.inflight_settles())
        loop.run_until_complete(fuzzer._check_neighbours())
    finally:
        loop.run_until_complete(fuzzer.close())
    stats = (
        f"{dialect}: {fuzzer.frames_sent} fuzz frames sent (each with a sentinel ping), "
        f"{fuzzer.answers} frames received, {fuzzer.batches} batches, "
        f"{fuzzer.silenced} calls cancelled by MCP cancels, {fuzzer.reconnects} reconnects, "
        f"{time.monotonic() - started:.1f} s"
    )
    print(stats, flush=True)
    assert daemon.proc.poll() is None, f"the daemon died:\n{daemon.stderr()[-3000:]}"
    assert fuzzer.frames_sent >= FRAMES_PER_DIALECT, stats
    assert not fuzzer.failures, f"{stats}\n" + "\n".join(fuzzer.failures[:40])
    assert_clean_logs(daemon)


@pytest.mark.timeout(240)
def test_fuzz_mcp_dialect(fuzz_daemon: DaemonProcess, loop: asyncio.AbstractEventLoop) -> None:
    """≥10,000 mutated MCP frames on one MCP session: each answered exactly as JSON-RPC
    says, with typed errors; the neighbours never notice."""
    run_dialect_fuzz(fuzz_daemon, loop, "mcp")


@pytest.mark.timeout(240)
def test_fuzz_op_dialect(fuzz_daemon: DaemonProcess, loop: asyncio.AbstractEventLoop) -> None:
    """≥10,000 mutated op frames on one op session: each answered with its reply or a
    typed error (a cancel with nothing to cancel, silently); the neighbours never notice."""
    run_dialect_fuzz(fuzz_daemon, loop, "op")


# --- HTTP endpoints ----------------------------------------------------------------------

PORT_MARK = b"{PORT}"
HTTP_METHODS = st.one_of(
    st.just(b"GET"),
    st.just(b"GET"),
    st.sampled_from(
        [b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE", b"CONNECT",
         b"get", b"BREW", b"G\x00T", b"GET GET", b""]
    ),
)  # fmt: skip
HOSTS = st.sampled_from(
    [b"127.0.0.1:" + PORT_MARK, b"127.0.0.1:" + PORT_MARK, b"localhost:" + PORT_MARK,
     b"127.0.0.1", b"[::1]:" + PORT_MARK, b"evil.example", b"evil.example:" + PORT_MARK, b"",
     b"127.0.0.1:1:2", b"[::1", b"\xff\xfe", b"localhost.", b"127.0.0.1 ", b"a" * 300]
)  # fmt: skip
ORIGINS = st.sampled_from(
    [b"null", b"http://evil.example", b"http://127.0.0.1", b"http://localhost:" + PORT_MARK,
     b"file://", b"", b"\xff"]
)  # fmt: skip
AUTHS = st.sampled_from(
    [b"Bearer x", b"Bearer ", b"Basic Zm9vOmJhcg==", b"bearer \xff\xfe", b"Bearer " + b"t" * 5000]
)
WS_KEYS = st.sampled_from([b"dGhlIHNhbXBsZSBub25jZQ==", b"short", b"", b"!!!!!!!!!!!!!!!!!!!!!!!="])
HEADER_NAMES = st.sampled_from(
    [b"Accept", b"Cookie", b"X-Forwarded-For", b"Content-Type", b"Expect", b"Range",
     b"If-None-Match", b"Accept-Encoding", b"X-\x00", b"Bad Name", b"", b"\xff",
     b"Mcp-Session-Id", b"MCP-Protocol-Version", b"Mcp-Method", b"Last-Event-ID"]
)  # fmt: skip
HEADER_VALUES = st.one_of(
    st.sampled_from([b"*/*", b"100-continue", b"bytes=0-1,5-", b"gzip, br", b"\x00", b"\x7f"]),
    st.sampled_from(
        [
            b"application/json, text/event-stream",
            b"text/event-stream",
            b"application/json",
            b"2026-07-28",
            b"2025-11-25",
            b"tools/call",
            b"0-1",
            b"deadbeef",
        ]
    ),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40).map(str.encode),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40).map(str.encode),
    st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b),
    st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
)
# What /mcp reads: JSON-RPC that opens no session (so the fuzz cannot fill the session
# cap), with and without the 2026-07-28 envelope.
MCP_BODIES = st.sampled_from(
    [b'{"jsonrpc":"2.0","id":1,"method":"ping"}',
     b'{"jsonrpc":"2.0","id":"x","method":"tools/list"}',
     b'{"jsonrpc":"2.0","id":2,"method":"tools/call",'
     b'"params":{"name":"echo","arguments":{"text":"x"}}}',
     b'{"jsonrpc":"2.0","id":3,"method":"tools/list","params":{"_meta":'
     b'{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}',
     b'{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}',
     b'[]', b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', b'{"jsonrpc":"2.0","id":{},"method":1}',
     b'{"jsonrpc":"2.0","result":{},"id":9}']
)  # fmt: skip
QUERY_PARTS = st.one_of(
    st.sampled_from([b"token=x", b"token=", b"a=1&a=2", b"%zz", b"%00", b"=", b"&&", b"x" * 4000]),
    st.text(max_size=20).map(lambda t: t.encode("utf-8", "surrogatepass").replace(b" ", b"%20")),
)


@dataclasses.dataclass
class HttpRequest:
    """One generated request, sent to every endpoint: `{PATH}` stands for the endpoint
    (as the variant spells it), `{PORT}` for the daemon's port."""

    data: bytes
    variant: int
    clean: bool  # well framed: the connection may be reused after its response
    head: bool
    # Its body's framing may leave the server waiting for more (a fair thing to do).
    may_wait: bool = False

    def render(self, endpoint: str, port: bytes) -> bytes:
        path = endpoint.encode()
        spelled = [
            path, path + b"/", b"/" + path, path.upper(), path + b"#f", path + b"%00",
            b"/../" + path, path + b"/.", b"http://127.0.0.1" + path, b"*",
        ][self.variant]  # fmt: skip
        return self.data.replace(b"{PATH}", spelled).replace(PORT_MARK, port)


@st.composite
def http_request(draw: st.DrawFn) -> HttpRequest:
    """One request: mostly well framed, with hostile parts."""
    if draw(st.integers(0, 24)) == 0:
        garbage = draw(
            st.binary(max_size=120)
            | st.sampled_from([b"\x16\x03\x01\x00", b"PRI * HTTP/2.0\r\n\r\nSM", b"{PATH}"])
        )
        return HttpRequest(garbage + b"\r\n\r\n", 0, False, False, may_wait=True)
    method = draw(HTTP_METHODS)
    variant = draw(st.integers(0, 40))
    variant = variant if variant < 10 else 0
    target = b"{PATH}"
    query = draw(st.integers(0, 9))
    if query == 0:
        target += b"?" + b"&".join(draw(st.lists(QUERY_PARTS, min_size=1, max_size=3)))
    elif query == 1:
        target += b"?" + b"q" * draw(st.sampled_from([100, 9000, 20000]))
    version = draw(
        st.sampled_from([b"HTTP/1.1"] * 30 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/9.9", b"FOO", b""])
    )
    clean = method in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH") and (
        version in (b"HTTP/1.1", b"HTTP/1.0")
    )
    headers: list[tuple[bytes, bytes]] = []
    if draw(st.integers(0, 9)):
        headers.append((b"Host", draw(HOSTS)))
    if draw(st.integers(0, 5)) == 0:
        headers.append((b"Origin", draw(ORIGINS)))
    if draw(st.integers(0, 5)) == 0:
        headers.append((b"Authorization", draw(AUTHS)))
    if draw(st.integers(0, 4)) == 0:
        headers.append(
            (b"Upgrade", draw(st.sampled_from([b"websocket", b"WebSocket", b"h2c", b""])))
        )
        headers.append((b"Connection", b"Upgrade"))
        if draw(st.booleans()):
            headers.append((b"Sec-WebSocket-Key", draw(WS_KEYS)))
        if draw(st.booleans()):
            headers.append((b"Sec-WebSocket-Version", draw(st.sampled_from([b"13", b"8", b""]))))
        if draw(st.booleans()):
            protocol = draw(st.sampled_from([b"mcp", b"x", b"mcp, x", b""]))
            headers.append((b"Sec-WebSocket-Protocol", protocol))
        clean = False  # an upgrade that succeeds is no longer HTTP
    for _ in range(max(0, draw(st.integers(-3, 3)))):
        headers.append((draw(HEADER_NAMES), draw(HEADER_VALUES)))
    if draw(st.integers(0, 30)) == 0:
        headers.extend((b"X-Many-%d" % i, b"v") for i in range(draw(st.sampled_from([50, 150]))))
    body = b""
    may_wait = False
    framing = draw(st.integers(0, 9))
    if framing == 0:
        body = draw(st.binary(max_size=200) | st.just(b'{"op":"hello"}') | MCP_BODIES)
        headers.append((b"Content-Length", str(len(body)).encode()))
    elif framing == 1:
        chunk = draw(st.binary(max_size=64))
        headers.append((b"Transfer-Encoding", b"chunked"))
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(chunk), chunk) if chunk else b"0\r\n\r\n"
    elif framing == 2:
        bad = draw(st.sampled_from([b"abc", b"-1", b"1 2", b"99999999999999999999"]))
        headers.append((b"Content-Length", bad))
        clean = False
    elif framing == 3:
        coding = draw(st.sampled_from([b"chunked", b"gzip", b"chunked, x"]))
        headers.append((b"Transfer-Encoding", coding))
        body = draw(st.sampled_from([b"zz\r\n\r\n", b"5\r\nab\r\n0\r\n\r\n", b"0\r\n\r\n"]))
        clean = False
        may_wait = True
    if any(not name or b" " in name or b"\x00" in name or b"\xff" in name for name, _ in headers):
        clean = False
    head = b" ".join((method, target, version))
    data = head + b"\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in headers) + b"\r\n" + body
    return HttpRequest(data, variant, clean, method == b"HEAD", may_wait)


class HttpConnection:
    """Raw HTTP/1.1 requests to one endpoint over a keep-alive connection."""

    def __init__(self, fuzzer: HttpFuzzer, endpoint: str) -> None:
        self.fuzzer = fuzzer
        self.endpoint = endpoint
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def drop(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def run(self, requests: list[HttpRequest]) -> None:
        for request in requests:
            await self.one(request)

    async def one(self, request: HttpRequest) -> None:
        fuzzer = self.fuzzer
        fuzzer.sent[self.endpoint] += 1
        data = request.render(self.endpoint, fuzzer.port)
        if self.writer is None or not data.strip():
            # Blank lines are no request: nothing to answer, and they go on a connection of
            # their own so that they cannot delay the next request.
            await self.drop()
            self.reader, self.writer = await asyncio.open_connection(
                "127.0.0.1", fuzzer.daemon.port, limit=1 << 20
            )
            fuzzer.connections += 1
        assert self.reader is not None and self.writer is not None
        if not data.strip():
            self.writer.write(data)
            await self.drop()
            return
        wait_s = scaled(0.5 if request.may_wait else 10.0)
        try:
            self.writer.write(data)
            await self.writer.drain()
            status, keep = await asyncio.wait_for(self.response(request.head), wait_s)
        except TimeoutError:
            if not request.may_wait:
                fuzzer.fail(f"no response within {wait_s:g} s to {_short(data)}")
            fuzzer.waited += 1
            await self.drop()
            return
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            fuzzer.fail(f"no response ({exc!r}) to {_short(data)}")
            await self.drop()
            return
        except (ValueError, asyncio.LimitOverrunError, RuntimeError) as exc:
            fuzzer.fail(f"a malformed response ({exc!r}) to {_short(data)}")
            await self.drop()
            return
        fuzzer.statuses[status] = fuzzer.statuses.get(status, 0) + 1
        if status >= 500 or status < 100:
            fuzzer.fail(f"status {status} for {_short(data)}")
        if not (request.clean and keep) or status == 101:
            await self.drop()

    async def response(self, head: bool) -> tuple[int, bool]:
        """(status, may the connection be reused) of the final response, its body read."""
        while True:
            status, keep = await self.one_response(head)
            if status == 101 or status >= 200:
                return status, keep

    async def one_response(self, head: bool) -> tuple[int, bool]:
        reader = self.reader
        assert reader is not None
        header = await reader.readuntil(b"\r\n\r\n")
        lines = header.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise ValueError(f"not an HTTP status line: {lines[0]!r}")
        status = int(parts[1])
        fields = {}
        for line in lines[1:]:
            if b":" in line:
                name, _, value = line.partition(b":")
                fields[name.strip().lower()] = value.strip()
        keep = fields.get(b"connection", b"").lower() != b"close" and parts[0] == b"HTTP/1.1"
        if head or status in (101, 204, 304) or 100 <= status < 200:
            return status, keep
        if b"content-length" in fields:
            await reader.readexactly(int(fields[b"content-length"]))
        elif fields.get(b"transfer-encoding", b"").lower() == b"chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await reader.readexactly(size + 2)
                if size == 0:
                    break
        else:
            await reader.read()
            keep = False
        return status, keep


class HttpFuzzer:
    """Every generated request goes to every endpoint, one connection per endpoint (run
    side by side); each must be answered with a status below 500."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.daemon = daemon
        self.port = str(daemon.port).encode()
        self.connections_by_endpoint = [HttpConnection(self, e) for e in ENDPOINTS]
        self.sent: dict[str, int] = dict.fromkeys(ENDPOINTS, 0)
        self.statuses: dict[int, int] = {}
        self.connections = 0
        self.waited = 0  # requests left unanswered because their framing was incomplete
        self.failures: list[str] = []
        self.http: aiohttp.ClientSession | None = None
        self.neighbour: aiohttp.ClientWebSocketResponse | None = None

    def fail(self, message: str) -> None:
        if len(self.failures) < 200 and message not in self.failures:
            self.failures.append(message)

    async def start(self) -> None:
        self.http = aiohttp.ClientSession()
        self.neighbour = await mcp_session(self.http, self.daemon)

    async def close(self) -> None:
        for connection in self.connections_by_endpoint:
            await connection.drop()
        if self.neighbour is not None:
            await self.neighbour.close()
        if self.http is not None:
            await self.http.close()

    async def run_batch(self, requests: list[HttpRequest]) -> None:
        await asyncio.gather(*(c.run(requests) for c in self.connections_by_endpoint))
        await self.check_neighbour()

    async def check_neighbour(self) -> None:
        assert self.http is not None and self.neighbour is not None
        if self.daemon.proc.poll() is not None:
            self.fail(f"the daemon died:\n{self.daemon.stderr()[-3000:]}")
            raise AssertionError("\n".join(self.failures))
        try:
            await echo_mcp(self.neighbour, "http neighbour ✓")
            async with self.http.get(f"http://127.0.0.1:{self.daemon.port}/health") as resp:
                assert resp.status == 200, resp.status
                assert (await resp.json())["ready"] is True
        except (
            AssertionError,
            TimeoutError,
            ConnectionError,
            ValueError,
            aiohttp.ClientError,
        ) as exc:
            self.fail(f"the neighbour was affected: {exc!r}")


@pytest.mark.timeout(240)
def test_fuzz_http_endpoints(fuzz_daemon: DaemonProcess, loop: asyncio.AbstractEventLoop) -> None:
    """≥10,000 generated requests per HTTP endpoint: each answered, none with a 5xx; the
    daemon and a neighbour's calls carry on."""
    fuzzer = HttpFuzzer(fuzz_daemon)
    started = time.monotonic()
    loop.run_until_complete(fuzzer.start())
    per_batch = 100
    try:

        @_fuzz_settings(REQUESTS_PER_ENDPOINT // per_batch + 50)
        @given(st.lists(http_request(), min_size=per_batch, max_size=per_batch))
        def fuzz(batch: list[HttpRequest]) -> None:
            if min(fuzzer.sent.values()) >= REQUESTS_PER_ENDPOINT:
                return
            loop.run_until_complete(fuzzer.run_batch(batch))

        fuzz()
        loop.run_until_complete(fuzzer.check_neighbour())
    finally:
        loop.run_until_complete(fuzzer.close())
    stats = (
        f"http: requests per endpoint {fuzzer.sent}, "
        f"statuses {dict(sorted(fuzzer.statuses.items()))}, "
        f"{fuzzer.connections} connections, {fuzzer.waited} left waiting for more bytes, "
        f"{time.monotonic() - started:.1f} s"
    )
    print(stats, flush=True)
    assert fuzz_daemon.proc.poll() is None, f"the daemon died:\n{fuzz_daemon.stderr()[-3000:]}"
    assert min(fuzzer.sent.values()) >= REQUESTS_PER_ENDPOINT, stats
    assert not fuzzer.failures, f"{stats}\n" + "\n".join(fuzzer.failures[:40])
    assert_clean_logs(fuzz_daemon)


# --- hostile tool results ----------------------------------------------------------------

CALL_TIMEOUT_S = 3.0  # the hostile daemons' EXAI_WS_CALL_TIMEOUT
PROMPT_S = 2.0  # an answer the server gave must reach the client well before that
HOSTED_LINE_LIMIT = 1024 * 1024


@dataclasses.dataclass
class Outcome:
    """What one client saw of one call: its answer, how long it took, what else came."""

    answer: dict[str, Any] | None = None
    elapsed: float = 0.0
    problems: list[str] = dataclasses.field(default_factory=list)
    others: list[dict[str, Any]] = dataclasses.field(default_factory=list)


async def read_answer(
    ws: aiohttp.ClientWebSocketResponse, is_answer: Callable[[dict[str, Any]], bool], started: float
) -> Outcome:
    """Read until the frame `is_answer` picks (or the connection fails or goes quiet)."""
    outcome = Outcome()
    deadline = started + scaled(CALL_TIMEOUT_S + 10.0)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            outcome.problems.append("no answer at all (not even the call timeout's)")
            return outcome
        try:
            msg = await ws.receive(timeout=remaining)
        except TimeoutError:
            continue
        if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            outcome.problems.append(
                f"the connection failed or closed ({msg.type.name}, {msg.data!r}, "
                f"close code {ws.close_code}) instead of an answer"
            )
            return outcome
        parsed, why = parse_answer(msg.data)
        if parsed is None:
            outcome.problems.append(str(why))
            continue
        if is_answer(parsed):
            outcome.answer = parsed
            outcome.elapsed = time.monotonic() - started
            return outcome
        outcome.others.append(parsed)


async def mcp_call(
    ws: aiohttp.ClientWebSocketResponse, name: str, arguments: dict[str, Any]
) -> Outcome:
    rid = f"hostile-{uuid.uuid4().hex[:8]}"
    params = {"name": name, "arguments": arguments, "_meta": {"progressToken": rid}}
    started = time.monotonic()
    await ws.send_str(
        json.dumps({"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params})
    )
    outcome = await read_answer(ws, lambda f: f.get("id") == rid and "method" not in f, started)
    if outcome.answer is not None:
        why = check_rpc_frame(outcome.answer, broker=False)
        if why is None and "result" in outcome.answer:
            why = check_call_tool_result(outcome.answer["result"])
        if why is not None:
            outcome.problems.append(why)
    for other in outcome.others:
        why = check_rpc_frame(other, broker=False)
        if why is not None:
            outcome.problems.append(f"besides the answer: {why}")
    # The session still answers afterwards.
    await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": f"{rid}-ping", "method": "ping"}))
    pong = await read_answer(ws, lambda f: f.get("id") == f"{rid}-ping", time.monotonic())
    if pong.answer is None or pong.answer.get("result") != {}:
        outcome.problems.append(f"the session stopped answering afterwards: {pong.problems}")
    return outcome


async def op_call(
    ws: aiohttp.ClientWebSocketResponse, name: str, arguments: dict[str, Any]
) -> Outcome:
    rid = f"hostile-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    frame = {"op": "call_tool", "request_id": rid, "name": name, "arguments": arguments}
    await ws.send_str(json.dumps(frame))
    outcome = await read_answer(
        ws,
        lambda f: f.get("op") in ("call_tool_res", "error") and f.get("request_id") == rid,
        started,
    )
    if outcome.answer is not None:
        why = check_op_frame(outcome.answer)
        if why is not None:
            outcome.problems.append(why)
    for other in outcome.others:
        why = (
            check_op_frame(other)
            if "op" in other
            else f"a non-op frame to an op client: {_short(other)}"
        )
        if why is not None:
            outcome.problems.append(f"besides the answer: {why}")
    return outcome


def answer_text(answer: dict[str, Any]) -> str | None:
    """The text of a successful answer in either dialect (None for an error)."""
    if answer.get("op") == "call_tool_res":
        return None if "error" in answer else str(answer.get("text"))
    result = answer.get("result")
    if (
        not isinstance(result, dict)
        or result.get("isError")
        or not isinstance(result.get("content"), list)
    ):
        return None
    return "".join(str(c.get("text", "")) for c in result["content"] if isinstance(c, dict))


def error_code(answer: dict[str, Any]) -> str | None:
    """The typed error code of an answer in either dialect (None for a result)."""
    error = answer.get("error")
    if not isinstance(error, dict):
        return None
    if answer.get("op"):
        return str(error.get("code"))
    data = error.get("data")
    return str(data.get("code")) if isinstance(data, dict) else "(server error)"


class HostileHarness:
    """A daemon hosting hostile tools, a neighbour on its own connections, and a way to
    start over when a hostile case leaves the daemon broken for everyone."""

    def __init__(self, tmp: Path, args: list[str], env: dict[str, str]) -> None:
        self.tmp = tmp
        self.args = args
        self.env = env
        self.daemon = self._start()

    def _start(self) -> DaemonProcess:
        return start_daemon(self.tmp, workers=1, args=self.args, env=self.env)

    def restart(self) -> None:
        self.daemon.stop(timeout_s=10.0)
        self.daemon = self._start()

    def stop(self) -> None:
        self.daemon.stop(timeout_s=10.0)

    @contextlib.asynccontextmanager
    async def clients(self) -> AsyncIterator[dict[str, aiohttp.ClientWebSocketResponse]]:
        async with aiohttp.ClientSession() as http:
            sockets = {
                "mcp": await mcp_session(http, self.daemon),
                "op": (await op_hello(http, self.daemon, session_id=f"h-{uuid.uuid4().hex}"))[0],
                "neighbour_mcp": await mcp_session(http, self.daemon),
                "neighbour_op": (
                    await op_hello(http, self.daemon, session_id=f"n-{uuid.uuid4().hex}")
                )[0],
                "health": (await op_hello(http, self.daemon, session_id=f"x-{uuid.uuid4().hex}"))[
                    0
                ],
            }
            try:
                yield sockets
            finally:
                for ws in sockets.values():
                    with contextlib.suppress(Exception):
                        await ws.close()


async def hostile_case(
    harness: HostileHarness, tool: str, check: Callable[[str, Outcome], list[str]]
) -> list[str]:
    """Call `tool` over both dialects while the neighbour calls echo on its own
    connections; every problem seen, as text."""
    problems: list[str] = []
    daemon = harness.daemon
    async with harness.clients() as ws:
        mcp_out, op_out, neighbour = await asyncio.gather(
            mcp_call(ws["mcp"], tool, {}),
            op_call(ws["op"], tool, {}),
            asyncio.gather(
                echo_mcp(ws["neighbour_mcp"], f"beside {tool} ✓"),
                echo_op(ws["neighbour_op"], f"beside {tool}"),
                return_exceptions=True,
            ),
        )
        for dialect, outcome in (("mcp", mcp_out), ("op", op_out)):
            problems += [f"{dialect}: {p}" for p in outcome.problems]
            if outcome.answer is not None:
                problems += [f"{dialect}: {p}" for p in check(dialect, outcome)]
        problems += [f"the neighbour's call beside it failed: {e!r}" for e in neighbour if e]
        if daemon.proc.poll() is not None:
            problems.append(f"the daemon died:\n{daemon.stderr()[-2000:]}")
            return problems
        try:
            await echo_mcp(ws["neighbour_mcp"], f"after {tool} ✓")
            await echo_op(ws["neighbour_op"], f"after {tool}")
        except (AssertionError, TimeoutError, ConnectionError, ValueError) as exc:
            problems.append(f"the neighbour's call after it failed: {exc!r}")
        health = await op_health(ws["health"])
        if not capacity_free(health):
            problems.append(
                f"capacity still taken: inflight {health['inflight']}, "
                f"workers {health['workers']}, servers {health['servers']}"
            )
    return problems


def prompt_answer(dialect: str, outcome: Outcome) -> list[str]:
    """A typed error or a well-formed result (checked already), and in time."""
    assert outcome.answer is not None
    problems = []
    code = error_code(outcome.answer)
    if code == ErrorCode.TIMEOUT or outcome.elapsed > scaled(PROMPT_S):
        problems.append(
            f"not prompt: answered after {outcome.elapsed:.1f} s with {_short(outcome.answer)}"
        )
    return problems


BROKEN_FOR_EVERYONE = ("neighbour", "daemon died", "capacity", "stopped answering", "no answer")


def run_hostile(
    harness: HostileHarness, tool: str, check: Callable[[str, Outcome], list[str]]
) -> None:
    problems = asyncio.run(hostile_case(harness, tool, check))
    if any(word in p for p in problems for word in BROKEN_FOR_EVERYONE):
        # The next case gets a daemon nobody has broken yet.
        with contextlib.suppress(Exception):
            harness.restart()
    assert not problems, f"{tool}:\n" + "\n".join(problems)


@pytest.fixture(scope="module")
def worker_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileHarness]:
    harness = HostileHarness(
        tmp_path_factory.mktemp("hostile-tools"),
        ["--server", "tests.fixtures.hostile_tools"],
        {
            "EXAI_WS_CALL_TIMEOUT": str(CALL_TIMEOUT_S),
            "EXAI_WS_MAX_BYTES": str(4 * 1024 * 1024),
        },
    )
    try:
        yield harness
    finally:
        harness.stop()


WORKER_TOOLS = ["echo", "nan_progress", *hostile_tools.RESULTS]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("tool", WORKER_TOOLS)
def test_hostile_worker_result(worker_harness: HostileHarness, tool: str) -> None:
    """A worker-hosted tool's hostile result: its caller gets a prompt typed error or a
    well-formed result over both dialects; the neighbour, the daemon and its capacity
    are untouched."""
    run_hostile(worker_harness, tool, prompt_answer)


@pytest.fixture(scope="module")
def stdio_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileHarness]:
    command = f"{shlex.quote(sys.executable)} -m tests.fixtures.hostile_stdio_server"
    harness = HostileHarness(
        tmp_path_factory.mktemp("hostile-stdio"),
        ["--server-cmd", command],
        {
            "EXAI_WS_CALL_TIMEOUT": str(CALL_TIMEOUT_S),
            "EXAI_WS_MAX_BYTES": str(HOSTED_LINE_LIMIT),
            "HOSTILE_LINE_LIMIT": str(HOSTED_LINE_LIMIT),
        },
    )
    try:
        yield harness
    finally:
        harness.stop()


EXPECTED_TEXT = {
    "echo": "",
    "wrong_id_then_right": "right",
    "unknown_ids_then_right": "right",
    "duplicate_answer": "first",
    "not_json_then_right": "after garbage",
    "long_line_smuggle": "after the long line",
    "hostile_progress": "after hostile progress",
    "unsolicited_requests": "after unsolicited requests",
    "unsolicited_notifications": "after unsolicited notifications",
}


# What a call must end with instead of a text: a line past the limit still answers the
# request its id names, with the reason.
EXPECTED_CODE = {"long_valid_line_then_right": ErrorCode.RESULT_TOO_LARGE}


def stdio_check(behaviour: str) -> Callable[[str, Outcome], list[str]]:
    kind = hostile_stdio_server.BEHAVIOURS[behaviour][0]

    def check(dialect: str, outcome: Outcome) -> list[str]:
        assert outcome.answer is not None
        code = error_code(outcome.answer)
        if kind == hostile_stdio_server.TIMEOUT:
            # Nothing readable answered it: the call timeout must, in its time.
            if code is None:
                return [f"a result where only a timeout could come: {_short(outcome.answer)}"]
            if outcome.elapsed > scaled(CALL_TIMEOUT_S + 3.0):
                return [f"answered only after {outcome.elapsed:.1f} s"]
            return []
        if kind == hostile_stdio_server.EXIT:
            return (
                [] if code == ErrorCode.WORKER_LOST else [f"expected WORKER_LOST: {outcome.answer}"]
            )
        problems = prompt_answer(dialect, outcome)
        wanted_code = EXPECTED_CODE.get(behaviour)
        if wanted_code is not None and code != wanted_code:
            problems.append(f"expected {wanted_code}, got {_short(outcome.answer)}")
        wanted = EXPECTED_TEXT.get(behaviour)
        if wanted is not None and answer_text(outcome.answer) != wanted:
            problems.append(f"expected the text {wanted!r}, got {_short(outcome.answer)}")
        return problems

    return check


STDIO_BEHAVIOURS = [b for b in hostile_stdio_server.BEHAVIOURS if b != "exit_mid_call"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("behaviour", STDIO_BEHAVIOURS)
def test_hostile_stdio_behaviour(stdio_harness: HostileHarness, behaviour: str) -> None:
    """A daemon-hosted stdio server's hostile lines for one call: the caller gets a
    prompt typed error or a well-formed result (a timeout only where nothing readable
    answered); the neighbour, the daemon and its capacity are untouched."""
    run_hostile(stdio_harness, behaviour, stdio_check(behaviour))


@pytest.mark.timeout(60)
def test_hostile_stdio_server_exits_mid_call(stdio_harness: HostileHarness) -> None:
    """The hosted server dies mid-call: WORKER_LOST for its callers, and once it is
    restarted the neighbour's calls work again."""
    run_hostile(stdio_harness, "exit_mid_call", stdio_check("exit_mid_call"))
