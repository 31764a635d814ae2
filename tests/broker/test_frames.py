"""Unit tests for broker.router.codec and ops: client frames in, JSON-RPC/op frames out."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.calls.validation import parse_arguments
from broker.router.codec import Envelope, FrameCodec
from broker.router.ops import (
    CallToolOp,
    CancelOp,
    HelloOp,
    ListToolsOp,
    OpRequest,
    RotateTokenOp,
)
from exai.errors import ErrorCode, InvalidArguments, InvalidFrame, OverCapacity, Timeout
from exai.jsonrpc import present


@pytest.fixture
def codec() -> FrameCodec:
    """A fresh codec, as each connection gets."""
    return FrameCodec()


def decode_all(codec: FrameCodec, data: bytes) -> tuple[Envelope, OpRequest | None]:
    """Decode `data` as the router does: the envelope, then the op frame if it has an op."""
    env = codec.decode(data)
    return env, codec.decode_op(env, data) if env.op is not None else None


def op_frame(codec: FrameCodec, data: bytes) -> OpRequest | None:
    """The op Struct `data` decodes to."""
    return decode_all(codec, data)[1]


def invalid_frame(codec: FrameCodec, data: bytes) -> InvalidFrame:
    """The InvalidFrame that decoding `data` raises."""
    with pytest.raises(InvalidFrame) as info:
        decode_all(codec, data)
    assert info.value.code is ErrorCode.INVALID_FRAME
    return info.value


# --- decoding both dialects ----------------------------------------------------------


def test_decode_jsonrpc_tools_call(codec: FrameCodec) -> None:
    """A JSON-RPC tools/call gives its method, raw id and params; arguments stay raw."""
    frame = (
        b'{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"echo",'
        b'"arguments":{"text":"hi","model":"kimi"},"_meta":{"progressToken":"p1"}}}'
    )
    env = codec.decode(frame)
    assert (env.jsonrpc, env.method, bytes(env.id)) == ("2.0", "tools/call", b"42")
    assert env.op is None
    params = codec.call_params(env.params)
    assert params.name == "echo"
    assert bytes(params.arguments) == b'{"text":"hi","model":"kimi"}'
    assert params.meta is not None
    assert bytes(params.meta.progressToken) == b'"p1"'
    assert parse_arguments(bytes(params.arguments))["model"] == "kimi"


def test_decode_jsonrpc_notification_has_no_id(codec: FrameCodec) -> None:
    """A notification decodes with its id absent, so it is never answered."""
    env = codec.decode(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
    assert env.method == "notifications/initialized"
    assert not present(env.id)
    assert not present(env.params)


def test_decode_jsonrpc_null_id_counts_as_present(codec: FrameCodec) -> None:
    """`"id": null` is present (and raw `null`), unlike a missing id."""
    env = codec.decode(b'{"jsonrpc":"2.0","id":null,"method":"ping"}')
    assert present(env.id)
    assert bytes(env.id) == b"null"


def test_decode_op_hello(codec: FrameCodec) -> None:
    """The EX-AI hello op carries its token and session id."""
    env, hello = decode_all(codec, b'{"op":"hello","token":"t0k","session_id":"abc","acks":true}')
    assert isinstance(hello, HelloOp)
    assert (env.op, hello.token, hello.session_id, hello.acks) == ("hello", "t0k", "abc", True)
    assert env.jsonrpc is None


def test_decode_op_call_tool(codec: FrameCodec) -> None:
    """call_tool keeps request_id and arguments as raw JSON."""
    env, call = decode_all(
        codec,
        b'{"op":"call_tool","request_id":"r-1","name":"glm_chat","arguments":{"prompt":"x"}}',
    )
    assert isinstance(call, CallToolOp)
    assert (env.op, call.name) == ("call_tool", "glm_chat")
    assert bytes(call.request_id) == b'"r-1"'
    assert bytes(call.arguments) == b'{"prompt":"x"}'


def test_decode_op_rotate_token_and_cancel(codec: FrameCodec) -> None:
    """rotate_token's old/new and cancel's request_id are read."""
    rotate = op_frame(codec, b'{"op":"rotate_token","old":"a","new":"b"}')
    assert isinstance(rotate, RotateTokenOp)
    assert (rotate.old, rotate.new) == ("a", "b")
    cancel = op_frame(codec, b'{"op":"cancel","request_id":7}')
    assert isinstance(cancel, CancelOp)
    assert bytes(cancel.request_id) == b"7"


def test_decode_op_without_fields_gets_absent_defaults(codec: FrameCodec) -> None:
    """An op frame may leave out every field: the router, not msgspec, names what is missing."""
    call = op_frame(codec, b'{"op":"call_tool"}')
    assert isinstance(call, CallToolOp)
    assert call.name is None and not present(call.request_id) and not present(call.arguments)
    assert isinstance(op_frame(codec, b'{"op":"list_tools"}'), ListToolsOp)


@pytest.mark.parametrize("op", ["frobnicate", "", "progress", "hello_ack", "HELLO"])
def test_unknown_op_decodes_to_none_with_its_request_id(codec: FrameCodec, op: str) -> None:
    """An op nobody knows is no decode error: the router answers it as an unknown op,
    echoing the request_id the envelope read."""
    data = json.dumps({"op": op, "request_id": "u1", "token": 5}).encode()
    env, frame = decode_all(codec, data)
    assert frame is None
    assert (env.op, bytes(env.request_id)) == (op, b'"u1"')


def test_fields_of_another_op_are_ignored(codec: FrameCodec) -> None:
    """Each op decodes only its own fields, so another op's field (even ill-typed) is
    ignored like any unknown field."""
    assert isinstance(op_frame(codec, b'{"op":"list_tools","token":5,"new":[]}'), ListToolsOp)


def test_unknown_fields_are_ignored(codec: FrameCodec) -> None:
    """Fields the broker does not know (future MCP additions) do not fail the frame."""
    env = codec.decode(b'{"jsonrpc":"2.0","id":1,"method":"ping","x-extra":{"a":[1,2]}}')
    assert env.method == "ping"


# --- invalid frames ------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"not json", b"{", b"", b'{"a":1} trailing', b"\xff\xfe"])
def test_non_json_is_a_parse_error(codec: FrameCodec, data: bytes) -> None:
    """Bytes that are not JSON give -32700 with parse_error set."""
    exc = invalid_frame(codec, data)
    assert exc.parse_error is True
    assert exc.jsonrpc_code == -32700


def test_batch_is_refused_with_a_clear_message(codec: FrameCodec) -> None:
    """A JSON array (a batch) is refused by name, as an invalid request (-32600)."""
    exc = invalid_frame(codec, b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]')
    assert "batch" in exc.message
    assert exc.parse_error is False
    assert exc.jsonrpc_code == -32600


@pytest.mark.parametrize("data", [b'"hello"', b"5", b"null", b"true", b" 1.5 "])
def test_non_object_is_invalid(codec: FrameCodec, data: bytes) -> None:
    """A JSON value that is not an object is an invalid request."""
    exc = invalid_frame(codec, data)
    assert "object" in exc.message
    assert exc.jsonrpc_code == -32600


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b'{"jsonrpc":"2.0","id":1,"method":5}', "method"),
        (b'{"jsonrpc":2,"id":1,"method":"ping"}', "jsonrpc"),
        (b'{"op":["hello"]}', "op"),
        (b'{"op":"hello","token":123}', "token"),
        (b'{"op":"hello","acks":"yes"}', "acks"),
        (b'{"op":"rotate_token","old":"a","new":{}}', "new"),
    ],
)
def test_ill_typed_field_is_invalid(codec: FrameCodec, data: bytes, field: str) -> None:
    """A field of the wrong type is an invalid request whose message names the field."""
    exc = invalid_frame(codec, data)
    assert exc.jsonrpc_code == -32600
    assert field in exc.message


def test_invalid_utf8_outside_strings_is_invalid_frame(codec: FrameCodec) -> None:
    """Invalid UTF-8 where JSON syntax is expected is a parse error, not a crash."""
    assert invalid_frame(codec, b'{"op":"hello"}\xff').jsonrpc_code == -32700


def test_invalid_utf8_in_a_typed_string_is_invalid_frame(codec: FrameCodec) -> None:
    """Invalid UTF-8 inside `"method"` gives an error frame instead of killing the connection."""
    invalid_frame(codec, b'{"jsonrpc":"2.0","id":1,"method":"\xff"}')


def test_invalid_utf8_in_a_raw_id_is_invalid_frame(codec: FrameCodec) -> None:
    """An id holding invalid UTF-8 is refused, so it is never echoed into a text frame."""
    invalid_frame(codec, b'{"jsonrpc":"2.0","id":"\xff","method":"ping"}')


def test_deep_top_level_nesting_is_invalid_frame(codec: FrameCodec) -> None:
    """100000 levels of `[` give InvalidFrame, not RecursionError."""
    invalid_frame(codec, b"[" * 100_000)


def test_deep_truncated_nesting_inside_an_object_is_invalid_frame(codec: FrameCodec) -> None:
    """Unclosed deep nesting inside an object is refused as too deep."""
    exc = invalid_frame(codec, b'{"params":' + b"[" * 100)
    assert "nested" in exc.message


@pytest.mark.parametrize(
    "data",
    [
        b'{"jsonrpc":"2.0","id":1,"method":"x","params":' + b"[" * 100_000,
        b'{"params":' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"x-extra":' + b'{"a":' * 5000 + b"1" + b"}" * 5001,
    ],
    ids=["unclosed", "balanced", "unknown-field"],
)
def test_deep_nesting_inside_an_object_is_invalid_frame(codec: FrameCodec, data: bytes) -> None:
    """Deeply nested params give InvalidFrame instead of a RecursionError that drops the socket."""
    invalid_frame(codec, data)


# --- ids and encoding ----------------------------------------------------------------

IDS = [
    b"0",
    b"-17",
    b"123456789012345678901234567890",
    b'"plain"',
    b'"quote \\" backslash \\\\ slash \\/ tab \\t"',
    b'"\\u00e9\\ud83d\\ude00"',
    '"caf\u00e9 \U0001f600"'.encode(),
    b'""',
]


@pytest.mark.parametrize("raw_id", IDS)
def test_result_echoes_the_id_byte_for_byte(codec: FrameCodec, raw_id: bytes) -> None:
    """The response carries the request id exactly as the client wrote it."""
    env = codec.decode(b'{"jsonrpc":"2.0","id":' + raw_id + b',"method":"tools/call"}')
    frame = codec.result(env.id, b'{"content":[],"isError":false}')
    assert frame == (
        b'{"jsonrpc":"2.0","id":' + raw_id + b',"result":{"content":[],"isError":false}}'
    )
    assert json.loads(frame)["id"] == json.loads(raw_id)


def test_result_accepts_raw_payload(codec: FrameCodec) -> None:
    """A worker's raw result bytes are spliced in without re-encoding."""
    frame = codec.result(msgspec.Raw(b'"a"'), msgspec.Raw(b'{"k": [1, 2]}'))
    assert frame == b'{"jsonrpc":"2.0","id":"a","result":{"k": [1, 2]}}'


