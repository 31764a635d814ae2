"""Either kind of hosted instance: a stdio server process, or a remote HTTP server."""

from __future__ import annotations

from broker.hosting.instance import HostedInstance
from broker.hosting.remote import RemoteInstance

__all__ = ["Instance"]

Instance = HostedInstance | RemoteInstance
