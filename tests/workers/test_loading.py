"""Unit tests for what a worker hosts: `workers.__main__.load_server` picks the Ray
bridge or the tool server, `workers.host.load_tool_server` picks the kind of server.
Nothing is started: the servers are only built."""

from __future__ import annotations

import pytest

from exai.settings import Isolation, load_settings
from workers.__main__ import load_server
from workers.builtin.tools import BuiltinTools
from workers.host import ModuleToolServer, load_tool_server
from workers.mcp_host import ClientToolServer
from workers.ray_pool import RayToolPool


def test_no_server_hosts_the_builtin_tools() -> None:
    assert isinstance(load_server(load_settings({}), {}), BuiltinTools)


def test_a_module_server_is_hosted_as_a_module() -> None:
    settings = load_settings({"EXAI_SERVER": "tests.fixtures.counting_tools"})
    server = load_server(settings, {})
    assert isinstance(server, ModuleToolServer)
    assert server.name == "tests.fixtures.counting_tools"


def test_a_module_that_does_not_exist_fails_to_load_naming_it() -> None:
    """The worker's main turns this into WORKER_LOAD_FAILED before Ready."""
    settings = load_settings({"EXAI_SERVER": "no_such_module_xyz"})
    with pytest.raises(ModuleNotFoundError, match="no_such_module_xyz"):
        load_server(settings, {})


@pytest.mark.parametrize("pool", ["ray", "ray:10.0.0.5:6379"])
def test_a_ray_pool_makes_the_worker_its_bridge(pool: str) -> None:
    """With --pool ray the worker hosts the bridge; the actors load the real server."""
    settings = load_settings({"EXAI_POOL": pool})
    server = load_server(settings, {"EXAI_POOL": pool})
    assert isinstance(server, RayToolPool)
    assert server._address == settings.pool_address
    assert server._actor_env["EXAI_POOL"] == "local"


def test_a_server_command_is_hosted_in_the_worker_whatever_the_pool() -> None:
    settings = load_settings(
        {"EXAI_POOL": "ray", "EXAI_SERVER_CMD": "uvx mcp-server-time", "EXAI_ISOLATION": "session"}
    )
    server = load_server(settings, {"EXAI_WS_TOKEN": "secret"})
    assert isinstance(server, ClientToolServer)
    assert server.name == "uvx"
    assert server._isolation is Isolation.SESSION


def test_load_tool_server_never_builds_a_ray_pool() -> None:
    """The Ray tool hosts load their server with it, so it must not recurse into Ray."""
    server = load_tool_server(load_settings({"EXAI_POOL": "ray"}), {})
    assert isinstance(server, BuiltinTools)


def test_client_tool_server_takes_the_isolation_as_its_string_too() -> None:
    server = ClientToolServer("x", lambda: None, isolation="session")  # type: ignore[arg-type]
    assert server._isolation is Isolation.SESSION
