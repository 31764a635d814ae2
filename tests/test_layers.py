"""The layers, enforced: who may import whom, and no import cycles.

exai/ is the wire vocabulary (errors, IPC, settings, models, addresses, exit codes)
and imports none of the roles. workers/ and shim/ import only exai/ (never broker/);
broker/ never imports workers/, and imports shim/ only for what the shim writes into
clients' configuration files (the `import --rewrite-client` command puts its entry
there). The shim is spawned by every editor window, so it also stays clear of the
heavy libraries. Every import counts, including the ones a function makes lazily.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("exai", "broker", "workers", "shim")
# Which of our packages each package may import (besides itself).
ALLOWED = {
    "exai": set(),
    "broker": {"exai"},
    "workers": {"exai"},
    "shim": {"exai"},
}
# The one module of broker/ that may use shim/: the client configuration files.
SHIM_USERS = frozenset({"broker.fleet.importer"})
SHIM_FORBIDDEN = ("mcp", "mcp_types", "aiohttp", "pydantic", "jsonschema")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def imported(path: Path, name: str) -> Iterator[str]:
    """Every module `path` imports, anywhere in the file, relative imports resolved."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            # `from pkg import mod` imports pkg.mod when mod is a module.
            yield from (f"{base}.{alias.name}" for alias in node.names)


MODULES = modules()


def edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        graph[name] = {target for target in imported(path, name) if target in MODULES}
    return graph


GRAPH = edges()


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_what_their_layer_allows(package: str) -> None:
    bad = []
    for name, path in MODULES.items():
        if name.split(".")[0] != package:
            continue
        for target in imported(path, name):
            top = target.split(".")[0]
            if name in SHIM_USERS and top == "shim":
                continue
            if top in PACKAGES and top != package and top not in ALLOWED[package]:
                bad.append(f"{name} imports {target}")
    assert not bad, "\n".join(bad)


def test_the_shim_never_imports_heavy_libraries() -> None:
    bad = [
        f"{name} imports {target}"
        for name, path in MODULES.items()
        if name.split(".")[0] == "shim"
        for target in imported(path, name)
        if target.split(".")[0] in SHIM_FORBIDDEN
    ]
    assert not bad, "\n".join(bad)


def test_no_import_cycles() -> None:
    """A module graph with no cycle (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH[node]:
            # A package's __init__ importing its own submodules is not a cycle of logic.
            if target.startswith(node + "."):
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_walker_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The checks above can fail: a lazy import inside a function is found."""
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from broker.calls import manager\n    import workers.host\n")
    found = set(imported(source, "shim.mod"))
    assert {"broker.calls", "broker.calls.manager", "workers.host"} <= found
