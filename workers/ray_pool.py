"""`--pool ray`: the worker pool as Ray actors, driven from one bridge process.

The bridge is an ordinary worker process (`python -m workers`, same msgpack IPC) whose
tool server is this pool, so the broker, its scheduler and its supervisor do not know
Ray exists: a Ray failure can only kill the bridge, and the supervisor restarts it.

- `ray` starts a private cluster on 127.0.0.1 that lives and dies with the bridge.
- `ray:ADDRESS` joins an existing cluster; provider calls then also lease a slot from
  one ledger actor shared by every broker on that cluster.

Each of the `--workers` ToolHost actors hosts the tool server, spread over the nodes.
Calls go to the least busy live host; a conversation (`continuation_id`), or a session
under `--isolation session`, sticks to one host, whose memory holds its state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from exai.errors import ErrorCode
from exai.models import ModelRegistry
from exai.settings import Isolation, Settings, ray_missing_message
from exai.sticky import StickyMap
from workers.ray_actors import LEDGER_NAME, NAMESPACE, ProviderLedger, ToolHost
from workers.ray_processes import RayProcesses
from workers.toolserver import HostedError, ToolContext

__all__ = ["RayToolPool"]

log = logging.getLogger("workers.ray")

DESCRIBE_TIMEOUT_S = 120.0
PROBE_TIMEOUT_S = 10.0
# How long a lost host may take to come back before it is replaced by a new one.
REPLACE_AFTER_S = 30.0
RECOVER_BACKOFF_MAX_S = 5.0
# Ray's minimum; the pool passes arguments and results, not data sets.
PRIVATE_OBJECT_STORE_BYTES = 128 * 1024 * 1024
# Ray probes cloud metadata services at start-up unless its head's home has a
# bootstrap config naming a local provider; a private cluster gets its own home.
BOOTSTRAP_CONFIG = "provider:\n  type: local\n"


def _check_reachable(address: str) -> None:
    """Fail fast, naming the address, when nothing listens there: ray.init would retry
    for a minute and then report a timeout."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto", a ray:// client address: let Ray resolve it
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5.0).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise RuntimeError(f"cannot reach the Ray cluster at {address}: {reason}") from None


def _outcome(event: tuple[Any, ...]) -> Any:
    """The CallToolResult of a result event; a typed error for an error event."""
    if event[0] == "result":
        return event[1]
    raise HostedError(ErrorCode(event[1]), event[2], event[3])


class _Host:
    __slots__ = ("actor", "calls", "describe", "index", "live", "recovering")

    def __init__(self, index: int, actor: Any) -> None:
        self.index = index
        self.actor = actor
        self.calls = 0
        self.live = False
        self.recovering = False
        self.describe: dict[str, Any] = {}


