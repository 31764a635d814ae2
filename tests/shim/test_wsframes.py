"""Unit tests for the sans-I/O WebSocket framing (shim.wsframes)."""

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shim.wsframes import (
    OVERSIZED,
    OVERSIZED_HEAD_BYTES,
    FrameParser,
    Message,
    Opcode,
    ProtocolError,
    encode_close,
    encode_frame,
    mask_payload,
    parse_close,
)

MiB = 1024 * 1024
SIZES = [0, 1, 125, 126, 65535, 65536, MiB]


def server_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    mask_key: bytes | None = None,
    length_override: int | None = None,
) -> bytes:
    """Reference encoder for server-to-client frames (unmasked unless asked)."""
    n = len(payload) if length_override is None else length_override
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    mbit = 0x80 if mask_key is not None else 0
    if n < 126:
        head = bytes([b0, mbit | n])
    elif n < 1 << 16:
        head = bytes([b0, mbit | 126]) + struct.pack("!H", n)
    else:
        head = bytes([b0, mbit | 127]) + struct.pack("!Q", n)
    if mask_key is not None:
        return head + mask_key + reference_xor(payload, mask_key)
    return head + payload


def reference_xor(payload: bytes, key: bytes) -> bytes:
    return bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def decode_client_frame(frame: bytes) -> tuple[bool, int, bytes, bytes]:
    """Decode a masked client frame independently of the module under test."""
    b0, b1 = frame[0], frame[1]
    assert b1 & 0x80, "client frames must be masked"
    n = b1 & 0x7F
    pos = 2
    if n == 126:
        (n,) = struct.unpack_from("!H", frame, 2)
        pos = 4
    elif n == 127:
        (n,) = struct.unpack_from("!Q", frame, 2)
        pos = 10
    key = frame[pos : pos + 4]
    body = frame[pos + 4 :]
    assert len(body) == n
    return bool(b0 & 0x80), b0 & 0x0F, key, body


# --- encoding -----------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_encode_frame_lengths_and_masking(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    key = b"\x01\x80\xfe\x37"
    frame = encode_frame(Opcode.BINARY, payload, key)
    fin, opcode, got_key, body = decode_client_frame(frame)
    assert fin and opcode == Opcode.BINARY and got_key == key
    header_len = 2 + (0 if size < 126 else 2 if size < 65536 else 8) + 4
    assert len(frame) == header_len + size
    assert body == reference_xor(payload, key)
    assert mask_payload(body, key) == payload


def test_encode_frame_random_mask_and_fin_flag() -> None:
    f1 = encode_frame(Opcode.TEXT, b"hello")
    f2 = encode_frame(Opcode.TEXT, b"hello")
    assert f1[2:6] != f2[2:6] or f1 != f2
    fin, _, _, _ = decode_client_frame(encode_frame(Opcode.TEXT, b"x", fin=False))
    assert not fin


def test_mask_payload_matches_reference_for_odd_lengths() -> None:
    key = b"\xaa\x55\x0f\xf0"
    for n in range(0, 13):
        data = bytes(range(n))
        assert mask_payload(data, key) == reference_xor(data, key)


@pytest.mark.parametrize("size", [262143, 262144, 262147, 2 * 262144 + 5])
def test_mask_payload_chunked_path_matches_reference(size: int) -> None:
    key = b"\x9c\x01\x7e\xe3"
    data = bytes(i * 7 % 256 for i in range(size))
    assert mask_payload(data, key) == reference_xor(data, key)


def test_encode_frame_rejects_bad_control_frames() -> None:
    with pytest.raises(ValueError):
        encode_frame(Opcode.PING, b"x" * 126)
    with pytest.raises(ValueError):
        encode_frame(Opcode.PING, b"", fin=False)
    with pytest.raises(ValueError):
        encode_frame(3, b"")
    with pytest.raises(ValueError):
        encode_frame(Opcode.TEXT, b"", mask_key=b"abc")


def test_encode_close_and_parse_close() -> None:
    _, opcode, key, body = decode_client_frame(encode_close(4003, "bye"))
    assert opcode == Opcode.CLOSE
    payload = mask_payload(body, key)
    assert parse_close(payload) == (4003, "bye")
    assert parse_close(b"") == (1005, "")
    # 1005 may not go on the wire, so it encodes as an empty close.
    _, _, key, body = decode_client_frame(encode_close(1005, "ignored"))
    assert body == b""


