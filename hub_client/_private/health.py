"""Health: the spec of what the hub's probes check (given at registration) and
what they found."""

from __future__ import annotations

from aitrading.hub.v1 import health_pb2, types_pb2

from hub_client._private import to_pb
from hub_client._private.models import Health
from hub_client._private.transport import Transport


def health_check(
    *,
    http: str | None = None,
    grpc_service: str | None = None,
    tcp: bool = False,
    interval: float | None = None,
    timeout: float | None = None,
) -> types_pb2.HealthCheck:
    """A health-check spec: ``health_check(http="/health")``, ``health_check(tcp=True)``,
    ``health_check(grpc_service="")`` for the standard gRPC health service."""
    hc = types_pb2.HealthCheck(interval=to_pb.duration(interval), timeout=to_pb.duration(timeout))
    if http is not None:
        hc.http.path = http
    elif grpc_service is not None:
        hc.grpc.service = grpc_service
    elif tcp:
        hc.tcp.SetInParent()
    return hc


class HealthClient:
    """The HealthService calls."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    async def get_health(self, service: str, *, timeout: float | None = None) -> list[Health]:
        t = self._transport
        resp = await t.call(
            t.health_stub.GetHealth, health_pb2.GetHealthRequest(service=service), timeout=timeout
        )
        return [Health.from_pb(r) for r in resp.instances]
