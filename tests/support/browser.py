"""A headless Chromium driven over the DevTools protocol (aiohttp WebSocket client).

`Browser.launch(root)` starts Chromium with a fresh profile (--user-data-dir) under
`root`; `Browser.open(url)` gives a loaded `Page` (evaluate, wait_until, screenshot);
`Browser.run_page(url, expr)` opens a tab, polls `expr` until it has a value and closes
the tab. Every process Chromium starts (its crash handler lives in a session of its own)
carries a private environment tag and is killed on the way out, even when the test fails.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import STEP_S, async_wait_for, base_env, scaled
from tests.support.jsonrpc import JsonObj
from tests.support.processes import kill_and_reap, tagged_pids

__all__ = ["CHROMIUM", "Browser", "Page", "require_chromium"]

CHROMIUM = Path("/usr/bin/chromium")

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
        """Send one DevTools command to this tab; its result."""
        return await self.browser.cdp(method, params, self.session_id)

    async def evaluate(
        self, expression: str, await_promise: bool = False, *, errors_as_none: bool = False
    ) -> Any:
        """The value of a JavaScript expression in the page (by value).

        A throwing expression fails the test, or gives None with `errors_as_none`.
        """
        reply = await self.cdp(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": await_promise},
        )
        if "exceptionDetails" in reply and not errors_as_none:
            raise AssertionError(f"{expression!r} threw: {reply['exceptionDetails']}")
        return reply.get("result", {}).get("value")

    async def wait_until(
        self,
        expression: str,
        what: str,
        timeout_s: float = STEP_S,
        *,
        errors_as_none: bool = False,
    ) -> Any:
        """Poll `expression` until it is truthy; its value (fails after the deadline)."""
        return await async_wait_for(
            lambda: self.evaluate(expression, errors_as_none=errors_as_none),
            timeout_s,
            f"{what} ({expression})",
            interval_s=0.05,
        )

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

    async def close(self) -> None:
        """Close the tab (quietly: the browser may be going away already)."""
        with contextlib.suppress(Exception):
            await self.browser.cdp("Target.closeTarget", {"targetId": self.target_id})


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

    @property
    def user_data_dir(self) -> Path:
        """Chromium's profile folder (removed on the way out)."""
        return self.profile / "data"

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(cls, root: Path) -> AsyncIterator[Browser]:
        """Start Chromium with a fresh profile under `root`; always stopped on the way out.

        The profile folder holds HOME, the user data dir (removed on the way out) and
        Chromium's stderr (kept, for a failing test's report).
        """
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
        port_file = self.user_data_dir / "DevToolsActivePort"

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

    async def _tab(self, url: str) -> Page:
        """A new tab that starts loading `url`, attached."""
        target = await self.cdp("Target.createTarget", {"url": url})
        attached = await self.cdp(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        return Page(self, target["targetId"], attached["sessionId"])

    async def open(self, url: str) -> Page:
        """A new tab showing `url` (loaded)."""
        page = await self._tab("about:blank")
        await page.cdp("Page.enable")
        await page.cdp("Runtime.enable")
        await page.navigate(url)
        return page

    async def run_page(self, url: str, result_expr: str, timeout_s: float = 20.0) -> Any:
        """Open `url` in a new tab, poll `result_expr` until it is a non-empty value (a
        throwing expression counts as not yet), close the tab; the value."""
        page = await self._tab(url)
        try:
            return await page.wait_until(
                result_expr, f"the page {url} to finish", timeout_s, errors_as_none=True
            )
        finally:
            await page.close()

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
        shutil.rmtree(self.user_data_dir, ignore_errors=True)
