"""hubctl alerts, audit, errors and metrics: what the hub's ObservabilityService
exposes (hub_client has no wrapper for it: these use the generated stub)."""

from __future__ import annotations

import argparse
import contextlib
import re
import time
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from typing import Any

from aitrading.hub.v1 import observability_pb2 as obs
from aitrading.hub.v1 import observability_pb2_grpc, registry_pb2

from hub_client import ErrorCategory, resume_watch
from hubctl.app import Context, UsageError, arg, command, group
from hubctl.output import (
    Style,
    ago,
    clock,
    iso,
    key_values,
    local_time,
    span,
    table,
)
from hubctl.tenant_commands import RESOURCES

group("alerts", "active alerts, their history, and a live feed")

_SEVERITIES = {
    obs.ALERT_SEVERITY_UNSPECIFIED: "unspecified",
    obs.ALERT_SEVERITY_WARNING: "warning",
    obs.ALERT_SEVERITY_CRITICAL: "critical",
}
CATEGORIES = tuple(c.value for c in ErrorCategory)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _stub(ctx: Context) -> observability_pb2_grpc.ObservabilityServiceStub:
    return observability_pb2_grpc.ObservabilityServiceStub(ctx.hub.channel)


def _tenant_filter(help: str) -> Any:
    # Shadows the global --tenant (the caller's x-tenant-id) after the command name.
    return arg("--tenant", dest="only_tenant", default="", metavar="ID", help=help)


# -- alerts ----------------------------------------------------------------------


def alert_json(a: obs.Alert) -> dict[str, Any]:
    return {
        "id": a.id,
        "rule": a.rule,
        "severity": _SEVERITIES.get(a.severity, "unspecified"),
        "service": a.service,
        "instance_id": a.instance_id,
        "tenant_id": a.tenant_id,
        "summary": a.summary,
        "raised_at": iso(a.raised_at),
        "resolved_at": iso(a.resolved_at),
        "active": a.active,
    }


def _subject(a: obs.Alert) -> str:
    """``service``, ``service/instance``, ``tenant acme`` or ``tenant acme/resource``
    (tenant alerts name the resource in instance_id)."""
    if a.service:
        return f"{a.service}/{a.instance_id}" if a.instance_id else a.service
    if a.tenant_id:
        return f"tenant {a.tenant_id}" + (f"/{a.instance_id}" if a.instance_id else "")
    return a.instance_id or "-"


def _severity(a: obs.Alert, st: Style) -> str:
    word = _SEVERITIES.get(a.severity, "unspecified")
    return st.state(word)


@command(
    "alerts list",
    "the active alerts (and, with --history N, the N latest raise/resolve records)",
    arg("--history", type=int, default=0, metavar="N", help="also the N latest history records"),
    _tenant_filter("only alerts about this tenant"),
)
async def alerts_list(ctx: Context, args: argparse.Namespace) -> None:
    if args.history < 0:
        raise UsageError("--history must be 0 or more")
    resp = await ctx.hub.call(
        _stub(ctx).ListAlerts,
        obs.ListAlertsRequest(history_limit=args.history, tenant_id=args.only_tenant),
    )
    data: dict[str, Any] = {
        "revision": resp.header.revision,
        "active": [alert_json(a) for a in resp.active],
    }
    if args.history:
        data["history"] = [alert_json(a) for a in resp.history]

    def text(st: Style) -> Iterable[str]:
        now = time.time()
        if resp.active:
            body = [
                [_severity(a, st), st(a.rule, "bold"), _subject(a),
                 ago(a.raised_at.ToNanoseconds() / 1e9, now), a.summary]
                for a in resp.active
            ]  # fmt: skip
            yield from table(["SEVERITY", "RULE", "SUBJECT", "RAISED", "SUMMARY"], body, st)
        else:
            yield st("no active alerts", "green")
        if args.history:
            yield ""
            yield st("history, newest first:", "bold")
            if not resp.history:
                yield st("nothing raised or resolved yet", "dim")
                return
            body = []
            for a in resp.history:
                event = "RAISED" if a.active else "RESOLVED"
                when = a.raised_at if a.active else a.resolved_at
                body.append(
                    [local_time(when), st.state(event), _severity(a, st), a.rule, _subject(a),
                     a.summary]
                )  # fmt: skip
            yield from table(["TIME", "EVENT", "SEVERITY", "RULE", "SUBJECT", "SUMMARY"], body, st)

    ctx.emit(data, text)


