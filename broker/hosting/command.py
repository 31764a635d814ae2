"""A `--server-cmd` command line: its argv, its name, and the environment it gets. Pure.

The command is split like a shell would (POSIX rules; Windows rules on Windows, where
backslashes are path separators), and its program is looked up on PATH here, because
on Windows `npx` and friends are `.cmd` files that process creation does not find by
themselves.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from collections.abc import Mapping
from pathlib import PurePath
from typing import NamedTuple, Protocol

__all__ = [
    "HostedCommand",
    "command_argv",
    "command_argv_of",
    "hosted_command",
    "server_environment",
    "server_label",
]

_WINDOWS = sys.platform == "win32"
# Runners whose first argument that is not an option names the server itself.
_RUNNERS = frozenset({"npx", "uvx", "pipx", "bunx", "python", "python3", "node", "uv", "deno"})


class _Runnable(Protocol):
    @property
    def command(self) -> tuple[str, ...] | None: ...


class HostedCommand(NamedTuple):
    label: str
    argv: list[str]


# Serves an SDK server object (`--server module:attr`) on stdio; run by module name,
# so the daemon never imports the workers' code.
OBJECT_SERVER_MODULE = "workers.object_server"


def hosted_command(server_cmd: str, server: str) -> HostedCommand | None:
    """The stdio server the daemon hosts: a `--server-cmd` command, or an SDK server
    object (`--server module:attr`) served by its own process; None when the workers
    serve the tools (built-ins, or a `--server module` of plain functions)."""
    if server_cmd:
        argv = command_argv(server_cmd)
        return HostedCommand(server_label(argv), argv)
    if ":" in server:
        return HostedCommand(server, [sys.executable, "-m", OBJECT_SERVER_MODULE, server])
    return None


def command_argv(command: str) -> list[str]:
    """The argv of `command`; raises ValueError for an empty command."""
    argv = _split(command)
    if not argv:
        raise ValueError("--server-cmd is empty")
    found = shutil.which(argv[0])
    if found is not None:
        argv[0] = found
    return argv


def command_argv_of(spec: _Runnable) -> list[str]:
    """The argv of a servers-file entry, its program looked up on PATH as above."""
    assert spec.command, "a remote server has no command"
    argv = list(spec.command)
    found = shutil.which(argv[0])
    if found is not None:
        argv[0] = found
    return argv


def server_label(argv: list[str]) -> str:
    """A short name for logs and health: the server's package or script, not its runner."""
    program = PurePath(argv[0]).stem
    if program.startswith("python") or program in _RUNNERS:
        rest = iter(argv[1:])
        for arg in rest:
            if arg == "-m":
                return next(rest, program)
            if not arg.startswith("-"):
                return PurePath(arg).stem if "/" in arg or "\\" in arg else arg
    return program


def server_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """What the hosted server runs with: the daemon's environment (its API keys live
    there), minus the daemon's token, which it has no business seeing."""
    return {k: v for k, v in environ.items() if k != "EXAI_WS_TOKEN"}


def _split(command: str) -> list[str]:
    if not _WINDOWS:
        return shlex.split(command)
    # shlex's POSIX rules would eat the backslashes of Windows paths.
    return [part.strip('"') for part in shlex.split(command, posix=False)]
