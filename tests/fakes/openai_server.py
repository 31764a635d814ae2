"""A small OpenAI-compatible `/chat/completions` server for tests.

It runs on aiohttp in the test process, on 127.0.0.1 and a free port, so a daemon's
workers reach it through KIMI_API_URL / GLM_API_URL. Every request is recorded (path,
headers, JSON body). Answers come from a script the test queues (one `Reply` per
request, in order); when the script is empty the server answers with a canned
completion that echoes the model and the last user message.

    async with running_fake_openai() as fake:
        fake.script(Reply.rate_limited(retry_after="0.2"), Reply.completion())
        env = {"GLM_API_URL": fake.url, ...}
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiohttp import web

__all__ = ["FakeOpenAI", "RecordedRequest", "Reply", "echo_text", "running_fake_openai"]


def echo_text(model: str, prompt: str) -> str:
    """The text of the canned completion for `model` answering `prompt`."""
    return f"[{model}] you said: {prompt}"


@dataclasses.dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the fake server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    t: float

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The request's `messages` (empty if the body had none)."""
        if isinstance(self.body, dict) and isinstance(self.body.get("messages"), list):
            return list(self.body["messages"])
        return []

    @property
    def model(self) -> str | None:
        return self.body.get("model") if isinstance(self.body, dict) else None


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    """One scripted answer. Build it with the class methods."""

    status: int = 200
    text: str | None = None  # completion text; None echoes the last user message
    error: str | None = None  # error message for a non-200 answer
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    hold: asyncio.Event | None = None  # wait for this event before answering
    usage: Mapping[str, int] | None = None

    @classmethod
    def completion(cls, text: str | None = None, *, hold: asyncio.Event | None = None) -> Reply:
        """A 200 chat completion (echoing the prompt unless `text` is given)."""
        return cls(200, text=text, hold=hold)

    @classmethod
    def rate_limited(cls, retry_after: str | None = "0.2", message: str = "rate limited") -> Reply:
        """429 with a Retry-After header (seconds, or an HTTP date)."""
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        return cls(429, error=message, headers=headers)

    @classmethod
    def server_error(cls, status: int = 500, message: str = "internal server error") -> Reply:
        """A 5xx answer with an OpenAI-style error body."""
        return cls(status, error=message)

    @classmethod
    def unauthorized(cls, message: str = "Invalid Authentication") -> Reply:
        """401 with `{"error": {"message": …}}`."""
        return cls(401, error=message)


class FakeOpenAI:
    """The server: start it, point a provider URL at `url`, script replies, read requests."""

    def __init__(self, base_path: str = "/v1") -> None:
        self.base_path = "/" + base_path.strip("/")
        self.requests: list[RecordedRequest] = []
        self._script: deque[Reply] = deque()
        self._holds: list[asyncio.Event] = []
        self._changed = asyncio.Condition()
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The base URL a provider's *_API_URL should be set to."""
        return f"http://127.0.0.1:{self.port}{self.base_path}"

    def script(self, *replies: Reply) -> None:
        """Queue replies; each request takes the next one (then canned completions)."""
        for reply in replies:
            if reply.hold is not None:
                self._holds.append(reply.hold)
            self._script.append(reply)

    def completions(self) -> list[RecordedRequest]:
        """The requests made to `/chat/completions`."""
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    async def wait_requests(self, count: int, timeout_s: float) -> list[RecordedRequest]:
        """Wait until at least `count` requests arrived; all of them so far."""

        async def enough() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.requests) >= count)

        try:
            await asyncio.wait_for(enough(), timeout_s)
        except TimeoutError:
            raise AssertionError(
                f"the fake provider got {len(self.requests)} request(s), expected {count} "
                f"within {timeout_s:.1f} s"
            ) from None
        return list(self.requests)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = int(sock.getsockname()[1])
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        """Release every held reply and stop the server."""
        for event in self._holds:
            event.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body: Any = await request.json() if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        recorded = RecordedRequest(
            request.method, request.path, dict(request.headers), body, time.time()
        )
        async with self._changed:
            self.requests.append(recorded)
            self._changed.notify_all()
        if request.method != "POST" or not request.path.endswith("/chat/completions"):
            return _error_response(404, f"no route for {request.method} {request.path}")
        reply = self._script.popleft() if self._script else Reply.completion()
        if reply.hold is not None:
            await reply.hold.wait()
        if reply.status != 200:
            return _error_response(reply.status, reply.error or "error", reply.headers)
        return web.json_response(self._completion(recorded, reply), headers=reply.headers)

    def _completion(self, request: RecordedRequest, reply: Reply) -> dict[str, Any]:
        model = request.model or "unknown-model"
        users = [m for m in request.messages if m.get("role") == "user"]
        prompt = str(users[-1].get("content", "")) if users else ""
        text = reply.text if reply.text is not None else echo_text(model, prompt)
        usage = (
            dict(reply.usage)
            if reply.usage is not None
            else {
                "prompt_tokens": sum(
                    len(str(m.get("content", "")).split()) for m in request.messages
                ),
                "completion_tokens": len(text.split()),
            }
        )
        usage.setdefault("total_tokens", usage["prompt_tokens"] + usage["completion_tokens"])
        return {
            "id": f"chatcmpl-fake-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        }


def _error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    body = {"error": {"message": message, "type": "fake_error", "code": str(status)}}
    return web.json_response(body, status=status, headers=dict(headers or {}))


@contextlib.asynccontextmanager
async def running_fake_openai(base_path: str = "/v1") -> AsyncIterator[FakeOpenAI]:
    """A started FakeOpenAI, stopped (and every held reply released) on exit."""
    server = FakeOpenAI(base_path)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
