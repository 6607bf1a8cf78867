"""Per-call context: the tenant headers of a request, read once per call and
available to servicers through a contextvar; plus the wrapper around every hub
handler that maps domain errors to statuses, so servicers stay free of
try/except boilerplate."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from hub_client import RequestContext, set_context
from hub_server.auth.authorizer import Authorizer
from hub_server.auth.credentials import ANONYMOUS, Identity
from hub_server.auth.limits import CallerLimits
from hub_server.auth.roles import is_open
from hub_server.kernel.errors import HubError, PermissionDenied
from hub_server.kernel.tiers import view_tier
from hub_server.observability.audit import AuditLog
from hub_server.observability.telemetry import NO_SPAN, Telemetry
from hub_server.rpc.errors import status_code_for, to_status
from hub_server.rpc.inprocess import InProcessContext
from hub_server.rpc.wrapping import replaced

log = logging.getLogger(__name__)
# One DEBUG line per call (method, outcome, duration), with the call's context.
access_log = logging.getLogger("hub_server.access")

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
    caller: Identity = ANONYMOUS
    # The x-tenant-id (or x-company-id) a caller sent that is not trusted to name
    # a tenant (not admin or gateway): ignored, but kept to say so in errors.
    ignored_tenant_id: str = ""

    @property
    def has_tenant_context(self) -> bool:
        return bool(self.tenant_id or self.subscription_tier)

    def tier_filter(self, legacy_mode: bool, tier: str = "") -> str | None:
        """The tier to filter discovery by; None lists everything (no tenant
        context, or legacy mode from a caller not bound to a tenant). ``tier``:
        the tenant's tier as stored now, over the one the call carries (a
        long-lived stream reads it again). See
        :func:`hub_server.kernel.tiers.view_tier`."""
        return view_tier(
            tier or self.subscription_tier,
            has_tenant=self.has_tenant_context,
            tenant_bound=bool(self.caller.tenant),
            legacy_mode=legacy_mode,
        )


_current: contextvars.ContextVar[CallContext] = contextvars.ContextVar(
    "hub_call_context", default=CallContext()
)
# What an audited call says about itself (target, versions, details).
_audit_note: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "hub_audit_note", default=None
)


def current() -> CallContext:
    return _current.get()


F = TypeVar("F", bound=Callable[..., Any])


def audited(method: F) -> F:
    """Marks a servicer method as mutating: each call leaves an audit record."""
    method.__audited__ = True  # type: ignore[attr-defined]
    return method


def audit_note(**fields: object) -> None:
    """Adds to the audit record of the current call (target, version_before,
    version_after, or any detail); a no-op outside an audited call."""
    note = _audit_note.get()
    if note is not None:
        note.update({k: str(v) for k, v in fields.items()})


def audit_skip() -> None:
    """This call is not worth a record (e.g. a quota allocation below the threshold)."""
    audit_note(skip="1")


_TENANT_HEADER_SET = frozenset(TENANT_HEADERS)


def _parse(
    metadata: tuple[tuple[str, str | bytes], ...] | None,
    method: str,
    bare: CallContext | None = None,
) -> tuple[CallContext, list[tuple[str, str]]]:
    """The call context the tenant headers give; ``bare``: the method's context
    without any (immutable, so one per method serves every such call)."""
    found: dict[str, str] = {}
    for key, value in metadata or ():
        if key in _TENANT_HEADER_SET and isinstance(value, str):
            found[key] = value[:256]
    if not found and bare is not None:
        return bare, []
    ctx = CallContext(
        # x-company-id is an alias of x-tenant-id.
        tenant_id=found.get("x-tenant-id") or found.get("x-company-id", ""),
        user_id=found.get("x-user-id", ""),
        subscription_tier=found.get("x-subscription-tier", "").strip().lower(),
        correlation_id=found.get("x-correlation-id", ""),
        method=method,
    )
    return ctx, list(found.items())


def _cert_names(context: grpc.aio.ServicerContext) -> list[str]:
    """The TLS client certificate's common name, then its subject alt names."""
    auth = context.auth_context()
    names = auth.get("x509_common_name", []) + auth.get("x509_subject_alternative_name", [])
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


@dataclass(eq=False, slots=True)
class _OpenStream:
    """A stream being served, as admitted: what a credentials reload checks again."""

    header_ctx: CallContext  # from its headers, before its identity was applied
    ctx: CallContext  # what its servicer sees
    metadata: Any
    context: grpc.aio.ServicerContext
    request: Any  # None for a client stream
    task: asyncio.Task[Any] | None = field(default_factory=asyncio.current_task)
    # Why a reload ended it (the status its caller gets).
    ended: HubError | None = None
    # Suspended at a yield: grpc is sending, a cancel would land in grpc's code.
    sending: bool = False


