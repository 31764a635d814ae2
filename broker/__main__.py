"""Command line: `python -m broker [--workers N] ...` runs the daemon."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import logging.handlers
import sys
from collections.abc import Sequence
from pathlib import Path

from broker.observe.files import SERVER_LOG
from exai import __version__
from exai.exits import ExitCode
from exai.loops import run_program
from exai.memory import return_big_frees
from exai.settings import (
    Settings,
    SettingsError,
    collect_environment,
    load_settings,
    ray_missing_message,
    read_token_file,
    valid_token,
)

__all__ = ["main", "run"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m broker",
        description="Run the exai-broker daemon: one shared MCP tool server for every client.",
    )
    parser.add_argument("--host", help="listen address (EXAI_WS_HOST, default 127.0.0.1)")
    parser.add_argument(
        "--port", help="listen port, 0 for any free one (EXAI_WS_PORT, default 8765)"
    )
    _add_token_flags(parser, "shared bearer token (EXAI_WS_TOKEN; default: auth off)")
    parser.add_argument("--workers", help="worker processes (EXAI_WORKERS, default 4)")
    parser.add_argument("--log-dir", help="folder for health, metrics and log (EXAI_LOG_DIR)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (EXAI_LOG_LEVEL)")
    parser.add_argument("--log-format", help="text or json (EXAI_LOG_FORMAT)")
    parser.add_argument("--server", help="tool server module to host (EXAI_SERVER)")
    parser.add_argument(
        "--server-cmd",
        help="run this stdio MCP server in every worker and share it (EXAI_SERVER_CMD), "
        'e.g. "uvx mcp-server-time"',
    )
    parser.add_argument(
        "--config",
        help="the servers file to host, in the mcpServers format of Claude Desktop, Cursor "
        "and Claude Code (EXAI_CONFIG; default: servers.json in the user's config folder, "
        "if it exists, see `status`)",
    )
    parser.add_argument(
        "--isolation",
        help="shared (one hosted server per worker) or session (one per client session)",
    )
    parser.add_argument(
        "--max-calls-per-worker",
        help="recycle a worker after about this many calls, draining it first (0 = never)",
    )
    parser.add_argument(
        "--pool",
        help="where the workers run: local (processes here, default), ray (a private "
        "Ray cluster on 127.0.0.1) or ray:ADDRESS (join a Ray cluster) (EXAI_POOL)",
    )
    parser.add_argument("--env-file", help="read settings from this .env file (default ./.env)")
    parser.add_argument("--version", action="version", version=f"exai-broker {__version__}")
    return parser


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        import orjson

        entry = {
            "t": record.created,
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure_logging(settings: Settings) -> None:
    log_dir = Path(settings.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    fmt: logging.Formatter = (
        JsonFormatter()
        if settings.log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    file_handler = logging.handlers.RotatingFileHandler(
        log_dir / SERVER_LOG,
        maxBytes=settings.log_max_bytes,
        backupCount=settings.log_backups,
        encoding="utf-8",
        # Log lines quote what clients sent, which may hold lone surrogates (a header
        # that is not UTF-8): escaped, never a logging error.
        errors="backslashreplace",
    )
    file_handler.setFormatter(fmt)
    root = logging.getLogger()
    root.handlers[:] = [console, file_handler]
    root.setLevel(settings.log_level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(_bad_request_in_one_line)


def _bad_request_in_one_line(record: logging.LogRecord) -> bool:
    """aiohttp logs every malformed request at ERROR with a traceback, so any local
    client could fill the log with them: such a request is one INFO line."""
    from aiohttp.http_exceptions import HttpProcessingError

    exc = record.exc_info[1] if record.exc_info else None
    if not isinstance(exc, HttpProcessingError):
        return True
    what = " ".join(str(exc).split())[:300]
    record.msg, record.args = f"{record.getMessage()}: {what}", None
    record.exc_info = record.exc_text = None
    record.levelno, record.levelname = logging.INFO, "INFO"
    return logging.getLogger().isEnabledFor(logging.INFO)


# A secret given as a flag's value is in /proc/PID/cmdline, readable by every local user.
_ON_ARGV = "; visible in the process list, prefer"


def _add_token_flags(
    parser: argparse.ArgumentParser, what: str, flag: str = "--token", env: bool = True
) -> None:
    """`flag` (kept for scripts) and `flag`-file, which keeps the secret off argv."""
    instead = f"EXAI_WS_TOKEN or {flag}-file" if env else f"{flag}-file"
    group = parser.add_mutually_exclusive_group()
    group.add_argument(flag, help=f"{what}{_ON_ARGV} {instead}")
    group.add_argument(
        f"{flag}-file",
        metavar="PATH",
        help="the same, read from this file ('-': one line of standard input)",
    )


def _secret(args: argparse.Namespace, name: str) -> str | None:
    """The secret given by --NAME or --NAME-file, or None when neither was."""
    path = getattr(args, f"{name}_file")
    if path is not None:
        return read_token_file(path, f"--{name}-file")
    value: str | None = getattr(args, name)
    return value


def _new_token_from_stdin() -> str:
    """The new token when no flag gives it: typed without echo, or one piped line."""
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass("new token: ").strip()
    return read_token_file("-", "--new")


def _admin_parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m broker {command}")
    parser.add_argument("--host", help="daemon address (EXAI_WS_HOST)")
    parser.add_argument("--port", help="daemon port (EXAI_WS_PORT)")
    if command == "rotate-token":
        _add_token_flags(parser, "the token in force now (default: EXAI_WS_TOKEN)", "--old")
        _add_token_flags(
            parser, "the token to use from now on (default: standard input)", "--new", env=False
        )
    else:
        _add_token_flags(parser, "current token (EXAI_WS_TOKEN)")
    parser.add_argument("--log-dir", help="where the health file is (EXAI_LOG_DIR)")
    parser.add_argument("--env-file", help="read settings from this .env file")
    return parser


def admin_main(command: str, argv: Sequence[str]) -> int:
    """`status` and `rotate-token`: talk to a running daemon."""
    from broker.admin import commands as admin

    args = _admin_parser(command).parse_args(argv)
    new = ""
    try:
        cli = {k: v for k, v in vars(args).items() if k in ("host", "port", "log_dir")}
        if command == "rotate-token":
            new_from_stdin = args.new_file == "-" or (args.new_file is None and args.new is None)
            if args.old_file == "-" and new_from_stdin:
                raise SettingsError("--old-file -: standard input carries the new token")
            cli["token"] = _secret(args, "old")
            given = _secret(args, "new")
            new = _new_token_from_stdin() if given is None else given
            if not new:
                raise SettingsError("the new token is empty")
            if not valid_token(new):
                raise SettingsError(
                    "the new token: expected printable ASCII characters, without whitespace"
                )
        else:
            cli["token"] = _secret(args, "token")
        settings = load_settings(collect_environment(args.env_file), cli)
    except SettingsError as exc:
        print(f"exai-broker: invalid setting: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    if command == "status":
        snapshot, source = asyncio.run(admin.read_status(settings))
        text, code = admin.format_status(snapshot, source)
        print(text)
        return code
    ok, message = asyncio.run(admin.rotate_token(settings, settings.token, new))
    print(message, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


ADMIN_COMMANDS = ("status", "rotate-token")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ADMIN_COMMANDS:
        return admin_main(argv[0], argv[1:])
    if argv and argv[0] == "import":
        from broker.fleet.importer import import_main

        return import_main(argv[1:])
    if argv and argv[0] == "report":
        from broker.admin.report import report_main

        try:
            log_dir = load_settings(collect_environment()).log_dir
        except SettingsError:
            log_dir = "logs"
        return report_main(argv[1:], log_dir)
    args = build_parser().parse_args(argv)
    try:
        environ = collect_environment(args.env_file)
        cli = vars(args)
        cli["token"] = _secret(args, "token")
        settings = load_settings(environ, cli)
    except SettingsError as exc:
        print(f"exai-broker: invalid setting: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    if settings.pool != "local" and importlib.util.find_spec("ray") is None:
        print(f"exai-broker: {ray_missing_message(settings.pool)}", file=sys.stderr)
        return ExitCode.USAGE
    configure_logging(settings)
    # The daemon lives for days and passes large frames: what a burst takes goes back.
    return_big_frees()
    from broker.daemon import serve

    return run_program(serve(settings, environ))


def run() -> None:
    """Console-script entry point (`exai-broker`)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
