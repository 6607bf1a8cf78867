"""ObservabilityService: alerts and the audit trail."""

from __future__ import annotations

from aitrading.hub.v1 import observability_pb2 as obs
from aitrading.hub.v1 import observability_pb2_grpc, types_pb2

from hub_server.domain.audit import AuditLog


def _seconds(ts) -> float:  # type: ignore[no-untyped-def]
    return float(ts.seconds + ts.nanos / 1e9)


class ObservabilityServicer(observability_pb2_grpc.ObservabilityServiceServicer):
    def __init__(self, audit: AuditLog, hub_id: str) -> None:
        self._audit = audit
        self._hub_id = hub_id

    def _header(self, revision: int) -> types_pb2.ResponseHeader:
        return types_pb2.ResponseHeader(revision=revision, hub_id=self._hub_id)

    async def ListAuditEvents(self, request, context):  # type: ignore[no-untyped-def]
        events, token, revision = await self._audit.list(
            tenant_id=request.tenant_id,
            method=request.method,
            start=_seconds(request.start_time) if request.HasField("start_time") else 0.0,
            end=_seconds(request.end_time) if request.HasField("end_time") else 0.0,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return obs.ListAuditEventsResponse(
            header=self._header(revision), events=events, next_page_token=token
        )
