"""hubctl tenants, usage and quota: tenants and their tier, and their use of
metered resources against the limits of their merged configuration."""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable
from typing import Any

from aitrading.hub.v1 import tenant_pb2, types_pb2

from hub_client import ResourceUsage, Tenant
from hubctl.app import EXIT_QUOTA, Context, UsageError, arg, command, group
from hubctl.commands import TIERS
from hubctl.output import (
    Style,
    ago,
    iso,
    key_values,
    local_time,
    span,
    table,
    usage_bar,
)

group("tenants", "list, show, create tenants and change their tier")
group("quota", "check, allocate and release a tenant's metered resources")

RESOURCES = ("api_calls_per_hour", "websocket_connections", "concurrent_requests",
             "data_storage_mb")  # fmt: skip
_TIER_NAMES = {0: "unspecified", 1: "free", 2: "pro", 3: "enterprise"}


def _tier(name: str) -> types_pb2.SubscriptionTier.ValueType:
    return types_pb2.SubscriptionTier.Value(f"SUBSCRIPTION_TIER_{name.upper()}")


def _quota_resource(name: str) -> tenant_pb2.QuotaResource.ValueType:
    return tenant_pb2.QuotaResource.Value(f"QUOTA_RESOURCE_{name.upper()}")


def tenant_json(t: Tenant) -> dict[str, Any]:
    return {
        "tenant_id": t.tenant_id,
        "display_name": t.display_name,
        "tier": t.tier,
        "created_at": iso(t.created_at),
        "updated_at": iso(t.updated_at),
        "revision": t.revision,
    }


def usage_json(u: ResourceUsage) -> dict[str, Any]:
    return {
        "resource": u.resource,
        "used": u.used,
        "limit": u.limit,
        "remaining": u.remaining,
        "window_start": iso(u.window_start),
        "window_end": iso(u.window_end),
    }


def _tenant_arg(help: str = "the tenant id") -> Any:
    return arg("tenant_id", metavar="TENANT", complete="tenants", help=help)


def _tier_of(value: int) -> str:
    return _TIER_NAMES.get(value, "unspecified")


def _in_use(u: ResourceUsage) -> str:
    unit = " this hour" if u.window_end else ""
    return f"{u.used} of {u.limit} in use{unit}, {u.remaining} left"


# -- tenants ---------------------------------------------------------------------


@command(
    "tenants list",
    "every tenant, by id",
    arg("--tier", dest="only_tier", choices=TIERS, default=None,
        help="only tenants of this tier"),
)  # fmt: skip
async def tenants_list(ctx: Context, args: argparse.Namespace) -> None:
    tenants = await ctx.hub.list_tenants(tier=args.only_tier)

    def text(st: Style) -> Iterable[str]:
        if not tenants:
            yield st("no tenants" + (f" of tier {args.only_tier}" if args.only_tier else ""), "dim")
            return
        now = time.time()
        body = [
            [st(t.tenant_id, "bold"), t.display_name or "-", st.state(t.tier),
             ago(t.created_at, now), ago(t.updated_at, now)]
            for t in tenants
        ]  # fmt: skip
        yield from table(["TENANT", "NAME", "TIER", "CREATED", "UPDATED"], body, st)

    ctx.emit({"tenants": [tenant_json(t) for t in tenants]}, text)


def _tenant_text(t: Tenant, st: Style) -> list[str]:
    return key_values(
        [
            ("tenant", st(t.tenant_id, "bold")),
            ("name", t.display_name or "-"),
            ("tier", st.state(t.tier)),
            ("created", f"{local_time(t.created_at)} ({ago(t.created_at)})"),
            ("updated", f"{local_time(t.updated_at)} ({ago(t.updated_at)})"),
            ("revision", str(t.revision)),
        ],
        st,
    )


@command("tenants show", "one tenant", _tenant_arg())
async def tenants_show(ctx: Context, args: argparse.Namespace) -> None:
    t = await ctx.hub.get_tenant(args.tenant_id)
    ctx.emit(tenant_json(t), lambda st: _tenant_text(t, st))


