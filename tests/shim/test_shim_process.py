"""A real `python -m shim` between a JSON-lines client and a real daemon: a read-only
tool's result reaches the client as the daemon sent it, whatever its text says."""

from __future__ import annotations

from tests.conftest import DaemonProcess
from tests.support.jsonrpc import rpc_text
from tests.support.shim_driver import running_shim

# Words the daemon uses for its own shutdown; a tool may return them as plain text.
SHUTDOWN_WORDS = [
    "SHUTTING_DOWN",
    '{"error":{"data":{"code":"SHUTTING_DOWN"}}}',
    '"daemon_shutdown"',
]


async def test_read_only_results_mentioning_a_shutdown_reach_the_client(
    daemon: DaemonProcess,
) -> None:
    """echo is read-only, so a shutdown would make the shim hold its call for a re-send:
    only a typed error means one, never a result's text."""
    async with running_shim(daemon.shim_env(EXAI_SHIM_RPC_TIMEOUT="5")) as shim:
        await shim.initialize(list_tools=False)
        listed = await shim.request_and_wait("tools/list", {})
        tools = {tool["name"]: tool for tool in listed["result"]["tools"]}
        assert tools["echo"]["annotations"]["readOnlyHint"] is True
        for text in SHUTDOWN_WORDS:
            answer = await shim.call_and_wait("echo", {"text": text}, timeout_s=10)
            assert rpc_text(answer) == text
            assert shim.count(answer["id"]) == 1
