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
    # The tool list as the worker sent it (a JSON array), and the tools/list result
    # around it: both are sent as they are, never re-encoded.
    tools_json: bytes
    list_result: bytes
    validator: ArgumentValidator

    @classmethod
    def empty(cls) -> Catalog:
        return cls((), {}, frozenset(), "", b"[]", b'{"tools":[]}', ArgumentValidator({}))

    @classmethod
    def from_ready(cls, ready: Ready) -> Catalog:
        return cls.from_tools(ready.tools, ready.server_name, frozenset(ready.model_tools))

    @classmethod
    def from_tools(
        cls, tools_json: bytes, server_name: str, model_tools: frozenset[str] = frozenset()
    ) -> Catalog:
        """From a JSON array of tools (a worker's Ready, or a hosted server's list)."""
        tools = tuple(orjson.loads(tools_json))
        by_name = {t["name"]: t for t in tools if isinstance(t, dict) and "name" in t}
        list_result = b'{"tools":' + tools_json + b"}"
        return cls(
            tools,
            by_name,
            model_tools,
            server_name,
            tools_json,
            list_result,
            ArgumentValidator(by_name),
        )

    def __contains__(self, name: object) -> bool:
        return name in self.by_name
