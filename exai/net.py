"""Addresses: what counts as loopback, and how a host and port make a URL. Pure."""

from __future__ import annotations

import ipaddress

__all__ = ["host_for_url", "http_url", "is_loopback_host", "reachable_host", "ws_url"]

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


def host_for_url(host: str) -> str:
    """`host` as it goes in a URL or a Host header: IPv6 literals in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def reachable_host(host: str) -> str:
    """Where a client on this machine reaches a daemon listening on `host`: a wildcard
    address cannot be connected to, so it stands for loopback."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def ws_url(host: str, port: int, path: str = "") -> str:
    """The WebSocket URL of `host:port` (`path` starts with "/" when given)."""
    return f"ws://{host_for_url(host)}:{port}{path}"


def http_url(host: str, port: int, path: str = "") -> str:
    """The HTTP URL of `host:port`."""
    return f"http://{host_for_url(host)}:{port}{path}"
