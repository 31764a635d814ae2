"""Starting the daemon from a shim that finds none (EXAI_SHIM_AUTOSTART=1).

The daemon binds its port before it starts any worker, so when several shims race
to start one, exactly one daemon wins and the others exit at once; every shim then
connects to the winner.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

__all__ = ["Autostarter"]

log = logging.getLogger("shim")

# Do not start another daemon sooner than this after the last attempt.
RESPAWN_INTERVAL_S = 15.0


class Autostarter:
    def __init__(self, log_dir: str) -> None:
        self.log_dir = Path(log_dir)
        self.last_attempt = 0.0
        self.started = 0
        # Why the last attempt could not start a daemon, for the shim's error messages.
        self.failure: str | None = None

    def maybe_start(self) -> bool:
        """Start a detached daemon unless one was started recently. True if started."""
        now = time.monotonic()
        if self.started and now - self.last_attempt < RESPAWN_INTERVAL_S:
            return False
        self.last_attempt = now
        import subprocess

        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / "daemon-autostart.log", "ab")  # noqa: SIM115 - to the child
        except OSError as exc:
            # A relative log dir in a working directory we may not write to: say so, and
            # let the shim keep trying to connect (someone may start the daemon by hand).
            failure = f"cannot write the daemon's log in {self.log_dir}: {exc}"
            if failure != self.failure:
                log.error("could not start the daemon: %s (set EXAI_LOG_DIR)", failure)
            self.failure = failure
            return False
        kwargs: dict[str, object] = {}
        if sys.platform == "win32":
            flags = subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP
            kwargs["creationflags"] = flags
        else:
            # Its own session: the editor closing our process group must not take it down.
            kwargs["start_new_session"] = True
        try:
            subprocess.Popen(
                [sys.executable, "-m", "broker"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=dict(os.environ),
                **kwargs,  # type: ignore[call-overload]
            )
        except OSError as exc:
            log.error("could not start the daemon: %s", exc)
            self.failure = str(exc)
            return False
        finally:
            out.close()
        self.failure = None
        self.started += 1
        log.warning("no daemon was running; started one (log: %s)", out.name)
        return True
