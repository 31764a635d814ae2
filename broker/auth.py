"""Token checks. Constant-time comparison; the token itself is never logged."""

from __future__ import annotations

import hmac
import ipaddress

__all__ = ["Auth", "is_loopback_host"]

_LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


def is_loopback_host(host: str) -> bool:
    """True for loopback addresses and the loopback names; never for look-alike names
    such as `127.0.0.1.evil.example` (a DNS-rebinding trick)."""
    name = host.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


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
        return hmac.compare_digest(presented.encode(), self._token)

    def rotate(self, old: str, new: str) -> bool:
        """Replace the token if `old` is the current one. Refused while auth is off."""
        if not self._token or not new or not self.check(old):
            return False
        self._token = new.encode()
        return True
