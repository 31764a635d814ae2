"""Which servers file the daemon runs, if any.

`--config PATH` (or EXAI_CONFIG) names one, which must then exist. Without it, a
`--server` or `--server-cmd` is the daemon's one server; and with neither, the
servers file at the default location is used when there is one, so that after an
`import` a plain `python -m broker` serves what the user's clients had.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from broker.fleet.config import ConfigError, ServersConfig, default_config_path, load_servers
from exai.settings import Settings

__all__ = ["servers_file", "servers_path"]

log = logging.getLogger(__name__)


def servers_path(settings: Settings, environ: Mapping[str, str]) -> Path | None:
    """The servers file to run, or None for no servers file. Raises ConfigError when a
    one-server option is given beside it (one of them would be ignored)."""
    if settings.config:
        if settings.server_cmd or ":" in settings.server:
            raise ConfigError(
                "--config hosts the servers of a file; --server-cmd and --server module:attr "
                "host one server instead: give one or the other (put that server in the "
                "servers file to run both)"
            )
        return Path(settings.config).expanduser()
    if settings.server_cmd or settings.server:
        return None
    default = default_config_path(environ)
    return default if default.is_file() else None


def servers_file(
    settings: Settings, environ: Mapping[str, str]
) -> tuple[Path, ServersConfig] | None:
    """The servers file and what it says; raises ConfigError naming what is wrong."""
    path = servers_path(settings, environ)
    if path is None:
        return None
    config = load_servers(path, environ=environ)
    for note in config.notes:
        log.warning("%s", note)
    return path, config
