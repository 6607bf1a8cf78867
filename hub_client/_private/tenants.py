"""Tenants and their quotas: tenant records and tiers, usage, allocations
(retried with a request id, so each counts once) and ``Allocation``, one held
for the length of a block."""

from __future__ import annotations

import asyncio
import logging
import uuid
from types import TracebackType
from typing import Any

from aitrading.hub.v1 import tenant_pb2

from hub_client._private import to_pb
from hub_client._private.errors import HubError
from hub_client._private.models import ResourceUsage, Tenant, lookup
from hub_client._private.transport import Transport

log = logging.getLogger(__name__)

# Rates count what was done: a call made within the hour is not given back.
RATE_RESOURCES = frozenset({"api_calls_per_hour"})

_QUOTA_RESOURCES = {
    "api_calls_per_hour": tenant_pb2.QUOTA_RESOURCE_API_CALLS_PER_HOUR,
    "websocket_connections": tenant_pb2.QUOTA_RESOURCE_WEBSOCKET_CONNECTIONS,
    "concurrent_requests": tenant_pb2.QUOTA_RESOURCE_CONCURRENT_REQUESTS,
    "data_storage_mb": tenant_pb2.QUOTA_RESOURCE_DATA_STORAGE_MB,
}


def _quota_resource(resource: str) -> tenant_pb2.QuotaResource.ValueType:
    return lookup(_QUOTA_RESOURCES, resource, "resource")


class TenantsClient:
    """The TenantService calls; ``tenant`` None means this client's tenant."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    async def create_tenant(
        self, tenant_id: str, *, tier: str, display_name: str, timeout: float | None = None
    ) -> Tenant:
        t = self._transport
        request = tenant_pb2.CreateTenantRequest(
            tenant_id=tenant_id, tier=to_pb.tier(tier), display_name=display_name
        )
        resp = await t.call(t.tenant_stub.CreateTenant, request, timeout=timeout)
        return Tenant.from_pb(resp.tenant)

    async def get_tenant(self, tenant_id: str, *, timeout: float | None = None) -> Tenant:
        t = self._transport
        resp = await t.call(
            t.tenant_stub.GetTenant,
            tenant_pb2.GetTenantRequest(tenant_id=tenant_id),
            timeout=timeout,
        )
        return Tenant.from_pb(resp.tenant)

    async def list_tenants(self, *, tier: str | None, timeout: float | None = None) -> list[Tenant]:
        t = self._transport
        tier_value = to_pb.tier(tier) if tier else 0  # checked before any RPC
        budget = t.budget(timeout)  # for all pages together
        out: list[Tenant] = []
        token = ""
        while True:
            resp = await t.call(
                t.tenant_stub.ListTenants,
                tenant_pb2.ListTenantsRequest(page_token=token, tier=tier_value),
                timeout=budget.left(),
            )
            out.extend(Tenant.from_pb(m) for m in resp.tenants)
            token = resp.next_page_token
            if not token:
                return out

    async def set_tier(
        self, tenant_id: str, tier: str, *, expected_revision: int, timeout: float | None = None
    ) -> Tenant:
        t = self._transport
        request = tenant_pb2.UpdateTenantTierRequest(
            tenant_id=tenant_id, tier=to_pb.tier(tier), expected_revision=expected_revision
        )
        resp = await t.call(t.tenant_stub.UpdateTenantTier, request, timeout=timeout)
        return Tenant.from_pb(resp.tenant)

    async def usage(
        self, tenant: str | None, *, timeout: float | None = None
    ) -> dict[str, ResourceUsage]:
        t = self._transport
        resp = await t.call(
            t.tenant_stub.GetUsage,
            tenant_pb2.GetUsageRequest(tenant_id=t.tenant(tenant)),
            timeout=timeout,
        )
        return {u.resource: u for u in map(ResourceUsage.from_pb, resp.usage)}

    async def check_quota(
        self, resource: str, amount: int, *, tenant: str | None, timeout: float | None = None
    ) -> bool:
        t = self._transport
        resp = await t.call(
            t.tenant_stub.CheckQuota,
            tenant_pb2.CheckQuotaRequest(
                tenant_id=t.tenant(tenant), resource=_quota_resource(resource), amount=amount
            ),
            timeout=timeout,
        )
        return bool(resp.allowed)

    # Allocate and Release carry a request id (the caller's, or a new random
    # one) and are retried with it: the hub counts each once.

    async def allocate(
        self,
        resource: str,
        amount: int,
        *,
        tenant: str | None,
        request_id: str | None,
        timeout: float | None = None,
    ) -> ResourceUsage:
        t = self._transport
        return await self._change(
            t.tenant_stub.Allocate,
            tenant_pb2.AllocateRequest,
            resource,
            amount,
            tenant,
            request_id,
            timeout,
        )

    async def release(
        self,
        resource: str,
        amount: int,
        *,
        tenant: str | None,
        request_id: str | None,
        timeout: float | None = None,
    ) -> ResourceUsage:
        t = self._transport
        return await self._change(
            t.tenant_stub.Release,
            tenant_pb2.ReleaseRequest,
            resource,
            amount,
            tenant,
            request_id,
            timeout,
        )

    async def _change(
        self,
        method: Any,
        request_type: Any,
        resource: str,
        amount: int,
        tenant: str | None,
        request_id: str | None,
        timeout: float | None,
    ) -> ResourceUsage:
        t = self._transport
        request = request_type(
            tenant_id=t.tenant(tenant),
            resource=_quota_resource(resource),
            amount=amount,
            request_id=request_id or uuid.uuid4().hex,
        )
        resp = await t.call_retried(method, request, timeout=timeout)
        return ResourceUsage.from_pb(resp.usage)

    def allocation(
        self, resource: str, amount: int, *, tenant: str | None, timeout: float | None = None
    ) -> Allocation:
        _quota_resource(resource)  # an unknown resource fails here, not on entry
        return Allocation(self, resource, amount, tenant, timeout)


class Allocation:
    """Allocates on entry, releases on exit (also on error or cancellation)::

        async with hub.allocation("websocket_connections") as usage:
            ...  # usage.used includes this allocation

    Entry raises ``QuotaExceeded`` when the amount does not fit. For
    ``api_calls_per_hour`` nothing is released on exit: calls made stay counted
    in their hour.
    """

    def __init__(
        self,
        tenants: TenantsClient,
        resource: str,
        amount: int,
        tenant: str | None,
        timeout: float | None = None,
    ) -> None:
        self._tenants = tenants
        self.resource = resource
        self.amount = amount
        self.tenant = tenant
        self.timeout = timeout  # of the allocation, and of the release
        self.usage: ResourceUsage | None = None

    async def __aenter__(self) -> ResourceUsage:
        self.usage = await self._tenants.allocate(
            self.resource, self.amount, tenant=self.tenant, request_id=None, timeout=self.timeout
        )
        return self.usage

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.usage is None or self.resource in RATE_RESOURCES:
            return
        self.usage = None
        # Shielded: a cancelled block still gives its allocation back.
        release = asyncio.ensure_future(
            self._tenants.release(
                self.resource,
                self.amount,
                tenant=self.tenant,
                request_id=None,
                timeout=self.timeout,
            )
        )
        try:
            await asyncio.shield(release)
        except HubError as e:
            if exc is None:
                raise
            log.warning("releasing %d %s failed: %s", self.amount, self.resource, e)
