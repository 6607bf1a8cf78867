"""The dashboard's HTTP server, in the hub's own process and event loop: the page
(static ES modules and one CSS file, nothing fetched from elsewhere), its JSON
sections, a change feed (Server-Sent Events) and the operator actions.

Reads and actions are authorized like the gRPC calls whose data they show or
whose work they do (the hub's one role table). Only loopback addresses are
served unless the hub requires credentials. Requests naming a host other than
an IP address, localhost or this machine are refused (DNS rebinding), and
actions must be same-origin JSON posts (CSRF).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
from aiohttp import web
from google.rpc import error_details_pb2, status_pb2

from hub_server.addresses import HostCheck, is_loopback
from hub_server.auth.credentials import Identity
from hub_server.kernel.errors import HubError, InvalidArgument
from hub_server.rpc.errors import HTTP_STATUS, status_code_for, to_status
from hub_server.rpc.inprocess import CallAborted
from hub_server.store.event_log import EventLog
from hub_server.ui.actions import Actions, authorize, caller_name, check_fleet_reader, method_name
from hub_server.ui.data import Sections, to_json
from hub_server.wiring import Services

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
# Sections refreshed on a timer: they have no change feed (audit records and
# error patterns are read from etcd; the overview carries RPC statistics).
# xDS clients live in each replica's memory, not in etcd: no change log to follow.
TIMED_SECTIONS = ("overview", "audit", "errors", "xds")
TIMED_INTERVAL = 5.0
KEEPALIVE = 15.0
COALESCE = 0.2


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT``, ``:PORT`` or ``PORT``; the host defaults to
    loopback."""
    host, sep, port = listen.rpartition(":")
    if not sep:
        host, port = "", listen
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--ui-listen {listen!r}: expected HOST:PORT")
    return host, int(port)


def check_exposure(host: str, *, credentials: bool, insecure: bool) -> None:
    """Beyond loopback only when the hub requires credentials (or was told
    --insecure), as for its gRPC address: without credentials everyone is admin."""
    if is_loopback(host) or credentials or insecure:
        return
    raise ValueError(
        f"refusing to serve the dashboard on {host} without credentials: give "
        "--credentials-file, listen on loopback, or pass --insecure"
    )


class ChangeFeed:
    """Which sections of the page changed. Follows the change logs of the mirrors
    that the Watch RPCs stream from, so the page moves when a watcher would."""

    def __init__(self, sources: dict[str, list[EventLog[Any]]]) -> None:
        self._sources = sources
        self._subscribers: set[_Subscriber] = set()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for section, logs in self._sources.items():
            for log_ in logs:
                self._tasks.append(asyncio.create_task(self._follow(section, log_)))
        self._tasks.append(asyncio.create_task(self._tick()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for subscriber in list(self._subscribers):
            subscriber.close()

    def subscribe(self) -> _Subscriber:
        subscriber = _Subscriber()
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: _Subscriber) -> None:
        self._subscribers.discard(subscriber)

    def mark(self, *sections: str) -> None:
        for subscriber in self._subscribers:
            subscriber.pending.update(sections)
            subscriber.wake.set()

    async def _follow(self, section: str, log_: EventLog[Any]) -> None:
        seen = log_.head
        while True:
            await log_.wait(seen, 30.0)
            head = log_.head
            if head <= seen:
                continue
            changes = log_.since(seen)  # None: more than the log keeps
            seen = head
            if changes is None or changes:
                # Most changes are audited calls; the overview counts them.
                self.mark(section, "overview", "audit")

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TIMED_INTERVAL)
            self.mark(*TIMED_SECTIONS)


