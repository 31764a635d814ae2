"""From a client's request to a call: the tool exists, the arguments fit its schema,
and the call has its model and provider. Pure: no event loop.

Everything here can refuse the request with a typed error, before any capacity is
taken or any worker is involved.
"""

from __future__ import annotations

import msgspec

from broker.calls.catalog import Catalog
from broker.calls.routing import Route, resolve_route
from broker.calls.validation import parse_arguments
from exai.errors import InvalidArguments, ToolNotFound
from exai.models import ModelRegistry

__all__ = ["Intake"]


class _ModelArgument(msgspec.Struct):
    model: object = None


class _ModelParams(msgspec.Struct):
    arguments: _ModelArgument = msgspec.field(default_factory=_ModelArgument)


_MODEL_PARAMS = msgspec.json.Decoder(_ModelParams)

# Routes remembered per (tool, requested model); the model is the client's word, so
# the memo is bounded.
ROUTES_MAX = 4096


class Intake:
    """Checks requests against the catalog and routes them, remembering routes."""

    __slots__ = ("_default_model", "_registry", "_routes", "_routes_catalog")

    def __init__(self, default_model: str, registry: ModelRegistry) -> None:
        self._default_model = default_model
        self._registry = registry
        self._routes: dict[tuple[str, str | None], Route] = {}
        self._routes_catalog: Catalog | None = None

    def check(
        self, catalog: Catalog, tool: str, arguments: msgspec.Raw
    ) -> tuple[bytes, Route, str | None]:
        """(arguments as a JSON object, route, continuation_id) of a call to `tool`, or a
        BrokerError saying what is wrong with the request.

        A plain tuple: this runs for every call, and a tuple costs least to make.
        """
        if tool not in catalog.by_name:
            raise ToolNotFound(f"unknown tool {tool!r}", tool=tool)
        raw_args = bytes(arguments) if arguments else b"{}"
        args = parse_arguments(raw_args)
        model = args.get("model")
        continuation = args.get("continuation_id")
        if model is not None and not isinstance(model, str):
            raise InvalidArguments("arguments.model must be a string", path="model")
        route = self._route(catalog, tool, model)
        catalog.validator.validate(tool, args)
        return raw_args, route, continuation if isinstance(continuation, str) else None

    def provider_of(self, catalog: Catalog, tool: str, params: bytes | None) -> str | None:
        """The provider a hosted server's tools/call counts against: only for the tools
        the routing tags (EXAI_MODEL_TOOLS, `<provider>_*`), by their `model` argument.
        Raises InvalidArguments for a model that does not fit the tool."""
        route = self._route(catalog, tool, None)
        if route.provider is None and tool not in catalog.model_tools:
            return None
        try:
            model = _MODEL_PARAMS.decode(params or b"{}").arguments.model
        except msgspec.DecodeError:
            model = None
        return self._route(catalog, tool, model if isinstance(model, str) else None).provider

    def _route(self, catalog: Catalog, tool: str, model: str | None) -> Route:
        """resolve_route, remembered: it depends only on its arguments and the catalog."""
        if self._routes_catalog is not catalog:
            self._routes_catalog = catalog
            self._routes.clear()
        route = self._routes.get((tool, model))
        if route is None:
            route = resolve_route(
                tool,
                model,
                model_tools=catalog.model_tools,
                default_model=self._default_model,
                registry=self._registry,
            )
            if len(self._routes) >= ROUTES_MAX:
                self._routes.clear()
            self._routes[(tool, model)] = route
        return route
