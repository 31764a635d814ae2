"""The relay toward one hosted server: ids and progress tokens rewritten, nothing else."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exai.relay import Ask, Garbage, Notice, Progress, Relay, Reply


def sent(line: bytes) -> dict[str, object]:
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    return dict(json.loads(line))


def test_two_clients_with_the_same_id_get_distinct_server_ids_and_their_own_answers() -> None:
    relay = Relay()
    first = sent(relay.request(7, "tools/call", b'{"name":"echo","arguments":{"x":1}}'))
    second = sent(relay.request(8, "tools/call", b'{"name":"echo"}'))
    assert first["id"] != second["id"]
    assert first["params"] == {"name": "echo", "arguments": {"x": 1}}
    answer = relay.receive(b'{"jsonrpc":"2.0","id":%d,"result":{"n":1}}' % second["id"])
    assert answer == Reply(8, b'{"n":1}', None)
    assert list(relay.pending()) == [7]


def test_results_errors_and_params_pass_byte_for_byte() -> None:
    """1 stays 1, 1.0 stays 1.0, absent stays absent, a server's error is its own."""
    relay = Relay()
    params = b'{"name":"t","arguments":{"f":1.0,"i":1,"big":123456789012345678901234567890}}'
    line = relay.request(1, "tools/call", params)
    assert params in line
    server_id = sent(line)["id"]
    error = b'{"code":-32602,"message":"bad","data":{"hint":"x"}}'
    reply = relay.receive(b'{"jsonrpc":"2.0","id":%d,"error":%s}' % (server_id, error))
    assert reply == Reply(1, None, error)
    assert b"params" not in relay.request(2, "ping", None)


def test_progress_tokens_are_ours_toward_the_server_and_the_clients_coming_back() -> None:
    relay = Relay()
    line = relay.request(
        5, "tools/call", b'{"name":"s","_meta":{"progressToken":"abc","other":true}}', b'"abc"'
    )
    message = sent(line)
    ours = message["params"]["_meta"]["progressToken"]  # type: ignore[index]
    assert ours == message["id"] and message["params"]["_meta"]["other"] is True  # type: ignore[index]
    progress = relay.receive(
        b'{"jsonrpc":"2.0","method":"notifications/progress",'
        b'"params":{"progressToken":%d,"progress":1,"total":2}}' % ours
    )
    assert isinstance(progress, Progress) and progress.handle == 5
    assert progress.params == b'{"progressToken":"abc","progress":1,"total":2}'


def test_a_token_is_added_when_params_have_no_meta_or_no_params_at_all() -> None:
    relay = Relay()
    assert sent(relay.request(1, "x", b'{"a":1}', b"9"))["params"] == {
        "a": 1,
        "_meta": {"progressToken": 1},
    }
    assert sent(relay.request(2, "y", None, b"9"))["params"] == {"_meta": {"progressToken": 2}}


def test_progress_for_unknown_or_tokenless_requests_goes_nowhere() -> None:
    relay = Relay()
    relay.request(1, "tools/call", b"{}")  # no token asked
    for token in (b"1", b"99", b'"x"'):
        line = (
            b'{"jsonrpc":"2.0","method":"notifications/progress",'
            b'"params":{"progressToken":%s,"progress":1}}' % token
        )
        assert relay.receive(line) is None


def test_cancel_tells_the_server_and_drops_its_late_answer() -> None:
    relay = Relay()
    server_id = sent(relay.request(3, "tools/call", b"{}"))["id"]
    cancel = sent(relay.cancel(3, "client cancelled") or b"")
    assert cancel == {
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": {"requestId": server_id, "reason": "client cancelled"},
    }
    assert relay.cancel(3) is None
    assert relay.receive(b'{"jsonrpc":"2.0","id":%d,"result":{}}' % server_id) is None


def test_server_requests_are_asks_answered_under_the_servers_own_id() -> None:
    relay = Relay()
    relay.request(4, "tools/call", b"{}")
    ask = relay.receive(
        b'{"jsonrpc":"2.0","id":"srv-1","method":"sampling/createMessage","params":{"m":[]}}'
    )
    assert isinstance(ask, Ask)
    assert (ask.method, ask.params, ask.in_flight) == ("sampling/createMessage", b'{"m":[]}', (4,))
    assert sent(relay.answer(ask.ask_id, b'{"role":"assistant"}') or b"") == {
        "jsonrpc": "2.0",
        "id": "srv-1",
        "result": {"role": "assistant"},
    }
    assert relay.answer(ask.ask_id, b"{}") is None  # answered once only
    second = relay.receive(b'{"jsonrpc":"2.0","id":2,"method":"roots/list"}')
    assert isinstance(second, Ask)
    error = b'{"code":-32603,"message":"no single client"}'
    assert sent(relay.answer(second.ask_id, None, error) or b"")["error"] == json.loads(error)


