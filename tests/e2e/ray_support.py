"""Ray clusters for the `--pool ray` tests, kept inside an isolated network namespace.

Ray's start-up looks for cloud metadata services and may report usage; these tests
therefore run only where the network has nothing but loopback (`make test-ray` runs
them under `unshare -n`), with usage stats off and a bootstrap config naming a local
provider in the home Ray sees. Every process of a node carries a tag of its own, so a
test can kill one whole node, and teardown leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import base_env, free_port, scaled, wait_for
from tests.support.processes import group_pids, kill_and_reap, tagged_pids

__all__ = [
    "RayNode",
    "isolated_network",
    "ray_env",
    "ray_home",
    "require_isolated_ray",
    "started_cluster",
]

BOOTSTRAP_CONFIG = "provider:\n  type: local\n"
RAY_CLI = str(Path(sys.executable).with_name("ray"))


def isolated_network() -> bool:
    """True inside a network namespace whose only interface is loopback."""
    try:
        return [name for _, name in socket.if_nameindex()] == ["lo"]
    except OSError:
        return False


def require_isolated_ray() -> None:
    """Skip the calling module unless Ray is installed and the network is loopback only."""
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install '.[ray]')")
    if not isolated_network():
        pytest.skip(
            "Ray tests run only in a loopback-only network namespace: use `make test-ray`",
            allow_module_level=True,
        )


def ray_home(root: Path) -> Path:
    home = root / "ray-home"
    home.mkdir(exist_ok=True)
    (home / "ray_bootstrap_config.yaml").write_text(BOOTSTRAP_CONFIG)
    return home


def ray_env(home: Path, **extra: str) -> dict[str, str]:
    """Environment for a Ray node or a broker joining one: tagged, quiet, local-only."""
    return base_env(HOME=str(home), RAY_USAGE_STATS_ENABLED="0", **extra)


@dataclass
class RayNode:
    """One `ray start` node. Its processes share a process group, except the actors'
    workers, which start sessions of their own but carry the node's tag; Ray rewrites
    some processes' environment (their title), so neither way alone finds them all."""

    ip: str
    tag: str
    pgid: int

    def pids(self) -> list[int]:
        return sorted(set(tagged_pids(self.tag)) | set(group_pids(self.pgid)))

    def kill(self) -> None:
        """kill -9 every process of this node, as a machine dying would."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signal.SIGKILL)
        kill_and_reap(self.pids())


def _start_node(home: Path, ip: str, args: list[str]) -> RayNode:
    tag_value = uuid.uuid4().hex
    env = ray_env(home, EXAI_TEST_RAY_NODE=tag_value)
    argv = [
        RAY_CLI,
        "start",
        f"--node-ip-address={ip}",
        "--num-cpus=2",
        "--disable-usage-stats",
        *args,
    ]
    # A session of its own: every process `ray start` leaves behind is in its group.
    proc = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    node = RayNode(ip, f"EXAI_TEST_RAY_NODE={tag_value}", proc.pid)
    try:
        output, _ = proc.communicate(timeout=scaled(120))
    except subprocess.TimeoutExpired:
        node.kill()
        proc.wait()
        raise
    if proc.returncode != 0:
        node.kill()
        raise AssertionError(f"ray start failed ({proc.returncode}):\n{output[-3000:]}")
    return node


@contextlib.contextmanager
def started_cluster(root: Path, extra_nodes: int = 0) -> Iterator[tuple[str, list[RayNode]]]:
    """A head on 127.0.0.1 and `extra_nodes` more nodes on 127.0.0.2, 127.0.0.3, ...

    Yields the address to join (`ray:ADDRESS`) and the nodes, head first.
    """
    home = ray_home(root)
    port = free_port()
    nodes: list[RayNode] = []
    try:
        nodes.append(
            _start_node(
                home, "127.0.0.1", ["--head", f"--port={port}", "--include-dashboard=false"]
            )
        )
        address = f"127.0.0.1:{port}"
        for i in range(extra_nodes):
            nodes.append(_start_node(home, f"127.0.0.{i + 2}", [f"--address={address}"]))
        yield address, nodes
    finally:
        for node in reversed(nodes):
            node.kill()
        wait_for(lambda: all(not n.pids() for n in nodes), 30.0, "the ray nodes to exit")
