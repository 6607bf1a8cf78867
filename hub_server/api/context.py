"""Per-call context: the tenant headers of a request, read once by the interceptor
and available to servicers through a contextvar; plus the interceptor that maps
domain errors to statuses, so servicers stay free of try/except boilerplate."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from hub_server.api.errors import status_code_for, to_status
from hub_server.domain.errors import HubError
from hub_server.domain.tiers import parse_tier

log = logging.getLogger(__name__)

TENANT_HEADERS = (
    "x-tenant-id",
    "x-user-id",
    "x-subscription-tier",
    "x-company-id",
    "x-correlation-id",
)


@dataclass(frozen=True, slots=True)
class CallContext:
    tenant_id: str = ""
    user_id: str = ""
    # The tier named by x-subscription-tier, lower case; "" when absent.
    subscription_tier: str = ""
    correlation_id: str = ""
    method: str = ""

    @property
    def has_tenant_context(self) -> bool:
        return bool(self.tenant_id or self.subscription_tier)

    def tier_filter(self, legacy_mode: bool) -> str | None:
        """The tier to filter discovery by; None lists everything (no tenant
        context, or legacy mode). A tenant without a known tier counts as free."""
        if legacy_mode or not self.has_tenant_context:
            return None
        return parse_tier(self.subscription_tier) or "free"


_current: contextvars.ContextVar[CallContext] = contextvars.ContextVar(
    "hub_call_context", default=CallContext()
)


def current() -> CallContext:
    return _current.get()


def _parse(
    metadata: tuple[tuple[str, str | bytes], ...] | None, method: str
) -> tuple[CallContext, list[tuple[str, str]]]:
    found: dict[str, str] = {}
    for key, value in metadata or ():
        if key in TENANT_HEADERS and isinstance(value, str):
            found[key] = value[:256]
    ctx = CallContext(
        # x-company-id is an alias of x-tenant-id.
        tenant_id=found.get("x-tenant-id") or found.get("x-company-id", ""),
        user_id=found.get("x-user-id", ""),
        subscription_tier=found.get("x-subscription-tier", "").strip().lower(),
        correlation_id=found.get("x-correlation-id", ""),
        method=method,
    )
    return ctx, list(found.items())


async def _abort(context: grpc.aio.ServicerContext, error: HubError) -> None:
    if status_code_for(error) == grpc.StatusCode.INTERNAL:
        log.error("unmapped domain error: %r", error)
    await context.abort_with_status(to_status(error))


class ContextInterceptor(grpc.aio.ServerInterceptor):
    """Reads the tenant headers into the call context, echoes them back in the
    response metadata, and turns domain errors into gRPC statuses."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        ctx, echo = _parse(handler_call_details.invocation_metadata, method)  # type: ignore[arg-type]

        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                # grpc.aio runs every call in its own task, so the value set here
                # cannot leak into another call and needs no reset.
                _current.set(ctx)
                try:
                    if echo:
                        await context.send_initial_metadata(echo)
                    return await inner_uu(request, context)
                except HubError as e:
                    await _abort(context, e)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )

        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(
                request: Any, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                _current.set(ctx)
                try:
                    if echo:
                        await context.send_initial_metadata(echo)
                    async for response in inner_us(request, context):
                        yield response
                except HubError as e:
                    await _abort(context, e)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        # Client- and bidi-streaming methods: none yet; pass through untouched.
        return handler
