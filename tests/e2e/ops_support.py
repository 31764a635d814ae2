"""Helpers for the operations e2e tests (test_operations_*.py).

- `Browser` / `Page`: a headless Chromium driven over the DevTools protocol (aiohttp
  WebSocket client): open a page, read element text, take a screenshot. Every process
  Chromium starts (its crash handler lives in a session of its own) carries a private
  environment tag and is killed on the way out, even when the test fails.
- `OpClient`: a minimal op-dialect WebSocket session (hello, call_tool, cancel), to hold
  a call in flight while something else is observed.
- `JsonLinesShim`: a real `python -m shim` driven with raw JSON lines from any cwd.
- HTTP, Prometheus-text, /proc and CLI helpers with deadlines.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, RUN_ID, DaemonProcess, async_wait_for, base_env, scaled

__all__ = [
    "ARTIFACTS",
    "CHROMIUM",
    "STEP_S",
    "Browser",
    "JsonLinesShim",
    "Metrics",
    "OpClient",
    "Page",
    "broker_daemon_pids",
    "fetch",
    "kill_and_reap",
    "op_client",
    "process_gone",
    "read_metrics",
    "run_cli",
    "tagged_pids",
]

STEP_S = 30.0  # deadline of one step (a reply, a condition); scaled by EXAI_TEST_TIMEOUT_SCALE
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"

JsonObj = dict[str, Any]


# --- processes -------------------------------------------------------------------------


def process_gone(pid: int) -> bool:
    """True once `pid` has exited (gone, or a zombie nobody reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def tagged_pids(tag: str) -> list[int]:
    """Live processes (not us, not zombies) whose environment holds the line `tag`."""
    needle = tag.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
        except OSError:
            continue
        if not process_gone(int(entry.name)):
            found.append(int(entry.name))
    return found


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


def kill_and_reap(pids: list[int]) -> None:
    """SIGKILL each pid still alive (the last resort of a cleanup)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


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


# --- headless Chromium over the DevTools protocol ---------------------------------------

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--window-size=1280,900",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


def require_chromium() -> str:
    """The Chromium binary, or skip the test when it is not installed."""
    if not CHROMIUM.exists() or not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"headless Chromium is not installed at {CHROMIUM}")
    return str(CHROMIUM)


class Page:
    """One tab, attached with a flat DevTools session."""

    def __init__(self, browser: Browser, target_id: str, session_id: str) -> None:
        self.browser = browser
        self.target_id = target_id
        self.session_id = session_id

    async def cdp(self, method: str, params: JsonObj | None = None) -> JsonObj:
        return await self.browser.cdp(method, params, self.session_id)

    async def evaluate(self, expression: str, await_promise: bool = False) -> Any:
        """The value of a JavaScript expression in the page (by value)."""
        reply = await self.cdp(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": await_promise},
        )
        if "exceptionDetails" in reply:
            raise AssertionError(f"{expression!r} threw: {reply['exceptionDetails']}")
        return reply.get("result", {}).get("value")

    async def wait_until(self, expression: str, what: str, timeout_s: float = STEP_S) -> Any:
        """Poll `expression` until it is truthy; its value (fails after the deadline)."""
        deadline = time.monotonic() + scaled(timeout_s)
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what} ({expression})")
            await asyncio.sleep(0.05)

    async def navigate(self, url: str) -> None:
        """Load `url` and wait until the document finished loading."""
        reply = await self.cdp("Page.navigate", {"url": url})
        assert not reply.get("errorText"), reply
        await self.wait_until(
            "document.readyState === 'complete' && location.href", f"{url} to load"
        )

    async def screenshot(self) -> bytes:
        """A PNG of the visible page."""
        reply = await self.cdp("Page.captureScreenshot", {"format": "png"})
        return base64.b64decode(reply["data"])


class Browser:
    """A headless Chromium process and a DevTools connection to it."""

    def __init__(self, proc: asyncio.subprocess.Process, profile: Path, tag: str) -> None:
        self.proc = proc
        self.profile = profile
        self.tag = tag
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[JsonObj]] = {}

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(cls, root: Path) -> AsyncIterator[Browser]:
        """Start Chromium with a fresh profile under `root`; always stopped on the way out."""
        binary = require_chromium()
        profile = root / f"chromium-{uuid.uuid4().hex[:6]}"
        home = profile / "home"
        home.mkdir(parents=True)
        tag = f"EXAI_TEST_BROWSER={uuid.uuid4().hex}"
        env = base_env(HOME=str(home))
        env[tag.split("=")[0]] = tag.split("=")[1]
        with open(profile / "stderr.txt", "wb") as err:  # noqa: ASYNC230 - once per browser
            proc = await asyncio.create_subprocess_exec(
                binary,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile / 'data'}",
                "about:blank",
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
        browser = cls(proc, profile, tag)
        try:
            await browser._attach()
            yield browser
        finally:
            await browser._shutdown()

    async def _attach(self) -> None:
        port_file = self.profile / "data" / "DevToolsActivePort"

        def port_lines() -> list[str] | None:
            if self.proc.returncode is not None:
                raise AssertionError(f"chromium exited with {self.proc.returncode}")
            with contextlib.suppress(OSError):
                lines = port_file.read_text().split()
                if len(lines) >= 2:
                    return lines
            return None

        lines: list[str] = await async_wait_for(port_lines, STEP_S, "chromium's DevTools port")
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(
            f"ws://127.0.0.1:{int(lines[0])}{lines[1]}", max_msg_size=0
        )
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for msg in self._ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    continue
                message = json.loads(msg.data)
                future = self._waiting.pop(message.get("id", -1), None)
                if future is not None and not future.done():
                    future.set_result(message)
        finally:
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(ConnectionError("DevTools connection closed"))

    async def cdp(
        self, method: str, params: JsonObj | None = None, session_id: str | None = None
    ) -> JsonObj:
        """Send one DevTools command and return its result."""
        assert self._ws is not None
        rid = next(self._ids)
        message: JsonObj = {"id": rid, "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id
        future: asyncio.Future[JsonObj] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        await self._ws.send_str(json.dumps(message))
        reply = await asyncio.wait_for(future, scaled(STEP_S))
        if "error" in reply:
            raise AssertionError(f"DevTools {method} failed: {reply['error']}")
        return dict(reply.get("result", {}))

    async def open(self, url: str) -> Page:
        """A new tab showing `url` (loaded)."""
        target = await self.cdp("Target.createTarget", {"url": "about:blank"})
        attached = await self.cdp(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self, target["targetId"], attached["sessionId"])
        await page.cdp("Page.enable")
        await page.cdp("Runtime.enable")
        await page.navigate(url)
        return page

    async def _shutdown(self) -> None:
        with contextlib.suppress(Exception):
            if self._ws is not None and not self._ws.closed:
                await asyncio.wait_for(self.cdp("Browser.close"), scaled(5.0))
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._http is not None:
            await self._http.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), scaled(10.0))
        # Helpers share the process group; the crash handler has a session of its own.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.returncode is None:
            await asyncio.wait_for(self.proc.wait(), 10.0)
        leftovers: list[int] = []

        def all_gone() -> bool:
            leftovers[:] = tagged_pids(self.tag)
            kill_and_reap(leftovers)
            return not leftovers

        await async_wait_for(all_gone, 10.0, f"chromium's processes {leftovers} to exit")
