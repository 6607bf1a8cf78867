"""Requests that do not parse are INVALID_ARGUMENT, not grpc's UNKNOWN.

grpc-python parses a request before any handler code runs, and when parsing
fails it answers UNKNOWN ("Unexpected <class 'DecodeError'>: ..."), which reads
like a crash of the hub. ``tolerant(handler)`` wraps a method's request
deserializer so that bytes that do not parse become an ``Undecodable`` value;
the wrapped handler turns it into a domain InvalidArgument on the field
``request``. Wrapped inside the CallWrapper, that error is mapped, logged and
audited like any other refusal:

    WrappingServer(server, lambda method, h: calls.wrap(method, tolerant(h)))

A client stream's messages are parsed one by one as the handler reads them: the
request iterator raises InvalidArgument at the first one that does not parse.

A request that parses but holds a value no JSON reader accepts (a Duration or
Timestamp out of range or not normalised, a NaN or infinite double or Struct
number) is refused the same way, naming the field (validation.check_wellformed):
once stored, such a value would break GetService for grpcurl and the dashboard.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from hub_server.kernel.errors import InvalidArgument, Violations
from hub_server.kernel.validation import can_be_malformed, check_wellformed
from hub_server.rpc.wrapping import replaced

FIELD = "request"


class Undecodable:
    """What a request that does not parse, or is not well-formed, deserializes to."""

    __slots__ = ("error",)

    def __init__(self, error: InvalidArgument) -> None:
        self.error = error


def refusal(request: Undecodable) -> InvalidArgument:
    return request.error


def _deserializer(inner: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if inner is None:
        return None
    # A generated message's FromString names its type: when nothing in that
    # type can be malformed, its requests need no well-formedness check.
    parses_to = getattr(inner, "__self__", None)
    checked = not (
        isinstance(parses_to, type)
        and issubclass(parses_to, Message)
        and not can_be_malformed(parses_to)
    )

    def deserialize(raw: bytes) -> Any:
        try:
            request = inner(raw)
        except Exception as e:  # DecodeError, or upb's depth and UTF-8 checks
            text = str(e) or type(e).__name__
            return Undecodable(
                InvalidArgument.single(FIELD, f"is not a valid message: {text[:200]}")
            )
        if not checked or not isinstance(request, Message):
            return request
        v = Violations()
        check_wellformed(v, request)
        return Undecodable(InvalidArgument(v.items)) if v.items else request

    return deserialize


def _keep_marks(wrapper: Any, inner: Any) -> Any:
    # The CallWrapper reads @audited from the handler it is given.
    if getattr(inner, "__audited__", False):
        wrapper.__audited__ = True
    return wrapper


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, Undecodable):
            raise refusal(request)
        yield request


def tolerant(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The handler with a deserializer that never raises (see the module's doc)."""
    deserializer = _deserializer(handler.request_deserializer)

    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            # A plain function returning the servicer's coroutine: no extra
            # coroutine per call (the CallWrapper around it awaits it).
            if isinstance(request, Undecodable):
                raise refusal(request)
            return inner_uu(request, context)

        behaviour = {"unary_unary": _keep_marks(unary_unary, inner_uu)}
    elif handler.unary_stream is not None:
        inner_us = handler.unary_stream

        def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            # A plain function returning the stream: no extra layer per message.
            if isinstance(request, Undecodable):
                return _refused_stream(request)
            return inner_us(request, context)

        behaviour = {"unary_stream": _keep_marks(unary_stream, inner_us)}
    elif handler.stream_unary is not None:
        inner_su = handler.stream_unary

        async def stream_unary(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            return await inner_su(_checked(requests), context)

        behaviour = {"stream_unary": _keep_marks(stream_unary, inner_su)}
    else:
        inner_ss = handler.stream_stream

        def stream_stream(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            return inner_ss(_checked(requests), context)

        behaviour = {"stream_stream": _keep_marks(stream_stream, inner_ss)}
    return replaced(handler, request_deserializer=deserializer, **behaviour)


async def _refused_stream(request: Undecodable) -> AsyncIterator[Any]:
    raise refusal(request)
    yield  # an async generator, so the error is raised where the stream is read
