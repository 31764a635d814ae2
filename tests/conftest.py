"""Shared test fixtures: real daemons on free loopback ports, real shims, no orphans.

Every process a test starts carries EXAI_TEST_RUN_ID in its environment; at the end
of the session any such process still alive fails the run (after being killed), so
a leak cannot hide behind a passing test.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest

from tests.support.processes import tagged_pids

if TYPE_CHECKING:
    import aiohttp

ROOT = Path(__file__).resolve().parents[1]
RUN_ID = uuid.uuid4().hex
TIMEOUT_SCALE = float(os.environ.get("EXAI_TEST_TIMEOUT_SCALE", "1"))
STEP_S = 30.0  # default deadline of one step (a reply, a condition); scaled like the rest


def scaled(seconds: float) -> float:
    """A deadline stretched by EXAI_TEST_TIMEOUT_SCALE for slow machines."""
    return seconds * TIMEOUT_SCALE


def base_env(**extra: str) -> dict[str, str]:
    """An environment for a child process: ours, minus EXAI_* noise, plus the run tag."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXAI_")}
    env["EXAI_TEST_RUN_ID"] = RUN_ID
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def wait_for(
    predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.02
) -> Any:
    """Poll until `predicate()` is truthy; fail with `what` after the (scaled) deadline."""
    deadline = _Deadline(timeout_s, what)
    while not (value := predicate()):
        deadline.check()
        time.sleep(interval_s)
    return value


async def async_wait_for(
    predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.02
) -> Any:
    """`wait_for` without blocking the loop; `predicate` may also be a coroutine function."""
    deadline = _Deadline(timeout_s, what)
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        deadline.check()
        await asyncio.sleep(interval_s)


