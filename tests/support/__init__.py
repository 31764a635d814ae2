"""Helpers shared by the test suites, one concept a module:

- processes: /proc (gone, tagged, tree, command line, memory) and killing;
- cli: our commands run to completion in a subprocess, bounded in time;
- health: conditions on a daemon's health file;
- jsonrpc: JSON-RPC frames and what an answer carries;
- ws_peer, op_client, mcp_ws, raw_ws: WebSocket clients of the daemon (the op
  dialect, MCP over the socket, and raw frame-by-frame exchanges);
- shim_driver: a real `python -m shim` driven with JSON-RPC lines;
- browser: a headless Chromium.
"""
