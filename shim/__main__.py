"""`python -m shim`: the MCP stdio server a client launches; forwards to the daemon.

Start-up time matters (every editor window spawns one), so this imports neither
the mcp SDK nor aiohttp: only asyncio, json and the shim's own small modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Sequence

from exai.exits import ExitCode
from exai.loops import run_program
from exai.settings import SettingsError, ShimSettings, collect_environment, load_shim_settings
from shim.bridge import Bridge
from shim.signals import SIGNAL_CLOSE_S, SignalStop
from shim.stdio import LineReader, StdoutWriter

__all__ = ["main", "run"]

PARENT_POLL_S = 1.0
# How long it may take after stdin's end, when no one is waiting for us to exit.
EOF_CLOSE_S = 2.0


async def serve(settings: ShimSettings) -> int:
    """Serve the client on our stdio until it is gone and owed nothing more."""
    loop = asyncio.get_running_loop()
    writer = StdoutWriter(loop, sys.stdout.buffer)
    bridge = Bridge(settings, writer.write_line)
    reader = LineReader(
        loop,
        sys.stdin.buffer,
        bridge.handle_client_line,
        bridge.handle_stdin_eof,
        bridge.handle_oversize,
    )
    stop = SignalStop(loop, bridge.abandon)
    stop.install()
    await reader.start()
    connection = loop.create_task(bridge.run_connection())
    watchdog = loop.create_task(_watch_parent(bridge))
    try:
        await bridge.done.wait()
    finally:
        writer.flush()
        watchdog.cancel()
        # Give the connection a moment to close cleanly (code 1000 ends the session).
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(connection, SIGNAL_CLOSE_S if stop.signalled else EOF_CLOSE_S)
        stop.closed.set()
    return 0


async def _watch_parent(bridge: Bridge) -> None:
    """Exit when the client process dies even if it never closed our stdin."""
    original = os.getppid()
    while True:
        await asyncio.sleep(PARENT_POLL_S)
        if not parent_alive(original):
            logging.getLogger("shim").warning("client process is gone; exiting")
            bridge.abandon()
            return


def parent_alive(original_ppid: int) -> bool:
    """False once the process that started us is gone (we were re-parented)."""
    if sys.platform == "win32":
        return True
    return os.getppid() == original_ppid


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(
            "usage: python -m shim            an MCP stdio server for your client\n"
            "       python -m shim config --client NAME [--write [PATH]] [--autostart]\n"
            "                                 (`python -m shim config --help` lists the clients)"
        )
        return 0
    if args and args[0] == "config":
        from shim.clients import config_main

        return config_main(args[1:], collect_environment())
    logging.basicConfig(
        level=os.environ.get("EXAI_SHIM_LOG_LEVEL", "WARNING").upper(),
        stream=sys.stderr,
        format="exai-shim: %(levelname)s %(message)s",
    )
    try:
        settings = load_shim_settings(collect_environment())
    except SettingsError as exc:
        print(f"exai-shim: invalid setting: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    # uvloop halves the shim's CPU per call for ~10 ms more start-up.
    return run_program(serve(settings))


def run() -> None:
    """Console-script entry point (`exai-shim`)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