@pytest.mark.parametrize("raw_id", IDS)
def test_error_echoes_the_id_and_typed_code(codec: FrameCodec, raw_id: bytes) -> None:
    """Errors keep the id byte for byte and carry the JSON-RPC code and data.code name."""
    env = codec.decode(b'{"jsonrpc":"2.0","id":' + raw_id + b',"method":"tools/call"}')
    exc = OverCapacity(
        "provider kimi is full", scope="provider", provider="kimi", retry_after_ms=250
    )
    frame = codec.error(env.id, exc)
    assert b'"id":' + raw_id + b"," in frame
    error = json.loads(frame)["error"]
    assert error["code"] == -32050
    assert error["message"] == "provider kimi is full"
    assert error["data"] == {
        "code": "OVER_CAPACITY",
        "scope": "provider",
        "provider": "kimi",
        "retry_after_ms": 250,
    }


def test_error_without_id_uses_null(codec: FrameCodec) -> None:
    """An error for a frame whose id is unknown has `"id": null`."""
    frame = json.loads(codec.error(None, InvalidFrame("not JSON", parse_error=True)))
    assert frame["id"] is None
    assert frame["error"]["code"] == -32700
    assert frame["error"]["data"]["code"] == "INVALID_FRAME"


def test_progress_notification(codec: FrameCodec) -> None:
    """Progress goes out as notifications/progress with the client's own token."""
    frame = codec.progress(msgspec.Raw(b'"tok-1"'), 3.0, 10.0, "three of ten")
    assert json.loads(frame) == {
        "jsonrpc": "2.0",
        "method": "notifications/progress",
        "params": {
            "progressToken": "tok-1",
            "progress": 3.0,
            "total": 10.0,
            "message": "three of ten",
        },
    }


