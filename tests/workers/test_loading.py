"""Unit tests for what a worker hosts: `workers.__main__.load_server` picks the Ray
bridge or the tool server, `workers.host.load_tool_server` picks the kind of server.
Nothing is started: the servers are only built."""

from __future__ import annotations

import pytest

from exai.settings import load_settings
from workers.__main__ import load_server
from workers.builtin.tools import BuiltinTools
from workers.host import ModuleToolServer, load_tool_server
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


@pytest.mark.parametrize(
    "env",
    [
        {"EXAI_SERVER_CMD": "uvx mcp-server-time"},
        {"EXAI_SERVER": "tests.fixtures.sdk_servers:server"},
    ],
)
def test_what_the_daemon_hosts_is_never_loaded_by_a_worker(env: dict[str, str]) -> None:
    """Stdio commands and SDK server objects belong to the daemon (broker/hosting): a
    worker asked to load one refuses, instead of starting a second copy."""
    with pytest.raises(ValueError, match="hosted by the daemon"):
        load_tool_server(load_settings(env), {})


def test_load_tool_server_never_builds_a_ray_pool() -> None:
    """The Ray tool hosts load their server with it, so it must not recurse into Ray."""
    server = load_tool_server(load_settings({"EXAI_POOL": "ray"}), {})
    assert isinstance(server, BuiltinTools)