async def _watch_alerts(ctx: Context, tenant: str) -> AsyncIterator[tuple[obs.Alert, bool]]:
    """(alert, initial) pairs; resumes from the last revision after a disconnect."""
    stub = _stub(ctx)

    def open_stream(start: int) -> Any:
        return stub.WatchAlerts(
            obs.WatchAlertsRequest(start_revision=start, tenant_id=tenant),
            metadata=ctx.hub.context.metadata(),
            wait_for_ready=True,
        )

    def interrupted(why: str) -> None:
        ctx.output.note(f"alert watch interrupted ({why}); resuming")

    stream = resume_watch(open_stream, on_interrupt=interrupted)
    async with contextlib.aclosing(stream):
        async for msg in stream:
            if msg.kind == registry_pb2.WATCH_RESPONSE_KIND_SNAPSHOT:
                for a in msg.alerts:
                    yield a, True
            elif msg.kind == registry_pb2.WATCH_RESPONSE_KIND_EVENTS:
                for a in msg.alerts:
                    yield a, False


@command(
    "alerts watch",
    "stream alerts as they are raised and resolved (Ctrl-C to stop)",
    _tenant_filter("only alerts about this tenant"),
    streaming=True,
)
async def alerts_watch(ctx: Context, args: argparse.Namespace) -> None:
    what = f"alerts about tenant {args.only_tenant}" if args.only_tenant else "every alert"
    ctx.output.note(f"watching {what} on {ctx.target}; Ctrl-C to stop")
    async for alert, initial in _watch_alerts(ctx, args.only_tenant):
        event = "ACTIVE" if initial else "RAISED" if alert.active else "RESOLVED"

        def line(
            st: Style, a: obs.Alert = alert, event: str = event, initial: bool = initial
        ) -> str:
            severity = _SEVERITIES.get(a.severity, "unspecified")
            tail = st("(existing)" if initial else "", "dim")
            return (
                f"{st(clock(), 'dim')}  {st.state(event, f'{event:<8}')}  "
                f"{st.state(severity, f'{severity:<8}')}  "
                f"{st(f'{a.rule:<17}', 'bold')}  {_subject(a)}  {a.summary}  {tail}"
            ).rstrip()

        ctx.output.event({"event": event.lower(), "initial": initial, **alert_json(alert)}, line)


# -- audit -------------------------------------------------------------------------


def parse_when(text: str, now: float | None = None) -> float:
    """Seconds since the epoch from a duration ago (``90s``, ``15m``, ``2h``,
    ``1h30m``, ``7d``) or a time (ISO 8601; without a zone, local time)."""
    now = time.time() if now is None else now
    value = text.strip()
    if value == "now":
        return now
    if re.fullmatch(rf"(?:{_DURATION_PART.pattern})+", value):
        total = sum(float(n) * _UNITS[u] for n, u in _DURATION_PART.findall(value))
        return now - total
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(
            f"{text!r} is neither a duration (90s, 15m, 2h, 1h30m, 7d) "
            "nor a time (2024-05-01T14:00:00Z, 2024-05-01 14:00, 2024-05-01)"
        ) from None
    return when.timestamp()  # naive: local time


def audit_json(e: obs.AuditEvent) -> dict[str, Any]:
    return {
        "id": e.id,
        "time": iso(e.time),
        "caller": e.caller,
        "tenant_id": e.tenant_id,
        "user_id": e.user_id,
        "method": e.method,
        "target": e.target,
        "outcome": e.outcome,
        "version_before": e.version_before,
        "version_after": e.version_after,
        "correlation_id": e.correlation_id,
        "hub_id": e.hub_id,
        "details": dict(e.details),
    }


def _short_method(method: str) -> str:
    """``/aitrading.hub.v1.TenantService/CreateTenant`` -> ``TenantService/CreateTenant``."""
    service, _, name = method.strip("/").rpartition("/")
    return f"{service.rsplit('.', 1)[-1]}/{name}" if service else name