def test_progress_notification_omits_unknown_total_and_message(codec: FrameCodec) -> None:
    """Without total or message those keys are left out, and an integer token stays raw."""
    frame = codec.progress(msgspec.Raw(b"7"), 0.5, None, None)
    assert b'"progressToken":7' in frame
    assert json.loads(frame)["params"] == {"progressToken": 7, "progress": 0.5}


def test_op_error_frame(codec: FrameCodec) -> None:
    """Op-dialect errors carry the op, the raw request_id and code/message."""
    frame = codec.op_call_error(msgspec.Raw(b'"r-9"'), Timeout("took too long"))
    assert json.loads(frame) == {
        "op": "call_tool_res",
        "request_id": "r-9",
        "error": {"message": "took too long", "code": "TIMEOUT"},
    }
    assert frame == (
        b'{"op":"call_tool_res","error":{"message":"took too long","code":"TIMEOUT"},'
        b'"request_id":"r-9"}'
    )


def test_op_error_frame_outside_a_call(codec: FrameCodec) -> None:
    """A refused op frame is `"op": "error"`, with the request_id only when it had one."""
    exc = InvalidFrame("unknown op 'x'")
    assert codec.op_error(None, exc) == (
        b'{"op":"error","error":{"message":"unknown op \'x\'","code":"INVALID_FRAME"}}'
    )
    assert codec.op_error(msgspec.Raw(b"7"), exc).endswith(b',"request_id":7}')


