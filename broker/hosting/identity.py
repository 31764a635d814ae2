"""What the daemon says it is at `initialize` / `server/discover`, from what it hosts. Pure.

Hosting one server, the daemon presents that server: its capabilities, serverInfo
and instructions, so a client sees what it would see talking to it directly.
Hosting several (or the built-in tools beside them), it presents itself, with the
union of their capabilities: a feature appears when at least one server has it, and
`listChanged` is on wherever the daemon merges lists, since it announces every change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["Presented", "present"]

Presented = tuple[dict[str, Any], dict[str, Any], str | None]

# Capabilities the daemon relays feature by feature; anything else a server
# advertises (experimental, extensions) is passed on only when it is the only server.
_MERGED = ("tools", "resources", "prompts", "logging", "completions")


def present(
    hosted: Sequence[tuple[str, Mapping[str, Any], Mapping[str, Any], str | None]],
    own_info: Mapping[str, Any],
    *,
    own_tools: bool,
) -> Presented:
    """(capabilities, serverInfo, instructions) for a client.

    `hosted` holds (name, capabilities, serverInfo, instructions) per hosted server;
    `own_tools` says whether the daemon serves tools of its own beside them.
    """
    if len(hosted) == 1 and not own_tools:
        _, capabilities, info, instructions = hosted[0]
        return dict(capabilities), dict(info), instructions
    merged: dict[str, Any] = {}
    if own_tools:
        merged["tools"] = {"listChanged": len(hosted) > 0}
    for _, capabilities, _, _ in hosted:
        for feature in _MERGED:
            offered = capabilities.get(feature)
            if offered is None:
                continue
            mine = merged.setdefault(feature, {})
            if feature in ("tools", "resources", "prompts"):
                mine["listChanged"] = True
            if feature == "resources" and offered.get("subscribe"):
                mine["subscribe"] = True
    parts = [f"{name}: {text}" for name, _, _, text in hosted if text]
    return merged, dict(own_info), "\n\n".join(parts) if parts else None
