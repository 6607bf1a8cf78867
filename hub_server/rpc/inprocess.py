"""Hub methods called in this process (the dashboard's actions) through the very
handlers the gRPC server runs: the call wrapper's authentication, role table,
limits, audit record, status mapping and telemetry, with no second copy.

The hub's services register on a ``HandlerTable`` (through the wrapping
servers, as they would on a grpc.aio server); the table installs the wrapped
handlers on the server and ``InProcess`` calls them with an ``InProcessContext``
standing for the grpc.aio servicer context.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from google.protobuf.message import Message

from hub_server.rpc.decoding import Undecodable


class HandlerTable:
    """Stands for the gRPC server while the hub's services register: keeps each
    method's (wrapped) handler by service."""

    def __init__(self) -> None:
        self._services: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        # Generated code hands the same handlers over by name as well (below);
        # install() builds the generic handler from those.
        pass

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self._services[service] = dict(handlers)

    def get(self, method: str) -> grpc.RpcMethodHandler | None:
        """The handler of ``/package.Service/Method``."""
        service, _, name = method.strip("/").rpartition("/")
        return self._services.get(service, {}).get(name)

    def install(self, server: Any) -> None:
        """Registers every handler on a grpc.aio server as one generic handler
        (one dict lookup per call). Not as registered methods, as generated code
        also does: for every call it accepts, grpc.aio's server loop waits on one
        pending future per registered method (asyncio.wait over all of them,
        about 0.4 us each), which with the hub's ~65 methods was ~25 us of every
        call's CPU, the no-op's included."""
        methods = {
            f"/{service}/{name}": handler
            for service, handlers in self._services.items()
            for name, handler in handlers.items()
        }
        server.add_generic_rpc_handlers((_Methods(methods),))


class _Methods(grpc.GenericRpcHandler):
    def __init__(self, methods: dict[str, grpc.RpcMethodHandler]) -> None:
        self._methods = methods

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        return self._methods.get(handler_call_details.method)


class CallAborted(Exception):
    """The call ended with a status (a refusal or a domain error), as its gRPC
    caller would have received it."""

    def __init__(self, status: grpc.Status) -> None:
        super().__init__(status.details)
        self.status = status


class InProcessContext:
    """The part of grpc.aio's ServicerContext the hub's handlers use. ``origin``
    says where the call came from: its audit record carries it, and names the
    caller by the identity it authenticated as (not by a connection)."""

    def __init__(
        self, metadata: Sequence[tuple[str, str]], peer: str, origin: dict[str, str]
    ) -> None:
        self._metadata = tuple(metadata)
        self._peer = peer
        self.origin = origin

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}  # no TLS client certificate in process

    async def send_initial_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        pass  # no headers to echo to

    async def abort_with_status(self, status: grpc.Status) -> None:
        raise CallAborted(status)


class InProcess:
    """Calls the unary hub methods of a ``HandlerTable``."""

    def __init__(self, table: HandlerTable) -> None:
        self._table = table

    async def call(
        self,
        method: str,
        request: Message | Undecodable,
        *,
        metadata: Sequence[tuple[str, str]],
        peer: str,
        origin: dict[str, str],
    ) -> Message:
        """The method's response; raises CallAborted with the status a gRPC
        caller would get. An ``Undecodable`` request is refused as one that
        did not parse."""
        return await self.call_in(method, request, InProcessContext(metadata, peer, origin))

    async def call_in(self, method: str, request: Message | Undecodable, context: Any) -> Message:
        """As ``call``, with a context of the caller's (the HTTP gateway's:
        its peer address and client certificate)."""
        handler = self._table.get(method)
        if handler is None or handler.unary_unary is None:
            raise KeyError(method)
        # In a task of its own, as grpc.aio serves each call: the call context
        # the wrapper sets stays with the call.
        response: Message = await asyncio.create_task(handler.unary_unary(request, context))
        return response

    def stream_in(
        self, method: str, request: Message | Undecodable, context: Any
    ) -> AsyncIterator[Any]:
        """A server stream's responses (messages, or bytes where the stream
        sends them pre-serialized), as the gRPC server would iterate them: the
        call wrapper admits it at the first read, ends it when a credentials
        reload no longer allows it (raising CallAborted) and cancels the task
        iterating it for that, so iterate it in a task of its own."""
        handler = self._table.get(method)
        if handler is None or handler.unary_stream is None:
            raise KeyError(method)
        stream: AsyncIterator[Any] = handler.unary_stream(request, context)
        return stream

    def as_received(self, method: str, request: Message) -> Message | Undecodable:
        """The request as the gRPC server would have it from the wire: through
        the method's request deserializer, so a value no gRPC request may carry
        (a NaN, a Duration out of range) is refused the same way."""
        handler = self._table.get(method)
        if handler is None or handler.request_deserializer is None:
            raise KeyError(method)
        received: Message | Undecodable = handler.request_deserializer(request.SerializeToString())
        return received
