"""Token checks. Constant-time comparison; the token itself is never logged."""

from __future__ import annotations

import hmac

__all__ = ["Auth"]


class Auth:
    """The shared bearer token; empty means auth is off."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    @property
    def enabled(self) -> bool:
        return bool(self._token)

    def check(self, presented: str | None) -> bool:
        if not self._token:
            return True
        if presented is None:
            return False
        try:
            encoded = presented.encode()
        except UnicodeEncodeError:
            # A header that is not UTF-8 reaches us with surrogate escapes: it cannot be
            # the token (refused as wrong, not a server error).
            return False
        return hmac.compare_digest(encoded, self._token)

    def rotate(self, old: str, new: str) -> bool:
        """Replace the token if `old` is the current one. Refused while auth is off."""
        if not self._token or not new or not self.check(old):
            return False
        self._token = new.encode()
        return True
