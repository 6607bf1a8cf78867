"""TenantService: tenants, their tier, and quotas. Check the request, call the
domain, fill the header."""

from __future__ import annotations

from typing import Protocol

from aitrading.hub.v1 import tenant_pb2, tenant_pb2_grpc, types_pb2

from hub_server.api.config import TIER_VALUES, TIERS
from hub_server.config.merge import MergedConfig
from hub_server.kernel import validation
from hub_server.kernel.errors import Violations
from hub_server.kernel.validation import MAX_PAGE
from hub_server.quotas import arithmetic as quotas
from hub_server.rpc.context import audit_note, audit_skip, audited, current
from hub_server.rpc.header import response_header
from hub_server.rpc.paging import decode_page_token, encode_page_token
from hub_server.tenancy.service import TenantRecord

MAX_DISPLAY_NAME = 256

# QUOTA_RESOURCE_<NAME> is the resource <name>.
RESOURCE_VALUES: dict[str, int] = {
    r.name: tenant_pb2.QuotaResource.Value(f"QUOTA_RESOURCE_{r.name.upper()}")
    for r in quotas.RESOURCES
}
RESOURCES_BY_VALUE: dict[int, quotas.Resource] = {
    RESOURCE_VALUES[r.name]: r for r in quotas.RESOURCES
}


def _timestamp_ns(seconds: float) -> int:
    return int(seconds * 1e9)


def tenant_to_pb(record: TenantRecord) -> tenant_pb2.Tenant:
    out = tenant_pb2.Tenant(
        tenant_id=record.tenant_id,
        display_name=record.display_name,
        tier=TIER_VALUES.get(record.tier, types_pb2.SUBSCRIPTION_TIER_UNSPECIFIED),
        revision=record.revision,
    )
    out.created_at.FromNanoseconds(_timestamp_ns(record.created_at))
    out.updated_at.FromNanoseconds(_timestamp_ns(record.updated_at))
    return out


def usage_to_pb(usage: quotas.Usage) -> tenant_pb2.ResourceUsage:
    out = tenant_pb2.ResourceUsage(
        resource=RESOURCE_VALUES[usage.resource.name],
        used=usage.used,
        limit=usage.limit,
    )
    if usage.window_end:
        out.window_start.FromSeconds(usage.window_start)
        out.window_end.FromSeconds(usage.window_end)
    return out


def _tenant_id(v: Violations, requested: str) -> str:
    """The request's tenant, or the caller's x-tenant-id."""
    ctx = current()
    tenant_id = requested or ctx.tenant_id
    if not tenant_id and ctx.ignored_tenant_id:
        v.add(
            "tenant_id",
            "is required: the x-tenant-id header was ignored because this caller is not "
            "trusted to name a tenant (only admin and gateway callers are)",
        )
    elif not tenant_id:
        v.add("tenant_id", "is required (or send x-tenant-id)")
    else:
        validation.check_safe_id(v, "tenant_id", tenant_id)
    return tenant_id


def _resource(v: Violations, value: int) -> quotas.Resource:
    resource = RESOURCES_BY_VALUE.get(value)
    if resource is None:
        v.add("resource", "must be one of the QuotaResource values")
        return quotas.RESOURCES[0]
    return resource


def _amount(v: Violations, amount: int) -> None:
    problem = quotas.check_amount(amount)
    if problem:
        v.add("amount", problem)


def _request_id(v: Violations, request_id: str) -> None:
    """Optional; part of an etcd key when given."""
    validation.check_safe_id(v, "request_id", request_id, required=False)


class TenantRecords(Protocol):
    """What the servicer uses of the tenants (hub_server.tenancy.service.Tenants)."""

    @property
    def revision(self) -> int: ...
    def require(self, tenant_id: str) -> TenantRecord: ...
    def page(self, after: str, size: int, tier: str | None) -> tuple[list[TenantRecord], bool]: ...
    async def create(self, tenant_id: str, display_name: str, tier: str) -> TenantRecord: ...
    async def set_tier(
        self, tenant_id: str, tier: str, *, expected_revision: int = 0
    ) -> tuple[TenantRecord, str]: ...


