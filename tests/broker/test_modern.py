"""2026-07-28 result shapes, checked against that revision's official types."""

from __future__ import annotations

import json

import pytest
from mcp_types.methods import serialize_server_result

from broker.router.modern import CACHEABLE_METHODS, stamp_result, strip_envelope

MODERN = "2026-07-28"
SERVER_INFO = b'{"name":"exai-broker","version":"0"}'


@pytest.mark.parametrize(
    ("method", "result"),
    [
        ("tools/list", b'{"tools":[{"name":"echo","inputSchema":{"type":"object"}}]}'),
        ("tools/call", b'{"content":[{"type":"text","text":"hi"}],"isError":false}'),
        ("tools/call", b'{"content":[],"structuredContent":{"n":1}}'),
        ("server/discover", b'{"supportedVersions":["2026-07-28"],"capabilities":{}}'),
        ("resources/list", b'{"resources":[]}'),
        ("prompts/list", b'  {"prompts":[]} '),
    ],
)
def test_stamped_results_validate_as_2026_07_28(method: str, result: bytes) -> None:
    """What the SDK's default-mode client validates against accepts every stamped result."""
    stamped = json.loads(stamp_result(result, method))
    serialize_server_result(method, MODERN, stamped)  # raises on a missing field
    assert stamped["resultType"] == "complete"
    assert ("ttlMs" in stamped) is (method in CACHEABLE_METHODS)


def test_unstamped_results_fail_the_2026_07_28_types() -> None:
    """The shapes the broker sent before: rejected by the official types (the bug)."""
    with pytest.raises(ValueError, match="resultType"):
        serialize_server_result("tools/call", MODERN, {"content": []})
    with pytest.raises(ValueError, match="cacheScope"):
        serialize_server_result("tools/list", MODERN, {"tools": [], "resultType": "complete"})


def test_stamp_keeps_every_byte_of_the_result() -> None:
    """Content, numbers and absent fields pass unchanged; only the stamp is added."""
    result = b'{"content":[{"type":"text","text":"1.0 \\u00e9"}],"structuredContent":{"x":1}}'
    stamped = stamp_result(result, "tools/call")
    assert stamped == b'{"resultType":"complete",' + result[1:]


def test_a_result_type_the_result_carries_wins() -> None:
    """A later key is the one JSON parsers keep: a server's own resultType stands."""
    stamped = stamp_result(b'{"resultType":"input_required","inputRequests":{}}', "tools/call")
    assert json.loads(stamped)["resultType"] == "input_required"


def test_server_info_stamp_and_empty_object() -> None:
    stamped = json.loads(stamp_result(b"{}", "ping", SERVER_INFO))
    assert stamped == {
        "resultType": "complete",
        "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "exai-broker", "version": "0"}},
    }


def test_a_non_object_is_refused() -> None:
    with pytest.raises(ValueError, match="JSON object"):
        stamp_result(b"[]", "tools/call")


def test_the_envelope_stays_at_the_edge_and_everything_else_passes() -> None:
    """A handshake-era server refuses the 2026-07-28 envelope: only its keys go, and an
    emptied `_meta` goes with them; other `_meta` keys and every other field stay."""
    params = (
        b'{"name":"echo","arguments":{"n":1.0,"x":null},"_meta":{"progressToken":7,'
        b'"io.modelcontextprotocol/protocolVersion":"2026-07-28",'
        b'"io.modelcontextprotocol/clientCapabilities":{},'
        b'"io.modelcontextprotocol/logLevel":"info"}}'
    )
    stripped = strip_envelope(params)
    assert json.loads(stripped) == {
        "name": "echo",
        "arguments": {"n": 1.0, "x": None},
        "_meta": {"progressToken": 7},
    }
    assert b'"n":1.0' in stripped  # the number as the client wrote it
    only_envelope = b'{"uri":"a","_meta":{"io.modelcontextprotocol/clientInfo":{}}}'
    assert json.loads(strip_envelope(only_envelope)) == {"uri": "a"}
    untouched = b'{"uri": "a", "_meta": {"k": 1}}'
    assert strip_envelope(untouched) is untouched
