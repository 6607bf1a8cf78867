"""BaseService: the lifecycle every backend service shares.

A subclass adds its servicers in ``setup``; ``run`` (or ``main``) does the rest:
serve gRPC with standard health and reflection, register with the hub (retrying
while it is down), keep the lease alive, report load, follow configuration, and
on SIGTERM go NOT_SERVING, deregister, drain and stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from hub_client._private.channel import TLS
from hub_client._private.client import HubClient
from hub_client._private.errors import HubError, NotFound, Unavailable
from hub_client._private.health import health_check
from hub_client._private.registration import Registration

log = logging.getLogger(__name__)

ConfigCallback = Callable[[Any], Awaitable[None] | None]
DirectiveCallback = Callable[[Any], Awaitable[None] | None]

_HEALTH_KINDS = ("grpc", "tcp", "none")
_WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")


def _default_hub_target() -> str:
    return os.environ.get("HUB_TARGET", "127.0.0.1:7000")


@dataclass
class ServiceConfig:
    """What a BaseService needs to know about itself and its hub.

    Attributes:
        service_name: the name it registers under (a DNS label).
        version: the software version, shown in discovery.
        port: the gRPC port to listen on; 0 picks a free one (see ``BaseService.port``).
        host: the interface to listen on, and the address registered for callers.
        advertise_host: the address callers should use, when it differs from ``host``
            (defaults to ``host``, or the host name when ``host`` is a wildcard).
        hub_target: the hub's ``host:port`` (default ``$HUB_TARGET`` or 127.0.0.1:7000).
        hub_token: the bearer token for a hub with credentials (None: ``$HUB_TOKEN``).
        hub_tls: TLS settings for a hub that serves TLS (see ``TLS``).
        instance_id: a stable id; default ``host-port`` (chosen by the hub).
        metadata: free-form labels registered with the instance.
        subscription_requirements: tiers of which one is needed to use the service.
        tenant_capable: whether the instance serves several tenants.
        resource_tier: ``basic``, ``premium`` or ``enterprise``.
        weight: relative weight for weighted balancing.
        ttl: lease time to live in seconds; the hub drops the instance this long
            after its last keep-alive.
        health_check: how the hub probes the service: ``grpc`` (its own
            grpc.health.v1 service, the default), ``tcp`` or ``none`` (lease only).
        probe_interval: seconds between the hub's probes (None: the hub's default).
        health_interval: seconds between calls of ``check_health``.
        load_interval: seconds between load reports (when ``current_load`` is overridden).
        drain_seconds: after deregistering on shutdown, how long to keep serving
            callers that picked this instance before it was removed.
        shutdown_grace: how long calls still running get when the server stops.
        hub_timeout: deadline of each call to the hub.
        register_backoff: first wait between registration attempts; doubles on
            each failure up to ``register_backoff_max``.
        register_backoff_max: the cap of that wait.
        config_tenant: whose merged configuration to follow (empty: global).
    """

    service_name: str
    version: str = ""
    port: int = 0
    host: str = "127.0.0.1"
    advertise_host: str = ""
    hub_target: str = field(default_factory=_default_hub_target)
    hub_token: str | None = None
    hub_tls: TLS | None = None
    instance_id: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    subscription_requirements: Sequence[str] = ()
    tenant_capable: bool = True
    resource_tier: str = "basic"
    weight: int = 100
    ttl: int = 30
    health_check: str = "grpc"
    probe_interval: float | None = None
    health_interval: float = 5.0
    load_interval: float = 5.0
    drain_seconds: float = 2.0
    shutdown_grace: float = 5.0
    hub_timeout: float = 5.0
    register_backoff: float = 0.5
    register_backoff_max: float = 10.0
    config_tenant: str = ""

    def __post_init__(self) -> None:
        if self.health_check not in _HEALTH_KINDS:
            raise ValueError(f"health_check must be one of {_HEALTH_KINDS}")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be between 0 and 65535")


class BaseService:
    """A gRPC service that registers itself with Central Hub and shuts down politely.

    Subclass it, add servicers in ``setup``, optionally override
    ``check_health``, ``current_load`` and ``config_changed``, then run it::

        class Quotes(BaseService):
            service_names = ("examples.quotes.v1.QuoteService",)

            async def setup(self, server: grpc.aio.Server) -> None:
                quotes_pb2_grpc.add_QuoteServiceServicer_to_server(QuoteServicer(), server)

        Quotes(ServiceConfig("quotes", version="1.0.0", port=8001)).main()

    On start it serves gRPC with the standard grpc.health.v1 service (SERVING or
    NOT_SERVING as ``check_health`` says, re-checked every ``health_interval``)
    and server reflection; registers with the hub (retrying with capped
    exponential backoff while the hub is down) with a gRPC health check on
    itself; keeps the lease alive and registers again if the hub lost it; reports
    ``current_load()`` every ``load_interval``; and, where the client supports
    ``watch_config``, passes every new configuration to ``config_changed`` (and
    the ``on_config_change`` callback). On SIGTERM or SIGINT (or ``request_stop``)
    it goes NOT_SERVING, deregisters, keeps serving for ``drain_seconds``, then
    stops the server with ``shutdown_grace``.

    Attributes:
        service_names: full names of the gRPC services ``setup`` adds, so health
            (per service) and reflection report them.
        port: the port actually bound, once started.
        registration: the hub registration, once registered.
        registered: set once the first registration succeeded.
    """

    service_names: Sequence[str] = ()
    # Follow the hub's roll-out directives for this instance (also on when an
    # ``on_directive`` callback is given): DRAIN goes NOT_SERVING, RESUME comes
    # back, RETIRE stops (deregisters). The callback sees every directive first.
    follow_directives: bool = False

    def __init__(
        self,
        config: ServiceConfig,
        *,
        on_config_change: ConfigCallback | None = None,
        on_directive: DirectiveCallback | None = None,
    ) -> None:
        self.config = config
        self.on_config_change = on_config_change
        self.on_directive = on_directive
        self.draining = False
        self.port = 0
        self.server: grpc.aio.Server | None = None
        self.hub: HubClient | None = None
        self.registration: Registration | None = None
        self.registered = asyncio.Event()
        self.health = health.aio.HealthServicer()
        self.serving = False
        self._stop = asyncio.Event()
        self._fatal: BaseException | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False

    # -- what subclasses override -------------------------------------------

    async def setup(self, server: grpc.aio.Server) -> None:
        """Adds this service's servicers to ``server`` (called before it starts)."""

    async def check_health(self) -> bool:
        """Whether the service can serve now; drives grpc.health.v1 (default True)."""
        return True

    def current_load(self) -> float | Awaitable[float | None] | None:
        """This instance's load, 0 (idle) to 1 (at capacity), reported to the hub.

        Only reported when a subclass overrides it; may be async; None skips a report.
        """
        return None

    async def config_changed(self, config: Any) -> None:
        """Called with each new configuration pushed by the hub (when supported)."""

    async def teardown(self) -> None:
        """Called after the server stopped: close what ``setup`` opened."""

    # -- lifecycle -----------------------------------------------------------

    @property
    def address(self) -> str:
        """``host:port`` callers use (the advertised host and the bound port)."""
        return f"{self._advertised_host()}:{self.port}"

    def make_client(self) -> HubClient:
        """The HubClient used to talk to the hub (override for custom channels)."""
        cfg = self.config
        return HubClient(
            cfg.hub_target, timeout=cfg.hub_timeout, token=cfg.hub_token, tls=cfg.hub_tls
        )

    async def start(self) -> None:
        """Starts serving and begins registering in the background.

        Returns once the server listens; ``await service.registered.wait()`` to
        wait for the hub. Raises if the port cannot be bound.
        """
        cfg = self.config
        server = grpc.aio.server()
        await self.setup(server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = (*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
        listen = f"[{cfg.host}]:{cfg.port}" if ":" in cfg.host else f"{cfg.host}:{cfg.port}"
        try:
            self.port = server.add_insecure_port(listen)
        except RuntimeError as e:
            raise OSError(f"cannot listen on {listen}: {e}") from None
        if not self.port:
            raise OSError(f"cannot listen on {listen}")
        await self._update_health()
        await server.start()
        self.server = server
        status = "SERVING" if self.serving else "NOT_SERVING (check_health failed)"
        log.info("%s serving on %s, %s", cfg.service_name, self.address, status)

        self.hub = self.make_client()
        self._spawn(self._register_with_retry(), "register")
        self._spawn(self._health_loop(), "health")
        if type(self).current_load is not BaseService.current_load:
            self._spawn(self._load_loop(), "load")
        if self._wants_config():
            self._spawn(self._follow_config(), "config")
        if self.on_directive is not None or self.follow_directives:
            self._spawn(self._follow_directives(), "directives")

    async def run(self, *, handle_signals: bool = True) -> None:
        """Starts, serves until SIGTERM/SIGINT or ``request_stop()``, then stops.

        Raises what made the service give up (for example a registration the hub
        rejects as invalid).
        """
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
                installed.append(sig)
        try:
            await self.start()
            await self._stop.wait()
        finally:
            await self.stop()
            for sig in installed:
                loop.remove_signal_handler(sig)
        if self._fatal is not None:
            raise self._fatal

    def main(self) -> int:
        """Runs the service in a new event loop until SIGTERM/SIGINT; returns an exit code.

        Sets up basic logging at INFO if the program configured none.
        """
        if not logging.getLogger().handlers:
            logging.basicConfig(
                level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
            )
        try:
            asyncio.run(self.run())
        except KeyboardInterrupt:
            return 130
        except Exception as e:
            log.error("%s stopped: %s", self.config.service_name, e)
            return 1
        return 0

    def request_stop(self) -> None:
        """Asks a running ``run()`` to shut down gracefully (what SIGTERM does)."""
        self._stop.set()

    async def stop(self) -> None:
        """NOT_SERVING, deregister, drain, stop the server. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        cfg = self.config
        self._stop.set()
        # Health first, so probes and health-aware callers move away before the
        # instance disappears from discovery.
        await self.health.enter_graceful_shutdown()
        self.serving = False
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # Bounded: a task that ignores its cancellation must not keep the
            # process from exiting (an orchestrator would kill it mid-drain).
            done, stuck = await asyncio.wait(self._tasks, timeout=cfg.shutdown_grace)
            for task in done:
                if not task.cancelled():
                    task.exception()  # retrieved: ended by an error is fine here
            for task in stuck:
                log.error("%s: %s still runs after it was cancelled", cfg.service_name, task)
        self._tasks.clear()
        deregistered = False
        if self.registration is not None:
            try:
                await asyncio.wait_for(self.registration.deregister(), cfg.hub_timeout)
                deregistered = True
                log.info("%s deregistered", cfg.service_name)
            except HubError as e:
                log.warning("deregistering %s failed: %s", cfg.service_name, e)
            except TimeoutError:
                log.warning(
                    "deregistering %s: no answer from %s within %gs; its lease lapses in %ds",
                    cfg.service_name, cfg.hub_target, cfg.hub_timeout, cfg.ttl,
                )  # fmt: skip
        if deregistered and cfg.drain_seconds > 0:
            # Callers that picked this instance before it was removed still arrive.
            await asyncio.sleep(cfg.drain_seconds)
        if self.server is not None:
            await self.server.stop(cfg.shutdown_grace)
        with contextlib.suppress(Exception):
            await self.teardown()
        if self.hub is not None:
            with contextlib.suppress(Exception):
                await self.hub.close()
        log.info("%s stopped", cfg.service_name)

    # -- background work -----------------------------------------------------

    async def _follow_directives(self) -> None:
        await self.registered.wait()
        assert self.hub is not None and self.registration is not None
        instance_id = self.registration.instance_id
        async for directive in self.hub.watch_directives(self.config.service_name, instance_id):
            if self.on_directive is not None:
                result = self.on_directive(directive)
                if inspect.isawaitable(result):
                    await result
            if directive.action == "DRAIN":
                self.draining = True
                await self._update_health()
            elif directive.action == "RESUME":
                self.draining = False
                await self._update_health()
            elif directive.action == "RETIRE":
                log.info("%s retired by deployment %s", instance_id, directive.deployment_id)
                self.request_stop()
                return

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(f"{self.config.service_name}-{name}")
        self._tasks.append(task)

    def _advertised_host(self) -> str:
        cfg = self.config
        if cfg.advertise_host:
            return cfg.advertise_host
        if cfg.host in _WILDCARD_HOSTS:
            return socket.gethostname()
        return cfg.host

    def _health_spec(self) -> Any:
        kind, interval = self.config.health_check, self.config.probe_interval
        if kind == "grpc":
            return health_check(grpc_service="", interval=interval)
        if kind == "tcp":
            return health_check(tcp=True, interval=interval)
        return None

    async def _register_with_retry(self) -> None:
        cfg = self.config
        assert self.hub is not None
        delay = cfg.register_backoff
        attempt = 0
        while True:
            attempt += 1
            try:
                self.registration = await self.hub.register(
                    cfg.service_name,
                    host=self._advertised_host(),
                    port=self.port,
                    instance_id=cfg.instance_id,
                    protocol="grpc",
                    version=cfg.version,
                    metadata=cfg.metadata,
                    health=self._health_spec(),
                    tenant_capable=cfg.tenant_capable,
                    subscription_requirements=cfg.subscription_requirements,
                    resource_tier=cfg.resource_tier,
                    ttl=cfg.ttl,
                    weight=cfg.weight,
                )
            except Unavailable as e:
                # The hub (or its etcd) is down or starting: try again, less often.
                log.warning(
                    "registering %s with %s failed (attempt %d): %s; retrying in %.1fs",
                    cfg.service_name, cfg.hub_target, attempt, e, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, cfg.register_backoff_max)
                continue
            except (HubError, ValueError) as e:
                # The hub rejected the registration itself: retrying cannot help.
                log.error("the hub refused to register %s: %s", cfg.service_name, e)
                self._fatal = e
                self._stop.set()
                return
            instance = self.registration.instance
            assert instance is not None
            log.info(
                "%s registered with %s as %s (%s)",
                cfg.service_name, cfg.hub_target, instance.instance_id, instance.address,
            )  # fmt: skip
            self.registered.set()
            return

    async def _update_health(self) -> None:
        try:
            ok = bool(await asyncio.wait_for(self.check_health(), self.config.health_interval))
        except Exception as e:
            log.warning("health check of %s failed: %r", self.config.service_name, e)
            ok = False
        ok = ok and not self.draining  # told to DRAIN by a roll-out
        if ok != self.serving:
            if self.server is not None:  # not at start: "serving on" says it
                log.info("%s is %s", self.config.service_name, "SERVING" if ok else "NOT_SERVING")
            self.serving = ok
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ok
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval)
            await self._update_health()

    async def _load_loop(self) -> None:
        await self.registered.wait()
        assert self.hub is not None and self.registration is not None
        failing = False
        while True:
            try:
                load = self.current_load()
                if inspect.isawaitable(load):
                    load = await load
                if load is not None:
                    await self.hub.report_load(
                        self.config.service_name, self.registration.instance_id, float(load)
                    )
                if failing:
                    log.info("load reports for %s flow again", self.config.service_name)
                failing = False
            except NotFound:
                pass  # the keep-alive is registering the instance again
            except (HubError, ValueError, TypeError) as e:
                if not failing:
                    log.warning("reporting load of %s failed: %s", self.config.service_name, e)
                failing = True
            await asyncio.sleep(self.config.load_interval)

    def _wants_config(self) -> bool:
        if self.hub is None or not callable(getattr(self.hub, "watch_config", None)):
            return False  # this client (or hub) has no configuration service
        overridden = type(self).config_changed is not BaseService.config_changed
        return overridden or self.on_config_change is not None

    def _config_stream(self) -> Any:
        assert self.hub is not None
        watch = self.hub.watch_config
        kwargs: dict[str, Any] = {}
        try:
            params: Mapping[str, inspect.Parameter] = inspect.signature(watch).parameters
        except (TypeError, ValueError):
            params = {}
        for name in ("tenant_id", "tenant"):
            if name in params:
                kwargs[name] = self.config.config_tenant
                break
        if "service" in params:
            kwargs["service"] = self.config.service_name
        return watch(**kwargs)

    async def _follow_config(self) -> None:
        delay = self.config.register_backoff
        while True:
            try:
                stream = self._config_stream()
                if inspect.isawaitable(stream):
                    stream = await stream
                async for config in _aiter(stream):
                    delay = self.config.register_backoff
                    await self._deliver_config(config)
                return  # the stream ended by itself
            except HubError as e:
                log.warning("following configuration of %s: %s", self.config.service_name, e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.config.register_backoff_max)

    async def _deliver_config(self, config: Any) -> None:
        try:
            await self.config_changed(config)
            if self.on_config_change is not None:
                result = self.on_config_change(config)
                if inspect.isawaitable(result):
                    await result
        except Exception:
            # A bad handler must not stop later configurations from arriving.
            log.exception("configuration handler of %s failed", self.config.service_name)


def _aiter(stream: Any) -> AsyncIterator[Any]:
    if not hasattr(stream, "__aiter__"):
        raise TypeError(f"watch_config returned {type(stream).__name__}, not an async iterator")
    return stream
