"""The status page at http://127.0.0.1:<port>/ as an operator sees it in a real browser.

A real daemon serves the page; headless Chromium loads it and runs its script, which
polls /health every 2 s. The tests read what the page shows (element text) and compare
it with /health read at about the same time, while a real MCP client keeps calling.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mcp import MCPError
from mcp.client.session import ClientSession

from tests.conftest import DaemonFactory, async_wait_for, mcp_client, scaled
from tests.e2e.ops_support import ARTIFACTS, STEP_S, fetch, op_client
from tests.support.browser import Browser, Page, require_chromium

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(not Path("/proc").is_dir(), reason="cleans up processes through /proc"),
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Everything the page shows, read from the DOM in one go.
PAGE_STATE_JS = """(() => {
  const el = (id) => document.getElementById(id);
  const cells = (tbody) => [...el(tbody).querySelectorAll('tr')]
      .map((row) => [...row.cells].map((cell) => cell.textContent));
  return {
    state: el('state').textContent,
    stateClass: el('state').className,
    sessions: el('sessions').textContent,
    calls: el('calls-total').textContent,
    updated: el('updated').textContent,
    rate: el('rate').textContent,
    p50: el('p50').textContent,
    p99: el('p99').textContent,
    caps: [...document.querySelectorAll('#caps [data-cap]')].map((cap) => ({
      cap: cap.dataset.cap,
      used: cap.querySelector('.used').textContent,
      limit: cap.querySelector('.limit').textContent,
      width: cap.querySelector('.fill').style.width,
    })),
    workers: cells('workers'),
    errors: cells('errors'),
  };
})()"""

# Run the page's own refresh (fetch /health, render) now, then read the DOM.
FRESH_STATE_JS = f"refresh().then(() => {PAGE_STATE_JS})"


class EchoLoad:
    """An MCP client (SDK, through a real shim) calling echo until told to stop."""

    def __init__(self, session: ClientSession) -> None:
        self.session = session
        self.done = 0
        self.stop = asyncio.Event()

    async def run(self) -> None:
        while not self.stop.is_set():
            result = await self.session.call_tool("echo", {"text": f"call {self.done}"})
            assert not result.is_error, result
            self.done += 1
            # Pace the load (about 50 calls/s) so the browser gets its share of the CPU.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 0.02)


async def live_health(
    http: aiohttp.ClientSession, port: int, token: str | None = None
) -> dict[str, Any]:
    """GET /health (200) as a dict."""
    status, body = await fetch(http, port, "/health", token)
    assert status == 200, (status, body)
    health: dict[str, Any] = json.loads(body)
    return health


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails if `data` is not a PNG."""
    assert data[:8] == PNG_SIGNATURE, "not a PNG"
    assert data[12:16] == b"IHDR", "PNG without IHDR first"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


async def wait_rendered(page: Page) -> dict[str, Any]:
    """The page state once its first refresh rendered data (state UP, workers listed)."""
    await page.wait_until(
        "document.getElementById('state').textContent === 'UP'"
        " && document.querySelectorAll('#workers tr').length > 0",
        "the status page to render the daemon's state",
    )
    state: dict[str, Any] = await page.evaluate(PAGE_STATE_JS)
    return state


