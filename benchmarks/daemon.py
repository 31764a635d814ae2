"""Start a real daemon for a benchmark run, find its port, and always stop it.

The daemon gets its own session (process group) so that a Ctrl+C meant for the
benchmark does not reach it and its workers half-way through a cell; `stop` asks it
to shut down (SIGTERM) and then kills whatever is left of the group.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "DaemonError",
    "DaemonProcess",
    "attached_daemon",
    "running_daemon",
    "running_echo_server",
]

HEALTH_FILE = "ws_daemon.health.json"
START_TIMEOUT_S = 60.0  # a private Ray cluster takes seconds to start
STOP_GRACE_S = 15.0


class DaemonError(RuntimeError):
    """The daemon did not start or stopped unexpectedly."""


@dataclasses.dataclass(slots=True)
class DaemonProcess:
    """A daemon under test: ours (`proc` set) or one we attached to (`proc` None)."""

    pid: int
    port: int
    log_dir: Path
    proc: subprocess.Popen[bytes] | None = None

    def health(self, timeout_s: float = 5.0) -> dict[str, Any]:
        """The live `GET /health` snapshot."""
        url = f"http://127.0.0.1:{self.port}/health"
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            data: dict[str, Any] = json.load(response)
        return data

    def worker_pids(self) -> list[int]:
        return [w["pid"] for w in self.health().get("workers", []) if w.get("pid")]

    def log_tail(self, lines: int = 20) -> str:
        path = self.log_dir / "daemon.stderr"
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def daemon_environment(base: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    env = dict(base)
    # Explicit values beat a developer's `.env`: loopback only, auth off, diagnostics on.
    env.update({"EXAI_WS_HOST": "127.0.0.1", "EXAI_WS_TOKEN": "", "EXAI_DIAGNOSTIC_TOOLS": "1"})
    env.update(extra)
    return env


def _wait_ready(daemon: DaemonProcess, proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    path = daemon.log_dir / HEALTH_FILE
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DaemonError(f"daemon exited with {proc.returncode}:\n{daemon.log_tail()}")
        with contextlib.suppress(OSError, ValueError):
            snapshot = json.loads(path.read_text())
            if snapshot.get("pid") == proc.pid and snapshot.get("ready") and snapshot.get("port"):
                return int(snapshot["port"])
        time.sleep(0.05)
    raise DaemonError(f"daemon not ready after {timeout_s:g} s:\n{daemon.log_tail()}")


def stop(proc: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> int | None:
    """Graceful SIGTERM, then SIGKILL to the whole process group. Returns the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace_s)
    code = proc.returncode
    if hasattr(os, "killpg"):
        # Workers share the daemon's group; any left behind go with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    return code


@contextlib.contextmanager
def running_daemon(
    workers: int, log_dir: Path, extra_env: Mapping[str, str], cwd: Path, pool: str = "local"
) -> Iterator[DaemonProcess]:
    """Run `python -m broker --port 0` until the block exits, however it exits."""
    log_dir.mkdir(parents=True, exist_ok=True)
    # A snapshot left by an earlier run in this folder would name a dead port.
    (log_dir / HEALTH_FILE).unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "broker",
        "--port",
        "0",
        "--workers",
        str(workers),
        "--log-dir",
        str(log_dir),
        "--pool",
        pool,
    ]
    with open(log_dir / "daemon.stderr", "wb") as stderr:
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=daemon_environment(os.environ, extra_env),
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    daemon = DaemonProcess(pid=proc.pid, port=0, log_dir=log_dir, proc=proc)
    try:
        daemon.port = _wait_ready(daemon, proc, START_TIMEOUT_S)
        yield daemon
    finally:
        code = stop(proc)
        if code not in (0, None):
            print(f"note: daemon exited with code {code}; see {log_dir}", file=sys.stderr)


@contextlib.contextmanager
def attached_daemon(port: int, log_dir: Path) -> Iterator[DaemonProcess]:
    """Use a daemon someone else started on 127.0.0.1:`port` (for profiling it); never stop it.

    Its caps and worker count are whatever it was started with.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    probe = DaemonProcess(pid=0, port=port, log_dir=log_dir)
    try:
        probe.pid = int(probe.health()["pid"])
    except (OSError, ValueError, KeyError) as exc:
        raise DaemonError(f"no daemon answering GET /health on 127.0.0.1:{port}: {exc}") from exc
    yield probe


@contextlib.contextmanager
def running_echo_server(log_dir: Path, cwd: Path) -> Iterator[tuple[int, int]]:
    """Run the raw-ws baseline (`python -m benchmarks.echo_server`); yields (pid, port)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "echo_server.stderr", "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.echo_server"],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        try:
            port = int(json.loads(line)["port"])
        except (ValueError, KeyError, TypeError) as exc:
            raise DaemonError(f"echo server did not start ({line!r}); see {log_dir}") from exc
        yield proc.pid, port
    finally:
        stop(proc, grace_s=5.0)
        if proc.stdout is not None:
            proc.stdout.close()