@command(
    "audit",
    "the audit trail of changes, oldest first",
    _tenant_filter("only calls made for this tenant"),
    arg("--method", default="", help="only this method (Register, or its full name)"),
    arg("--since", default="", metavar="WHEN",
        help="from this long ago (15m, 2h, 7d) or this time (2024-05-01T14:00Z)"),
    arg("--until", default="", metavar="WHEN", help="before this long ago, or this time"),
    arg("--limit", type=int, default=100, metavar="N", help="at most N events (default 100)"),
)  # fmt: skip
async def audit(ctx: Context, args: argparse.Namespace) -> None:
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    now = time.time()
    start = parse_when(args.since, now) if args.since else 0.0
    end = parse_when(args.until, now) if args.until else 0.0
    if start and end and end <= start:
        raise UsageError("--until must be later than --since")
    stub = _stub(ctx)
    events: list[obs.AuditEvent] = []
    token, more = "", False
    while len(events) < args.limit:
        request = obs.ListAuditEventsRequest(
            tenant_id=args.only_tenant,
            method=args.method,
            page_size=min(args.limit - len(events), 1000),
            page_token=token,
        )
        if start:
            request.start_time.FromNanoseconds(int(start * 1e9))
        if end:
            request.end_time.FromNanoseconds(int(end * 1e9))
        resp = await ctx.hub.call(stub.ListAuditEvents, request)
        events.extend(resp.events)
        token = resp.next_page_token
        if not token:
            break
    else:
        more = bool(token)
    data = {"events": [audit_json(e) for e in events], "more": more}

    def text(st: Style) -> Iterable[str]:
        if not events:
            yield st("no audit events" + (" match" if args.only_tenant or args.method or
                                          args.since or args.until else ""), "dim")  # fmt: skip
            return
        body = []
        for e in events:
            who = e.user_id or e.caller or "-"
            if e.tenant_id:
                who = f"{who}@{e.tenant_id}"
            change = ""
            if e.version_before or e.version_after:
                change = f"{e.version_before or '-'} -> {e.version_after or '-'}"
            outcome = st(e.outcome, "green" if e.outcome == "OK" else "red")
            body.append(
                [local_time(e.time), _short_method(e.method), outcome, e.target or "-", who,
                 change]
            )  # fmt: skip
        yield from table(["TIME", "METHOD", "OUTCOME", "TARGET", "WHO", "VERSION"], body, st)

    ctx.emit(data, text)
    if more:
        ctx.output.note(f"more events after these {len(events)}; raise --limit or narrow --since")


# -- errors ------------------------------------------------------------------------


def pattern_json(p: obs.ErrorPattern) -> dict[str, Any]:
    return {
        "fingerprint": p.fingerprint,
        "service": p.service,
        "tenant_id": p.tenant_id,
        "category": p.category,
        "severity": p.severity,
        "exception_type": p.exception_type,
        "normalized_message": p.normalized_message,
        "sample": p.sample,
        "count": p.count,
        "first_seen": iso(p.first_seen),
        "last_seen": iso(p.last_seen),
    }


@command(
    "errors",
    "error patterns (ErrorDNA) reported by services, most frequent first",
    arg("--service", default="", complete="services", help="only this service's patterns"),
    _tenant_filter("only patterns seen for this tenant"),
    arg("--category", default="", choices=CATEGORIES, help="only this category"),
    arg("--limit", type=int, default=100, metavar="N", help="at most N (default 100, max 1000)"),
)
async def errors(ctx: Context, args: argparse.Namespace) -> None:
    resp = await ctx.hub.call(
        _stub(ctx).ListErrorPatterns,
        obs.ListErrorPatternsRequest(
            service=args.service,
            tenant_id=args.only_tenant,
            category=args.category,
            limit=args.limit,
        ),
    )
    patterns = list(resp.patterns)

    def text(st: Style) -> Iterable[str]:
        if not patterns:
            yield st("no error patterns reported", "green")
            return
        now = time.time()
        body = []
        for p in patterns:
            message = p.normalized_message or p.sample
            if p.exception_type:
                message = f"{p.exception_type}: {message}"
            if len(message) > 70:
                message = message[:67] + "..."
            body.append(
                [str(p.count), p.service, p.tenant_id or "-", p.category, st.state(p.severity),
                 ago(p.last_seen.ToNanoseconds() / 1e9, now), message]
            )  # fmt: skip
        headers = ["COUNT", "SERVICE", "TENANT", "CATEGORY", "SEVERITY", "LAST SEEN", "MESSAGE"]
        yield from table(headers, body, st)

    ctx.emit({"revision": resp.header.revision, "patterns": [pattern_json(p) for p in patterns]},
             text)  # fmt: skip


