"""The hub's HTTP/JSON API (``--http-listen``): the gRPC methods transcoded by
their ``google.api.http`` annotations (hub_server/gateway/routes.py), the
product write-up's own endpoints (compat.py) and ``/openapi.json``.

Every call goes through the handlers the gRPC server runs (the HandlerTable, via
InProcess): the same authentication (``Authorization: Bearer``, or the client
certificate when the listener has TLS and the hub a client CA), role table,
tenant headers, per-caller limits, audit record, telemetry and error mapping.
A refusal is a ``google.rpc.Status`` JSON body with its details, under the HTTP
status that matches its gRPC code. Server streams are Server-Sent Events: each
event's id is the revision it brings the caller up to, and ``Last-Event-ID``
resumes from there (the request's resume field); a credentials reload that no
longer allows the caller ends the stream with a last ``status`` event, as the
gRPC stream ends with its status.

Browsers: CORS is off unless origins are configured; a request from any other
origin is refused, and a hub without credentials answers only for loopback and
IP host names (DNS rebinding), as the dashboard does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2

from hub_server.addresses import HostCheck, is_loopback
from hub_server.gateway import compat, openapi
from hub_server.gateway.routes import MethodNotAllowed, NoRoute, Route, Router, hub_routes
from hub_server.gateway.transcode import build_request, response_class, status_json, to_json
from hub_server.kernel.errors import HubError, InvalidArgument
from hub_server.rpc.decoding import Undecodable
from hub_server.rpc.errors import HTTP_STATUS, to_status
from hub_server.rpc.inprocess import CallAborted
from hub_server.wiring import Services

log = logging.getLogger(__name__)

# A request body may be as large as a gRPC request (app.SERVER_OPTIONS).
MAX_REQUEST_BYTES = 8 * 1024 * 1024

# A stream's request field that Last-Event-ID (a revision) fills, and what to add
# to it: start_revision is the first revision wanted, after_revision the last held.
RESUME_FIELDS = {"start_revision": 1, "after_revision": 0}
# How long an admitted stream's headers wait for its handler's first answer: a
# handler refuses a bad request (a field, a revision) at once, and that refusal
# is an HTTP status only while no header is sent. A stream with nothing to send
# yet (a resumed watch) gets its 200 after this.
STREAM_HEADERS_GRACE = 0.5
CORRELATION = "x-correlation-id"
# Headers a browser page may send and read when CORS is on.
CORS_REQUEST_HEADERS = (
    "authorization, content-type, last-event-id, x-tenant-id, x-user-id, "
    "x-subscription-tier, x-company-id, x-correlation-id, traceparent, tracestate"
)
CORS_EXPOSED_HEADERS = "x-tenant-id, x-user-id, x-subscription-tier, x-company-id, x-correlation-id"
CORS_METHODS = "GET, POST, PUT, PATCH, DELETE"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def parse_http_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--http-listen {listen!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def check_http_exposure(listen: str, *, credentials: bool, insecure: bool) -> None:
    """Beyond loopback only when the hub requires credentials (or --insecure),
    as for the gRPC address: without credentials every caller is admin."""
    host, _ = parse_http_listen(listen)
    if is_loopback(host) or credentials or insecure:
        return
    raise ValueError(
        f"refusing to serve HTTP on {listen} without credentials: give --credentials-file "
        "(and/or --tls-client-ca), listen on loopback, or pass --insecure"
    )


@dataclass(frozen=True)
class HttpSettings:
    listen: str
    cors_origins: tuple[str, ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    insecure: bool = False


class HttpContext:
    """What the call wrapper reads of a grpc.aio ServicerContext, for a call
    that came over HTTP: the headers as metadata, the peer as grpc names it,
    the TLS client certificate's names. Unlike the dashboard's in-process
    calls, its audit record names an anonymous caller by its address."""

    def __init__(
        self,
        request: web.Request,
        metadata: Sequence[tuple[str, str]],
        on_admitted: Callable[[list[tuple[str, str]]], Awaitable[None]] | None = None,
    ) -> None:
        self._metadata = tuple(metadata)
        self._peer = _peer(request)
        self._auth = _auth_context(request)
        self._on_admitted = on_admitted
        self.echo: list[tuple[str, str]] = []

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth

    async def send_initial_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        # The wrapper sends the echoed tenant headers once it admitted the call.
        self.echo = list(metadata)
        if self._on_admitted is not None:
            await self._on_admitted(self.echo)

    async def abort_with_status(self, status: grpc.Status) -> None:
        raise CallAborted(status)


def _peer(request: web.Request) -> str:
    peername = request.transport.get_extra_info("peername") if request.transport else None
    if not peername:
        return ""
    host, port = peername[0], peername[1]
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


def _auth_context(request: web.Request) -> dict[str, list[bytes]]:
    """The client certificate's names as grpc's auth context holds them."""
    cert = request.transport.get_extra_info("peercert") if request.transport else None
    if not cert:
        return {}
    common = [
        value.encode()
        for rdn in cert.get("subject", ())
        for key, value in rdn
        if key == "commonName"
    ]
    alt = [value.encode() for _kind, value in cert.get("subjectAltName", ())]
    return {"x509_common_name": common, "x509_subject_alternative_name": alt}


def _metadata(request: web.Request) -> list[tuple[str, str]]:
    """The request's headers as gRPC metadata (lower-case names). A call without
    a correlation id gets one, echoed in the response like the tenant headers."""
    metadata = [(k.lower(), v) for k, v in request.headers.items()]
    if not any(k == CORRELATION for k, _ in metadata):
        metadata.append((CORRELATION, uuid.uuid4().hex))
    return metadata


def status_response(
    code: grpc.StatusCode, status: status_pb2.Status, headers: Sequence[tuple[str, str]] = ()
) -> web.Response:
    return web.json_response(
        status_json(status), status=HTTP_STATUS.get(code, 500), headers=dict(headers)
    )


def aborted_response(status: grpc.Status, headers: Sequence[tuple[str, str]] = ()) -> web.Response:
    """The status a gRPC caller would get, as the google.rpc.Status JSON body."""
    return status_response(status.code, _rpc_status(status), headers)


def _rpc_status(status: grpc.Status) -> status_pb2.Status:
    for key, value in status.trailing_metadata or ():
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    return status_pb2.Status(code=status.code.value[0], message=status.details or "")


def error_response(error: HubError) -> web.Response:
    """A refusal the gateway makes itself (before any call), mapped as the call
    path maps it."""
    return aborted_response(to_status(error))


def plain_status(code: grpc.StatusCode, message: str, **headers: str) -> web.Response:
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
    return status_response(code, status, list(headers.items()))


def _event(message: Message) -> bytes:
    """One SSE event: the message's JSON, with its revision as the id when it
    brings the caller up to one (not a snapshot part with more to follow)."""
    fields = message.DESCRIPTOR.fields_by_name
    lines = []
    complete = "more" not in fields or not getattr(message, "more")  # noqa: B009
    if complete and "header" in fields and message.HasField("header"):
        revision = getattr(message, "header").revision  # noqa: B009
        if revision:
            lines.append(f"id: {revision}")
    lines.append("data: " + json.dumps(to_json(message), separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode()


class HttpGateway:
    """``await start()`` once the replica's views are loaded; ``await stop()``."""

    def __init__(self, services: Services, settings: HttpSettings) -> None:
        self._services = services
        self._settings = settings
        self.host, self.port = parse_http_listen(settings.listen)
        self._router = Router(
            r for r in hub_routes() if services.handlers.get(r.grpc_method) is not None
        )
        self._calls = services.in_process
        self._origins = frozenset(settings.cors_origins)
        self._runner: web.AppRunner | None = None
        self._hosts = HostCheck(self.host)
        self._compat = compat.CompatRoutes(self)
        self._openapi_json: str | None = None

    @property
    def routes(self) -> list[Route]:
        return self._router.routes

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self._settings.tls_cert else "http"
        return f"{scheme}://{host}:{self.port}"

    async def start(self) -> None:
        check_http_exposure(
            self._settings.listen,
            credentials=self._services.authorizer.enabled,
            insecure=self._settings.insecure,
        )
        app = web.Application(
            middlewares=[self._guard, self._cors_preflight], client_max_size=MAX_REQUEST_BYTES
        )
        app.on_response_prepare.append(self._cors_headers)
        app.router.add_get("/openapi.json", self._openapi)
        self._compat.add_to(app.router)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        # reuse_port: the workers of --workers share the address, as on gRPC.
        site = web.TCPSite(
            self._runner, self.host, self.port, ssl_context=self._ssl(), reuse_port=True
        )
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        log.info("HTTP/JSON API on %s", self.url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _ssl(self) -> ssl.SSLContext | None:
        s = self._settings
        if s.tls_cert is None or s.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(s.tls_cert, s.tls_key)
        if s.tls_client_ca is not None:
            context.load_verify_locations(cafile=str(s.tls_client_ca))
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    # -- browsers --------------------------------------------------------------

    def _origin_allowed(self, origin: str) -> bool:
        return origin in self._origins or "*" in self._origins

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin and not self._origin_allowed(origin):
            # A page of another origin (CORS is off for it): refused before any call.
            return plain_status(
                grpc.StatusCode.PERMISSION_DENIED,
                f"origin {origin!r} is not allowed (--http-cors-origin)",
            )
        if not self._services.authorizer.enabled and not self._hosts.allows(request.host):
            return web.json_response(
                {"code": code_pb2.PERMISSION_DENIED, "message": "misdirected request"},
                status=421,
            )
        try:
            return await handler(request)
        except HubError as e:
            return error_response(e)
        except CallAborted as e:
            return aborted_response(e.status)
        except BodyTooLarge as e:
            response = plain_status(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
            response.set_status(413)
            return response
        except web.HTTPException:
            raise
        except Exception:
            log.exception("HTTP %s %s failed", request.method, request.path)
            return plain_status(grpc.StatusCode.INTERNAL, "internal error")

    @web.middleware
    async def _cors_preflight(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if (
            request.method == "OPTIONS"
            and origin
            and self._origin_allowed(origin)
            and "Access-Control-Request-Method" in request.headers
        ):
            return web.Response(
                status=204,
                headers={
                    "Access-Control-Allow-Methods": CORS_METHODS,
                    "Access-Control-Allow-Headers": CORS_REQUEST_HEADERS,
                    "Access-Control-Max-Age": "600",
                },
            )
        return await handler(request)

    async def _cors_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if origin and self._origin_allowed(origin):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSED_HEADERS
            response.headers["Vary"] = "Origin"

    # -- the API ---------------------------------------------------------------

    async def _openapi(self, request: web.Request) -> web.StreamResponse:
        if self._openapi_json is None:
            self._openapi_json = json.dumps(openapi.document(self.routes))
        return web.Response(text=self._openapi_json, content_type="application/json")

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        try:
            route, variables = self._router.find(request.method, request.path)
        except NoRoute:
            return plain_status(grpc.StatusCode.NOT_FOUND, f"no route for {request.path}")
        except MethodNotAllowed as e:
            response = plain_status(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{request.method} {request.path}: allowed {', '.join(e.allowed)}",
                Allow=", ".join(e.allowed),
            )
            response.set_status(405)
            return response
        body = await self.read_body(request) if route.body else b""
        message = build_request(route, variables, request.query.items(), body)
        if route.streaming:
            return await self._stream(request, route, self._resumed(request, message))
        answer = await self.call(request, route.grpc_method, message)
        return web.json_response(to_json(answer.message), headers=dict(answer.echo))

    async def read_body(self, request: web.Request) -> bytes:
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise BodyTooLarge() from None

    async def call(
        self, request: web.Request, method: str, message: Message | Undecodable
    ) -> Answer:
        """Calls a unary method as the gRPC server would; raises CallAborted."""
        context = HttpContext(request, _metadata(request))
        if isinstance(message, Message):
            message = self._calls.as_received(method, message)
        response = await self._calls.call_in(method, message, context)
        return Answer(response, context.echo)

    @staticmethod
    def _resumed(request: web.Request, message: Message | Undecodable) -> Message | Undecodable:
        last = request.headers.get("Last-Event-ID", "").strip()
        if not last or not isinstance(message, Message):
            return message
        if not last.isdigit():
            return Undecodable(InvalidArgument.single("Last-Event-ID", "must be a revision"))
        fields = message.DESCRIPTOR.fields_by_name
        for name, add in RESUME_FIELDS.items():
            if name in fields:
                setattr(message, name, int(last) + add)
        return message

    async def _stream(
        self, request: web.Request, route: Route, message: Message | Undecodable
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )

        method = route.grpc_method
        if isinstance(message, Message):
            message = self._calls.as_received(method, message)
        refused = isinstance(message, Undecodable)

        headers_sent: asyncio.Task[Any] | None = None
        grace: asyncio.TimerHandle | None = None

        async def send_headers() -> None:
            # Once, whoever comes first: the grace timer or the first event.
            nonlocal headers_sent
            if headers_sent is None:
                headers_sent = asyncio.ensure_future(response.prepare(request))
                # Retrieved even when the stream is cancelled before awaiting it.
                headers_sent.add_done_callback(lambda t: t.cancelled() or t.exception())
            await headers_sent

        async def admitted(echo: list[tuple[str, str]]) -> None:
            nonlocal grace
            for key, value in echo:
                response.headers[key] = value
            # Admitted. The headers go with the first event, or after the grace
            # (a watch may wait long for its first event); a refusal before
            # either (a request that did not parse, a field the handler refuses)
            # is answered with its HTTP status.
            if not refused:
                grace = asyncio.get_running_loop().call_later(
                    STREAM_HEADERS_GRACE, lambda: asyncio.ensure_future(send_headers())
                )

        context = HttpContext(request, _metadata(request), admitted)
        decode = response_class(route).FromString

        async def pump() -> web.StreamResponse:
            # A task of its own: a credentials reload cancels the task serving
            # a stream it ends (the call wrapper then answers with the status).
            stream = self._calls.stream_in(method, message, context)
            try:
                async for item in stream:
                    await send_headers()
                    await response.write(_event(decode(item) if isinstance(item, bytes) else item))
            except CallAborted as e:
                if headers_sent is None:
                    return aborted_response(e.status, context.echo)
                data = json.dumps(status_json(_rpc_status(e.status)), separators=(",", ":"))
                with contextlib.suppress(ConnectionError):
                    await send_headers()
                    await response.write(f"event: status\ndata: {data}\n\n".encode())
            except ConnectionError:
                pass  # the caller went away
            finally:
                if grace is not None:
                    grace.cancel()
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(CallAborted, ConnectionError):
                        await aclose()
            with contextlib.suppress(ConnectionError):
                await send_headers()  # a stream that ended before sending anything
                await response.write_eof()
            return response

        return await asyncio.create_task(pump())


@dataclass(frozen=True)
class Answer:
    message: Message
    echo: list[tuple[str, str]]


class BodyTooLarge(Exception):
    """A body over the size limit: 413, with RESOURCE_EXHAUSTED as on gRPC."""

    def __init__(self) -> None:
        super().__init__(f"request body larger than {MAX_REQUEST_BYTES} bytes")
