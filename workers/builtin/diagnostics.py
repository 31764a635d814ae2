"""Diagnostic tools for tests and benchmarks, listed only with EXAI_DIAGNOSTIC_TOOLS=1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from workers.toolserver import ToolContext

__all__ = ["HANDLERS", "TOOLS"]

_READ_ONLY = {"readOnlyHint": True, "idempotentHint": True, "openWorldHint": False}

TOOLS: list[dict[str, Any]] = [
    {
        "name": "echo",
        "description": "Return the given text unchanged.",
        "inputSchema": {
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        },
        "annotations": _READ_ONLY,
    },
    {
        "name": "sleep",
        "description": "Wait the given number of seconds, reporting progress at each step.",
        "inputSchema": {
            "type": "object",
            "properties": {
                "seconds": {"type": "number", "minimum": 0, "maximum": 3600},
                "steps": {"type": "integer", "minimum": 1, "maximum": 1000},
            },
            "required": ["seconds"],
        },
        "annotations": _READ_ONLY,
    },
    {
        "name": "cpu",
        "description": "Burn CPU for the given number of milliseconds (scaling checks).",
        "inputSchema": {
            "type": "object",
            "properties": {"ms": {"type": "number", "minimum": 0, "maximum": 60000}},
            "required": ["ms"],
        },
        "annotations": _READ_ONLY,
    },
    {
        "name": "fail",
        "description": "Raise an error with the given message (error-path checks).",
        "inputSchema": {
            "type": "object",
            "properties": {"message": {"type": "string"}},
        },
        "annotations": _READ_ONLY,
    },
]


async def echo(arguments: dict[str, Any], ctx: ToolContext) -> Any:
    text = arguments.get("text", "")
    return {"content": [{"type": "text", "text": str(text)}], "isError": False}


async def sleep(arguments: dict[str, Any], ctx: ToolContext) -> Any:
    seconds = float(arguments.get("seconds", 0))
    steps = int(arguments.get("steps") or max(1, min(100, round(seconds * 10))))
    for step in range(1, steps + 1):
        await asyncio.sleep(seconds / steps)
        await ctx.report_progress(step, steps, f"step {step}/{steps}")
    return {"content": [{"type": "text", "text": f"slept {seconds:g}"}], "isError": False}


async def cpu(arguments: dict[str, Any], ctx: ToolContext) -> Any:
    budget_s = float(arguments.get("ms", 0)) / 1000.0
    start = time.process_time()
    spins = 0
    # Deliberately blocks the worker's loop: this tool measures process parallelism.
    while time.process_time() - start < budget_s:
        spins += sum(i * i for i in range(200))
    return {
        "content": [{"type": "text", "text": f"burned {budget_s * 1000:.0f} ms"}],
        "isError": False,
    }


async def fail(arguments: dict[str, Any], ctx: ToolContext) -> Any:
    raise RuntimeError(str(arguments.get("message") or "requested failure"))


HANDLERS: dict[str, Callable[[dict[str, Any], ToolContext], Awaitable[Any]]] = {
    "echo": echo,
    "sleep": sleep,
    "cpu": cpu,
    "fail": fail,
}