# -- metrics -----------------------------------------------------------------------


def _ms(value: float) -> str:
    return f"{value:.1f}ms" if value < 1000 else f"{value / 1000:.2f}s"


@command("metrics", "services by health, tenants' usage, and this replica's RPC traffic")
async def metrics(ctx: Context, args: argparse.Namespace) -> None:
    resp = await ctx.hub.call(_stub(ctx).GetSystemMetrics, obs.GetSystemMetricsRequest())
    rpcs = sorted(resp.rpcs, key=lambda r: (-r.calls, r.method))
    data = {
        "hub_id": resp.hub_id,
        "leader": resp.leader,
        "uptime_seconds": resp.uptime_seconds,
        "watch_streams": resp.watch_streams,
        "revision": resp.header.revision,
        "services": [
            {"service": s.service, "instances": s.instances, "healthy": s.healthy,
             "degraded": s.degraded, "unhealthy": s.unhealthy, "unknown": s.unknown}
            for s in resp.services
        ],
        "tenants": [
            {"tenant_id": t.tenant_id, "tier": t.tier, "usage": dict(t.usage),
             "limits": dict(t.limits)}
            for t in resp.tenants
        ],
        "rpcs": [
            {"method": r.method, "calls": r.calls, "errors": r.errors,
             "error_rate": r.error_rate, "calls_per_second": r.calls_per_second,
             "p50_ms": r.p50_ms, "p95_ms": r.p95_ms, "p99_ms": r.p99_ms}
            for r in rpcs
        ],
    }  # fmt: skip

    def text(st: Style) -> Iterable[str]:
        def count(n: int, colour: str) -> str:
            return st(str(n), colour) if n else "0"

        role = st("leader", "green") if resp.leader else "follower"
        yield from key_values(
            [
                ("hub", f"{st(resp.hub_id, 'bold')} ({role}), up {span(resp.uptime_seconds)}"),
                ("watch streams", str(resp.watch_streams)),
                ("revision", str(resp.header.revision)),
            ],
            st,
        )
        yield ""
        if resp.services:
            body = [
                [st(s.service, "bold"), str(s.instances), count(s.healthy, "green"),
                 count(s.degraded, "yellow"), count(s.unhealthy, "red"), count(s.unknown, "dim")]
                for s in resp.services
            ]  # fmt: skip
            headers = ["SERVICE", "INSTANCES", "HEALTHY", "DEGRADED", "UNHEALTHY", "UNKNOWN"]
            yield from table(headers, body, st)
        else:
            yield st("no services registered", "dim")
        if resp.tenants:
            yield ""
            body = []
            for t in resp.tenants:
                cells = [st(t.tenant_id, "bold"), st.state(t.tier)]
                for r in RESOURCES:
                    if r not in t.limits:  # nothing metered yet
                        cells.append(st("-", "dim"))
                        continue
                    used, limit = t.usage.get(r, 0), t.limits[r]
                    share = used / limit if limit else (1.0 if used else 0.0)
                    colour = "red" if share >= 1 else "yellow" if share >= 0.8 else ""
                    cells.append(st(f"{used}/{limit}", colour))
                body.append(cells)
            headers = ["TENANT", "TIER", "API CALLS/H", "WEBSOCKETS", "CONCURRENT", "STORAGE MB"]
            yield from table(headers, body, st)
        yield ""
        body = [
            [_short_method(r.method), str(r.calls), f"{r.calls_per_second:.2f}",
             count(r.errors, "red") + (f" ({r.error_rate * 100:.0f}%)" if r.errors else ""),
             _ms(r.p50_ms), _ms(r.p95_ms), _ms(r.p99_ms)]
            for r in rpcs
        ]  # fmt: skip
        yield from table(["METHOD", "CALLS", "PER SEC", "ERRORS", "P50", "P95", "P99"], body, st)

    ctx.emit(data, text)
