"""What a reconnect does to the requests a shim still owes, and which tools may run twice. Pure.

Never losing or doubling a call rests on three rules:
- every request stays pending until its answer reaches the client (pending.py);
- on reconnect to the same daemon (session resumed) pending requests are re-sent
  with their original ids, and the daemon joins them to the calls it already has;
- a restarted daemon knows nothing of this client: its `initialize` is replayed first,
  then only calls to tools that are safe to run again are re-sent. The others are
  answered with WORKER_LOST, since they may or may not have run.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Set
from typing import Any

from shim.daemon_frames import id_key
from shim.pending import Pending

__all__ = [
    "REPLAY_ID_PREFIX",
    "Resend",
    "after_reconnect",
    "replayed_initialize",
    "retry_safe",
    "retry_safe_tools",
]

REPLAY_ID_PREFIX = "exai-shim-replay-"


def retry_safe(annotations: object) -> bool:
    """True when a tool with these MCP annotations may be sent again after a daemon
    restart cut its call: it only reads (`readOnlyHint`), or running it twice has the
    effect of running it once (`idempotentHint`)."""
    if not isinstance(annotations, dict):
        return False
    return bool(annotations.get("readOnlyHint") or annotations.get("idempotentHint"))


def retry_safe_tools(tools_list_response: bytes) -> set[str]:
    """The names of the tools a `tools/list` response lists that `retry_safe` allows."""
    try:
        result = json.loads(tools_list_response).get("result")
        tools = result.get("tools") if isinstance(result, dict) else None
    except (ValueError, RecursionError, AttributeError):
        return set()
    if not isinstance(tools, list):
        return set()
    return {
        tool["name"]
        for tool in tools
        if isinstance(tool, dict)
        and isinstance(tool.get("name"), str)
        and retry_safe(tool.get("annotations"))
    }


class Resend(enum.Enum):
    """What becomes of a pending request once a new connection is up."""

    # Send it: never sent yet, the session was resumed, or it is not a tool call.
    SEND = "send"
    # The daemon restarted while the call ran, and the tool is safe to run again.
    RESEND_SAFE = "resend_safe"
    # The daemon restarted while the call ran: answer WORKER_LOST, never re-run it.
    FAIL_LOST = "fail_lost"


def after_reconnect(pending: Pending, resumed: bool, safe_tools: Set[str]) -> Resend:
    """The fate of `pending` on a connection whose session was `resumed` (or is new)."""
    if not pending.sent or resumed or pending.request.method != "tools/call":
        return Resend.SEND
    if pending.request.tool in safe_tools:
        return Resend.RESEND_SAFE
    return Resend.FAIL_LOST


def replayed_initialize(init_line: bytes, seq: int) -> tuple[str, bytes]:
    """The client's `initialize` under the shim's own id number `seq`: (id key, line).

    Its answer is the shim's to swallow: the client had its own long ago.
    """
    message: dict[str, Any] = json.loads(init_line)
    message["id"] = f"{REPLAY_ID_PREFIX}{seq}"
    return id_key(message["id"]), json.dumps(message, separators=(",", ":")).encode()
