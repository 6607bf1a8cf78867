"""Wrapping a service's method handlers once, as they are registered.

The generated ``add_*Servicer_to_server(servicer, server)`` functions hand their
handlers to ``server``; give them a ``WrappingServer`` instead and each handler
passes through ``wrap(method, handler)`` on its way to the real server. Unlike a
grpc.aio interceptor, nothing runs per call to find or build the handler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

Wrap = Callable[[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler]


def replaced(handler: grpc.RpcMethodHandler, **fields: Any) -> grpc.RpcMethodHandler:
    """The handler with some of its fields (behaviour, serializers) replaced:
    grpc's method handlers are named tuples."""
    return handler._replace(**fields)


class WrappingServer:
    def __init__(self, server: Any, wrap: Wrap) -> None:
        self._server = server
        self._wrap = wrap

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self._server.add_generic_rpc_handlers(tuple(_Wrapped(h, self._wrap) for h in handlers))

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self._server.add_registered_method_handlers(
            service, {name: self._wrap(f"/{service}/{name}", h) for name, h in handlers.items()}
        )


class _Wrapped(grpc.GenericRpcHandler):
    """A generic handler whose answers are wrapped (once per method)."""

    def __init__(self, inner: grpc.GenericRpcHandler, wrap: Wrap) -> None:
        self._inner = inner
        self._wrap = wrap
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None:
            handler = self._inner.service(handler_call_details)
            if handler is not None:
                handler = self._handlers[method] = self._wrap(method, handler)
        return handler


def serializing(server: Any, serializers: dict[str, Callable[[Any], bytes]]) -> WrappingServer:
    """Stands for ``server`` while a service registers: the methods named in
    ``serializers`` (``/package.Service/Method``) get those response
    serializers (a servicer that keeps its answers serialized)."""

    def wrap(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        serializer = serializers.get(method)
        return handler if serializer is None else replaced(handler, response_serializer=serializer)

    return WrappingServer(server, wrap)
