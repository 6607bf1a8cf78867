"""hubctl webhooks: subscriptions that receive the hub's events as signed HTTP
POSTs (admins). ``create`` and ``rotate`` print the signing secret: it is shown
that once and never again."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

from aitrading.hub.v1 import webhook_pb2, webhook_pb2_grpc
from google.protobuf.json_format import MessageToDict

from hubctl.app import Context, UsageError, arg, command, group
from hubctl.output import Style, local_time, table

group("webhooks", "send the hub's events to HTTP receivers: subscriptions, secrets, deliveries")

EVENT_TYPES = {
    "config.changed": webhook_pb2.WEBHOOK_EVENT_TYPE_CONFIG_CHANGED,
    "alert.raised": webhook_pb2.WEBHOOK_EVENT_TYPE_ALERT_RAISED,
    "alert.resolved": webhook_pb2.WEBHOOK_EVENT_TYPE_ALERT_RESOLVED,
    "deployment.changed": webhook_pb2.WEBHOOK_EVENT_TYPE_DEPLOYMENT_CHANGED,
    "instances.changed": webhook_pb2.WEBHOOK_EVENT_TYPE_INSTANCES_CHANGED,
}
_NAMES = {v: k for k, v in EVENT_TYPES.items()}
_STATES = {
    webhook_pb2.WEBHOOK_SUBSCRIPTION_STATE_ACTIVE: "active",
    webhook_pb2.WEBHOOK_SUBSCRIPTION_STATE_FAILING: "failing",
}
_DELIVERY_STATES = {
    webhook_pb2.WEBHOOK_DELIVERY_STATE_PENDING: "pending",
    webhook_pb2.WEBHOOK_DELIVERY_STATE_SUCCEEDED: "succeeded",
    webhook_pb2.WEBHOOK_DELIVERY_STATE_FAILED: "failed",
}


def _stub(ctx: Context) -> webhook_pb2_grpc.WebhookServiceStub:
    return webhook_pb2_grpc.WebhookServiceStub(ctx.hub.channel)


def subscription_json(s: webhook_pb2.WebhookSubscription) -> dict[str, Any]:
    return {
        "id": s.id,
        "url": s.url,
        "events": [_NAMES.get(t, str(t)) for t in s.event_types] or ["*"],
        "tenant_id": s.tenant_id or None,
        "description": s.description,
        "state": _STATES.get(s.state, "unknown"),
        "last_error": s.last_error or None,
        "pending": s.pending,
        "created_at": s.created_at.ToJsonString(),
        "secret_set_at": s.secret_set_at.ToJsonString(),
    }


def _event_types(names: list[str]) -> list[int]:
    out = []
    for name in names:
        for part in filter(None, (p.strip() for p in name.split(","))):
            if part not in EVENT_TYPES:
                raise UsageError(f"unknown event {part!r}: one of {', '.join(EVENT_TYPES)}")
            out.append(EVENT_TYPES[part])
    return out


@command(
    "webhooks create",
    "subscribe URL to events; prints the signing secret, shown only this once",
    arg("url", metavar="URL", help="the receiver: an http or https URL"),
    arg("--event", action="append", default=[], metavar="TYPE",
        help=f"an event type to send (repeat or comma-separate; none: all): "
             f"{', '.join(EVENT_TYPES)}"),
    arg("--tenant", default="", metavar="TENANT", help="only this tenant's events"),
    arg("--description", default="", help="what the subscription is for"),
)  # fmt: skip
async def webhooks_create(ctx: Context, args: argparse.Namespace) -> None:
    request = webhook_pb2.CreateSubscriptionRequest(
        url=args.url,
        event_types=_event_types(args.event),
        tenant_id=args.tenant,
        description=args.description,
    )
    resp = await ctx.hub.call(_stub(ctx).CreateSubscription, request)
    s = resp.subscription

    def text(st: Style) -> Iterable[str]:
        yield f"created {st(s.id, 'bold')} -> {s.url}"
        yield f"secret: {resp.secret}"
        yield st("keep it now: the hub never shows it again (`webhooks rotate` makes a new one)",
                 "dim")  # fmt: skip

    ctx.emit({**subscription_json(s), "secret": resp.secret}, text)


@command("webhooks list", "subscriptions, their state and pending deliveries (no secrets)")
async def webhooks_list(ctx: Context, args: argparse.Namespace) -> None:
    resp = await ctx.hub.call(_stub(ctx).ListSubscriptions, webhook_pb2.ListSubscriptionsRequest())
    subs = list(resp.subscriptions)

    def text(st: Style) -> Iterable[str]:
        if not subs:
            yield st("no webhook subscriptions: `hubctl webhooks create URL` adds one", "dim")
            return
        rows = [
            (s.id, _STATES.get(s.state, "?"), s.url,
             ",".join(_NAMES.get(t, str(t)) for t in s.event_types) or "*",
             s.tenant_id or "*", str(s.pending), s.last_error)
            for s in subs
        ]  # fmt: skip
        yield from table(("ID", "STATE", "URL", "EVENTS", "TENANT", "PENDING", "LAST ERROR"),
                         rows, st)  # fmt: skip

    ctx.emit({"subscriptions": [subscription_json(s) for s in subs]}, text)


@command(
    "webhooks delete",
    "remove a subscription with its pending deliveries and records",
    arg("id", metavar="ID"),
)
async def webhooks_delete(ctx: Context, args: argparse.Namespace) -> None:
    await ctx.hub.call(
        _stub(ctx).DeleteSubscription, webhook_pb2.DeleteSubscriptionRequest(id=args.id)
    )
    ctx.emit({"id": args.id, "deleted": True}, lambda st: [f"deleted {st(args.id, 'bold')}"])


@command(
    "webhooks test",
    "send a test event now and show the receiver's answer (reactivates a failing one)",
    arg("id", metavar="ID"),
)
async def webhooks_test(ctx: Context, args: argparse.Namespace) -> int:
    resp = await ctx.hub.call(
        _stub(ctx).TestSubscription, webhook_pb2.TestSubscriptionRequest(id=args.id)
    )
    a = resp.attempt
    ok = 200 <= a.http_status < 300 and not a.error

    def text(st: Style) -> Iterable[str]:
        what = f"HTTP {a.http_status}" if a.http_status else "no answer"
        ms = a.latency.ToMilliseconds()
        verdict = st("delivered", "green") if ok else st("failed", "red")
        yield f"{verdict}: {what} in {ms} ms" + (f" ({a.error})" if a.error else "")

    ctx.emit({"event_id": resp.event_id, "ok": ok, **MessageToDict(a)}, text)
    return 0 if ok else 1


@command(
    "webhooks rotate",
    "replace a subscription's secret (printed once); the old one signs too for a grace period",
    arg("id", metavar="ID"),
)
async def webhooks_rotate(ctx: Context, args: argparse.Namespace) -> None:
    resp = await ctx.hub.call(_stub(ctx).RotateSecret, webhook_pb2.RotateSecretRequest(id=args.id))
    until = resp.previous_valid_until if resp.HasField("previous_valid_until") else None

    def text(st: Style) -> Iterable[str]:
        yield f"secret: {resp.secret}"
        if until is not None:
            yield st(f"the previous secret also signs deliveries until {local_time(until)}",
                     "dim")  # fmt: skip

    ctx.emit({"id": args.id, "secret": resp.secret,
              "previous_valid_until": until.ToJsonString() if until else None}, text)  # fmt: skip


@command(
    "webhooks deliveries",
    "a subscription's deliveries, newest first, with every attempt",
    arg("id", metavar="ID"),
    arg("--limit", type=int, default=20, help="at most this many (default 20)"),
)
async def webhooks_deliveries(ctx: Context, args: argparse.Namespace) -> None:
    resp = await ctx.hub.call(
        _stub(ctx).ListDeliveries, webhook_pb2.ListDeliveriesRequest(id=args.id, limit=args.limit)
    )
    found = list(resp.deliveries)

    def last(d: webhook_pb2.WebhookDelivery) -> str:
        if not d.attempts:
            return ""
        a = d.attempts[-1]
        return a.error or f"HTTP {a.http_status}"

    def text(st: Style) -> Iterable[str]:
        if not found:
            yield st("no deliveries yet", "dim")
            return
        rows = [
            (str(d.sequence), d.event_id, d.event_type, _DELIVERY_STATES.get(d.state, "?"),
             str(len(d.attempts)), local_time(d.queued_at), last(d))
            for d in found
        ]  # fmt: skip
        yield from table(("SEQ", "EVENT", "TYPE", "STATE", "ATTEMPTS", "QUEUED", "LAST"), rows, st)

    ctx.emit({"deliveries": [MessageToDict(d, preserving_proto_field_name=True) for d in found]},
             text)  # fmt: skip