async def test_status_page_shows_live_state_that_matches_health_and_moves(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """Opened in a browser while clients work, the page shows UP, the sessions, a bar per
    cap (global and every provider, with its limit), the workers with the pids /health
    reports, the error codes, calls/s and latency; the calls total keeps growing on its
    own and matches /health read right after, up to the calls made in between."""
    require_chromium()
    daemon = daemon_factory(
        workers=2,
        env={
            "EXAI_HEALTH_INTERVAL": "0.2",
            "EXAI_WS_KIMI_MAX_INFLIGHT": "3",
            "EXAI_WS_ACME_MAX_INFLIGHT": "2",
            "EXAI_SHUTDOWN_GRACE": "2",
        },
    )
    async with (
        aiohttp.ClientSession() as http,
        op_client(daemon) as holder,
        mcp_client(daemon.shim_env()) as session,
    ):
        with pytest.raises(MCPError):
            await session.call_tool("no_such_tool", {})
        held = await holder.start("sleep", {"seconds": 300})
        await async_wait_for(
            lambda: daemon.health()["inflight"]["global"] >= 1, STEP_S, "the held sleep to run"
        )
        load = EchoLoad(session)
        load_task = asyncio.create_task(load.run())
        try:
            await async_wait_for(
                lambda: load.done >= 5 or load_task.done(), STEP_S, "the echo load to get going"
            )
            assert not load_task.done(), load_task
            async with Browser.launch(tmp_path) as browser:
                page = await browser.open(f"http://127.0.0.1:{daemon.port}/")
                first = await wait_rendered(page)

                # The page refreshes by itself: the calls total grows, "updated" moves on.
                def grew(state: dict[str, Any]) -> bool:
                    return int(state["calls"]) > int(first["calls"])

                later: dict[str, Any] = {}
                deadline = asyncio.get_running_loop().time() + scaled(20.0)
                while not later:
                    state = await page.evaluate(PAGE_STATE_JS)
                    if grew(state) and state["updated"] != first["updated"]:
                        later = state
                    elif asyncio.get_running_loop().time() > deadline:
                        raise AssertionError(f"the page stopped refreshing: {first} -> {state}")
                    else:
                        await asyncio.sleep(0.1)

                # Fresh page values against /health read right after them.
                done_before = load.done
                shown = await page.evaluate(FRESH_STATE_JS, await_promise=True)
                health = await live_health(http, daemon.port)
                done_after = load.done

                png = await page.screenshot()
        finally:
            load.stop.set()
            await asyncio.wait_for(load_task, STEP_S)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await holder.cancel(held.request_id)

    ARTIFACTS.mkdir(exist_ok=True)
    artifact = ARTIFACTS / "status-page.png"
    artifact.write_bytes(png)
    width, height = png_size(artifact.read_bytes())
    assert width > 0 and height > 0 and artifact.stat().st_size > 1000

    assert shown["state"] == "UP" and "up" in shown["stateClass"].split()
    assert int(shown["sessions"]) == health["sessions"] == 2  # the shim and the holder
    calls_shown = int(shown["calls"])
    made_between = done_after - done_before
    assert calls_shown <= health["calls_total"] <= calls_shown + made_between + 1, (
        calls_shown,
        health["calls_total"],
        made_between,
    )

    caps = {c["cap"]: c for c in shown["caps"]}
    providers = health["capacity"]["providers"]
    assert set(caps) == {"global", *(f"provider:{p}" for p in providers)}
    assert {"kimi", "glm", "acme"} <= set(providers)
    assert caps["global"]["limit"] == str(health["capacity"]["global"])
    # The held sleep is in flight; an echo may be too.
    assert 1 <= int(caps["global"]["used"]) <= 2
    assert float(caps["global"]["width"].rstrip("%")) > 0
    for name, limit in providers.items():
        bar = caps[f"provider:{name}"]
        assert bar["limit"] == str(limit)
        assert int(bar["used"]) == health["inflight"]["providers"].get(name, 0) == 0
    assert caps["provider:kimi"]["limit"] == "3" and caps["provider:acme"]["limit"] == "2"

    pids_shown = sorted(int(row[1]) for row in shown["workers"])
    assert pids_shown == sorted(w["pid"] for w in health["workers"])
    assert all(row[2] == "ready" for row in shown["workers"])
    assert shown["errors"] == [["TOOL_NOT_FOUND", "1"]]
    assert health["errors_by_code"] == {"TOOL_NOT_FOUND": 1}

    assert float(shown["rate"]) > 0
    assert 0 < float(shown["p50"]) <= float(shown["p99"])
    assert int(later["calls"]) > int(first["calls"])


async def test_status_page_with_a_token_renders_only_with_token_in_the_url(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """With EXAI_WS_TOKEN set, /?token=<t> shows the live state (its script passes the
    token on to /health), while / without it, or with a wrong one, answers 401."""
    require_chromium()
    token = "status-page-token-123"
    daemon = daemon_factory(workers=2, env={"EXAI_WS_TOKEN": token})
    async with aiohttp.ClientSession() as http:
        assert (await fetch(http, daemon.port, "/"))[0] == 401
        assert (await fetch(http, daemon.port, "/?token=wrong"))[0] == 401
        assert (await fetch(http, daemon.port, "/health"))[0] == 401
        async with Browser.launch(tmp_path) as browser:
            page = await browser.open(f"http://127.0.0.1:{daemon.port}/?token={token}")
            shown = await wait_rendered(page)
            bare = await browser.open(f"http://127.0.0.1:{daemon.port}/")
            bare_text = await bare.evaluate("document.body.innerText")
        health = await live_health(http, daemon.port, token)
    assert shown["state"] == "UP"
    assert sorted(int(row[1]) for row in shown["workers"]) == sorted(
        w["pid"] for w in health["workers"]
    )
    assert shown["sessions"] == "0"
    assert "unauthorized" in bare_text
    assert token not in bare_text
