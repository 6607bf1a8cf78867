"""ObservabilityService: alerts and the audit trail."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Protocol

from aitrading.hub.v1 import observability_pb2 as obs
from aitrading.hub.v1 import observability_pb2_grpc

from hub_server.kernel.errors import InvalidArgument
from hub_server.observability.alerts import as_resolved
from hub_server.rpc.header import response_header
from hub_server.rpc.streaming import watch_stream
from hub_server.store.event_log import EventLog
from hub_server.store.mirror import REMOVED, Change

MAX_HISTORY = 1000


def _seconds(ts) -> float:
    return float(ts.seconds + ts.nanos / 1e9)


class AuditTrail(Protocol):
    """What the servicer reads of the audit trail (hub_server.observability.audit.AuditLog)."""

    async def list(
        self,
        *,
        tenant_id: str = "",
        method: str = "",
        start: float = 0.0,
        end: float = 0.0,
        page_size: int = 100,
        page_token: str = "",
    ) -> tuple[list[obs.AuditEvent], str, int]: ...


class ActiveAlerts(Protocol):
    """What it reads of the alerts (hub_server.observability.alerts.Alerts)."""

    @property
    def revision(self) -> int: ...
    @property
    def log(self) -> EventLog[Change[obs.Alert]]: ...
    def active_alerts(self) -> list[obs.Alert]: ...
    async def history(self, limit: int) -> list[obs.Alert]: ...


class ErrorReports(Protocol):
    """What it uses of the error patterns
    (hub_server.observability.error_patterns.ErrorPatterns)."""

    async def report(self, service: str, patterns: list[obs.ErrorPattern]) -> int: ...
    async def list(
        self, *, service: str = "", tenant_id: str = "", category: str = "", limit: int = 0
    ) -> tuple[list[obs.ErrorPattern], int]: ...


class SystemReport(Protocol):
    """GetSystemMetrics' answer (hub_server.observability.hub_metrics.SystemMetrics)."""

    def revision(self) -> int: ...
    async def collect(self) -> obs.GetSystemMetricsResponse: ...


class ObservabilityServicer(observability_pb2_grpc.ObservabilityServiceServicer):
    def __init__(
        self,
        audit: AuditTrail,
        alerts: ActiveAlerts,
        errors: ErrorReports,
        system: SystemReport,
        hub_id: str,
        *,
        progress_interval: float = 10.0,
    ) -> None:
        self._audit = audit
        self._alerts = alerts
        self._errors = errors
        self._system = system
        self._hub_id = hub_id
        self.progress_interval = progress_interval

    def _active(self, tenant_id: str) -> list[obs.Alert]:
        alerts = [
            a for a in self._alerts.active_alerts() if not tenant_id or a.tenant_id == tenant_id
        ]
        return sorted(alerts, key=lambda a: a.raised_at.ToNanoseconds(), reverse=True)

    async def ListAlerts(self, request, context):
        if not 0 <= request.history_limit <= MAX_HISTORY:
            raise InvalidArgument.single("history_limit", f"must be between 0 and {MAX_HISTORY}")
        history = await self._alerts.history(request.history_limit)
        if request.tenant_id:
            history = [a for a in history if a.tenant_id == request.tenant_id]
        return obs.ListAlertsResponse(
            header=response_header(self._hub_id, self._alerts.revision),
            active=self._active(request.tenant_id),
            history=history,
        )

    async def WatchAlerts(self, request, context) -> AsyncIterator[obs.WatchAlertsResponse]:
        tenant = request.tenant_id

        def snapshot() -> tuple[list[obs.Alert], int]:
            return self._active(tenant), self._alerts.revision

        def select(change: Change[obs.Alert]) -> obs.Alert | None:
            alert = change.value
            if alert is None or (tenant and alert.tenant_id != tenant):
                return None
            if change.cache is None:
                change.cache = as_resolved(alert, time.time()) if change.type == REMOVED else alert
            return change.cache

        def respond(kind, items, revision, more, compact):
            return obs.WatchAlertsResponse(
                header=response_header(self._hub_id, revision),
                kind=kind,
                alerts=items,
                compact_revision=compact,
            )

        async for response in watch_stream(
            self._alerts.log,
            start_revision=request.start_revision,
            snapshot=snapshot,
            select=select,
            respond=respond,
            progress_interval=self.progress_interval,
        ):
            yield response

    async def ListAuditEvents(self, request, context):
        events, token, revision = await self._audit.list(
            tenant_id=request.tenant_id,
            method=request.method,
            start=_seconds(request.start_time) if request.HasField("start_time") else 0.0,
            end=_seconds(request.end_time) if request.HasField("end_time") else 0.0,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return obs.ListAuditEventsResponse(
            header=response_header(self._hub_id, revision), events=events, next_page_token=token
        )

    async def ReportErrors(self, request, context):
        revision = await self._errors.report(request.service, list(request.patterns))
        return obs.ReportErrorsResponse(
            header=response_header(self._hub_id, revision), accepted=len(request.patterns)
        )

    async def ListErrorPatterns(self, request, context):
        patterns, revision = await self._errors.list(
            service=request.service,
            tenant_id=request.tenant_id,
            category=request.category,
            limit=request.limit,
        )
        return obs.ListErrorPatternsResponse(
            header=response_header(self._hub_id, revision), patterns=patterns
        )

    async def GetSystemMetrics(self, request, context):
        response = await self._system.collect()
        response.header.CopyFrom(response_header(self._hub_id, self._system.revision()))
        return response
