"""Result shapes of the 2026-07-28 protocol, spliced onto results without re-encoding.

A 2026-07-28 client (no `initialize`; a `_meta` envelope on every request) validates
every result against that revision's schema: each carries `resultType`, and the
cacheable ones (lists, `resources/read`, `server/discover`) also `cacheScope` and
`ttlMs`. Handshake-era clients must not see these fields, so they are added at the
edge, per request, from the version that request declared. Pure.
"""

from __future__ import annotations

import msgspec

__all__ = ["CACHEABLE_METHODS", "ENVELOPE_KEYS", "stamp_result", "strip_envelope"]

# Methods whose 2026-07-28 result is a CacheableResult.
CACHEABLE_METHODS = frozenset(
    {
        "tools/list",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "prompts/list",
        "server/discover",
    }
)

# The `_meta` keys of the 2026-07-28 request envelope. A hosted server initialized in
# the handshake era refuses requests that carry them, so they stay at the edge.
ENVELOPE_KEYS = frozenset(
    {
        "io.modelcontextprotocol/protocolVersion",
        "io.modelcontextprotocol/clientCapabilities",
        "io.modelcontextprotocol/clientInfo",
        "io.modelcontextprotocol/logLevel",
    }
)
_RawDict = dict[str, msgspec.Raw]
_COMPLETE = b'"resultType":"complete"'
# The broker's lists change with its hosted servers and differ per daemon: a client
# may not cache them across requests or share them with another user.
_CACHE = b',"cacheScope":"private","ttlMs":0'


def stamp_result(result: bytes, method: str, server_info: bytes | None = None) -> bytes:
    """`result` (a JSON object) with the fields 2026-07-28 requires for `method`.

    The fields go first, so a value the result already carries (a hosted server's
    own `resultType`, say) comes later in the object and is the one a parser keeps.
    `server_info` (JSON) adds the `_meta` serverInfo stamp; only for results the
    broker builds itself, which have no `_meta` of their own.
    """
    stamp = _COMPLETE + _CACHE if method in CACHEABLE_METHODS else _COMPLETE
    if server_info is not None:
        stamp += b',"_meta":{"io.modelcontextprotocol/serverInfo":' + server_info + b"}"
    body = result.lstrip()
    if not body.startswith(b"{"):
        raise ValueError("a result must be a JSON object")
    rest = body[1:].lstrip()
    if rest.startswith(b"}"):
        return b"{" + stamp + rest
    return b"{" + stamp + b"," + rest


def strip_envelope(params: bytes) -> bytes:
    """`params` without the 2026-07-28 envelope keys in its `_meta` (and without a
    `_meta` left empty by that); every other byte of every other field kept."""
    fields = msgspec.json.decode(params, type=_RawDict)
    meta_raw = fields.get("_meta")
    if meta_raw is None:
        return params
    meta = msgspec.json.decode(meta_raw, type=_RawDict)
    kept = {k: v for k, v in meta.items() if k not in ENVELOPE_KEYS}
    if len(kept) == len(meta):
        return params
    if kept:
        fields["_meta"] = msgspec.Raw(msgspec.json.encode(kept))
    else:
        del fields["_meta"]
    return msgspec.json.encode(fields)