@command(
    "tenants create",
    "store a new tenant (exit 7 if it exists)",
    arg("tenant_id", metavar="TENANT", help="the tenant id"),
    arg("--tier", dest="new_tier", choices=TIERS, required=True, help="its subscription tier"),
    arg("--name", default="", help="a human-readable name"),
)
async def tenants_create(ctx: Context, args: argparse.Namespace) -> None:
    t = await ctx.hub.create_tenant(args.tenant_id, tier=args.new_tier, display_name=args.name)
    ctx.emit(
        tenant_json(t),
        lambda st: [f"created tenant {st(t.tenant_id, 'bold')} ({st.state(t.tier)})"],
    )


@command(
    "tenants set-tier",
    "change a tenant's tier; its configuration and limits follow at once",
    _tenant_arg(),
    arg("new_tier", metavar="TIER", choices=TIERS, help="free, pro or enterprise"),
    arg("--expected-revision", type=int, default=0, metavar="REV",
        help="change only if the tenant record is at this revision; else exit 7"),
)  # fmt: skip
async def tenants_set_tier(ctx: Context, args: argparse.Namespace) -> None:
    resp = await ctx.hub.call(
        ctx.hub.tenant_stub.UpdateTenantTier,
        tenant_pb2.UpdateTenantTierRequest(
            tenant_id=args.tenant_id,
            tier=_tier(args.new_tier),
            expected_revision=args.expected_revision,
        ),
    )
    t = Tenant.from_pb(resp.tenant)
    previous = _tier_of(resp.previous_tier)

    def text(st: Style) -> list[str]:
        if previous == t.tier:
            return [f"{st(t.tenant_id, 'bold')} is already {st.state(t.tier)}"]
        return [f"{st(t.tenant_id, 'bold')}: {st.state(previous)} -> {st.state(t.tier)}"]

    ctx.emit({**tenant_json(t), "previous_tier": previous}, text)


# -- usage -------------------------------------------------------------------------


@command(
    "usage",
    "a tenant's use of each metered resource against its limits",
    arg("tenant_id", nargs="?", default="", metavar="TENANT", complete="tenants",
        help="the tenant (default: --tenant / HUB_TENANT)"),
)  # fmt: skip
async def usage(ctx: Context, args: argparse.Namespace) -> None:
    tenant = args.tenant_id or ctx.hub.context.tenant_id
    if not tenant:
        raise UsageError("which tenant? give TENANT, or --tenant / HUB_TENANT")
    resp = await ctx.hub.call(
        ctx.hub.tenant_stub.GetUsage, tenant_pb2.GetUsageRequest(tenant_id=tenant)
    )
    rows = [ResourceUsage.from_pb(u) for u in resp.usage]
    tier = _tier_of(resp.tier)
    data = {"tenant_id": resp.tenant_id, "tier": tier, "usage": [usage_json(u) for u in rows]}

    def text(st: Style) -> Iterable[str]:
        yield f"{st(resp.tenant_id, 'bold')}  tier {st.state(tier)}"
        now = time.time()
        body = []
        for u in rows:
            note = f"resets in {span(max(u.window_end - now, 0))}" if u.window_end else ""
            body.append(
                [u.resource, str(u.used), str(u.limit), usage_bar(u.used, u.limit, st), note]
            )
        yield from table(["RESOURCE", "USED", "LIMIT", "USE", ""], body, st)

    ctx.emit(data, text)


# -- quota -------------------------------------------------------------------------


class _Completed(tuple[str, ...]):
    """Choices that shell completion offers but argparse does not enforce: the
    word may be an AMOUNT when TENANT was left out (see _quota_target)."""

    def __contains__(self, _: object) -> bool:
        return True


def _quota_args() -> list[Any]:
    # TENANT may be left out when --tenant / HUB_TENANT names it; argparse alone
    # would then take RESOURCE for TENANT and AMOUNT for RESOURCE ("invalid
    # choice: '3'"), so the words are sorted out in _quota_target.
    return [
        arg("tenant_id", metavar="[TENANT]", complete="tenants",
            help="the tenant (default: --tenant / HUB_TENANT)"),
        arg("resource", nargs="?", metavar="RESOURCE", choices=_Completed(RESOURCES),
            help=", ".join(RESOURCES)),
        arg("amount", nargs="?", metavar="AMOUNT", help="default 1"),
    ]  # fmt: skip


