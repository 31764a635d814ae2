"""Wire vocabulary shared by the daemon, its workers and the shim: error codes and errors.

Pure: no I/O, no event loop. Every failure a client can see is a `BrokerError`
subclass carrying its wire code; the front end turns it into a frame in one place.
"""

from __future__ import annotations

import enum
from typing import Any

__all__ = [
    "DAEMON_SHUTDOWN_CAUSE",
    "JSONRPC_CODES",
    "LATEST_HANDSHAKE_VERSION",
    "MODERN_VERSION",
    "SUPPORTED_HANDSHAKE_VERSIONS",
    "BrokerError",
    "Cancelled",
    "ErrorCode",
    "InvalidArguments",
    "InvalidFrame",
    "MethodNotFound",
    "OverCapacity",
    "ResultTooLarge",
    "ShuttingDown",
    "Timeout",
    "ToolNotFound",
    "Unauthorized",
    "WorkerLost",
]

SUPPORTED_HANDSHAKE_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
LATEST_HANDSHAKE_VERSION = "2025-11-25"
MODERN_VERSION = "2026-07-28"


# data.cause of the WORKER_LOST that ends a call still running when the daemon stops:
# a shim re-sends it (if it is safe to) once the daemon is back.
DAEMON_SHUTDOWN_CAUSE = "daemon_shutdown"


class ErrorCode(enum.StrEnum):
    """Typed error names; the same string travels in `data.code` and op `error.code`."""

    OVER_CAPACITY = "OVER_CAPACITY"
    TIMEOUT = "TIMEOUT"
    WORKER_LOST = "WORKER_LOST"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    TOOL_NOT_FOUND = "TOOL_NOT_FOUND"
    INVALID_ARGUMENTS = "INVALID_ARGUMENTS"
    EXEC_ERROR = "EXEC_ERROR"
    INVALID_FRAME = "INVALID_FRAME"
    METHOD_NOT_FOUND = "METHOD_NOT_FOUND"
    UNAUTHORIZED = "UNAUTHORIZED"
    CANCELLED = "CANCELLED"
    UNAVAILABLE = "UNAVAILABLE"
    RESULT_TOO_LARGE = "RESULT_TOO_LARGE"
    INTERNAL = "INTERNAL"


JSONRPC_CODES: dict[ErrorCode, int] = {
    ErrorCode.OVER_CAPACITY: -32050,
    ErrorCode.TIMEOUT: -32051,
    ErrorCode.WORKER_LOST: -32052,
    ErrorCode.SHUTTING_DOWN: -32053,
    ErrorCode.TOOL_NOT_FOUND: -32602,
    ErrorCode.INVALID_ARGUMENTS: -32602,
    ErrorCode.EXEC_ERROR: -32603,
    ErrorCode.INVALID_FRAME: -32600,
    ErrorCode.METHOD_NOT_FOUND: -32601,
    ErrorCode.UNAUTHORIZED: -32001,
    # Same number LSP uses for a request the client cancelled.
    ErrorCode.CANCELLED: -32800,
    # Only the shim produces this: it cannot reach the daemon at all.
    ErrorCode.UNAVAILABLE: -32054,
    ErrorCode.RESULT_TOO_LARGE: -32055,
    ErrorCode.INTERNAL: -32603,
}


class BrokerError(Exception):
    """A failure with a wire code. `data` is merged into the error's `data` object."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    @property
    def jsonrpc_code(self) -> int:
        return JSONRPC_CODES[self.code]

    def to_data(self) -> dict[str, Any]:
        return {"code": str(self.code), **self.data}


class OverCapacity(BrokerError):
    code = ErrorCode.OVER_CAPACITY


class Timeout(BrokerError):
    code = ErrorCode.TIMEOUT


class WorkerLost(BrokerError):
    code = ErrorCode.WORKER_LOST


class ShuttingDown(BrokerError):
    code = ErrorCode.SHUTTING_DOWN


class ToolNotFound(BrokerError):
    code = ErrorCode.TOOL_NOT_FOUND


class InvalidArguments(BrokerError):
    code = ErrorCode.INVALID_ARGUMENTS


class InvalidFrame(BrokerError):
    code = ErrorCode.INVALID_FRAME

    def __init__(self, message: str, *, parse_error: bool = False, **data: Any) -> None:
        super().__init__(message, **data)
        # JSON-RPC distinguishes "not JSON at all" (-32700) from "not a valid request".
        self.parse_error = parse_error

    @property
    def jsonrpc_code(self) -> int:
        return -32700 if self.parse_error else -32600


class MethodNotFound(BrokerError):
    code = ErrorCode.METHOD_NOT_FOUND


class Unauthorized(BrokerError):
    code = ErrorCode.UNAUTHORIZED


class Cancelled(BrokerError):
    code = ErrorCode.CANCELLED


class ResultTooLarge(BrokerError):
    code = ErrorCode.RESULT_TOO_LARGE
