"""The tool lists of lazy servers, kept from their last run.

A lazy server starts on its first call, but clients list tools first: without its
tools in the list, no client would ever call it. So each server's listing is kept
in a small JSON file beside the logs, under a fingerprint of how the server is
run, and a lazy server whose fingerprint matches is listed from it without being
started. A server run differently (new args, env, url) is started on the first
listing instead, which waits a bounded time for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path

import msgspec

from broker.fleet.config import ServerSpec

__all__ = ["LISTINGS_FILE", "Listings", "fingerprint"]

log = logging.getLogger(__name__)

LISTINGS_FILE = "servers.listings.json"


class _Entry(msgspec.Struct):
    fingerprint: str
    tools: msgspec.Raw


def fingerprint(spec: ServerSpec) -> str:
    """What decides which tools a server offers: how it is run, not how it is shared."""
    parts = (spec.command, spec.env, spec.cwd, spec.url, spec.headers)
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


class Listings:
    """Tool lists by server name, read once and rewritten whenever one changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[str, _Entry] = {}
        try:
            self._entries = msgspec.json.decode(path.read_bytes(), type=dict[str, _Entry])
        except FileNotFoundError:
            pass
        except (OSError, msgspec.DecodeError) as exc:
            log.warning("ignoring the kept tool lists in %s: %s", path, exc)

    def recall(self, spec: ServerSpec) -> bytes | None:
        """The tools (a JSON array) the server listed when last run the same way."""
        entry = self._entries.get(spec.name)
        if entry is None or entry.fingerprint != fingerprint(spec):
            return None
        return bytes(entry.tools)

    def remember(self, spec: ServerSpec, tools_json: bytes) -> None:
        entry = _Entry(fingerprint(spec), msgspec.Raw(tools_json))
        old = self._entries.get(spec.name)
        if old is not None and old.fingerprint == entry.fingerprint and old.tools == entry.tools:
            return
        self._entries[spec.name] = entry
        temp = self.path.with_name(self.path.name + ".tmp")
        try:
            temp.write_bytes(msgspec.json.encode(self._entries))
            os.replace(temp, self.path)
        except OSError as exc:
            log.warning("cannot keep the tool list of %s in %s: %s", spec.name, self.path, exc)
            with contextlib.suppress(OSError):
                temp.unlink()
