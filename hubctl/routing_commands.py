"""hubctl policy (a service's routing policy) and hubctl xds (the xDS clients of
every replica)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import time
from collections.abc import Iterable
from typing import Any

from hub_client import (
    HubError,
    PolicyInfo,
    RoutingPolicy,
    Strategy,
    XdsClient,
)
from hubctl.app import EXIT_UNAVAILABLE, Context, UsageError, arg, command, connect, group
from hubctl.output import Style, ago, iso, key_values, table

group("policy", "a service's routing policy (balancing, retries, timeout, outlier ejection)")
group("xds", "the proxyless gRPC (xDS) clients connected to the hub")

STRATEGIES = tuple(s.name.lower() for s in Strategy)

# Option -> (part of the policy, field); an option not given keeps what is in force.
_RETRY = {
    "retries": "num_retries",
    "retry_base_ms": "base_interval_ms",
    "retry_max_ms": "max_interval_ms",
}
_OUTLIER = {
    "outlier_interval_ms": "interval_ms",
    "ejection_ms": "base_ejection_time_ms",
    "max_ejection_ms": "max_ejection_time_ms",
    "max_ejection_percent": "max_ejection_percent",
    "consecutive_5xx": "consecutive_5xx",
    "failure_percentage": "failure_percentage_threshold",
    "failure_minimum_hosts": "failure_percentage_minimum_hosts",
    "failure_request_volume": "failure_percentage_request_volume",
}


def _int(flag: str, help: str) -> Any:
    return arg(flag, type=int, metavar="N", help=help)


def policy_json(policy: RoutingPolicy) -> dict[str, Any]:
    data = dataclasses.asdict(policy)
    data["strategy"] = policy.strategy.name.lower()
    data["retry"]["retry_on"] = list(policy.retry.retry_on)
    return data


def _policy_text(service: str, policy: RoutingPolicy, note: str) -> Any:
    def text(st: Style) -> Iterable[str]:
        r, o = policy.retry, policy.outlier
        retries = (
            f"{r.num_retries} on {','.join(r.retry_on)}, backoff {r.base_interval_ms}-"
            f"{r.max_interval_ms} ms"
            if r.num_retries
            else st("none", "dim")
        )
        yield from key_values(
            [
                ("service", st(service, "bold")),
                ("policy", note),
                ("strategy", policy.strategy.name.lower()),
                ("retries", retries),
                ("timeout", f"{policy.timeout_ms} ms" if policy.timeout_ms else st("none", "dim")),
                (
                    "outlier ejection",
                    f"every {o.interval_ms} ms: {o.failure_percentage_threshold}% failures "
                    f"over >= {o.failure_percentage_request_volume} calls "
                    f"(>= {o.failure_percentage_minimum_hosts} endpoints) or "
                    f"{o.consecutive_5xx} in a row; {o.base_ejection_time_ms}-"
                    f"{o.max_ejection_time_ms} ms, at most {o.max_ejection_percent}%",
                ),
            ],
            st,
        )

    return text


def _emit_policy(ctx: Context, info: PolicyInfo) -> None:
    note = "default (none stored)" if info.is_default else "stored"
    ctx.emit(
        {
            "service": info.service,
            "is_default": info.is_default,
            "revision": info.revision,
            "policy": policy_json(info.policy),
        },
        _policy_text(info.service, info.policy, note),
    )


@command(
    "policy get",
    "the routing policy in force for a service (the defaults when none is stored)",
    arg("service", metavar="SERVICE", complete="services"),
)
async def policy_get(ctx: Context, args: argparse.Namespace) -> None:
    _emit_policy(ctx, await ctx.hub.routing_policy(args.service))


@command(
    "policy set",
    "store a service's routing policy: options not given keep the value in force "
    "(--reset starts from the defaults instead)",
    arg("service", metavar="SERVICE", complete="services"),
    arg("--strategy", choices=STRATEGIES, help="PickEndpoint's default and the xDS lb policy"),
    arg(
        "--retry-on",
        metavar="CODES",
        help="comma-separated gRPC codes xDS clients retry: cancelled, deadline-exceeded, "
        "internal, resource-exhausted, unavailable (or as gRPC spells them: UNAVAILABLE)",
    ),
    _int("--retries", "retries after the first attempt, 0-4 (0: none)"),
    _int("--retry-base-ms", "first retry backoff, ms"),
    _int("--retry-max-ms", "retry backoff ceiling, ms"),
    _int("--call-timeout-ms", "per-call limit xDS clients apply, ms (0: none)"),
    _int("--outlier-interval-ms", "how often clients judge endpoints, ms"),
    _int("--ejection-ms", "first ejection time, ms"),
    _int("--max-ejection-ms", "longest ejection, ms"),
    _int("--max-ejection-percent", "most endpoints ejected at once, percent"),
    _int("--consecutive-5xx", "failures in a row that eject (Envoy)"),
    _int("--failure-percentage", "failure percentage that ejects (proxyless gRPC)"),
    _int("--failure-minimum-hosts", "endpoints needed before failure-percentage ejection"),
    _int("--failure-request-volume", "calls an endpoint needs per interval to be judged"),
    arg("--reset", action="store_true", help="start from the defaults, not the policy in force"),
)
async def policy_set(ctx: Context, args: argparse.Namespace) -> None:
    base = RoutingPolicy() if args.reset else (await ctx.hub.routing_policy(args.service)).policy
    retry = dataclasses.replace(
        base.retry,
        **{f: getattr(args, o) for o, f in _RETRY.items() if getattr(args, o) is not None},
    )
    if args.retry_on is not None:
        # The policy's names are lower-case with dashes; gRPC's DEADLINE_EXCEEDED is one too.
        codes = tuple(
            c.strip().lower().replace("_", "-") for c in args.retry_on.split(",") if c.strip()
        )
        if not codes:
            raise UsageError("--retry-on needs at least one code")
        retry = dataclasses.replace(retry, retry_on=codes)
    outlier = dataclasses.replace(
        base.outlier,
        **{f: getattr(args, o) for o, f in _OUTLIER.items() if getattr(args, o) is not None},
    )
    policy = RoutingPolicy(
        strategy=Strategy[args.strategy.upper()] if args.strategy else base.strategy,
        retry=retry,
        timeout_ms=base.timeout_ms if args.call_timeout_ms is None else args.call_timeout_ms,
        outlier=outlier,
    )
    stored = await ctx.hub.set_routing_policy(args.service, policy)
    _emit_policy(ctx, PolicyInfo(args.service, stored, False, 0))


@command(
    "policy delete",
    "drop a service's stored routing policy (the defaults apply again)",
    arg("service", metavar="SERVICE", complete="services"),
)
async def policy_delete(ctx: Context, args: argparse.Namespace) -> None:
    revision = await ctx.hub.delete_routing_policy(args.service)
    ctx.emit(
        {"service": args.service, "deleted": True, "revision": revision},
        lambda st: [f"deleted the routing policy of {args.service}; the defaults apply"],
    )


# -- xds ---------------------------------------------------------------------------


def client_json(c: XdsClient) -> dict[str, Any]:
    nack = c.last_nack
    return {
        "hub_id": c.hub_id,
        "node_id": c.node_id,
        "tenant_id": c.tenant_id,
        "tier": c.tier,
        "peer": c.peer,
        "connected_at": iso(c.connected_at),
        "subscriptions": [
            {
                "type": s.type_url,
                "resources": list(s.resource_names),
                "acked_version": s.acked_version,
            }
            for s in c.subscriptions
        ],
        "last_nack": None
        if nack is None
        else {
            "type": nack.type_url,
            "version": nack.version,
            "nonce": nack.nonce,
            "error": nack.error,
            "at": iso(nack.at),
        },
    }


def _short_type(type_url: str) -> str:
    """``...envoy.config.cluster.v3.Cluster`` -> ``Cluster``."""
    return type_url.rpartition(".")[2]


async def _replica_clients(ctx: Context, hub_id: str, address: str) -> list[XdsClient]:
    async with connect(ctx, address) as replica:
        return await replica.xds_clients()


@command("xds clients", "the xDS clients connected to every hub replica")
async def xds_clients(ctx: Context, args: argparse.Namespace) -> int:
    status = await ctx.hub.cluster_status()
    replicas = [(r.hub_id, r.address) for r in status.replicas] or [(status.hub_id, ctx.target)]
    answers = await asyncio.gather(
        *(_replica_clients(ctx, hub_id, address) for hub_id, address in replicas),
        return_exceptions=True,
    )
    found: list[XdsClient] = []
    failed: list[dict[str, str]] = []
    for (hub_id, address), answer in zip(replicas, answers, strict=True):
        if isinstance(answer, HubError):
            failed.append({"hub_id": hub_id, "address": address, "error": answer.message})
        elif isinstance(answer, BaseException):
            raise answer
        else:
            found.extend(answer)
    found.sort(key=lambda c: (c.hub_id, c.connected_at, c.node_id))

    def text(st: Style) -> Iterable[str]:
        now = time.time()
        rows = []
        for c in found:
            types = ", ".join(
                f"{_short_type(s.type_url)}@{s.acked_version or '-'}" for s in c.subscriptions
            )
            nack = c.last_nack
            rows.append(
                [
                    c.node_id or "-",
                    c.hub_id,
                    c.tenant_id or "-",
                    c.tier or "-",
                    c.peer,
                    ago(c.connected_at, now).removesuffix(" ago"),
                    types or "-",
                    st(f"{_short_type(nack.type_url)}@{nack.version}: {nack.error}", "red")
                    if nack
                    else "",
                ]
            )
        headers = ["NODE", "REPLICA", "TENANT", "TIER", "PEER", "UP", "ACKED", "LAST NACK"]
        yield from table(headers, rows, st)
        for f in failed:
            yield st(f"replica {f['hub_id']} ({f['address']}) did not answer: {f['error']}", "red")

    ctx.emit({"clients": [client_json(c) for c in found], "unanswered": failed}, text)
    if failed:
        ctx.output.note(f"{len(failed)} replica(s) did not answer: the list is incomplete")
        return EXIT_UNAVAILABLE
    return 0
