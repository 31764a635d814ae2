"""The CallToolResult contract, checked on the JSON a tool server produced.

A tool result is the one answer whose shape every client relies on (the SDKs
validate it, and the op dialect builds its outputs from it), so a result that breaks
the contract ends its call as a typed EXEC_ERROR saying what is wrong, for both kinds
of hosted server and both dialects, instead of reaching a client that would choke on
it. Only the contract is checked: every other field, and every field of a content
block but its `type`, passes unread.
"""

from __future__ import annotations

import msgspec

from exai.errors import BrokerError, ErrorCode

__all__ = ["MalformedToolResult", "check_tool_result"]


class MalformedToolResult(BrokerError):
    """A tool result that breaks the CallToolResult contract (see `check_tool_result`)."""

    code = ErrorCode.EXEC_ERROR


class _Block(msgspec.Struct):
    type: str


class _Shape(msgspec.Struct):
    content: list[_Block] | msgspec.UnsetType = msgspec.UNSET
    isError: bool = False
    structuredContent: dict[str, msgspec.Raw] | msgspec.UnsetType = msgspec.UNSET
    # A task-augmented call is answered with its task instead (2025-11-25).
    task: dict[str, msgspec.Raw] | msgspec.UnsetType = msgspec.UNSET


_SHAPE = msgspec.json.Decoder(_Shape)


def check_tool_result(payload: bytes, tool: str) -> bool:
    """The result's `isError`. Raises MalformedToolResult when `payload` is not UTF-8
    JSON for an object whose content is a list of blocks with a string `type`, whose
    isError (if present) is a boolean and whose structuredContent (if present) is an
    object."""
    if not payload.isascii():
        try:
            payload.decode()
        except UnicodeDecodeError as exc:
            raise _malformed(tool, f"it is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        shape = _SHAPE.decode(payload)
    except msgspec.ValidationError as exc:
        raise _malformed(tool, str(exc)) from None
    except msgspec.DecodeError as exc:
        raise _malformed(tool, f"it is not JSON ({exc})") from None
    except RecursionError:
        raise _malformed(tool, "it is nested too deeply to parse") from None
    if shape.content is msgspec.UNSET and shape.task is msgspec.UNSET:
        raise _malformed(tool, "it has no content")
    return shape.isError


def _malformed(tool: str, why: str) -> MalformedToolResult:
    return MalformedToolResult(f"{tool!r} returned a malformed result: {why}", tool=tool)
