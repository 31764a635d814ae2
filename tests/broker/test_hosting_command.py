"""What the daemon hosts, from the command line: argv, label and environment. Pure."""

from __future__ import annotations

import sys

import pytest

from broker.calls.rounds import Rounds, input_required_result
from broker.hosting.command import hosted_command, server_environment, server_label


@pytest.mark.parametrize(
    ("argv", "label"),
    [
        (
            ["npx", "-y", "@modelcontextprotocol/server-everything"],
            "server-everything",
        ),
        (
            ["/usr/bin/python3", "-m", "mcp_server_time", "--local-timezone", "UTC"],
            "mcp_server_time",
        ),
        (["uvx", "mcp-server-fetch"], "mcp-server-fetch"),
        (["node", "/srv/dist/index.js", "stdio"], "index"),
        (["/opt/bin/my-server", "--port", "1"], "my-server"),
    ],
)
def test_a_server_is_named_after_itself_not_its_runner(argv: list[str], label: str) -> None:
    assert server_label(argv) == label


def test_an_sdk_object_is_hosted_as_its_own_stdio_process() -> None:
    hosted = hosted_command("", "mypkg.app:server")
    assert hosted is not None
    assert hosted.label == "mypkg.app:server"
    assert hosted.argv == [sys.executable, "-m", "workers.object_server", "mypkg.app:server"]


def test_workers_keep_what_is_not_a_stdio_server() -> None:
    assert hosted_command("", "") is None
    assert hosted_command("", "mypkg.tools") is None


def test_a_quoted_command_keeps_its_arguments_whole() -> None:
    hosted = hosted_command("no-such-program-xyz --root '/tmp/my files'", "")
    assert hosted is not None
    assert hosted.argv == ["no-such-program-xyz", "--root", "/tmp/my files"]
    with pytest.raises(ValueError, match="empty"):
        hosted_command("   ", "")


def test_the_hosted_server_never_sees_the_daemon_token() -> None:
    env = server_environment({"EXAI_WS_TOKEN": "secret", "KIMI_API_KEY": "k", "PATH": "/bin"})
    assert env == {"KIMI_API_KEY": "k", "PATH": "/bin"}


def test_a_request_state_is_single_use_and_bound_to_its_session() -> None:
    rounds = Rounds()
    parked = rounds.park(object(), "session-a")
    assert rounds.take(parked.state, "session-b") is None
    assert rounds.take(parked.state, "session-a") is parked
    assert rounds.take(parked.state, "session-a") is None
    other = rounds.park(object(), "session-a")
    assert other.state != parked.state
    rounds.drop(other.state)
    assert len(rounds) == 0


def test_an_input_required_result_carries_the_server_requests_as_written() -> None:
    import json

    body = input_required_result([("exai-ask-1", b'{"method":"roots/list"}')], "exai-s")
    assert json.loads(body) == {
        "resultType": "input_required",
        "inputRequests": {"exai-ask-1": {"method": "roots/list"}},
        "requestState": "exai-s",
    }