def test_notifications_and_garbage() -> None:
    relay = Relay()
    assert relay.receive(b'{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}') == (
        Notice("notifications/tools/list_changed", None)
    )
    for line in (b"not json", b"[1]", b'{"jsonrpc":"2.0"}', b'{"jsonrpc":"2.0","id":"x"}'):
        assert isinstance(relay.receive(line), Garbage), line


@given(st.lists(st.sampled_from(["request", "answer", "cancel"]), max_size=60))
def test_every_request_is_answered_or_cancelled_exactly_once(steps: list[str]) -> None:
    relay = Relay()
    server_ids: dict[int, int] = {}
    outcomes: dict[int, str] = {}
    handle = 0
    for step in steps:
        if step == "request":
            handle += 1
            server_ids[handle] = int(sent(relay.request(handle, "m", b"{}"))["id"])  # type: ignore[arg-type]
        elif server_ids:
            target = min(server_ids)
            if step == "answer":
                reply = relay.receive(b'{"jsonrpc":"2.0","id":%d,"result":{}}' % server_ids[target])
                assert reply == Reply(target, b"{}", None)
                outcomes[target] = "answered"
            else:
                assert relay.cancel(target) is not None
                outcomes[target] = "cancelled"
            del server_ids[target]
    assert set(relay.pending()) == set(server_ids)
    assert not set(outcomes) & set(server_ids)


def _broken(reply: object) -> dict[str, object]:
    """The error object of a Reply the relay made for an unusable answer."""
    assert isinstance(reply, Reply) and reply.result is None and reply.error is not None
    error = json.loads(reply.error)
    assert error["code"] == -32603 and error["data"]["code"] == "EXEC_ERROR"
    return dict(error)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"", "neither a result nor an error"),
        (b',"error":"boom"', "integer code"),
        (b',"error":{"code":"x","message":5}', "integer code"),
        (b',"error":null', "integer code"),
        (b',"result":{"content":[{"type":"text","text":"bad \xff\xfe"}]}', "not UTF-8"),
    ],
)
def test_an_unusable_answer_still_ends_its_request_with_a_typed_error(
    body: bytes, why: str
) -> None:
    """Whoever waits for the request is answered at once, never with what a client
    could not read."""
    relay = Relay()
    server_id = sent(relay.request(3, "tools/call", b"{}"))["id"]
    reply = relay.receive(b'{"jsonrpc":"2.0","id":%d%s}' % (server_id, body))
    assert why in str(_broken(reply)["message"])
    assert list(relay.pending()) == []


def test_a_line_too_deep_to_parse_ends_the_request_its_top_level_id_names() -> None:
    relay = Relay()
    relay.request(1, "tools/call", b"{}")
    server_id = sent(relay.request(2, "tools/call", b"{}"))["id"]
    assert isinstance(server_id, int)
    deep = b"[" * 100_000 + b"]" * 100_000
    # An "id" nested inside the result names nobody; the envelope's does.
    line = b'{"jsonrpc":"2.0","result":{"x":{"id":1},"d":%s},"id":%d}' % (deep, server_id)
    reply = relay.receive(line)
    assert isinstance(reply, Reply) and reply.handle == 2
    assert "too deeply" in str(_broken(reply)["message"])
    assert list(relay.pending()) == [1]
    assert isinstance(relay.receive(b'{"d":' + deep + b"}"), Garbage)


def test_progress_that_breaks_the_schema_is_not_passed_on() -> None:
    relay = Relay()
    server_id = sent(relay.request(1, "tools/call", b"{}", b'"tok"'))["id"]
    assert isinstance(server_id, int)
    for progress in (b'"lots"', b"null", b"[1]"):
        line = b'{"jsonrpc":"2.0","method":"notifications/progress","params":'
        line += b'{"progressToken":%d,"progress":%s}}' % (server_id, progress)
        assert isinstance(relay.receive(line), Garbage)