class _Subscriber:
    def __init__(self) -> None:
        self.pending: set[str] = set()
        self.wake = asyncio.Event()
        self.closed = False

    def close(self) -> None:
        self.closed = True
        self.wake.set()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Dashboard:
    """``await start()`` once the replica's views are loaded; ``await stop()``."""

    def __init__(self, services: Services, listen: str, *, insecure: bool = False) -> None:
        self._services = services
        self._insecure = insecure
        self.host, self.port = parse_listen(listen)
        self._runner: web.AppRunner | None = None
        self._feed: ChangeFeed | None = None
        self._hosts = HostCheck(self.host)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def start(self) -> None:
        hub = self._services
        self.check_exposure()
        self._sections = Sections(hub)
        self._routes = self._sections.routes()
        self._actions = Actions(hub.in_process)
        self._feed = ChangeFeed(
            {
                "services": [
                    hub.view.log,
                    hub.health_view.mirror.log,
                    hub.picker.loads.log,
                    hub.deployments.drains.log,
                ],
                "circuits": [hub.circuits.mirror.log, hub.circuits.settings.log, hub.view.log],
                "alerts": [hub.alerts.active.log],
                "deployments": [hub.deployments.mirror.log],
                "tenants": [
                    hub.tenants.mirror.log,
                    hub.configs.mirror.log,
                    hub.tenant_limits.usage.log,
                ],
                "overview": [hub.replicas.log],
            }
        )
        self._feed.start()
        app = web.Application(middlewares=[self._guard], client_max_size=64 * 1024)
        app.on_response_prepare.append(_add_security_headers)
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/api/whoami", self._whoami)
        app.router.add_get("/api/events", self._events)
        app.router.add_get("/api/{section}", self._section)
        app.router.add_post("/api/actions/{service}/{rpc}", self._action)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        log.info("dashboard on %s", self.url)

    async def stop(self) -> None:
        if self._feed is not None:
            await self._feed.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def check_exposure(self) -> None:
        check_exposure(
            self.host, credentials=self._services.authorizer.enabled, insecure=self._insecure
        )

    # -- guard ---------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not self._hosts.allows(request.host):
            return _error(421, "MISDIRECTED", "this dashboard does not answer for that host")
        if request.method == "POST":
            if request.content_type != "application/json":
                return _error(415, "UNSUPPORTED_MEDIA_TYPE", "actions take application/json")
            origin = request.headers.get("Origin")
            fetch_site = request.headers.get("Sec-Fetch-Site", "same-origin")
            if (origin and urlsplit(origin).netloc != request.host) or fetch_site not in (
                "same-origin",
                "none",
            ):
                return _error(403, "CROSS_ORIGIN", "actions are accepted from this page only")
        try:
            return await handler(request)
        except HubError as e:
            if status_code_for(e) == grpc.StatusCode.INTERNAL:
                log.error("unmapped domain error in the dashboard: %r", e)
            return _status_error(to_status(e))
        except CallAborted as e:  # an action, answered by the call wrapper
            return _status_error(e.status)

    # -- handlers ------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return _file(STATIC / "index.html")

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = STATIC / name
        if "/" in name or name.startswith(".") or path.suffix not in CONTENT_TYPES:
            raise web.HTTPNotFound()
        if not path.is_file():
            raise web.HTTPNotFound()
        return _file(path)

    def _read_access(self, request: web.Request, method: str) -> Identity:
        identity = authorize(self._services.authorizer, method_name(method), _metadata(request))
        check_fleet_reader(identity)
        return identity

    async def _whoami(self, request: web.Request) -> web.StreamResponse:
        identity = self._read_access(request, "ObservabilityService/GetSystemMetrics")
        return _json(
            {
                "name": caller_name(identity),
                "role": str(identity.role),
                "hubId": self._services.hub_id,
            }
        )

    async def _section(self, request: web.Request) -> web.StreamResponse:
        found = self._routes.get(request.match_info["section"])
        if found is None:
            raise web.HTTPNotFound()
        method, build = found
        self._read_access(request, method)
        return _json(await build(request.query))

    async def _events(self, request: web.Request) -> web.StreamResponse:
        self._read_access(request, "ObservabilityService/GetSystemMetrics")
        assert self._feed is not None
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        subscriber = self._feed.subscribe()
        try:
            await response.write(b"retry: 2000\nevent: hello\ndata: {}\n\n")
            while not subscriber.closed:
                try:
                    await asyncio.wait_for(subscriber.wake.wait(), KEEPALIVE)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                await asyncio.sleep(COALESCE)  # one refresh for a burst of changes
                subscriber.wake.clear()
                sections, subscriber.pending = sorted(subscriber.pending), set()
                if sections and not subscriber.closed:
                    data = json.dumps(sections)
                    await response.write(f"event: change\ndata: {data}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the page went away
        finally:
            self._feed.unsubscribe(subscriber)
        return response

    async def _action(self, request: web.Request) -> web.StreamResponse:
        method = method_name(f"{request.match_info['service']}/{request.match_info['rpc']}")
        try:
            body = await request.json()
        except ValueError:
            raise InvalidArgument.single("body", "must be a JSON object") from None
        if not isinstance(body, dict):
            raise InvalidArgument.single("body", "must be a JSON object")
        peer = request.remote or ""
        response = await self._actions.run(method, body, _metadata(request), peer)
        if self._feed is not None:
            self._feed.mark("audit")
        return _json(to_json(response))


def _metadata(request: web.Request) -> list[tuple[str, str]]:
    """The request's credentials as the gRPC metadata the authorizer reads."""
    value = request.headers.get("Authorization")
    return [("authorization", value)] if value else []


async def _add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


def _file(path: Path) -> web.StreamResponse:
    return web.Response(body=path.read_bytes(), content_type=None,
                        headers={"Content-Type": CONTENT_TYPES[path.suffix]})  # fmt: skip


def _json(data: Any) -> web.Response:
    return web.json_response(data)


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"code": code, "message": message, **extra}, status=status)


def _status_error(status: grpc.Status) -> web.Response:
    """The status a gRPC caller gets, as JSON: its code, message, reason and
    bad fields (from its google.rpc details)."""
    code = status.code.name
    extra: dict[str, Any] = {}
    for key, value in status.trailing_metadata:
        if key != "grpc-status-details-bin":
            continue
        for detail in status_pb2.Status.FromString(value).details:
            info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
            if detail.Unpack(info):
                extra["reason"] = info.reason
            elif detail.Unpack(bad):
                extra["violations"] = [
                    {"field": v.field, "description": v.description} for v in bad.field_violations
                ]
    return _error(HTTP_STATUS.get(status.code, 500), code, status.details, **extra)