class LiveConfigs(Protocol):
    """The config layers (hub_server.config.service.Configs) that quotas read
    their limits from: a quota call first checks they are current."""

    def ensure_live(self) -> None: ...


class QuotaCounters(Protocol):
    """What it uses of the quotas (hub_server.quotas.service.Quotas)."""

    async def check(
        self, tenant_id: str, header_tier: str, resource: quotas.Resource, amount: int
    ) -> tuple[bool, quotas.Usage, int]: ...
    async def allocate(
        self,
        tenant_id: str,
        header_tier: str,
        resource: quotas.Resource,
        amount: int,
        *,
        request_id: str = "",
    ) -> tuple[quotas.Usage, int, bool]: ...
    async def release(
        self,
        tenant_id: str,
        header_tier: str,
        resource: quotas.Resource,
        amount: int,
        *,
        request_id: str = "",
    ) -> tuple[quotas.Usage, int, int, bool]: ...
    async def usage(
        self, tenant_id: str, header_tier: str
    ) -> tuple[MergedConfig, list[quotas.Usage], int]: ...


class TenantServicer(tenant_pb2_grpc.TenantServiceServicer):
    def __init__(
        self,
        tenants: TenantRecords,
        configs: LiveConfigs,
        quota: QuotaCounters,
        hub_id: str,
        *,
        audit_allocations_from: int = 10,
    ):
        self._tenants = tenants
        self._configs = configs
        self._quotas = quota
        self._hub_id = hub_id
        # Allocations and releases of at least this amount leave an audit record;
        # smaller ones are routine traffic.
        self.audit_allocations_from = audit_allocations_from

    def _audit_amount(self, tenant_id: str, resource: str, amount: int, request_id: str) -> None:
        if amount < self.audit_allocations_from:
            audit_skip()
            return
        audit_note(target=f"usage/{tenant_id}/{resource}", amount=amount)
        if request_id:  # a retry's record carries the same id (and replay=true)
            audit_note(request_id=request_id)

    @audited
    async def CreateTenant(self, request, context):
        audit_note(target=f"tenant/{request.tenant_id}")
        v = Violations()
        validation.check_safe_id(v, "tenant_id", request.tenant_id)
        if len(request.display_name.encode()) > MAX_DISPLAY_NAME:
            v.add("display_name", f"must be at most {MAX_DISPLAY_NAME} bytes")
        if request.tier and request.tier not in TIERS:
            v.add("tier", "must be FREE, PRO or ENTERPRISE (unspecified: FREE)")
        v.raise_if_any()
        record = await self._tenants.create(
            request.tenant_id, request.display_name, TIERS.get(request.tier, "free")
        )
        audit_note(version_after=record.tier)
        return tenant_pb2.CreateTenantResponse(
            header=response_header(self._hub_id, record.revision), tenant=tenant_to_pb(record)
        )

    async def GetTenant(self, request, context):
        v = Violations()
        validation.check_safe_id(v, "tenant_id", request.tenant_id)
        v.raise_if_any()
        record = self._tenants.require(request.tenant_id)
        return tenant_pb2.GetTenantResponse(
            header=response_header(self._hub_id, self._tenants.revision),
            tenant=tenant_to_pb(record),
        )

    async def ListTenants(self, request, context):
        v = Violations()
        if not 0 <= request.page_size <= MAX_PAGE:
            v.add("page_size", f"must be between 0 and {MAX_PAGE}")
        if request.tier and request.tier not in TIERS:
            v.add("tier", "must be FREE, PRO, ENTERPRISE or unspecified")
        v.raise_if_any()
        after = decode_page_token("after", request.page_token)
        page, more = self._tenants.page(
            after, request.page_size or MAX_PAGE, TIERS.get(request.tier)
        )
        return tenant_pb2.ListTenantsResponse(
            header=response_header(self._hub_id, self._tenants.revision),
            tenants=[tenant_to_pb(r) for r in page],
            next_page_token=encode_page_token("after", page[-1].tenant_id) if more else "",
        )

    @audited
    async def UpdateTenantTier(self, request, context):
        audit_note(target=f"tenant/{request.tenant_id}")
        v = Violations()
        validation.check_safe_id(v, "tenant_id", request.tenant_id)
        if request.tier not in TIERS:
            v.add("tier", "must be FREE, PRO or ENTERPRISE")
        if request.expected_revision < 0:
            v.add("expected_revision", "must not be negative")
        v.raise_if_any()
        record, previous = await self._tenants.set_tier(
            request.tenant_id, TIERS[request.tier], expected_revision=request.expected_revision
        )
        audit_note(version_before=previous, version_after=record.tier)
        return tenant_pb2.UpdateTenantTierResponse(
            header=response_header(self._hub_id, max(record.revision, self._tenants.revision)),
            tenant=tenant_to_pb(record),
            previous_tier=TIER_VALUES.get(previous, types_pb2.SUBSCRIPTION_TIER_UNSPECIFIED),
        )

    async def CheckQuota(self, request, context):
        v = Violations()
        tenant_id = _tenant_id(v, request.tenant_id)
        resource = _resource(v, request.resource)
        _amount(v, request.amount)
        v.raise_if_any()
        self._configs.ensure_live()
        allowed, usage, revision = await self._quotas.check(
            tenant_id, current().subscription_tier, resource, request.amount
        )
        return tenant_pb2.CheckQuotaResponse(
            header=response_header(self._hub_id, revision),
            allowed=allowed,
            usage=usage_to_pb(usage),
        )

    @audited
    async def Allocate(self, request, context):
        v = Violations()
        tenant_id = _tenant_id(v, request.tenant_id)
        resource = _resource(v, request.resource)
        _amount(v, request.amount)
        _request_id(v, request.request_id)
        v.raise_if_any()
        self._audit_amount(tenant_id, resource.name, request.amount, request.request_id)
        self._configs.ensure_live()
        usage, revision, replayed = await self._quotas.allocate(
            tenant_id,
            current().subscription_tier,
            resource,
            request.amount,
            request_id=request.request_id,
        )
        if replayed:
            audit_note(replay="true")
        # The usage the call moved (a replay's: the first call's), as UpdateTenantTier
        # records its tiers.
        audit_note(version_before=usage.used - request.amount, version_after=usage.used)
        return tenant_pb2.AllocateResponse(
            header=response_header(self._hub_id, revision), usage=usage_to_pb(usage)
        )

    @audited
    async def Release(self, request, context):
        v = Violations()
        tenant_id = _tenant_id(v, request.tenant_id)
        resource = _resource(v, request.resource)
        _amount(v, request.amount)
        _request_id(v, request.request_id)
        v.raise_if_any()
        self._audit_amount(tenant_id, resource.name, request.amount, request.request_id)
        self._configs.ensure_live()
        usage, released, revision, replayed = await self._quotas.release(
            tenant_id,
            current().subscription_tier,
            resource,
            request.amount,
            request_id=request.request_id,
        )
        if replayed:
            audit_note(replay="true")
        audit_note(version_before=usage.used + released, version_after=usage.used)
        return tenant_pb2.ReleaseResponse(
            header=response_header(self._hub_id, revision),
            usage=usage_to_pb(usage),
            released=released,
        )

    async def GetUsage(self, request, context):
        v = Violations()
        tenant_id = _tenant_id(v, request.tenant_id)
        v.raise_if_any()
        self._configs.ensure_live()
        merged, usage, revision = await self._quotas.usage(tenant_id, current().subscription_tier)
        return tenant_pb2.GetUsageResponse(
            header=response_header(self._hub_id, revision),
            tenant_id=tenant_id,
            tier=TIER_VALUES[merged.tier],
            usage=[usage_to_pb(u) for u in usage],
        )
