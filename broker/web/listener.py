"""The daemon's listening socket, bound before anything else starts.

The port is the single-daemon lock: a second daemon on the same port fails here,
before it has started a worker or touched a file.
"""

from __future__ import annotations

import socket
import sys

__all__ = ["bind_socket"]


def bind_socket(host: str, port: int) -> socket.socket:
    """A non-blocking socket listening on (host, port); OSError when it is taken."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        if sys.platform == "win32":
            # Windows lets a second socket bind a port in use unless told not to.
            sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_EXCLUSIVEADDRUSE", 0), 1)
        else:
            # A restart may bind while the last daemon's connections are in TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
