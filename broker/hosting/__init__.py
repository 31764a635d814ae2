"""Hosted MCP servers owned by the daemon: their processes, handshakes and relays."""