def test_hello_refused_carries_text_and_code(codec: FrameCodec) -> None:
    """A refused hello says why in words (`error`) and as an ErrorCode (`code`), in that order,
    after the op and ok the shim reads first."""
    assert codec.hello_refused("unauthorized", ErrorCode.UNAUTHORIZED) == (
        b'{"op":"hello_ack","ok":false,"error":"unauthorized","code":"UNAUTHORIZED"}'
    )


# --- call params and routing arguments -----------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        b"",
        b"[]",
        b"null",
        b'{"arguments":{}}',
        b'{"name":5}',
        b'{"name":"x","_meta":[]}',
        b'{"name":"x"',
        b'"tools"',
    ],
)
def test_bad_call_params_raise_invalid_arguments(codec: FrameCodec, params: bytes) -> None:
    """tools/call params without a usable tool name are INVALID_ARGUMENTS (-32602)."""
    with pytest.raises(InvalidArguments) as info:
        codec.call_params(msgspec.Raw(params))
    assert info.value.jsonrpc_code == -32602


def test_call_params_without_arguments(codec: FrameCodec) -> None:
    """A call with no arguments has them absent, and routing reads nothing from them."""
    params = codec.call_params(msgspec.Raw(b'{"name":"version"}'))
    assert params.name == "version"
    assert not present(params.arguments)
    assert parse_arguments(bytes(params.arguments)) == {}


@pytest.mark.parametrize("arguments", [b"[1]", b'"text"', b"5", b"true"])
def test_non_object_arguments_raise_invalid_arguments(codec: FrameCodec, arguments: bytes) -> None:
    """Arguments must be a JSON object."""
    with pytest.raises(InvalidArguments, match="object"):
        parse_arguments(arguments)


def test_arguments_that_are_not_json_raise_invalid_arguments() -> None:
    """Truncated arguments are INVALID_ARGUMENTS, not a crash."""
    with pytest.raises(InvalidArguments):
        parse_arguments(b'{"model":"x"')


def test_parse_arguments_reads_every_argument() -> None:
    """Arguments come back whole; absent or null arguments are an empty object."""
    args = parse_arguments(b'{"prompt":"hi","model":"glm-4.5","continuation_id":"c1","n":[1]}')
    assert args == {"prompt": "hi", "model": "glm-4.5", "continuation_id": "c1", "n": [1]}
    assert parse_arguments(b"null") == {}
    assert parse_arguments(b"") == {}


def test_invalid_utf8_in_call_params_raises_invalid_arguments(codec: FrameCodec) -> None:
    """Invalid UTF-8 anywhere in a frame, params included, refuses the frame cleanly."""
    frame = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\xff"}}'
    assert invalid_frame(codec, frame).jsonrpc_code == -32700
    with pytest.raises(InvalidArguments):
        codec.call_params(msgspec.Raw(b'{"name":5}'))


def test_deep_arguments_raise_invalid_arguments(codec: FrameCodec) -> None:
    """Pathologically nested arguments are INVALID_ARGUMENTS, not RecursionError."""
    with pytest.raises(InvalidArguments):
        parse_arguments(b'{"x":' + b"[" * 100_000)


# --- properties ----------------------------------------------------------------------

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=15,
)
_FIELDS = [
    "jsonrpc",
    "id",
    "method",
    "params",
    "result",
    "error",
    "op",
    "request_id",
    "name",
    "arguments",
    "token",
    "session_id",
    "acks",
    "old",
    "new",
    "model",
    "_meta",
]
_envelopes = st.dictionaries(st.sampled_from(_FIELDS) | st.text(max_size=5), _json, max_size=6)


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_invalid_frame(data: bytes) -> None:
    """Whatever bytes arrive, decode returns an envelope or raises InvalidFrame."""
    with contextlib.suppress(InvalidFrame):
        decode_all(FrameCodec(), data)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=_json | _envelopes, ascii_only=st.booleans())
def test_arbitrary_json_decodes_or_raises_invalid_frame(value: Any, ascii_only: bool) -> None:
    """Any JSON value decodes or gives InvalidFrame; decoded params/arguments give only
    InvalidArguments."""
    codec = FrameCodec()
    try:
        env, op = decode_all(codec, json.dumps(value, ensure_ascii=ascii_only).encode())
    except InvalidFrame:
        return
    arguments = op.arguments if isinstance(op, CallToolOp) else msgspec.Raw(b"")
    for raw in (env.params, arguments):
        if present(raw):
            with contextlib.suppress(InvalidArguments):
                codec.call_params(raw)
            with contextlib.suppress(InvalidArguments):
                parse_arguments(bytes(raw))
