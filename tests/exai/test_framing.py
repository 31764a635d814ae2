"""Unit tests for exai.framing: length-prefixed msgpack frames on the worker pipes."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exai.framing import FrameDecoder, FrameEncoder, FramingError
from exai.ipc import (
    BrokerMessage,
    Call,
    Cancel,
    Heartbeat,
    Progress,
    Ready,
    Result,
    Shutdown,
    WorkerMessage,
)

BROKER_SAMPLES: list[Any] = [
    Call(1, "echo", b'{"text":"hi"}', "session-a"),
    Call(2**63 - 1, "kimi_chat", b"{}", "s" * 64, model="kimi-latest", want_progress=True),
    Call(3, "t\u00e9st", b"", "", model=None),
    Cancel(7),
    Heartbeat(0),
    Heartbeat(2**40),
    Shutdown(),
    Shutdown(0.25),
]
WORKER_SAMPLES: list[Any] = [
    Ready(123, b'[{"name":"echo"}]'),
    Ready(1, b"[]", ["chat", "kimi_chat"], "builtin"),
    Result(1, b'{"content":[],"isError":false}'),
    Result(2, None, "TIMEOUT", "took too long"),
    Result(3, b'{"content":[{"type":"text","text":"boom"}],"isError":true}', is_error=True),
    Progress(1, 0.5),
    Progress(1, 3.0, 10.0, "three of ten"),
    Heartbeat(99),
]
CASES = [(BrokerMessage, m) for m in BROKER_SAMPLES] + [(WorkerMessage, m) for m in WORKER_SAMPLES]


def frames_of(messages: list[Any]) -> bytes:
    """All messages encoded into one batch buffer with encode_into."""
    out = bytearray()
    encoder = FrameEncoder()
    for message in messages:
        encoder.encode_into(message, out)
    return bytes(out)


@pytest.mark.parametrize(("kind", "message"), CASES, ids=lambda v: type(v).__name__)
def test_every_message_round_trips_through_encode(kind: Any, message: Any) -> None:
    """Each IPC message decodes to an equal message on the other side."""
    frame = FrameEncoder().encode(message)
    decoder: FrameDecoder[Any] = FrameDecoder(kind)
    assert decoder.feed(frame) == [message]
    assert decoder.buffered == 0


@pytest.mark.parametrize(("kind", "message"), CASES, ids=lambda v: type(v).__name__)
def test_encode_into_appends_the_same_frame(kind: Any, message: Any) -> None:
    """encode_into appends exactly what encode returns, after whatever is already there."""
    out = bytearray(b"prefix")
    FrameEncoder().encode_into(message, out)
    assert bytes(out) == b"prefix" + FrameEncoder().encode(message)


def test_frame_is_big_endian_length_then_body() -> None:
    """The 4-byte prefix is the body length, big-endian."""
    frame = FrameEncoder().encode(Cancel(5))
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4


def test_byte_by_byte_feeding() -> None:
    """A reader that gets one byte at a time still sees every message, in order."""
    stream = frames_of(WORKER_SAMPLES)
    decoder: FrameDecoder[Any] = FrameDecoder(WorkerMessage)
    got: list[Any] = []
    for i in range(len(stream)):
        got.extend(decoder.feed(stream[i : i + 1]))
    assert got == WORKER_SAMPLES
    assert decoder.buffered == 0


def test_many_frames_in_one_chunk() -> None:
    """One read holding many frames yields them all at once."""
    messages = [Result(i, b"{}") for i in range(500)]
    assert FrameDecoder(WorkerMessage).feed(frames_of(messages)) == messages


def test_partial_frame_is_kept_for_the_next_feed() -> None:
    """A frame cut in two is completed by the next feed, not lost or duplicated."""
    stream = frames_of([Cancel(1), Cancel(2)])
    decoder: FrameDecoder[Any] = FrameDecoder(BrokerMessage)
    cut = len(stream) - 3
    assert decoder.feed(stream[:cut]) == [Cancel(1)]
    assert decoder.buffered == cut - len(FrameEncoder().encode(Cancel(1)))
    assert decoder.feed(stream[cut:]) == [Cancel(2)]


def test_oversized_length_prefix_fails_before_the_body_arrives() -> None:
    """A prefix above the limit is refused from the 4 prefix bytes alone."""
    decoder: FrameDecoder[Any] = FrameDecoder(WorkerMessage, max_frame_bytes=1024)
    with pytest.raises(FramingError, match="1025"):
        decoder.feed((1025).to_bytes(4, "big"))


def test_oversized_prefix_after_good_frames_still_fails() -> None:
    """The limit applies to every frame in a chunk, not only the first."""
    decoder: FrameDecoder[Any] = FrameDecoder(BrokerMessage, max_frame_bytes=64)
    with pytest.raises(FramingError):
        decoder.feed(FrameEncoder().encode(Cancel(1)) + (2**32 - 1).to_bytes(4, "big"))


def test_frame_at_the_limit_is_accepted() -> None:
    """A body exactly max_frame_bytes long is fine."""
    frame = FrameEncoder().encode(Result(1, b"x" * 100))
    decoder: FrameDecoder[Any] = FrameDecoder(WorkerMessage, max_frame_bytes=len(frame) - 4)
    assert decoder.feed(frame) == [Result(1, b"x" * 100)]


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1",  # never-used msgpack byte
        b"\x93\xa5bogus\x01\x02",  # unknown tag
        b"\x92\xa6cancel\xa3one",  # call_id is not an int
        msgspec.msgpack.encode({"call_id": 1}),  # a map, not a tagged array
        b"\x92\xa6cancel",  # truncated inside the body
    ],
)
def test_garbage_body_raises_framing_error(body: bytes) -> None:
    """A well-sized frame whose body is not a valid message is a FramingError."""
    with pytest.raises(FramingError):
        FrameDecoder(BrokerMessage).feed(len(body).to_bytes(4, "big") + body)


def test_worker_message_is_not_a_broker_message() -> None:
    """Each side decodes only the messages meant for it."""
    with pytest.raises(FramingError):
        FrameDecoder(BrokerMessage).feed(FrameEncoder().encode(Ready(1, b"[]")))


def test_invalid_utf8_in_a_string_raises_framing_error() -> None:
    """A body with a non-UTF-8 msgpack str is a FramingError like any other corruption."""
    body = msgspec.msgpack.encode(["cancel", 1]).replace(b"\xa6cancel", b"\xa6cance\xff")
    with pytest.raises(FramingError):
        FrameDecoder(BrokerMessage).feed(len(body).to_bytes(4, "big") + body)


# --- properties ----------------------------------------------------------------------

_ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_floats = st.floats(allow_nan=False)
_opt_text = st.none() | st.text()

broker_messages = st.one_of(
    st.builds(Call, _ints, st.text(), st.binary(), st.text(), _opt_text, st.booleans()),
    st.builds(Cancel, _ints),
    st.builds(Heartbeat, _ints),
    st.builds(Shutdown, _floats),
)
worker_messages = st.one_of(
    st.builds(Ready, _ints, st.binary(), st.lists(st.text()), st.text()),
    st.builds(Result, _ints, st.none() | st.binary(), _opt_text, _opt_text, st.booleans()),
    st.builds(Progress, _ints, _floats, st.none() | _floats, _opt_text),
    st.builds(Heartbeat, _ints),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind_and_messages=st.one_of(
        st.tuples(st.just(BrokerMessage), st.lists(broker_messages, max_size=20)),
        st.tuples(st.just(WorkerMessage), st.lists(worker_messages, max_size=20)),
    ),
    data=st.data(),
)
def test_any_message_sequence_split_anywhere_decodes_the_same(
    kind_and_messages: tuple[Any, list[Any]], data: st.DataObject
) -> None:
    """Concatenated frames cut at arbitrary points decode to the original sequence."""
    kind, messages = kind_and_messages
    stream = frames_of(messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    decoder: FrameDecoder[Any] = FrameDecoder(kind)
    got: list[Any] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        got.extend(decoder.feed(stream[start:cut]))
        start = cut
    assert got == messages
    assert decoder.buffered == 0


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(
    kind=st.sampled_from([BrokerMessage, WorkerMessage]),
    chunks=st.lists(st.binary(max_size=64), max_size=20),
    prefix_valid=st.booleans(),
)
def test_arbitrary_bytes_yield_messages_or_framing_error(
    kind: Any, chunks: list[bytes], prefix_valid: bool
) -> None:
    """Whatever arrives on the pipe, the decoder answers with messages or FramingError only."""
    decoder: FrameDecoder[Any] = FrameDecoder(kind, max_frame_bytes=4096)
    if prefix_valid and chunks:
        # Make the first chunk a frame of plausible size so bodies get decoded, not just sized.
        chunks[0] = len(chunks[0]).to_bytes(4, "big") + chunks[0]
    for chunk in chunks:
        try:
            decoder.feed(chunk)
        except FramingError:
            return