def _code_name(code: Any) -> str:
    """A status code's name, as grpc.aio reports it (a StatusCode or its number)."""
    if isinstance(code, grpc.StatusCode):
        return code.name
    for known in grpc.StatusCode:
        if known.value[0] == code:
            return known.name
    return "UNKNOWN"


async def _abort(context: grpc.aio.ServicerContext, error: HubError) -> None:
    if status_code_for(error) == grpc.StatusCode.INTERNAL:
        log.error("unmapped domain error: %r", error)
    await context.abort_with_status(to_status(error))


class CallWrapper:
    """Authenticates and authorizes each call (role table, bound tenant and
    service, per-caller limits), reads the tenant headers into the call context
    and echoes them back, turns domain errors into gRPC statuses, and records
    every call of an ``@audited`` method in the audit trail."""

    def __init__(
        self,
        audit: AuditLog | None = None,
        telemetry: Telemetry | None = None,
        *,
        authorizer: Authorizer | None = None,
        limits: CallerLimits | None = None,
        tier_of: Callable[[str], str] = lambda tenant_id: "",
    ) -> None:
        self._audit = audit
        self._telemetry = telemetry
        self._auth = authorizer or Authorizer()
        self._limits = limits
        # The stored tier of a tenant ("" when unknown): what a caller bound to
        # a tenant gets instead of its x-subscription-tier header.
        self._tier_of = tier_of
        # Streams open now, checked again when the credentials are reloaded.
        self._streams: set[_OpenStream] = set()

    def _span(self, method: str, metadata: Any) -> contextlib.AbstractContextManager[Any]:
        if self._telemetry is None:
            return NO_SPAN
        return self._telemetry.span(method, metadata)

    def _finished(self, method: str, outcome: str, started: float) -> None:
        elapsed_ms = (time.perf_counter() - started) * 1000
        if self._telemetry is not None:
            self._telemetry.rpc_finished(method, outcome, elapsed_ms)
        if access_log.isEnabledFor(logging.DEBUG):
            access_log.debug("%s %s %.2fms", method, outcome, elapsed_ms)

    def _identify(
        self, ctx: CallContext, metadata: Any, context: grpc.aio.ServicerContext
    ) -> CallContext:
        """Who the caller is: the context the servicer sees (a bound caller's
        tenant and stored tier, not its headers). A refused call is recorded
        with it too."""
        if is_open(ctx.method):  # grpc.health.v1 and reflection
            return ctx
        cert_names = _cert_names(context) if self._auth.client_certs else ()
        return self._as(ctx, self._auth.authenticate(metadata or (), cert_names))

    def _admit(self, ctx: CallContext, context: grpc.aio.ServicerContext, request: Any) -> None:
        """Whether the identified caller may make this call."""
        if is_open(ctx.method):
            return
        rule = self._auth.check_method(ctx.caller, ctx.method)
        if isinstance(request, Message):  # not a stream, nor a request that did not parse
            self._auth.check_request(ctx.caller, rule, request)
        if self._limits is not None and self._limits.rate:  # else no key (peer) is needed
            self._limits.take_call(self._caller_key(ctx.caller, context))

    def _admits_unidentified(self, method: str) -> bool:
        """Whether a call of ``method`` without tenant headers needs none of
        ``_identify`` and ``_admit`` but the per-caller limit: an open method,
        or a hub without credentials whose one caller, ANONYMOUS, the role
        table lets call it and whose requests it does not bind. Decided once
        per method, by asking the authorizer, when the method is wrapped."""
        if is_open(method):
            return True
        if self._auth.enabled or not ANONYMOUS.trusts_headers:
            return False
        try:
            self._auth.check_method(ANONYMOUS, method)
        except HubError:
            return False
        return True

    def _as(self, ctx: CallContext, identity: Identity) -> CallContext:
        if identity.trusts_headers:
            # A tenant's stored tier wins over the header, as in GetTenantConfig:
            # the header speaks only for tenants without a record.
            stored = self._tier_of(ctx.tenant_id) if ctx.tenant_id else ""
            if stored:
                ctx = replace(ctx, subscription_tier=stored)
            return ctx if identity is ANONYMOUS else replace(ctx, caller=identity)
        return replace(
            ctx,
            caller=identity,
            tenant_id=identity.tenant,
            ignored_tenant_id=ctx.tenant_id if ctx.tenant_id != identity.tenant else "",
            subscription_tier=self._tier_of(identity.tenant) if identity.tenant else "",
        )

    def _track(
        self,
        header_ctx: CallContext,
        ctx: CallContext,
        metadata: Any,
        context: grpc.aio.ServicerContext,
        request: Any,
    ) -> _OpenStream | None:
        if is_open(ctx.method) or not self._auth.enabled:
            return None
        stream = _OpenStream(header_ctx, ctx, metadata, context, request)
        self._streams.add(stream)
        return stream

    def _readmit(self, stream: _OpenStream) -> None:
        """Raises what admitting the stream's call would raise now: its caller
        is unknown, its role may no longer call the method, or its binding no
        longer covers what the stream serves."""
        cert_names = _cert_names(stream.context) if self._auth.client_certs else ()
        identity = self._auth.authenticate(stream.metadata or (), cert_names)
        rule = self._auth.check_method(identity, stream.ctx.method)
        if isinstance(stream.request, Message):
            request = type(stream.request)()
            request.CopyFrom(stream.request)  # as admitted (bound fields filled in)
            self._auth.check_request(identity, rule, request)
        if not identity.trusts_headers and identity.tenant:
            serves = stream.ctx.tenant_id
            if self._as(stream.header_ctx, identity).tenant_id != serves:
                raise PermissionDenied(
                    f"{identity.name} is bound to tenant {identity.tenant!r}, "
                    f"not {serves or 'all tenants'!r}",
                    field="tenant_id",
                )

    def reauthorize_streams(self) -> int:
        """After a credentials reload: ends every open stream whose caller may
        no longer make its call (UNAUTHENTICATED, PERMISSION_DENIED). Returns
        how many it ended."""
        ended = 0
        for stream in list(self._streams):
            if stream.ended is not None:
                continue
            try:
                self._readmit(stream)
            except HubError as e:
                stream.ended = e
                ended += 1
                log.info("%s: %s; stream ended", stream.ctx.method, e)
                # Idle in its servicer: cancelled there, the wrapper answers
                # with the status. Sending: the wrapper ends it after the send.
                if not stream.sending and stream.task is not None:
                    stream.task.cancel()
        return ended

    @staticmethod
    def _ended_by_reload(stream: _OpenStream | None) -> HubError | None:
        """On a CancelledError: the reason when the cancel was a reload's (the
        task goes on, to answer with that status), None when it was not."""
        if stream is None or stream.ended is None or stream.task is None:
            return None
        stream.task.uncancel()
        return stream.ended

    @staticmethod
    def _caller_key(identity: Identity, context: grpc.aio.ServicerContext) -> str:
        # Without credentials every caller is "anonymous": tell them apart by
        # connection instead.
        return identity.name if identity is not ANONYMOUS else context.peer() or "anonymous"

    async def _record(
        self,
        ctx: CallContext,
        context: grpc.aio.ServicerContext,
        note: dict[str, str],
        outcome: str,
    ) -> None:
        if self._audit is None or note.pop("skip", ""):
            return
        if isinstance(context, InProcessContext):  # the dashboard: named as it authenticated
            caller = ctx.caller.name
            note.update(context.origin)
        else:
            # Without credentials every caller is anonymous: its connection
            # tells them apart.
            peer = context.peer() or ""
            caller = ctx.caller.name if ctx.caller is not ANONYMOUS else peer
            if ctx.caller is not ANONYMOUS:
                note["peer"] = peer
        await self._audit.record(
            method=ctx.method,
            outcome=outcome,
            caller=caller,
            tenant_id=ctx.tenant_id,
            user_id=ctx.user_id,
            correlation_id=ctx.correlation_id,
            target=note.pop("target", ""),
            version_before=note.pop("version_before", ""),
            version_after=note.pop("version_after", ""),
            details=note,
        )

    def _streaming(
        self,
        method: str,
        enter: Callable[[CallContext, list[tuple[str, str]]], None],
        inner: Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]],
        *,
        bidirectional: bool,
    ) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
        """A server-streaming method (a Watch; envoy's ADS when bidirectional),
        admitted, counted against the caller's open streams, and ended when a
        credentials reload no longer allows it. An async generator function:
        grpc.aio runs anything else as a synchronous handler, in a thread."""

        async def serve(arg: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            # A bidirectional stream's argument is its requests, read by its
            # servicer; a server stream's is its one request, checked here.
            request = None if bidirectional else arg
            metadata = context.invocation_metadata()
            header_ctx, echo = _parse(metadata, method)
            outcome, started = "OK", time.perf_counter()
            caller = ""
            stream = None
            try:
                ctx = self._identify(header_ctx, metadata, context)
                self._admit(ctx, context, request)
                if self._limits is not None:
                    key = self._caller_key(ctx.caller, context)
                    self._limits.open_stream(key)
                    caller = key
                stream = self._track(header_ctx, ctx, metadata, context, request)
                enter(ctx, echo)
                if echo:
                    await context.send_initial_metadata(echo)
                async for response in inner(arg, context):
                    if stream is None:
                        yield response
                        continue
                    stream.sending = True
                    yield response
                    stream.sending = False
                    if stream.ended is not None:
                        raise stream.ended
            except HubError as e:
                outcome = status_code_for(e).name
                await _abort(context, e)
            except asyncio.CancelledError:
                revoked = self._ended_by_reload(stream)
                if revoked is None:
                    outcome = "CANCELLED"  # the client went away: normal for a stream
                    raise
                outcome = status_code_for(revoked).name
                await _abort(context, revoked)
            except Exception:
                outcome = "INTERNAL"
                raise
            finally:
                if stream is not None:
                    self._streams.discard(stream)
                if caller and self._limits is not None:
                    self._limits.close_stream(caller)
                self._finished(method, outcome, started)

        return serve

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The handler with all of the above around it. The hub wraps each
        method once when it registers its servicers (see ``WrappingServer``);
        as a grpc.aio interceptor it ran an interceptor chain and built the
        wrapped handler again on every call."""

        def enter(ctx: CallContext, echo: list[tuple[str, str]]) -> None:
            # grpc.aio runs every call in its own task, so the values set here
            # cannot leak into another call and need no reset.
            _current.set(ctx)
            if echo or ctx.tenant_id:
                # Log lines written while serving the call carry its tenant and
                # correlation ids (hub_client's structured logging reads this).
                set_context(
                    RequestContext(
                        ctx.tenant_id, ctx.user_id, ctx.subscription_tier, ctx.correlation_id
                    )
                )

        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            audit = bool(getattr(inner_uu, "__audited__", False) and self._audit)
            bare = CallContext(method=method)
            # Decided here, not per call: see _admits_unidentified.
            unidentified = self._admits_unidentified(method)
            limits = None if is_open(method) else self._limits
            telemetry = self._telemetry

            async def unary_unary(
                request: Any, context: grpc.aio.ServicerContext, in_span: bool = False
            ) -> Any:
                # With tracing on, the call runs again inside its span: without,
                # no span context is entered at all (``in_span``: the inner run).
                if telemetry is not None and telemetry.tracing and not in_span:
                    with telemetry.span(method, context.invocation_metadata()):
                        return await unary_unary(request, context, True)
                metadata = context.invocation_metadata()
                header_ctx, echo = _parse(metadata, method, bare)
                call_note: dict[str, str] | None = {} if audit else None
                if audit or _audit_note.get() is not None:
                    _audit_note.set(call_note)
                outcome, started = "OK", time.perf_counter()
                ctx = header_ctx
                try:
                    if header_ctx is bare and unidentified:
                        # No tenant headers and nothing to identify: the
                        # caller is ANONYMOUS, admitted by the role table.
                        if limits is not None and limits.rate:
                            limits.take_call(self._caller_key(ANONYMOUS, context))
                        _current.set(ctx)
                    else:
                        ctx = self._identify(header_ctx, metadata, context)
                        self._admit(ctx, context, request)
                        enter(ctx, echo)
                        if echo:
                            await context.send_initial_metadata(echo)
                    return await inner_uu(request, context)
                except HubError as e:
                    outcome = status_code_for(e).name
                    await _abort(context, e)
                except Exception:
                    outcome = "INTERNAL"
                    raise
                finally:
                    self._finished(method, outcome, started)
                    if call_note is not None:
                        await self._record(ctx, context, call_note, outcome)

            return replaced(handler, unary_unary=unary_unary)

        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            return replaced(
                handler,
                unary_stream=self._streaming(method, enter, inner_us, bidirectional=False),
            )

        if handler.stream_unary is not None:
            # RestoreBackup: checked, measured and logged here like every call;
            # its servicer maps its own errors and writes its own audit record.
            inner_su = handler.stream_unary

            async def stream_unary(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
                metadata = context.invocation_metadata()
                header_ctx, echo = _parse(metadata, method)
                outcome, started = "OK", time.perf_counter()
                with self._span(method, metadata):
                    try:
                        ctx = self._identify(header_ctx, metadata, context)
                        self._admit(ctx, context, None)
                        enter(ctx, echo)
                        return await inner_su(request_iterator, context)
                    except HubError as e:
                        outcome = status_code_for(e).name
                        await _abort(context, e)
                    except grpc.aio.AbortError:  # the servicer answered with a status
                        outcome = _code_name(context.code())
                        raise
                    except asyncio.CancelledError:
                        outcome = "CANCELLED"
                        raise
                    except Exception:
                        outcome = "INTERNAL"
                        raise
                    finally:
                        self._finished(method, outcome, started)

            return replaced(handler, stream_unary=stream_unary)

        if handler.stream_stream is not None:
            # envoy's ADS (hub_server/api/xds.py): a stream like a Watch, whose
            # requests its servicer reads.
            inner_ss = handler.stream_stream

            return replaced(
                handler,
                stream_stream=self._streaming(method, enter, inner_ss, bidirectional=True),
            )
        return handler