class RayToolPool:
    """A ToolServer whose calls run in ToolHost actors on a Ray cluster."""

    def __init__(self, settings: Settings, environ: Mapping[str, str]) -> None:
        self.name = "ray"
        self.tools: list[dict[str, Any]] = []
        self.model_tools: frozenset[str] = frozenset()
        self._settings = settings
        # The actors host the real tool server, so they must not see the pool setting.
        self._actor_env = {**environ, "EXAI_POOL": "local"}
        self._address = settings.pool_address
        self._hosts: list[_Host] = []
        self._sticky = StickyMap()
        self._turn = 0
        self._any_live: asyncio.Event | None = None
        self._registry = ModelRegistry()
        self._holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._ledger: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._ray: Any = None
        self._host_cls: Any = None

    # --- start and stop --------------------------------------------------------------

    async def start(self) -> None:
        try:
            import ray
        except ImportError:
            raise RuntimeError(ray_missing_message(self._settings.pool)) from None
        self._ray = ray
        self._any_live = asyncio.Event()
        self._connect()
        self._host_cls = ray.remote(ToolHost)
        self._hosts = [
            _Host(i, self._new_actor(strategy)) for i, strategy in enumerate(self._placements())
        ]
        described = await asyncio.wait_for(
            asyncio.gather(*(h.actor.describe.remote() for h in self._hosts)), DESCRIBE_TIMEOUT_S
        )
        for host, info in zip(self._hosts, described, strict=True):
            host.describe = info
            host.live = True
        self._any_live.set()
        first = described[0]
        self.tools = list(first["tools"])
        self.model_tools = frozenset(first["model_tools"])
        nodes = len({d["node"] for d in described})
        self.name = f"{first['name']} on ray ({len(self._hosts)} hosts, {nodes} node(s))"
        log.info("ray pool ready: %s", self.name)
        if self._address is not None:
            self._ledger = (
                ray.remote(ProviderLedger)
                .options(
                    name=LEDGER_NAME,
                    namespace=NAMESPACE,
                    lifetime="detached",
                    get_if_exists=True,
                    num_cpus=0,
                    max_restarts=-1,
                )
                .remote()
            )
            await self._ledger.renew.remote(self._holder, self._settings.ray_lease_ttl_s)
            self._spawn(self._renew_leases())

    def _new_actor(self, strategy: Any) -> Any:
        return self._host_cls.options(
            max_restarts=-1,
            # A retried call would run twice; a lost call is answered WORKER_LOST instead.
            max_task_retries=0,
            max_concurrency=max(64, self._settings.global_max_inflight * 2),
            num_cpus=self._settings.ray_actor_cpus,
            scheduling_strategy=strategy,
            namespace=NAMESPACE,
        ).remote(self._actor_env)

    def _placements(self) -> list[Any]:
        """One scheduling strategy per host: round-robin over the live nodes.

        Ray's SPREAD, and even a soft node affinity, may put every host on one node; a
        hard affinity does not. A host whose node dies is replaced (see `_recover`).
        """
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = sorted(n["NodeID"] for n in self._ray.nodes() if n.get("Alive"))
        if not nodes:
            return ["SPREAD"] * self._settings.workers
        return [
            NodeAffinitySchedulingStrategy(nodes[i % len(nodes)], soft=False)
            for i in range(self._settings.workers)
        ]

    def _connect(self) -> None:
        ray = self._ray
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        common: dict[str, Any] = {
            "namespace": NAMESPACE,
            "logging_level": logging.WARNING,
            "log_to_driver": True,
        }
        if self._address is not None:
            _check_reachable(self._address)
            ray.init(address=self._address, **common)
            return
        # Ray's processes inherit this home; the actors get the real one back with
        # their environment.
        home = Path(self._settings.log_dir).resolve() / "ray-home"
        home.mkdir(parents=True, exist_ok=True)
        (home / "ray_bootstrap_config.yaml").write_text(BOOTSTRAP_CONFIG)
        os.environ["HOME"] = str(home)
        ray.init(
            address="local",
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            object_store_memory=PRIVATE_OBJECT_STORE_BYTES,
            num_cpus=max(os.cpu_count() or 1, self._settings.workers),
            **common,
        )

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._ray is None:
            return
        if self._ledger is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ledger.drop_holder.remote(self._holder), 2.0)
        closing = [h.actor.close.remote() for h in self._hosts if h.live]
        if closing:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*closing, return_exceptions=True), 5.0)
        # Our actors are not detached: they go with the driver, and a private cluster
        # with them.
        self._ray.shutdown()

    def process_host(self, send: Callable[[Any], None]) -> RayProcesses:
        """The daemon's server processes, each in an actor on this node."""
        assert self._ray is not None, "start() first"
        return RayProcesses(self._ray, send)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- calls -----------------------------------------------------------------------

    async def call(self, name: str, arguments: dict[str, Any], ctx: ToolContext) -> Any:
        host = await self._pick(arguments, ctx.session_id)
        lease = await self._lease(ctx.model)
        remote: Any = None
        host.calls += 1
        try:
            if ctx.wants_progress:
                remote = host.actor.run.remote(
                    name, arguments, ctx.session_id, ctx.model, ctx.call_id, True
                )
                async for ref in remote:
                    event = await ref
                    if event[0] != "progress":
                        return _outcome(event)
                    await ctx.report_progress(event[1], event[2], event[3])
                raise HostedError(ErrorCode.WORKER_LOST, "the tool host ended the call early")
            remote = host.actor.call.remote(name, arguments, ctx.session_id, ctx.model, ctx.call_id)
            return _outcome(await remote)
        except asyncio.CancelledError:
            # Dropping the reference would leave the remote coroutine running.
            if remote is not None:
                self._ray.cancel(remote)
            raise
        except self._ray.exceptions.RayError as exc:
            raise self._lost(host, exc) from None
        finally:
            host.calls -= 1
            if lease is not None:
                self._ledger.release.remote(lease)

    async def session_ended(self, session_id: str) -> None:
        for host in self._hosts:
            if host.live:
                host.actor.session_ended.remote(session_id)

    async def _pick(self, arguments: Mapping[str, Any], session_id: str) -> _Host:
        continuation = arguments.get("continuation_id")
        key = (
            f"session:{session_id}"
            if self._settings.isolation == Isolation.SESSION
            else continuation
            if isinstance(continuation, str)
            else None
        )
        while True:
            if key is not None:
                index = self._sticky.get(key)
                if index is not None and self._hosts[index].live:
                    return self._hosts[index]
            # Rotate the starting point so idle hosts take turns instead of host 0
            # taking every call of a quiet pool.
            self._turn = (self._turn + 1) % len(self._hosts)
            order = self._hosts[self._turn :] + self._hosts[: self._turn]
            live = [h for h in order if h.live]
            if live:
                best = min(live, key=lambda h: h.calls)
                if key is not None:
                    self._sticky.place(key, best.index)
                return best
            # Every host is being restarted: wait (the broker's deadline still holds).
            assert self._any_live is not None
            self._any_live.clear()
            await self._any_live.wait()

    def _lost(self, host: _Host, exc: BaseException) -> HostedError:
        """Map a Ray failure to WORKER_LOST and take the host out until it answers again."""
        actor_gone = isinstance(
            exc,
            (self._ray.exceptions.RayActorError, self._ray.exceptions.ActorUnavailableError),
        )
        if actor_gone and host.live:
            log.warning("tool host %d (pid %s) lost: %s", host.index, host.describe.get("pid"), exc)
            host.live = False
        if not host.live and not host.recovering:
            host.recovering = True
            self._spawn(self._recover(host))
        summary = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return HostedError(
            ErrorCode.WORKER_LOST,
            f"tool host {host.index} on the ray cluster was lost ({type(exc).__name__}: "
            f"{summary[:200]})",
        )

    async def _recover(self, host: _Host) -> None:
        """Wait until Ray has restarted the actor, or replace it.

        A host pinned to a node that died cannot come back there: Ray reports it dead
        (or leaves it pending), and a new host is started wherever Ray has room.
        """
        ray = self._ray
        loop = asyncio.get_running_loop()
        delay = 0.2
        waiting_since = loop.time()
        try:
            while True:
                try:
                    host.describe = await asyncio.wait_for(
                        host.actor.describe.remote(), PROBE_TIMEOUT_S
                    )
                    break
                except ray.exceptions.ActorDiedError:
                    self._replace(host, "it is gone for good")
                    waiting_since = loop.time()
                except (ray.exceptions.RayError, TimeoutError):
                    if loop.time() - waiting_since > REPLACE_AFTER_S:
                        self._replace(host, f"it has not come back in {REPLACE_AFTER_S:.0f} s")
                        waiting_since = loop.time()
                await asyncio.sleep(delay)
                delay = min(RECOVER_BACKOFF_MAX_S, delay * 2)
        finally:
            host.recovering = False
        host.live = True
        log.info("tool host %d is back (pid %s)", host.index, host.describe.get("pid"))
        assert self._any_live is not None
        self._any_live.set()

    def _replace(self, host: _Host, why: str) -> None:
        log.warning("replacing tool host %d: %s", host.index, why)
        with contextlib.suppress(Exception):
            self._ray.kill(host.actor, no_restart=True)
        host.actor = self._new_actor("SPREAD")

    # --- cluster-wide provider caps --------------------------------------------------

    async def _lease(self, model: str | None) -> str | None:
        if self._ledger is None or model is None:
            return None
        info = self._registry.get(model)
        if info is None:
            return None
        cap = self._settings.provider_caps.get(info.provider)
        if cap is None:
            return None
        lease: str | None = await self._ledger.acquire.remote(
            self._holder, info.provider, cap, self._settings.ray_lease_ttl_s
        )
        if lease is None:
            raise HostedError(
                ErrorCode.OVER_CAPACITY,
                f"provider {info.provider} is at its cluster-wide cap of {cap} calls in "
                "flight (shared by every broker on this Ray cluster)",
                info.provider,
            )
        return lease

    async def _renew_leases(self) -> None:
        interval = self._settings.ray_lease_ttl_s / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.wait_for(
                    self._ledger.renew.remote(self._holder, self._settings.ray_lease_ttl_s),
                    interval,
                )
            except Exception as exc:  # the ledger restarting; the next renewal will do
                log.warning("could not renew provider leases: %s", exc)
