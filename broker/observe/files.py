"""The names of the files a daemon keeps in its log folder (EXAI_LOG_DIR).

`broker status` and `broker report` find them here too, and may run with no daemon,
so this module imports nothing.
"""

from __future__ import annotations

__all__ = ["HEALTH_FILE", "METRICS_FILE", "SERVER_LOG"]

# The health snapshot, replaced whole every EXAI_HEALTH_INTERVAL (health.py).
HEALTH_FILE = "ws_daemon.health.json"
# One JSON line per finished call, rotated as METRICS_FILE.1, .2, ... (calllog.py).
METRICS_FILE = "ws_daemon.metrics.jsonl"
# The daemon's own log, rotated by size.
SERVER_LOG = "mcp_server.log"
