"""Tool arguments checked against the tool's inputSchema, in the broker, before any
worker is involved. Validators are compiled once per tool."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import jsonschema
import orjson
from jsonschema.exceptions import SchemaError

from broker.protocol import InvalidArguments

__all__ = ["ArgumentValidator", "parse_arguments"]

log = logging.getLogger("broker.validation")


def parse_arguments(raw: bytes) -> dict[str, Any]:
    """The call's arguments as a dict; absent or null means no arguments."""
    if not raw or raw == b"null":
        return {}
    try:
        value = orjson.loads(raw)
    except (orjson.JSONDecodeError, RecursionError) as exc:
        raise InvalidArguments(f"arguments are not valid JSON: {exc}", path="") from None
    if not isinstance(value, dict):
        raise InvalidArguments("arguments must be a JSON object", path="")
    return value


def _path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".")


class ArgumentValidator:
    """Validates arguments per tool; tools without a usable schema are not checked."""

    def __init__(self, tools: Mapping[str, Mapping[str, Any]]) -> None:
        self._tools = tools
        self._compiled: dict[str, Any] = {}

    def _validator(self, tool: str) -> Any:
        if tool in self._compiled:
            return self._compiled[tool]
        schema = self._tools.get(tool, {}).get("inputSchema")
        validator = None
        if (
            isinstance(schema, dict)
            and any(k != "type" for k in schema)
            and schema
            != {
                "type": "object",
                "properties": {},
            }
        ):
            cls = jsonschema.validators.validator_for(
                schema, default=jsonschema.Draft202012Validator
            )
            try:
                cls.check_schema(schema)
                validator = cls(schema)
            except SchemaError as exc:
                log.warning(
                    "tool %s has an invalid inputSchema (%s); not validating", tool, exc.message
                )
        self._compiled[tool] = validator
        return validator

    def validate(self, tool: str, arguments: dict[str, Any]) -> None:
        """Raise InvalidArguments naming the failing path when the arguments do not fit."""
        validator = self._validator(tool)
        if validator is None or validator.is_valid(arguments):
            return
        error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
        if error is None:
            return
        path = _path(error.absolute_path)
        where = f"arguments.{path}" if path else "arguments"
        raise InvalidArguments(f"{where}: {error.message}", path=path, tool=tool)
