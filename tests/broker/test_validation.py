"""Unit tests for broker.calls.validation: the precompiled check for simple schemas never
accepts what jsonschema refuses, and errors still come from jsonschema."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.calls.validation import ArgumentValidator, _FastCheck
from exai.errors import InvalidArguments

TYPE_NAMES = ["string", "number", "integer", "boolean", "null", "object", "array"]
DRAFTS = [
    None,
    "http://json-schema.org/draft-04/schema#",
    "http://json-schema.org/draft-07/schema#",
    "https://json-schema.org/draft/2020-12/schema",
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.floats(-5, 5, allow_nan=False)
    | st.sampled_from([1.0, 0.0, "", "a", "bb", "ccc"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner),
    max_leaves=6,
)


def _property_schemas() -> st.SearchStrategy[dict[str, Any]]:
    numbers = st.integers(-3, 3) | st.floats(-3, 3, allow_nan=False)
    leaf = st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(TYPE_NAMES)
            | st.lists(st.sampled_from(TYPE_NAMES), min_size=1, max_size=3, unique=True),
            "minimum": numbers,
            "maximum": numbers,
            "minLength": st.integers(0, 3),
            "maxLength": st.integers(0, 3),
            "minItems": st.integers(0, 3),
            "maxItems": st.integers(0, 3),
            "enum": st.lists(st.sampled_from(["", "a", "bb"]), min_size=1, unique=True),
            "description": st.just("annotation"),
            "format": st.just("uri"),
        },
    )
    return st.recursive(
        leaf,
        lambda inner: st.builds(lambda base, items: {**base, "items": items}, leaf, inner),
        max_leaves=2,
    )


object_schemas = st.builds(
    lambda props, required, closed, draft: {
        **({"$schema": draft} if draft else {}),
        "type": "object",
        "properties": props,
        "required": sorted(set(required) & set(props)) or [],
        **({"additionalProperties": closed} if closed is not None else {}),
    },
    st.dictionaries(st.sampled_from(["a", "b", "c"]), _property_schemas(), max_size=3),
    st.lists(st.sampled_from(["a", "b", "c"]), max_size=3),
    st.sampled_from([None, True, False]),
    st.sampled_from(DRAFTS),
)


@settings(max_examples=1500, deadline=None)
@given(object_schemas, st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), json_values))
def test_fast_check_never_accepts_what_jsonschema_refuses(
    schema: dict[str, Any], arguments: dict[str, Any]
) -> None:
    if not schema["required"]:
        del schema["required"]  # draft 4 wants a non-empty list
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    cls.check_schema(schema)
    fast = _FastCheck.compile(schema, cls)
    assert fast is not None
    if fast.accepts(arguments):
        assert cls(schema).is_valid(arguments), (schema, arguments)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}}, "$defs": {"x": {}}},
        {"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}]}}},
        {"type": "object", "properties": {"a": {"exclusiveMinimum": 1}}},
        {"type": "object", "properties": {"a": {"type": "object", "properties": {}}}},
        {"type": "object", "patternProperties": {"^x": {"type": "string"}}},
        {"type": "object", "additionalProperties": {"type": "string"}},
        {"type": "object", "properties": {"a": {"enum": [1, 2]}}},
    ],
)
def test_anything_beyond_the_simple_subset_goes_to_jsonschema(schema: dict[str, Any]) -> None:
    assert _FastCheck.compile(schema, jsonschema.Draft202012Validator) is None


def test_errors_are_worded_by_jsonschema() -> None:
    tools = {
        "sleep": {
            "inputSchema": {
                "type": "object",
                "properties": {
                    "seconds": {"type": "number", "minimum": 0, "maximum": 3600},
                    "steps": {"type": "integer", "minimum": 1},
                },
                "required": ["seconds"],
            }
        }
    }
    validator = ArgumentValidator(tools)
    validator.validate("sleep", {"seconds": 1, "steps": 2})
    validator.validate("sleep", {"seconds": 1, "steps": 2.0})  # integral float: jsonschema's call
    with pytest.raises(InvalidArguments) as missing:
        validator.validate("sleep", {})
    assert missing.value.message == "arguments: 'seconds' is a required property"
    with pytest.raises(InvalidArguments) as bounds:
        validator.validate("sleep", {"seconds": -1})
    assert bounds.value.message == "arguments.seconds: -1 is less than the minimum of 0"
    with pytest.raises(InvalidArguments) as kind:
        validator.validate("sleep", {"seconds": True})
    assert kind.value.message == "arguments.seconds: True is not of type 'number'"
