"""Tool arguments checked against the tool's inputSchema, in the broker, before any
worker is involved. Validators are compiled once per tool.

Most tool schemas are a flat object of typed properties. For those a precompiled
check answers "valid" without jsonschema; it is deliberately conservative (anything
it is unsure of counts as "not shown valid"), and every such case goes through
jsonschema, which alone decides validity and words the error.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import jsonschema
import orjson
from jsonschema.exceptions import SchemaError

from exai.errors import InvalidArguments

__all__ = ["ArgumentValidator", "parse_arguments"]

log = logging.getLogger("broker.calls.validation")


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


_NONE_TYPE = type(None)
# JSON type names to the Python types orjson decodes them to. An integral float is an
# "integer" only in some drafts, so "integer" admits int alone and floats fall back.
_JSON_TYPES: dict[str, frozenset[type]] = {
    "string": frozenset({str}),
    "number": frozenset({int, float}),
    "integer": frozenset({int}),
    "boolean": frozenset({bool}),
    "null": frozenset({_NONE_TYPE}),
    "object": frozenset({dict}),
    "array": frozenset({list}),
}
_ANY_TYPE = frozenset(t for types in _JSON_TYPES.values() for t in types)
# Keywords that never make an instance invalid (format is not asserted: no format checker).
_ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
        "format",
    }
)
# Drafts in which the keywords below have the meaning the fast check gives them.
_FAST_DRAFTS = (
    jsonschema.Draft4Validator,
    jsonschema.Draft6Validator,
    jsonschema.Draft7Validator,
    jsonschema.Draft201909Validator,
    jsonschema.Draft202012Validator,
)


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


class _ValueCheck:
    """A property subschema the fast path understands: types, bounds, lengths, enum."""

    __slots__ = (
        "enum",
        "items",
        "max_items",
        "max_length",
        "maximum",
        "min_items",
        "min_length",
        "minimum",
        "types",
    )

    def __init__(self) -> None:
        self.types: frozenset[type] = _ANY_TYPE
        self.minimum: int | float | None = None
        self.maximum: int | float | None = None
        self.min_length: int | None = None
        self.max_length: int | None = None
        self.enum: frozenset[str] | None = None
        self.items: _ValueCheck | None = None
        self.min_items: int | None = None
        self.max_items: int | None = None

    @classmethod
    def compile(cls, schema: Any) -> _ValueCheck | None:
        """The check for `schema`, or None when it uses anything beyond the simple subset."""
        if not isinstance(schema, dict):
            return None
        check = cls()
        for key, value in schema.items():
            if key in _ANNOTATIONS:
                continue
            if key == "type":
                names = [value] if isinstance(value, str) else value
                if not isinstance(names, list) or not names:
                    return None
                types: set[type] = set()
                for name in names:
                    if not isinstance(name, str) or name not in _JSON_TYPES:
                        return None
                    types |= _JSON_TYPES[name]
                check.types = frozenset(types)
            elif key in ("minimum", "maximum"):
                if not _is_number(value):
                    return None
                setattr(check, key, value)
            elif key in ("minLength", "maxLength", "minItems", "maxItems"):
                if type(value) is not int or value < 0:
                    return None
                name = {
                    "minLength": "min_length",
                    "maxLength": "max_length",
                    "minItems": "min_items",
                    "maxItems": "max_items",
                }[key]
                setattr(check, name, value)
            elif key == "enum":
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    return None
                check.enum = frozenset(value)
            elif key == "items":
                items = cls.compile(value)
                if items is None:
                    return None
                check.items = items
            else:
                return None
        return check

    def accepts(self, value: Any) -> bool:
        kind = type(value)
        if kind not in self.types:
            return False
        # A non-string against a string enum is left to jsonschema (its equality rules).
        if self.enum is not None and (kind is not str or value not in self.enum):
            return False
        if kind is int or kind is float:
            if self.minimum is not None and value < self.minimum:
                return False
            if self.maximum is not None and value > self.maximum:
                return False
        elif kind is str:
            if self.min_length is not None and len(value) < self.min_length:
                return False
            if self.max_length is not None and len(value) > self.max_length:
                return False
        elif kind is list:
            if self.min_items is not None and len(value) < self.min_items:
                return False
            if self.max_items is not None and len(value) > self.max_items:
                return False
            items = self.items
            if items is not None and not all(items.accepts(v) for v in value):
                return False
        return True


class _FastCheck:
    """An object schema of simple properties: required names, property checks, closed or not."""

    __slots__ = ("closed", "properties", "required")

    def __init__(
        self, properties: dict[str, _ValueCheck], required: tuple[str, ...], closed: bool
    ) -> None:
        self.properties = properties
        self.required = required
        self.closed = closed

    @classmethod
    def compile(cls, schema: dict[str, Any], validator_cls: Any) -> _FastCheck | None:
        if validator_cls not in _FAST_DRAFTS:
            return None
        properties: dict[str, _ValueCheck] = {}
        required: tuple[str, ...] = ()
        closed = False
        for key, value in schema.items():
            if key in _ANNOTATIONS or key == "$schema":
                continue
            if key == "type":
                if value != "object":
                    return None
            elif key == "properties":
                if not isinstance(value, dict):
                    return None
                for name, subschema in value.items():
                    check = _ValueCheck.compile(subschema)
                    if check is None:
                        return None
                    properties[name] = check
            elif key == "required":
                if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
                    return None
                required = tuple(value)
            elif key == "additionalProperties":
                if value is False:
                    closed = True
                elif value is not True:
                    return None
            else:
                return None
        return cls(properties, required, closed)

    def accepts(self, arguments: dict[str, Any]) -> bool:
        for name in self.required:
            if name not in arguments:
                return False
        properties = self.properties
        if self.closed:
            for name, value in arguments.items():
                check = properties.get(name)
                if check is None or not check.accepts(value):
                    return False
        elif len(arguments) <= len(properties):
            for name, value in arguments.items():
                check = properties.get(name)
                if check is not None and not check.accepts(value):
                    return False
        else:
            for name, check in properties.items():
                if name in arguments and not check.accepts(arguments[name]):
                    return False
        return True


def _path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".")


class ArgumentValidator:
    """Validates arguments per tool; tools without a usable schema are not checked."""

    def __init__(self, tools: Mapping[str, Mapping[str, Any]]) -> None:
        self._tools = tools
        self._compiled: dict[str, tuple[Any, _FastCheck | None]] = {}

    def _validator(self, tool: str) -> tuple[Any, _FastCheck | None]:
        compiled = self._compiled.get(tool)
        if compiled is not None:
            return compiled
        schema = self._tools.get(tool, {}).get("inputSchema")
        validator = None
        fast = None
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
                fast = _FastCheck.compile(schema, cls)
            except SchemaError as exc:
                log.warning(
                    "tool %s has an invalid inputSchema (%s); not validating", tool, exc.message
                )
        compiled = self._compiled[tool] = (validator, fast)
        return compiled

    def validate(self, tool: str, arguments: dict[str, Any]) -> None:
        """Raise InvalidArguments naming the failing path when the arguments do not fit."""
        validator, fast = self._validator(tool)
        if validator is None or (fast is not None and fast.accepts(arguments)):
            return
        if validator.is_valid(arguments):
            return
        error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
        if error is None:
            return
        path = _path(error.absolute_path)
        where = f"arguments.{path}" if path else "arguments"
        raise InvalidArguments(f"{where}: {error.message}", path=path, tool=tool)
