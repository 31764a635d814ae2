"""One server of the servers file, in the running daemon: its hosting and its tools.

The member is what the call manager places a forwarded request on: a lazy server
starts on the first one. A server that cannot be started after a few attempts is
marked failed with the reason (its stderr's tail); its requests fail with
WORKER_LOST and the other servers serve on. One that dies later is restarted by
its `HostedServer`, with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import msgspec

from broker.fleet.config import MAX_TOOL_NAME, ServerSpec, Startup, check_tool_names
from broker.hosting.hub import Hosting
from broker.hosting.instances import Instance
from broker.hosting.server import ServerState

__all__ = ["Member", "ToolEntry"]

log = logging.getLogger(__name__)

START_ATTEMPTS = 3
START_BACKOFF_S = 0.5
LAZY = "lazy"

# A tool as its server listed it: every field kept as the server wrote it.
ToolEntry = dict[str, msgspec.Raw]


class Member:
    def __init__(self, spec: ServerSpec, hosting: Hosting) -> None:
        self.spec = spec
        self.hosting = hosting
        # The server's tools under their own names, allowed or not; and whether they
        # come from an earlier run's listing rather than from this run.
        self.tools: list[tuple[str, ToolEntry]] = []
        self.from_cache = False
        self.problems: list[str] = []
        # Its tools whose prefixed names another server's (or a built-in) took first.
        self.clashes: set[str] = set()
        # Tools whose prefixed names are too long for clients: never listed.
        self.hidden: set[str] = set()
        self._start: asyncio.Task[None] | None = None
        self._started_at = 0.0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def state(self) -> str:
        if self._start is None:
            return LAZY
        return str(self.hosting.server.state)

    @property
    def failed(self) -> bool:
        return self.hosting.server.state is ServerState.FAILED

    @property
    def starting(self) -> asyncio.Task[None] | None:
        """The start still in progress, if any."""
        start = self._start
        return start if start is not None and not start.done() else None

    def starting_since(self, now: float) -> float | None:
        """Seconds its start has taken so far, while it is still starting."""
        return now - self._started_at if self.starting is not None else None

    def offers(self, feature: str) -> bool:
        identity = self.hosting.identity
        return identity is not None and feature in identity.capabilities

    def set_tools(self, tools_json: bytes, *, cached: bool = False) -> None:
        """The tools the server listed (a JSON array); names over the clients' limit
        are set aside with a logged reason."""
        try:
            entries = msgspec.json.decode(tools_json, type=list[ToolEntry])
        except msgspec.DecodeError as exc:
            log.warning("server %s: its tool list is not understood: %s", self.name, exc)
            return
        named: list[tuple[str, ToolEntry]] = []
        for entry in entries:
            raw = entry.get("name")
            try:
                name = msgspec.json.decode(raw, type=str) if raw is not None else None
            except msgspec.DecodeError:
                name = None
            if name:
                named.append((name, entry))
        self.problems = check_tool_names(self.spec, [n for n, _ in named])
        self.hidden = {n for n, _ in named if len(self.spec.exposed_name(n)) > MAX_TOOL_NAME}
        for problem in self.problems:
            log.error("server %s: %s; that tool is not listed", self.name, problem)
        self.tools = named
        self.from_cache = cached

    # --- life ------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        """Start the server unless it is started already; the task that does it."""
        if self._start is None:
            loop = asyncio.get_running_loop()
            self._started_at = loop.time()
            self._start = loop.create_task(self._run_start())
        return self._start

    @property
    def eager(self) -> bool:
        return self.spec.startup is Startup.EAGER

    async def _run_start(self) -> None:
        why = "not started"
        delay_s = START_BACKOFF_S
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                await self.hosting.start()
                log.info("server %s ready (%d tools)", self.name, len(self.tools))
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                why = str(exc) or type(exc).__name__
            log.warning(
                "server %s: start %d of %d failed: %s", self.name, attempt, START_ATTEMPTS, why
            )
            if attempt < START_ATTEMPTS:
                await asyncio.sleep(delay_s)
                delay_s *= 2
        self.hosting.server.fail(why)

    async def stop(self) -> None:
        start = self._start
        if start is not None and not start.done():
            start.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await start
        await self.hosting.stop()

    # --- what the call manager places requests on ------------------------------------

    def place(self, session_id: str) -> Instance | None:
        self.start()
        return self.hosting.place(session_id)

    def answer_input(self, session_id: str, key: str, response: bytes) -> bool:
        return self.hosting.answer_input(session_id, key, response)

    def end_session(self, session_id: str) -> None:
        self.hosting.end_session(session_id)

    def snapshot(self) -> dict[str, Any]:
        shown = self.hosting.snapshot()
        shown.update(
            state=self.state,
            prefix=self.spec.prefix,
            startup=str(self.spec.startup),
            remote=self.spec.remote,
            tools=sum(1 for name, _ in self.tools if self.spec.allows(name)),
            problems=[*self.problems, *sorted(self.clashes)],
        )
        return shown
