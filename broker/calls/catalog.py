"""The tool catalog the workers announced: names, schemas, annotations, list result."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from broker.calls.validation import ArgumentValidator
from exai.ipc import Ready

__all__ = ["Catalog"]


@dataclasses.dataclass(frozen=True, slots=True)
class Catalog:
    tools: tuple[dict[str, Any], ...]
    by_name: dict[str, dict[str, Any]]
    model_tools: frozenset[str]
    server_name: str
    list_result: bytes
    validator: ArgumentValidator

    @classmethod
    def empty(cls) -> Catalog:
        return cls((), {}, frozenset(), "", b'{"tools":[]}', ArgumentValidator({}))

    @classmethod
    def from_ready(cls, ready: Ready) -> Catalog:
        tools = tuple(orjson.loads(ready.tools))
        by_name = {t["name"]: t for t in tools if isinstance(t, dict) and "name" in t}
        list_result = b'{"tools":' + ready.tools + b"}"
        return cls(
            tools,
            by_name,
            frozenset(ready.model_tools),
            ready.server_name,
            list_result,
            ArgumentValidator(by_name),
        )

    def __contains__(self, name: object) -> bool:
        return name in self.by_name

    def is_retry_safe(self, name: str) -> bool:
        """True when the tool says a second run does no harm (read-only or idempotent)."""
        annotations = self.by_name.get(name, {}).get("annotations") or {}
        return bool(annotations.get("readOnlyHint") or annotations.get("idempotentHint"))