def _quota_target(ctx: Context, args: argparse.Namespace) -> None:
    """Sets args.tenant_id, args.resource and args.amount from the words given:
    TENANT RESOURCE [AMOUNT], or RESOURCE [AMOUNT] with --tenant / HUB_TENANT."""
    words = [w for w in (args.tenant_id, args.resource, args.amount) if w is not None]
    if (
        words
        and words[0].replace("-", "_") in RESOURCES
        and (len(words) == 1 or words[1].replace("-", "_") not in RESOURCES)
    ):
        words.insert(0, ctx.hub.context.tenant_id)
        if not words[0]:
            raise UsageError("which tenant? give TENANT, or --tenant / HUB_TENANT")
    if len(words) < 2:
        raise UsageError("give TENANT RESOURCE [AMOUNT], or RESOURCE [AMOUNT] with --tenant")
    if len(words) > 3:
        raise UsageError(f"unexpected {words[3]!r}: give TENANT RESOURCE [AMOUNT]")
    resource = words[1].replace("-", "_")
    if resource not in RESOURCES:
        raise UsageError(f"RESOURCE must be one of {', '.join(RESOURCES)} (got {words[1]!r})")
    try:
        amount = int(words[2]) if len(words) == 3 else 1
    except ValueError:
        raise UsageError(f"AMOUNT must be a whole number (got {words[2]!r})") from None
    if amount < 1:
        raise UsageError(f"AMOUNT must be at least 1 (got {amount})")
    args.tenant_id, args.resource, args.amount = words[0], resource, amount


@command(
    "quota check",
    "whether an amount would fit now (nothing is taken); exit 6 if it would not",
    *_quota_args(),
)
async def quota_check(ctx: Context, args: argparse.Namespace) -> int:
    _quota_target(ctx, args)
    resp = await ctx.hub.call(
        ctx.hub.tenant_stub.CheckQuota,
        tenant_pb2.CheckQuotaRequest(
            tenant_id=args.tenant_id, resource=_quota_resource(args.resource), amount=args.amount
        ),
    )
    u = ResourceUsage.from_pb(resp.usage)
    data = {
        "tenant_id": args.tenant_id,
        "resource": args.resource,
        "amount": args.amount,
        "allowed": resp.allowed,
        "usage": usage_json(u),
    }

    def text(st: Style) -> list[str]:
        verdict = st("fits", "green") if resp.allowed else st("does not fit", "red")
        return [f"{args.amount} {args.resource} for {args.tenant_id} {verdict}: {_in_use(u)}"]

    ctx.emit(data, text)
    return 0 if resp.allowed else EXIT_QUOTA


@command(
    "quota allocate",
    "take an amount of a resource; exit 6 if over the limit",
    *_quota_args(),
)
async def quota_allocate(ctx: Context, args: argparse.Namespace) -> None:
    _quota_target(ctx, args)
    u = await ctx.hub.allocate(args.resource, args.amount, tenant=args.tenant_id)
    ctx.emit(
        {"tenant_id": args.tenant_id, "amount": args.amount, "usage": usage_json(u)},
        lambda st: [
            f"allocated {args.amount} {args.resource} to {st(args.tenant_id, 'bold')}: {_in_use(u)}"
        ],
    )


@command("quota release", "give back an amount of a resource", *_quota_args())
async def quota_release(ctx: Context, args: argparse.Namespace) -> None:
    _quota_target(ctx, args)
    resp = await ctx.hub.call(
        ctx.hub.tenant_stub.Release,
        tenant_pb2.ReleaseRequest(
            tenant_id=args.tenant_id, resource=_quota_resource(args.resource), amount=args.amount
        ),
    )
    u = ResourceUsage.from_pb(resp.usage)

    def text(st: Style) -> list[str]:
        less = f" (of {args.amount} asked: only that much was in use)"
        return [
            f"released {resp.released} {args.resource} of {st(args.tenant_id, 'bold')}"
            + (less if resp.released < args.amount else "")
            + f": {_in_use(u)}"
        ]

    ctx.emit(
        {
            "tenant_id": args.tenant_id,
            "amount": args.amount,
            "released": resp.released,
            "usage": usage_json(u),
        },
        text,
    )