class _Deadline:
    """A scaled deadline that fails the test, naming what it waited for, once passed."""

    def __init__(self, timeout_s: float, what: str) -> None:
        self.timeout_s = scaled(timeout_s)
        self.what = what
        self.at = time.monotonic() + self.timeout_s

    def check(self) -> None:
        """Fail if the deadline has passed."""
        if time.monotonic() > self.at:
            raise AssertionError(f"timed out after {self.timeout_s:.1f} s waiting for {self.what}")


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (bound and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DaemonProcess:
    """A running `python -m broker` started by a test."""

    proc: subprocess.Popen[bytes]
    port: int
    log_dir: Path
    env: dict[str, str]
    stderr_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The daemon's WebSocket URL."""
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def health_path(self) -> Path:
        """The health file the daemon rewrites every EXAI_HEALTH_INTERVAL."""
        return self.log_dir / "ws_daemon.health.json"

    @property
    def metrics_path(self) -> Path:
        """The metrics JSONL file (one line per finished call)."""
        return self.log_dir / "ws_daemon.metrics.jsonl"

    def stderr(self) -> str:
        """Everything the daemon wrote to stderr so far."""
        return self.stderr_path.read_text(errors="replace")

    def health(self) -> dict[str, Any]:
        """The health snapshot (raises while the file is missing or half written)."""
        return dict(json.loads(self.health_path.read_text()))

    def metrics_lines(self) -> list[dict[str, Any]]:
        """Every metrics line written so far, parsed."""
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line]

    def shim_env(self, **extra: str) -> dict[str, str]:
        """Environment for a `python -m shim` that talks to this daemon."""
        env = base_env(EXAI_WS_HOST="127.0.0.1", EXAI_WS_PORT=str(self.port))
        token = self.env.get("EXAI_WS_TOKEN")
        if token:
            env["EXAI_WS_TOKEN"] = token
        env.update(extra)
        return env

    def worker_pids(self) -> list[int]:
        """The pids of the workers the health snapshot lists."""
        return [w["pid"] for w in self.health()["workers"] if w.get("pid")]

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Wait until the health file says ready (fails if the daemon exits first)."""

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.stderr()}")
            try:
                health = self.health()
            except (OSError, ValueError):
                return False
            if health.get("ready"):
                self.port = int(health["port"])
                return True
            return False

        wait_for(ready, timeout_s, "the daemon to become ready")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int:
        """Stop gracefully; kill the whole process group if it does not go in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(scaled(timeout_s))
            except subprocess.TimeoutExpired:
                _killpg(self.proc.pid)
                self.proc.wait(10)
        return int(self.proc.returncode)


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the test process dies (Linux), so a killed pytest run
    leaves no daemon behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _killpg(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def start_daemon(
    tmp_path: Path,
    *,
    workers: int = 2,
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
    port: int = 0,
    wait_ready: bool = True,
) -> DaemonProcess:
    """Start a daemon on a free loopback port and wait until it is ready."""
    log_dir = tmp_path / f"logs-{uuid.uuid4().hex[:6]}"
    log_dir.mkdir()
    # Its own config folder: a servers file of the machine's user is not the test's.
    full_env = base_env(
        EXAI_DIAGNOSTIC_TOOLS="1",
        EXAI_HEALTH_INTERVAL="0.2",
        XDG_CONFIG_HOME=str(log_dir / "config"),
    )
    full_env.update(env or {})
    stderr_path = log_dir / "daemon.stderr"
    argv = [
        sys.executable,
        "-m",
        "broker",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-dir",
        str(log_dir),
        *(args or []),
    ]
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            argv,
            cwd=tmp_path,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    daemon = DaemonProcess(proc, port, log_dir, full_env, stderr_path, argv)
    _STARTED.append(daemon)
    if wait_ready:
        daemon.wait_ready()
    return daemon


_STARTED: list[DaemonProcess] = []


class DaemonFactory(Protocol):
    """The `daemon_factory` fixture: `start_daemon` in the test's tmp_path, stopped after."""

    def __call__(
        self,
        *,
        workers: int = ...,
        env: dict[str, str] | None = ...,
        args: list[str] | None = ...,
        port: int = ...,
        wait_ready: bool = ...,
    ) -> DaemonProcess: ...


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[DaemonFactory]:
    """Start daemons with `daemon_factory(workers=…, env={…}, args=[…])`; all are stopped after."""
    started: list[DaemonProcess] = []

    def factory(**kwargs: Any) -> DaemonProcess:
        d = start_daemon(tmp_path, **kwargs)
        started.append(d)
        return d

    yield factory
    for d in started:
        if d.proc.poll() is None:
            d.stop(timeout_s=10.0)
        _killpg(d.proc.pid)


@pytest.fixture
def daemon(daemon_factory: DaemonFactory) -> DaemonProcess:
    """A daemon with 2 workers and the diagnostic tools."""
    return daemon_factory(workers=2)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp client session for raw HTTP and WebSocket requests."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        yield session


@contextlib.asynccontextmanager
async def mcp_client(env: dict[str, str], **session_kwargs: Any) -> AsyncIterator[Any]:
    """A real mcp SDK ClientSession talking to a real `python -m shim` over stdio."""
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(
        command=sys.executable, args=["-m", "shim"], env=env, cwd=str(ROOT)
    )
    with open(os.devnull, "w") as errlog:  # noqa: ASYNC230 - opened once per client
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write, **session_kwargs) as session,
        ):
            await session.initialize()
            yield session


@pytest.fixture(scope="session", autouse=True)
def no_orphans() -> Iterator[None]:
    """Fail the run if any process a test started is still alive at the end."""
    yield
    for d in _STARTED:
        if d.proc.poll() is None:
            _killpg(d.proc.pid)
    if not Path("/proc").is_dir():
        return
    leftovers: list[int] = []

    def settle() -> bool:
        leftovers[:] = tagged_pids(f"EXAI_TEST_RUN_ID={RUN_ID}")
        return not leftovers

    try:
        wait_for(settle, 10.0, "test processes to exit")
    except AssertionError:
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        raise AssertionError(f"processes left behind by the tests: {leftovers}") from None
