"""Helpers for the security, bad-input and fuzz tests: log scanning and exception
groups, plus the raw WebSocket exchanges they use (defined in tests.support.raw_ws,
where every read has a deadline). The stdio shim driver is tests.support.shim_driver,
the headless Chromium tests.support.browser.
"""

from __future__ import annotations

from tests.conftest import DaemonProcess
from tests.support.raw_ws import (
    RECV_TIMEOUT_S,
    connect,
    echo_mcp,
    echo_op,
    mcp_session,
    op_hello,
    recv_close,
    recv_json,
)

__all__ = [
    "RECV_TIMEOUT_S",
    "connect",
    "daemon_logs",
    "echo_mcp",
    "echo_op",
    "flatten_exceptions",
    "mcp_session",
    "op_hello",
    "recv_close",
    "recv_json",
]


def daemon_logs(daemon: DaemonProcess) -> str:
    """The daemon's stderr plus every file in its log folder, as text."""
    parts = [daemon.stderr()]
    for path in sorted(daemon.log_dir.rglob("*")):
        if path.is_file() and path != daemon.stderr_path:
            parts.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(parts)


def flatten_exceptions(exc: BaseException) -> list[BaseException]:
    """An exception and, for exception groups, every leaf inside it."""
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        for inner in exc.exceptions:
            out.extend(flatten_exceptions(inner))
        return out
    return [exc]
