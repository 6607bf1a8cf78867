"""hubctl's commands: services, health, pick, circuits, cluster, register,
deregister. Each is an async function in the command table; its result is
printed by ``ctx.emit`` as a table or as JSON. Configuration, tenants and
observability live in their own modules; completion in completion.py."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from aitrading.hub.v1 import circuit_pb2, registry_pb2

from hub_client import (
    CircuitInfo,
    Endpoint,
    Health,
    Instance,
    WatchEvent,
    health_check,
    resume_watch,
)
from hubctl.app import Context, UsageError, arg, command, group
from hubctl.output import (
    Style,
    ago,
    clock,
    iso,
    key_values,
    seconds_of,
    span,
    table,
)

group("services", "list, show and watch registered services")
group("circuits", "show, watch and override fleet-wide circuits")
group("cluster", "the hub replicas")

TIERS = ("free", "pro", "enterprise")
STRATEGIES = ("least_load", "round_robin", "weighted", "consistent_hash", "latency_aware")
OVERRIDES = {
    "force-open": circuit_pb2.CIRCUIT_OVERRIDE_FORCE_OPEN,
    "force-closed": circuit_pb2.CIRCUIT_OVERRIDE_FORCE_CLOSED,
    "reset": circuit_pb2.CIRCUIT_OVERRIDE_RESET,
}
_HEALTH_NAMES = {0: "unspecified", 1: "healthy", 2: "degraded", 3: "unhealthy"}

ALL = arg(
    "--all",
    action="store_true",
    help="ignore the tenant's subscription tier (legacy mode: every instance)",
)


def _service_arg(optional: bool = False) -> Any:
    if optional:
        return arg("service", nargs="?", default="", metavar="SERVICE", complete="services")
    return arg("service", metavar="SERVICE", complete="services")


# -- JSON shapes -------------------------------------------------------------


def _health_word(inst: Instance) -> str:
    raw = inst.raw
    return _HEALTH_NAMES.get(raw.health.status, "unspecified") if raw.HasField("health") else ""


def instance_json(inst: Instance) -> dict[str, Any]:
    raw = inst.raw
    return {
        "service": inst.service,
        "instance_id": inst.instance_id,
        "address": inst.address,
        "host": inst.host,
        "port": inst.port,
        "protocol": inst.protocol,
        "version": inst.version,
        "metadata": inst.metadata,
        "tenant_capable": inst.tenant_capable,
        "subscription_requirements": list(inst.subscription_requirements),
        "resource_tier": inst.resource_tier,
        "ttl_seconds": inst.ttl_seconds,
        "weight": inst.weight,
        "lease_id": inst.lease_id,
        "revision": inst.revision,
        "registered_at": iso(raw.registered_at),
        "health": _health_word(inst) or None,
        "draining": raw.draining,
    }


def health_json(h: Health) -> dict[str, Any]:
    return {
        "service": h.service,
        "instance_id": h.instance_id,
        "status": h.status,
        "check": h.check,
        "latency_ms": round(h.latency_ms, 3),
        "last_check": iso(h.last_check),
        "message": h.message,
    }


def circuit_json(c: CircuitInfo) -> dict[str, Any]:
    raw, s = c.raw, c.raw.settings
    return {
        "service": c.service,
        "instance_id": c.instance_id,
        "state": c.state,
        "failure_rate": c.failure_rate,
        "slow_call_rate": c.slow_call_rate,
        "calls": c.calls,
        "reason": c.reason,
        "since": iso(raw.state_since),
        "revision": raw.revision,
        "settings": {
            "window_type": circuit_pb2.WindowType.Name(s.window_type)
            .removeprefix("WINDOW_TYPE_")
            .lower(),
            "window_size": s.window_size,
            "minimum_calls": s.minimum_calls,
            "failure_rate_threshold": s.failure_rate_threshold,
            "slow_call_duration_s": seconds_of(s.slow_call_duration),
            "slow_call_rate_threshold": s.slow_call_rate_threshold,
            "wait_in_open_s": seconds_of(s.wait_in_open),
            "permitted_calls_in_half_open": s.permitted_calls_in_half_open,
            "max_wait_in_half_open_s": seconds_of(s.max_wait_in_half_open),
        },
    }


def _name(service: str, instance_id: str) -> str:
    return f"{service}/{instance_id}" if instance_id else service


def _tiers(inst: Instance) -> str:
    return ",".join(inst.subscription_requirements) or "public"


# -- services ----------------------------------------------------------------


@command("services list", "every service the caller's tier may use", ALL)
async def services_list(ctx: Context, args: argparse.Namespace) -> None:
    services = await ctx.hub.list_services(legacy_mode=args.all)
    status = {(h.service, h.instance_id): h.status for h in await ctx.hub.get_health()}
    rows: list[dict[str, Any]] = []
    for svc in services:
        states = [status.get((svc.name, i.instance_id), "unspecified") for i in svc.instances]
        rows.append(
            {
                "name": svc.name,
                "instance_count": len(svc.instances),
                "healthy_count": states.count("healthy"),
                "versions": sorted({i.version for i in svc.instances if i.version}),
                "instances": [
                    {**instance_json(i), "health": status.get((svc.name, i.instance_id))}
                    for i in svc.instances
                ],
            }
        )
    revision = max((s.revision for s in services), default=0)

    def text(st: Style) -> Iterable[str]:
        if not rows:
            tiered = args.tier and not args.all
            yield st("no services registered" + (" that this tier may use" * bool(tiered)), "dim")
            return
        body = []
        for r in rows:
            healthy, total = r["healthy_count"], r["instance_count"]
            colour = "healthy" if healthy == total else "degraded" if healthy else "unhealthy"
            needed = {t for i in r["instances"] for t in i["subscription_requirements"]}
            tiers = [t for t in TIERS if t in needed]
            body.append(
                [
                    st(r["name"], "bold"),
                    str(total),
                    st.state(colour, f"{healthy}/{total}"),
                    ",".join(r["versions"]) or "-",
                    ",".join(tiers) or "public",
                ]
            )
        yield from table(["SERVICE", "INSTANCES", "HEALTHY", "VERSIONS", "TIERS"], body, st)

    ctx.emit({"revision": revision, "services": rows}, text)


@command(
    "services show",
    "one service's instances, unhealthy ones included",
    _service_arg(),
    ALL,
)
async def services_show(ctx: Context, args: argparse.Namespace) -> None:
    resp = await ctx.hub.call(
        ctx.hub.registry_stub.GetService,
        registry_pb2.GetServiceRequest(
            service=args.service, legacy_mode=args.all, include_unhealthy=True
        ),
    )
    instances = [Instance.from_pb(m) for m in resp.service.instances]
    data = {
        "name": args.service,
        "revision": resp.header.revision,
        "instances": [instance_json(i) for i in instances],
    }

    def text(st: Style) -> Iterable[str]:
        now = time.time()
        count = f"{len(instances)} instance{'s' if len(instances) != 1 else ''}"
        summary = st(f"{count}, revision {resp.header.revision}", "dim")
        yield f"{st(args.service, 'bold')}  {summary}"
        body = []
        for i in instances:
            health = _health_word(i) or "unspecified"
            registered = i.raw.registered_at.ToNanoseconds() / 1e9
            meta = ",".join(f"{k}={v}" for k, v in sorted(i.metadata.items()))
            body.append(
                [
                    i.instance_id,
                    i.address,
                    i.protocol,
                    i.version or "-",
                    st.state(health) + (st(" draining", "yellow") if i.raw.draining else ""),
                    str(i.weight),
                    f"{i.ttl_seconds}s",
                    span(max(now - registered, 0)) if registered else "-",
                    _tiers(i),
                    meta[:40] + ("..." if len(meta) > 40 else "") or "-",
                ]
            )
        headers = ["INSTANCE", "ADDRESS", "PROTOCOL", "VERSION", "HEALTH", "WEIGHT"]
        yield from table([*headers, "TTL", "AGE", "TIERS", "METADATA"], body, st)

    ctx.emit(data, text)


def _event_json(e: WatchEvent) -> dict[str, Any]:
    return {
        "type": e.type.name,
        "initial": e.initial,
        "revision": e.revision,
        "instance": instance_json(e.instance),
    }


def _event_line(e: WatchEvent, st: Style) -> str:
    i = e.instance
    kind = st.state(e.type.name, f"{e.type.name:<7}")
    where = f"{i.address}  {i.version or '-'}" if e.type.name != "REMOVED" else i.address
    tail = st(f"rev {e.revision}" + ("  (existing)" if e.initial else ""), "dim")
    name = st(_name(i.service, i.instance_id), "bold")
    return f"{st(clock(), 'dim')}  {kind}  {name}  {where}  {tail}"


@command(
    "services watch",
    "stream registrations, changes and removals (Ctrl-C to stop)",
    _service_arg(optional=True),
    ALL,
    streaming=True,
)
async def services_watch(ctx: Context, args: argparse.Namespace) -> None:
    what = f"service {args.service}" if args.service else "every service"
    ctx.output.note(f"watching {what} on {ctx.target}; Ctrl-C to stop")
    async for event in ctx.hub.watch(args.service, legacy_mode=args.all):

        def line(st: Style, e: WatchEvent = event) -> str:
            return _event_line(e, st)

        ctx.output.event(_event_json(event), line)


# -- health and balancing ------------------------------------------------------


@command("health", "what the hub's probes found, per instance", _service_arg(optional=True))
async def health(ctx: Context, args: argparse.Namespace) -> None:
    records = await ctx.hub.get_health(args.service)

    def text(st: Style) -> Iterable[str]:
        if not records:
            yield st("no instances registered", "dim")
            return
        now = time.time()
        body = [
            [
                h.service,
                h.instance_id,
                st.state(h.status),
                h.check,
                f"{h.latency_ms:.1f}ms" if h.last_check else "-",
                ago(h.last_check, now),
                h.message or "",
            ]
            for h in records
        ]
        headers = ["SERVICE", "INSTANCE", "STATUS", "CHECK", "LATENCY", "LAST CHECK", "MESSAGE"]
        yield from table(headers, body, st)

    ctx.emit({"instances": [health_json(h) for h in records]}, text)


@command(
    "pick",
    "ask the balancer for one instance of a service",
    _service_arg(),
    arg(
        "--strategy",
        type=lambda s: s.replace("-", "_"),
        choices=STRATEGIES,
        default=None,
        help=f"one of {', '.join(STRATEGIES)} (default: the service's routing policy's, "
        "least_load unless `hubctl policy set` chose another)",
    ),
    arg("--affinity-key", default="", help="key for consistent_hash (default: the user id)"),
    ALL,
)
async def pick(ctx: Context, args: argparse.Namespace) -> None:
    ep: Endpoint = await ctx.hub.pick(
        args.service,
        strategy=args.strategy,
        affinity_key=args.affinity_key,
        legacy_mode=args.all,
    )
    data = {
        "service": args.service,
        "strategy": args.strategy or "policy",
        "address": ep.address,
        "host": ep.host,
        "port": ep.port,
        "instance_id": ep.instance_id,
        "load": ep.load,
        "instance": instance_json(ep.instance),
    }

    def text(st: Style) -> Iterable[str]:
        health = _health_word(ep.instance)
        detail = f"instance {ep.instance_id}, load {ep.load:.2f}"
        if health:
            detail += f", {st.state(health)}"
        how = args.strategy or "the service's routing policy"
        yield f"{args.service} -> {st(ep.address, 'bold')}  ({detail}, {how})"

    ctx.emit(data, text)


# -- circuits ----------------------------------------------------------------


def _circuit_text(c: CircuitInfo, st: Style) -> list[str]:
    j = circuit_json(c)
    s = j["settings"]
    since = c.raw.state_since.ToNanoseconds() / 1e9
    state = st.state(c.state, c.state.upper()) + (f"  (since {ago(since)})" if since else "")
    window = f"{s['window_size']} {'calls' if s['window_type'] != 'time' else 'seconds'}"
    return key_values(
        [
            ("circuit", _name(c.service, c.instance_id)),
            ("state", state),
            ("failure rate", f"{c.failure_rate:.1f}% (opens at {s['failure_rate_threshold']:g}%)"),
            ("slow calls", f"{c.slow_call_rate:.1f}% (opens at {s['slow_call_rate_threshold']:g}%, "
                           f"slow means > {s['slow_call_duration_s']:g}s)"),
            ("calls", f"{c.calls} in the window of {window} (judged from {s['minimum_calls']})"),
            ("wait in open", f"{s['wait_in_open_s']:g}s, "
                             f"then {s['permitted_calls_in_half_open']} trial calls"),
            ("reason", c.reason or "-"),
        ],
        st,
    )  # fmt: skip


INSTANCE = arg("--instance", default="", metavar="ID", help="a per-instance circuit")


@command("circuits show", "one circuit's state and thresholds", _service_arg(), INSTANCE)
async def circuits_show(ctx: Context, args: argparse.Namespace) -> None:
    c = await ctx.hub.circuit_state(args.service, args.instance)
    ctx.emit(circuit_json(c), lambda st: _circuit_text(c, st))


@command(
    "circuits override",
    "force a circuit open or closed, or reset it",
    _service_arg(),
    arg("action", choices=tuple(OVERRIDES), help="force-open, force-closed or reset"),
    INSTANCE,
)
async def circuits_override(ctx: Context, args: argparse.Namespace) -> None:
    resp = await ctx.hub.call(
        ctx.hub.circuit_stub.OverrideCircuit,
        circuit_pb2.OverrideCircuitRequest(
            service=args.service, instance_id=args.instance, action=OVERRIDES[args.action]
        ),
    )
    c = CircuitInfo.from_pb(resp.circuit)
    ctx.emit(circuit_json(c), lambda st: _circuit_text(c, st))


async def _watch_circuits(ctx: Context, service: str) -> AsyncIterator[tuple[CircuitInfo, bool]]:
    """(circuit, initial) pairs; resumes from the last revision after a disconnect."""

    def open_stream(start: int) -> Any:
        return ctx.hub.circuit_stub.WatchCircuits(
            circuit_pb2.WatchCircuitsRequest(service=service, start_revision=start),
            metadata=ctx.hub.context.metadata(),
            wait_for_ready=True,
        )

    def interrupted(why: str) -> None:
        ctx.output.note(f"circuit watch interrupted ({why}); resuming")

    stream = resume_watch(open_stream, on_interrupt=interrupted)
    async with contextlib.aclosing(stream):
        async for msg in stream:
            if msg.kind == registry_pb2.WATCH_RESPONSE_KIND_SNAPSHOT:
                for c in msg.circuits:
                    yield CircuitInfo.from_pb(c), True
            elif msg.kind == registry_pb2.WATCH_RESPONSE_KIND_EVENTS:
                for c in msg.circuits:
                    yield CircuitInfo.from_pb(c), False


@command(
    "circuits watch",
    "stream circuit state changes (Ctrl-C to stop)",
    _service_arg(optional=True),
    streaming=True,
)
async def circuits_watch(ctx: Context, args: argparse.Namespace) -> None:
    what = f"circuits of {args.service}" if args.service else "every circuit"
    ctx.output.note(f"watching {what} on {ctx.target}; Ctrl-C to stop")
    async for c, initial in _watch_circuits(ctx, args.service):

        def line(st: Style, c: CircuitInfo = c, initial: bool = initial) -> str:
            state = st.state(c.state, f"{c.state.upper():<13}")
            rates = f"failures {c.failure_rate:.1f}%  slow {c.slow_call_rate:.1f}%  calls {c.calls}"
            tail = st(c.reason + ("  (existing)" if initial else ""), "dim")
            name = st(_name(c.service, c.instance_id), "bold")
            return f"{st(clock(), 'dim')}  {state}  {name}  {rates}  {tail}"

        ctx.output.event({**circuit_json(c), "initial": initial}, line)


# -- cluster -----------------------------------------------------------------


@command("cluster status", "the hub replicas and which one leads")
async def cluster_status(ctx: Context, args: argparse.Namespace) -> None:
    resp = await ctx.hub.cluster_status()
    replicas = resp.replicas  # by hub id
    data = {
        "hub_id": resp.hub_id,
        "leader_id": resp.leader_id,
        "revision": resp.revision,
        "version": resp.version,
        "replicas": [
            {
                "hub_id": r.hub_id,
                "address": r.address,
                "started_at": iso(r.started_at),
                "leader": r.leader,
                "version": r.version,
            }
            for r in replicas
        ],
    }

    def text(st: Style) -> Iterable[str]:
        leader = (
            st(resp.leader_id, "green") if resp.leader_id else st("none (election pending)", "red")
        )
        yield from key_values(
            [
                ("target", ctx.target),
                ("answered by", resp.hub_id),
                ("version", resp.version or "-"),
                ("leader", leader),
                ("revision", str(resp.revision)),
            ],
            st,
        )
        yield ""
        now = time.time()
        body = [
            [
                r.hub_id,
                r.address,
                ago(r.started_at, now).removesuffix(" ago"),
                st("leader", "green") if r.leader else "",
                r.version or "-",  # "-": a replica older than the field
            ]
            for r in replicas
        ]
        yield from table(["REPLICA", "ADDRESS", "UP", "ROLE", "VERSION"], body, st)

    ctx.emit(data, text)


# -- register / deregister (demos, tests) --------------------------------------


def _metadata(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--metadata takes KEY=VALUE, not {pair!r}")
        out[key] = value
    return out


def _health_spec(value: str) -> Any:
    if value == "none":
        return None
    if value == "tcp":
        return health_check(tcp=True)
    if value == "grpc":
        return health_check(grpc_service="")
    if value.startswith("http:"):
        return health_check(http=value.removeprefix("http:") or "/health")
    raise UsageError(f"--health takes none, tcp, grpc or http:/PATH, not {value!r}")


@command(
    "register",
    "register an instance (handy for demos); --hold keeps it alive until Ctrl-C",
    _service_arg(),
    arg("--host", required=True, help="address callers connect to"),
    arg("--port", required=True, type=int, help="port callers connect to"),
    arg("--instance-id", default="", help="stable id (default host-port)"),
    arg("--version", default="", help="software version"),
    arg(
        "--protocol",
        default="http",
        choices=("http", "https", "grpc", "tcp", "websocket"),
        help="default http",
    ),
    arg("--health", default="none", help="probe: none (lease only), tcp, grpc or http:/PATH"),
    arg("--ttl", type=int, default=30, help="lease TTL in seconds (default 30)"),
    arg("--weight", type=int, default=100, help="balancing weight (default 100)"),
    arg(
        "--tiers",
        default="",
        help="comma-separated subscription tiers required (free,pro,enterprise)",
    ),
    arg(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a label (repeatable)",
    ),
    arg("--hold", action="store_true", help="keep the lease alive until Ctrl-C, then deregister"),
)
async def register(ctx: Context, args: argparse.Namespace) -> None:
    tiers = [t.strip() for t in args.tiers.split(",") if t.strip()]
    for t in tiers:
        if t not in TIERS:
            raise UsageError(f"--tiers: unknown tier {t!r}")
    reg = await ctx.hub.register(
        args.service,
        host=args.host,
        port=args.port,
        instance_id=args.instance_id,
        protocol=args.protocol,
        version=args.version,
        metadata=_metadata(args.metadata),
        health=_health_spec(args.health),
        subscription_requirements=tiers,
        ttl=args.ttl,
        weight=args.weight,
        keep_alive=args.hold,
    )
    if not args.hold and reg.on_close is not None:
        # One-shot: the instance must outlive hubctl; without this the client
        # would deregister it when it closes.
        reg.on_close(reg)
        reg.on_close = None
    inst = reg.instance
    assert inst is not None
    ctx.emit(
        instance_json(inst),
        lambda st: [
            f"registered {st(_name(inst.service, inst.instance_id), 'bold')} at {inst.address}"
            f" (lease {inst.lease_id}, ttl {inst.ttl_seconds}s"
            + (")" if args.hold else "; it lapses unless renewed: use --hold to keep it)")
        ],
    )
    if args.hold:
        ctx.output.note("keeping the lease alive; Ctrl-C deregisters and exits")
        try:
            await asyncio.Event().wait()
        finally:
            await reg.deregister()


@command(
    "deregister",
    "remove an instance",
    _service_arg(),
    arg("instance_id", metavar="INSTANCE_ID"),
)
async def deregister(ctx: Context, args: argparse.Namespace) -> None:
    resp = await ctx.hub.call(
        ctx.hub.registry_stub.Deregister,
        registry_pb2.DeregisterRequest(service=args.service, instance_id=args.instance_id),
    )
    ctx.emit(
        {
            "service": args.service,
            "instance_id": args.instance_id,
            "revision": resp.header.revision,
        },
        lambda st: [f"deregistered {st(_name(args.service, args.instance_id), 'bold')}"],
    )
