"""Helpers for the operations e2e tests (test_operations_*.py).

- `OpClient`: a minimal op-dialect WebSocket session (hello, call_tool, cancel), to hold
  a call in flight while something else is observed.
- `JsonLinesShim`: a real `python -m shim` driven with raw JSON lines from any cwd.
- HTTP, Prometheus-text, /proc and CLI helpers with deadlines (the browser is in
  tests.support.browser, the generic /proc helpers in tests.support.processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, RUN_ID, DaemonProcess, scaled
from tests.support.processes import tagged_pids

__all__ = [
    "ARTIFACTS",
    "STEP_S",
    "JsonLinesShim",
    "Metrics",
    "OpClient",
    "broker_daemon_pids",
    "fetch",
    "op_client",
    "read_metrics",
    "run_cli",
]

STEP_S = 30.0  # deadline of one step (a reply, a condition); scaled by EXAI_TEST_TIMEOUT_SCALE
ARTIFACTS = ROOT / "test-artifacts"

JsonObj = dict[str, Any]


# --- processes -------------------------------------------------------------------------


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def broker_daemon_pids(extra_tag: str | None = None) -> list[int]:
    """Daemons (`python -m broker` with no subcommand) started by this test run.

    `extra_tag` ("NAME=value") narrows it to daemons whose environment also holds it.
    """
    pids = tagged_pids(f"EXAI_TEST_RUN_ID={RUN_ID}")
    if extra_tag is not None:
        pids = sorted(set(pids) & set(tagged_pids(extra_tag)))
    return [pid for pid in pids if _cmdline(pid)[1:3] == ["-m", "broker"]]


def run_cli(
    args: list[str], env: dict[str, str], cwd: Path, timeout_s: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run `python <args>` to completion; its process group is killed if it hangs."""
    argv = [sys.executable, *args]
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=scaled(timeout_s))
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{' '.join(args)} did not exit in time:\n{out}\n{err}") from None
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


# --- HTTP and Prometheus ---------------------------------------------------------------


async def fetch(
    http: aiohttp.ClientSession, port: int, path: str, token: str | None = None
) -> tuple[int, str]:
    """GET http://127.0.0.1:<port><path>; the status and body."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=scaled(STEP_S))
    async with http.get(f"http://127.0.0.1:{port}{path}", headers=headers, timeout=timeout) as resp:
        return resp.status, await resp.text()


class Metrics:
    """One parsed /metrics scrape."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}

    def samples(self, sample_name: str) -> list[tuple[dict[str, str], float]]:
        """Every (labels, value) of the sample called `sample_name`."""
        return [
            (dict(s.labels), float(s.value))
            for family in self.families.values()
            for s in family.samples
            if s.name == sample_name
        ]

    def value(self, sample_name: str, **labels: str) -> float | None:
        """The value of the one sample with exactly these labels (None if absent)."""
        for sample_labels, value in self.samples(sample_name):
            if sample_labels == labels:
                return value
        return None


async def read_metrics(http: aiohttp.ClientSession, port: int) -> Metrics:
    status, text = await fetch(http, port, "/metrics")
    assert status == 200, (status, text)
    return Metrics(text)


# --- an op-dialect WebSocket session ---------------------------------------------------


class OpClient:
    """An op-dialect session: each call's call_tool_res lands in its own future."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.session_id = uuid.uuid4().hex
        self.results: dict[str, asyncio.Future[JsonObj]] = {}
        self._ids = itertools.count(1)
        self._reader: asyncio.Task[None] | None = None

    async def hello(self, token: str | None = None) -> JsonObj:
        frame: JsonObj = {"op": "hello", "session_id": self.session_id}
        if token:
            frame["token"] = token
        await self.ws.send_str(json.dumps(frame))
        msg = await self.ws.receive(timeout=scaled(STEP_S))
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
        ack: JsonObj = json.loads(msg.data)
        assert ack.get("ok") is True, ack
        self._reader = asyncio.get_running_loop().create_task(self._read())
        return ack

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            future = self.results.get(str(frame.get("request_id")))
            if frame.get("op") == "call_tool_res" and future is not None and not future.done():
                future.set_result(frame)

    async def start(self, name: str, arguments: JsonObj) -> str:
        """Send call_tool; returns its request id (the answer arrives in `results`)."""
        rid = f"c{next(self._ids)}"
        self.results[rid] = asyncio.get_running_loop().create_future()
        await self.ws.send_str(
            json.dumps({"op": "call_tool", "request_id": rid, "name": name, "arguments": arguments})
        )
        return rid

    async def result(self, rid: str, timeout_s: float = STEP_S) -> JsonObj:
        return await asyncio.wait_for(asyncio.shield(self.results[rid]), scaled(timeout_s))

    async def call(self, name: str, arguments: JsonObj) -> JsonObj:
        return await self.result(await self.start(name, arguments))

    async def cancel(self, rid: str) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_str(json.dumps({"op": "cancel", "request_id": rid}))

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader


@contextlib.asynccontextmanager
async def op_client(daemon: DaemonProcess, token: str | None = None) -> AsyncIterator[OpClient]:
    """One op-dialect session on the daemon; closed (code 1000, ending it) on exit."""
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(daemon.url, timeout=aiohttp.ClientWSTimeout(ws_close=5))
        client = OpClient(ws)
        try:
            await client.hello(token)
            yield client
        finally:
            await client.aclose()


# --- a JSON-lines shim ----------------------------------------------------------------


class JsonLinesShim:
    """A real `python -m shim` on asyncio pipes, started in any folder."""

    def __init__(self, proc: asyncio.subprocess.Process, stderr_path: Path) -> None:
        self.proc = proc
        self.stderr_path = stderr_path
        self._waiters: dict[str, asyncio.Future[JsonObj]] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def start(cls, env: dict[str, str], cwd: Path, stderr_path: Path) -> JsonLinesShim:
        with open(stderr_path, "wb") as err:  # noqa: ASYNC230 - opened once per shim
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "shim",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                env=env,
                cwd=str(cwd),
            )
        return cls(proc, stderr_path)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            if not raw.strip():
                continue
            message = json.loads(raw)
            waiter = self._waiters.get(json.dumps(message.get("id")))
            if "method" not in message and waiter is not None and not waiter.done():
                waiter.set_result(message)

    async def send(self, message: JsonObj) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        await self.proc.stdin.drain()

    async def request(self, rid: str, method: str, params: JsonObj) -> JsonObj:
        """Send one request and wait for its answer."""
        future = asyncio.get_running_loop().create_future()
        self._waiters[json.dumps(rid)] = future
        await self.send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        return await asyncio.wait_for(future, scaled(STEP_S + 30.0))

    async def aclose(self) -> None:
        """Close stdin and let the shim exit; kill it if it does not in time."""
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), scaled(10.0))
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