def test_encode_close_truncates_reason_on_char_boundary() -> None:
    _, _, key, body = decode_client_frame(encode_close(1000, "é" * 100))
    payload = mask_payload(body, key)
    assert len(payload) <= 125
    code, reason = parse_close(payload)
    assert code == 1000 and set(reason) == {"é"}


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\x03", 1002),
        (struct.pack("!H", 999), 1002),
        (struct.pack("!H", 1005), 1002),
        (struct.pack("!H", 1006), 1002),
        (struct.pack("!H", 5000), 1002),
        (struct.pack("!H", 1000) + b"\xff", 1007),
    ],
)
def test_parse_close_invalid(payload: bytes, code: int) -> None:
    with pytest.raises(ProtocolError) as ei:
        parse_close(payload)
    assert ei.value.code == code


# --- parsing ------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_parser_roundtrip_unmasked(size: int) -> None:
    payload = bytes(i % 253 for i in range(size))
    parser = FrameParser(2 * MiB)
    assert parser.feed(server_frame(Opcode.BINARY, payload)) == [Message(Opcode.BINARY, payload)]


@pytest.mark.parametrize("size", SIZES)
def test_parser_roundtrip_masked(size: int) -> None:
    payload = bytes(i % 241 for i in range(size))
    parser = FrameParser(2 * MiB)
    assert parser.feed(encode_frame(Opcode.TEXT, payload)) == [Message(Opcode.TEXT, payload)]


def test_parser_byte_by_byte() -> None:
    stream = (
        server_frame(Opcode.TEXT, b"hi")
        + server_frame(Opcode.BINARY, b"x" * 300)
        + server_frame(Opcode.PING, b"p", mask_key=b"abcd")
        + server_frame(Opcode.BINARY, b"y" * 70000)
    )
    parser = FrameParser(MiB)
    out: list[Message] = []
    for i in range(len(stream)):
        out.extend(parser.feed(stream[i : i + 1]))
    assert out == [
        Message(Opcode.TEXT, b"hi"),
        Message(Opcode.BINARY, b"x" * 300),
        Message(Opcode.PING, b"p"),
        Message(Opcode.BINARY, b"y" * 70000),
    ]


def test_parser_many_frames_in_one_chunk() -> None:
    stream = b"".join(server_frame(Opcode.TEXT, str(i).encode()) for i in range(1000))
    out = FrameParser(MiB).feed(stream)
    assert [m.payload for m in out] == [str(i).encode() for i in range(1000)]


def test_parser_fragmented_with_interleaved_ping() -> None:
    parser = FrameParser(MiB)
    assert parser.feed(server_frame(Opcode.TEXT, b"he", fin=False)) == []
    assert parser.feed(server_frame(Opcode.PING, b"!")) == [Message(Opcode.PING, b"!")]
    assert parser.feed(server_frame(Opcode.CONTINUATION, b"ll", fin=False)) == []
    assert parser.feed(server_frame(Opcode.PONG, b"")) == [Message(Opcode.PONG, b"")]
    assert parser.feed(server_frame(Opcode.CONTINUATION, b"o")) == [Message(Opcode.TEXT, b"hello")]
    # A new message may start once the fragmented one is complete.
    assert parser.feed(server_frame(Opcode.BINARY, b"z")) == [Message(Opcode.BINARY, b"z")]


def test_parser_close_frame_returned() -> None:
    payload = struct.pack("!H", 4003) + b"nope"
    (msg,) = FrameParser(10).feed(server_frame(Opcode.CLOSE, payload))
    assert msg.opcode == Opcode.CLOSE
    assert parse_close(msg.payload) == (4003, "nope")


def test_parser_max_message_bytes() -> None:
    assert FrameParser(10).feed(server_frame(Opcode.TEXT, b"x" * 10)) == [
        Message(Opcode.TEXT, b"x" * 10)
    ]
    assert FrameParser(10).feed(server_frame(Opcode.TEXT, b"x" * 11)) == [
        Message(OVERSIZED, b"x" * 11, 11)
    ]


