"""An OpenAI-compatible `/chat/completions` client on aiohttp, one per worker.

Kimi/Moonshot and GLM/ZhipuAI both speak this API. One ClientSession per worker
keeps connections alive across calls; 429 and 5xx answers are retried with
exponential backoff that honours `Retry-After`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import logging
import random
import time
from typing import Any

import aiohttp

from workers.providers.config import ProviderConfig

__all__ = ["ChatClient", "ChatResponse", "ProviderError"]

log = logging.getLogger("workers.providers")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_WAIT_S = 30.0


class ProviderError(Exception):
    """The provider refused or failed; `status` is its HTTP status (0: no answer)."""

    def __init__(self, provider: str, status: int, message: str) -> None:
        super().__init__(f"{provider} API error {status}: {message}" if status else message)
        self.provider = provider
        self.status = status


@dataclasses.dataclass(frozen=True, slots=True)
class ChatResponse:
    text: str
    model: str
    usage: dict[str, Any]
    finish_reason: str | None


def _retry_after_s(header: str | None) -> float | None:
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_message(body: Any, fallback: str) -> str:
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if body.get("message"):
            return str(body["message"])
    return fallback[:500]


class ChatClient:
    """Sends chat completions to any configured provider; reuses one HTTP session."""

    def __init__(
        self, *, timeout_s: float = 120.0, max_retries: int = 3, backoff_s: float = 0.5
    ) -> None:
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=60),
            )
        return self._session

    async def complete(
        self,
        config: ProviderConfig,
        model: str,
        messages: list[dict[str, str]],
        temperature: float | None = None,
    ) -> ChatResponse:
        """One non-streaming completion; raises ProviderError with the provider's words."""
        payload: dict[str, Any] = {"model": model, "messages": messages, "stream": False}
        if temperature is not None:
            payload["temperature"] = temperature
        headers = {"Authorization": f"Bearer {config.api_key}"}
        url = f"{config.base_url}/chat/completions"
        attempt = 0
        while True:
            try:
                async with self._http().post(url, json=payload, headers=headers) as resp:
                    if resp.status == 200:
                        return self._parse(config, model, await resp.json(content_type=None))
                    text = await resp.text()
                    try:
                        body: Any = await resp.json(content_type=None)
                    except (ValueError, aiohttp.ContentTypeError):
                        body = None
                    error = ProviderError(config.name, resp.status, _error_message(body, text))
                    wait_s = _retry_after_s(resp.headers.get("Retry-After"))
                    retryable = resp.status in RETRY_STATUSES
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                error = ProviderError(
                    config.name,
                    0,
                    f"{config.name} API at {config.base_url} unreachable: "
                    f"{type(exc).__name__}: {exc}",
                )
                wait_s, retryable = None, True
            if not retryable or attempt >= self.max_retries:
                raise error
            attempt += 1
            delay = wait_s if wait_s is not None else self.backoff_s * 2 ** (attempt - 1)
            delay = min(MAX_RETRY_WAIT_S, delay) * (
                1.0 if wait_s is not None else random.uniform(0.8, 1.2)
            )
            log.info("%s; retry %d/%d in %.2f s", error, attempt, self.max_retries, delay)
            await asyncio.sleep(delay)

    @staticmethod
    def _parse(config: ProviderConfig, model: str, body: Any) -> ChatResponse:
        try:
            choice = body["choices"][0]
            text = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise ProviderError(
                config.name, 200, "the response has no choices[0].message"
            ) from None
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
        return ChatResponse(
            str(text), str(body.get("model") or model), usage, choice.get("finish_reason")
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
