"""Setting values from strings: each parser returns the typed value or raises
ValueError("expected ...") saying what would have been accepted. Pure, but for
`read_token_file`, which reads the file it is given.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "SettingsError",
    "boolean",
    "folder",
    "integer",
    "names",
    "number",
    "origins",
    "read_token_file",
    "text",
    "token",
    "valid_token",
]


class SettingsError(ValueError):
    """An invalid configuration value; the message is the one line the user sees."""


def integer(lo: int, hi: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip(), 10)
        except ValueError:
            raise ValueError(_expected_int(lo, hi)) from None
        if value < lo or (hi is not None and value > hi):
            raise ValueError(_expected_int(lo, hi))
        return value

    return parse


def _expected_int(lo: int, hi: int | None) -> str:
    return (
        f"expected an integer from {lo} to {hi}"
        if hi is not None
        else f"expected an integer >= {lo}"
    )


def number(lo: float, *, exclusive: bool = False) -> Callable[[str], float]:
    what = f"expected a number {'>' if exclusive else '>='} {lo:g}"

    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(what) from None
        if value != value or value < lo or (exclusive and value == lo) or value == float("inf"):
            raise ValueError(what)
        return value

    return parse


def boolean(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ValueError("expected one of 1/0, true/false, yes/no, on/off")


def text(raw: str) -> str:
    return raw.strip()


def folder(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("expected a folder path")
    return value


def valid_token(value: str) -> bool:
    """Could `value` be sent as a token? It travels in an HTTP header (Authorization or
    the query string), where only printable ASCII arrives intact: nothing else, and no
    whitespace."""
    return all("!" <= c <= "~" for c in value)


def read_token_file(path: str, flag: str) -> str:
    """The token in the file at `path` ("-": one line of standard input), for `flag`.

    A token given this way stays off the command line, where any local user can read
    it (/proc/PID/cmdline, ps). The token itself is never put in an error message.
    """
    source = "standard input" if path == "-" else path
    try:
        text = sys.stdin.readline() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"{flag}: {source}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{flag}: {source}: not UTF-8 text") from None
    value = text.strip()
    if not value:
        raise SettingsError(f"{flag}: {source}: no token in it")
    return value


def token(raw: str) -> str:
    # A token with inner whitespace is almost always a pasted comment or a typo, and
    # it could never be sent in an Authorization header.
    value = raw.strip()
    if any(c.isspace() for c in value):
        raise ValueError("expected a token without whitespace (is there a comment on that line?)")
    if not valid_token(value):
        raise ValueError(
            "expected a token of printable ASCII characters only "
            "(it is sent in an HTTP header, where other characters cannot be matched)"
        )
    return value


def names(raw: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in raw.split(",") if n.strip())


def origins(raw: str) -> tuple[str, ...]:
    return tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