def test_an_oversized_message_is_skipped_and_the_next_one_parsed() -> None:
    """Skipped as it arrives, a byte at a time or all at once, never buffered whole."""
    big = b'{"id":7}' + b"y" * (3 * OVERSIZED_HEAD_BYTES)
    stream = server_frame(Opcode.TEXT, big) + server_frame(Opcode.TEXT, b"next")
    for step in (1, 7, 1000, len(stream)):
        parser = FrameParser(100)
        out: list[Message] = []
        for start in range(0, len(stream), step):
            out += parser.feed(stream[start : start + step])
            assert len(parser._buf) <= OVERSIZED_HEAD_BYTES + 14
        assert out == [
            Message(OVERSIZED, big[:OVERSIZED_HEAD_BYTES], len(big)),
            Message(Opcode.TEXT, b"next"),
        ]


def test_an_oversized_masked_message_reports_its_unmasked_head() -> None:
    frame = server_frame(Opcode.BINARY, b"z" * 200, mask_key=b"\x01\x02\x03\x04")
    assert FrameParser(100).feed(frame) == [Message(OVERSIZED, b"z" * 200, 200)]


def test_parser_max_message_bytes_never_buffers_a_huge_body() -> None:
    # Only the header of a huge frame and a little of its body arrive: nothing is kept
    # beyond the first bytes it reports.
    head = server_frame(Opcode.BINARY, b"", length_override=1 << 40)
    parser = FrameParser(MiB)
    assert parser.feed(head) == []
    [skipped] = parser.feed(b"b" * (2 * OVERSIZED_HEAD_BYTES))
    assert skipped == Message(OVERSIZED, b"b" * OVERSIZED_HEAD_BYTES, 1 << 40)
    assert parser.feed(b"b" * MiB) == []
    assert len(parser._buf) == 0


def test_parser_max_message_bytes_across_fragments() -> None:
    parser = FrameParser(10)
    parser.feed(server_frame(Opcode.TEXT, b"x" * 6, fin=False))
    with pytest.raises(ProtocolError) as ei:
        parser.feed(server_frame(Opcode.CONTINUATION, b"x" * 5))
    assert ei.value.code == 1009


@pytest.mark.parametrize(
    ("frames", "needle"),
    [
        ([server_frame(3, b"")], "reserved opcode"),
        ([server_frame(0xB, b"")], "reserved opcode"),
        ([server_frame(Opcode.TEXT, b"a", rsv=4)], "RSV"),
        ([server_frame(Opcode.TEXT, b"a", rsv=1)], "RSV"),
        ([server_frame(Opcode.PING, b"p" * 126)], "125"),
        ([server_frame(Opcode.PING, b"p", fin=False)], "fragmented control"),
        ([server_frame(Opcode.CONTINUATION, b"c")], "nothing to continue"),
        (
            [
                server_frame(Opcode.TEXT, b"a", fin=False),
                server_frame(Opcode.BINARY, b"b"),
            ],
            "fragmented message is open",
        ),
        ([server_frame(Opcode.BINARY, b"", length_override=1 << 63)], "high bit"),
    ],
)
def test_parser_protocol_errors(frames: list[bytes], needle: str) -> None:
    parser = FrameParser(1 << 62)
    with pytest.raises(ProtocolError) as ei:
        for f in frames:
            parser.feed(f)
    assert ei.value.code == 1002
    assert needle in str(ei.value)
    # The parser stays failed instead of resynchronising on garbage.
    with pytest.raises(ProtocolError):
        parser.feed(server_frame(Opcode.TEXT, b"ok"))


def test_parser_error_detected_from_first_two_bytes() -> None:
    with pytest.raises(ProtocolError):
        FrameParser(100).feed(server_frame(Opcode.PING, b"p" * 126)[:2])


@settings(max_examples=200, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=70000), min_size=1, max_size=4),
    masked=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=8),
)
def test_roundtrip_arbitrary_payloads_and_splits(
    payloads: list[bytes], masked: bool, cuts: list[int]
) -> None:
    if masked:
        stream = b"".join(encode_frame(Opcode.BINARY, p) for p in payloads)
    else:
        stream = b"".join(server_frame(Opcode.BINARY, p) for p in payloads)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    parser = FrameParser(1 << 20)
    out: list[Message] = []
    for a, b in itertools.pairwise(points):
        out.extend(parser.feed(stream[a:b]))
    assert out == [Message(Opcode.BINARY, p) for p in payloads]
