"""Webhooks: the pure parts directly, and delivery to a real HTTP receiver on a
loopback port (so the hubs run with webhook_allow_private) through real hubs
on the session etcd."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aitrading.hub.v1 import webhook_pb2, webhook_pb2_grpc

from hub_client import HubClient, InvalidArgument
from hub_server.app import Hub
from hub_server.kernel.errors import InvalidArgument as DomainInvalidArgument
from hub_server.store import keys
from hub_server.store.etcd import EtcdStore, prefix_end
from hub_server.webhooks import signing
from hub_server.webhooks.backoff import Backoff
from hub_server.webhooks.envelope import Event, matches
from hub_server.webhooks.targets import TargetPolicy
from tests.support.hubctl import hubctl, table_row
from tests.support.hubs import HubFactory, crash
from tests.support.waiting import eventually

CONFIG = webhook_pb2.WEBHOOK_EVENT_TYPE_CONFIG_CHANGED
FAST = {"webhook_allow_private": True, "webhook_retry_base": 0.1}

# -- pure parts -------------------------------------------------------------------


def test_signature_verifies_and_names_every_valid_secret() -> None:
    body, ts = b'{"id":"evt_1"}', "1700000000"
    header = signing.signature_header(["new", "old"], ts, body)
    assert signing.verify("new", ts, body, header)
    assert signing.verify("old", ts, body, header)
    assert not signing.verify("other", ts, body, header)
    assert not signing.verify("new", "1700000001", body, header)
    assert not signing.verify("new", ts, body + b" ", header)


def test_backoff_grows_with_jitter_and_gives_up() -> None:
    b = Backoff(base=1.0, factor=2.0, cap=10.0, retry_for=30.0)
    rng = random.Random(7)
    delays = [b.delay(n, rng) for n in range(1, 8)]
    for n, d in enumerate(delays, start=1):
        bound = min(10.0, 2.0 ** (n - 1))
        assert bound / 2 <= d <= bound
    assert b.next_attempt(first_at=0.0, now=5.0, failures=1, rng=rng) is not None
    assert b.next_attempt(first_at=0.0, now=29.5, failures=6, rng=rng) is None


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://localhost/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data", "metadata"),
        ("http://169.254.10.1/", "link-local"),
        ("ftp://example.com/hook", "http or https"),
        ("https://user:pw@example.com/", "credentials"),
        ("", "required"),
    ],
)
def test_target_policy_refuses(url: str, why: str) -> None:
    with pytest.raises(DomainInvalidArgument) as e:
        TargetPolicy().check_url(url)
    assert e.value.violations[0].field == "url"
    assert why in e.value.violations[0].description


def test_target_policy_allows_private_and_restricts_hosts() -> None:
    assert TargetPolicy(allow_private=True).check_url("http://127.0.0.1:9/x") == "127.0.0.1"
    hosts = TargetPolicy(allowed_hosts=["hooks.example.com", "*.corp.example"])
    assert hosts.check_url("https://hooks.example.com/a")
    assert hosts.check_url("https://a.b.corp.example/a")
    with pytest.raises(DomainInvalidArgument, match="allowed hosts"):
        hosts.check_url("https://example.org/a")


def test_envelope_and_filters() -> None:
    e = Event("evt_1", CONFIG, 0.5, "acme", {"layer": "tenant/acme"})
    body = json.loads(e.body())
    assert body == {"id": "evt_1", "type": "config.changed", "time": "1970-01-01T00:00:00.500Z",
                    "tenant": "acme", "data": {"layer": "tenant/acme"}, "version": 1}  # fmt: skip
    assert matches(e, [], "") and matches(e, [CONFIG], "acme")
    assert not matches(e, [webhook_pb2.WEBHOOK_EVENT_TYPE_ALERT_RAISED], "")
    assert not matches(e, [], "beta")


# -- a receiver -------------------------------------------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Receiver:
    """An HTTP server on a free loopback port; ``answer`` decides each reply."""

    url: str = ""
    got: list[Received] = field(default_factory=list)
    answer: Callable[[Received], Awaitable[int]] | None = None

    async def handle(self, request: web.Request) -> web.Response:
        r = Received(dict(request.headers), await request.read())
        status = 200 if self.answer is None else await self.answer(r)
        if status == 200:
            self.got.append(r)
        return web.Response(status=status)

    def events(self) -> list[dict[str, Any]]:
        return [r.event for r in self.got]


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[[], Awaitable[Receiver]]]:
    servers: list[TestServer] = []

    async def start() -> Receiver:
        receiver = Receiver()
        app = web.Application()
        app.router.add_post("/hook", receiver.handle)
        server = TestServer(app, host="127.0.0.1", port=0)
        await server.start_server()
        servers.append(server)
        receiver.url = str(server.make_url("/hook"))
        return receiver

    yield start
    for server in servers:
        await server.close()


def stub(client: HubClient) -> webhook_pb2_grpc.WebhookServiceStub:
    return webhook_pb2_grpc.WebhookServiceStub(client.channel)


async def subscribe(
    client: HubClient, url: str, *types: int, tenant: str = ""
) -> webhook_pb2.CreateSubscriptionResponse:
    request = webhook_pb2.CreateSubscriptionRequest(url=url, event_types=types, tenant_id=tenant)
    return await client.call(stub(client).CreateSubscription, request)


async def deliveries(client: HubClient, sub_id: str) -> list[webhook_pb2.WebhookDelivery]:
    request = webhook_pb2.ListDeliveriesRequest(id=sub_id, limit=1000)
    return list((await client.call(stub(client).ListDeliveries, request)).deliveries)


async def set_global(client: HubClient, n: int) -> None:
    await client.set_config_layer("global", {"settings": {"n": n}})


# -- delivery ---------------------------------------------------------------------


async def test_signed_event_verifies_with_the_secret_shown_once(
    hub_factory: HubFactory, receivers: Callable[[], Awaitable[Receiver]]
) -> None:
    hub = await hub_factory(**FAST)
    receiver = await receivers()
    async with HubClient(hub.address) as client:
        created = await subscribe(client, receiver.url, CONFIG)
        await client.set_config_layer("tenant/acme", {"settings": {"limit": 3}})
        await eventually(lambda: len(receiver.got) == 1)
        r = receiver.got[0]
        ts = r.headers[signing.TIMESTAMP_HEADER]
        assert signing.verify(created.secret, ts, r.body, r.headers[signing.SIGNATURE_HEADER])
        event = r.event
        assert event["type"] == "config.changed" and event["tenant"] == "acme"
        assert event["version"] == 1 and event["data"]["layer"] == "tenant/acme"
        assert r.headers[signing.EVENT_ID_HEADER] == event["id"]

        # Rotation: the new secret signs, the old one too during the grace period.
        rotated = await client.call(
            stub(client).RotateSecret, webhook_pb2.RotateSecretRequest(id=created.subscription.id)
        )
        await set_global(client, 1)
        await eventually(lambda: len(receiver.got) == 2)
        r = receiver.got[1]
        ts, sig = r.headers[signing.TIMESTAMP_HEADER], r.headers[signing.SIGNATURE_HEADER]
        assert signing.verify(rotated.secret, ts, r.body, sig)
        assert signing.verify(created.secret, ts, r.body, sig)
        assert r.event["tenant"] == ""

        [record, _] = await deliveries(client, created.subscription.id)
        assert record.state == webhook_pb2.WEBHOOK_DELIVERY_STATE_SUCCEEDED
        assert record.attempts[0].http_status == 200


async def test_retries_after_receiver_errors(
    hub_factory: HubFactory, receivers: Callable[[], Awaitable[Receiver]]
) -> None:
    hub = await hub_factory(**FAST)
    receiver = await receivers()
    answers = [500, 503, 200]

    async def answer(r: Received) -> int:
        return answers.pop(0) if answers else 200

    receiver.answer = answer
    async with HubClient(hub.address) as client:
        created = await subscribe(client, receiver.url)
        await set_global(client, 1)
        await eventually(lambda: len(receiver.got) == 1)
        [record] = await deliveries(client, created.subscription.id)
        assert record.state == webhook_pb2.WEBHOOK_DELIVERY_STATE_SUCCEEDED
        assert [a.http_status for a in record.attempts] == [500, 503, 200]
        assert record.attempts[0].error == "HTTP 500"


async def test_a_subscription_that_keeps_failing_is_marked_and_alerted(
    hub_factory: HubFactory, receivers: Callable[[], Awaitable[Receiver]]
) -> None:
    hub = await hub_factory(**FAST, webhook_retry_for=0.5)
    receiver = await receivers()
    broken = True

    async def answer(r: Received) -> int:
        return 500 if broken else 200

    receiver.answer = answer
    async with HubClient(hub.address) as client:
        created = await subscribe(client, receiver.url, CONFIG)
        sub_id = created.subscription.id
        await set_global(client, 1)

        async def failing() -> bool:
            resp = await client.call(
                stub(client).ListSubscriptions, webhook_pb2.ListSubscriptionsRequest()
            )
            return resp.subscriptions[0].state == webhook_pb2.WEBHOOK_SUBSCRIPTION_STATE_FAILING

        await eventually(failing)

        def alerted() -> bool:
            return any(a.rule == "WEBHOOK_FAILING" and sub_id in a.id
                       for a in hub.services.alerts.active_alerts())  # fmt: skip

        await eventually(alerted)
        [record] = await deliveries(client, sub_id)
        assert record.state == webhook_pb2.WEBHOOK_DELIVERY_STATE_FAILED
        assert len(record.attempts) >= 2

        # While failing, events are recorded as not sent; a good test reactivates.
        await set_global(client, 2)
        await eventually(lambda: _count(client, sub_id, 2))
        broken = False
        test = await client.call(
            stub(client).TestSubscription, webhook_pb2.TestSubscriptionRequest(id=sub_id)
        )
        assert test.attempt.http_status == 200
        assert receiver.got[-1].event["type"] == "webhook.test"
        assert not await failing()
        await eventually(lambda: not alerted())
        await set_global(client, 3)
        await eventually(lambda: any(e["type"] == "config.changed" for e in receiver.events()))


async def _count(client: HubClient, sub_id: str, n: int) -> bool:
    return len(await deliveries(client, sub_id)) >= n


async def test_order_per_subscription_survives_retries(
    hub_factory: HubFactory, receivers: Callable[[], Awaitable[Receiver]]
) -> None:
    hub = await hub_factory(**FAST)
    receiver = await receivers()
    seen: set[str] = set()

    async def answer(r: Received) -> int:
        # Each event's first attempt fails: a later event must still wait for it.
        if r.event["id"] not in seen:
            seen.add(r.event["id"])
            return 500
        return 200

    receiver.answer = answer
    async with HubClient(hub.address) as client:
        await subscribe(client, receiver.url, CONFIG)
        for n in range(6):
            await set_global(client, n)
        await eventually(lambda: len(receiver.got) == 6, timeout=30)
        versions = [e["data"]["version"] for e in receiver.events()]
        assert versions == sorted(versions) and len(set(versions)) == 6


async def test_instance_events_reach_only_subscriptions_that_want_them(
    hub_factory: HubFactory, receivers: Callable[[], Awaitable[Receiver]]
) -> None:
    # Events of a source that no subscription wants are not built (the
    # registry's, under mass registration): once one wants them they flow.
    hub = await hub_factory(**FAST)
    configs, instances = await receivers(), await receivers()
    async with HubClient(hub.address) as client:
        await subscribe(client, configs.url, CONFIG)
        reg = await client.register("orders", host="10.0.0.1", port=80, keep_alive=False)
        await set_global(client, 1)
        await eventually(lambda: len(configs.got) == 1)
        await subscribe(client, instances.url, webhook_pb2.WEBHOOK_EVENT_TYPE_INSTANCES_CHANGED)
        await reg.deregister()
        await client.register("orders", host="10.0.0.2", port=80, keep_alive=False)
        await set_global(client, 2)
        await eventually(lambda: len(configs.got) == 2 and len(instances.got) == 2)
        got = [(e["data"]["change"], e["data"]["instance_id"]) for e in instances.events()]
        assert got == [("removed", "10.0.0.1-80"), ("added", "10.0.0.2-80")]
        assert {e["type"] for e in configs.events()} == {"config.changed"}


async def test_a_slow_receiver_delays_neither_callers_nor_other_subscriptions(
    hub_factory: HubFactory, receivers: Callable[[], Awaitable[Receiver]]
) -> None:
    hub = await hub_factory(**FAST)
    slow, fast = await receivers(), await receivers()
    release = asyncio.Event()

    async def hold(r: Received) -> int:
        await release.wait()  # held until the fast one has its event
        return 200

    slow.answer = hold
    async with HubClient(hub.address) as client:
        await subscribe(client, slow.url, CONFIG)
        await subscribe(client, fast.url, CONFIG)
        try:
            await set_global(client, 1)
            await set_global(client, 2)
            # The slow receiver holds its first request: the fast one gets both
            # events, and calls are answered, meanwhile.
            await eventually(lambda: len(fast.got) == 2)
            resp = await client.call(
                stub(client).ListSubscriptions, webhook_pb2.ListSubscriptionsRequest()
            )
            assert len(resp.subscriptions) == 2
            await set_global(client, 3)
            await eventually(lambda: len(fast.got) == 3)
            assert slow.got == []
        finally:
            release.set()
        await eventually(lambda: len(slow.got) == 3)


async def test_no_event_lost_when_the_leader_dies_with_pending_deliveries(
    hub_factory: HubFactory, receivers: Callable[[], Awaitable[Receiver]], etcd_store: EtcdStore
) -> None:
    first = await hub_factory(**FAST, election_ttl=2)
    second = await hub_factory(**FAST, election_ttl=2)
    receiver = await receivers()
    down = True

    async def answer(r: Received) -> int:
        return 503 if down else 200

    receiver.answer = answer
    await eventually(
        lambda: first.services.election.is_leader != second.services.election.is_leader
    )
    leader, survivor = (first, second) if first.services.election.is_leader else (second, first)
    async with HubClient(survivor.address) as client:
        await subscribe(client, receiver.url, CONFIG)
        for n in range(5):
            await set_global(client, n)

        async def queued() -> int:
            kvs, _ = await etcd_store.get_range(keys.WEBHOOK_QUEUE, prefix_end(keys.WEBHOOK_QUEUE))
            return len(kvs)

        await eventually(lambda: _at_least(queued(), 5))
        await crash(leader)
        # Events of the time without a leader are not lost either.
        await set_global(client, 5)
        down = False
        await eventually(lambda: survivor.services.election.is_leader, timeout=20)
        await eventually(lambda: len({e["id"] for e in receiver.events()}) == 6, timeout=30)
        versions = sorted({e["data"]["version"] for e in receiver.events()})
        assert len(versions) == 6
        assert await queued() == 0


async def _at_least(n: Awaitable[int], m: int) -> bool:
    return await n >= m


# -- refusals and secrets --------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9/hook", "http://169.254.169.254/latest", "ftp://example.com/hook"],
)
async def test_refused_targets_name_the_field(hub: Hub, url: str) -> None:
    async with HubClient(hub.address) as client:
        with pytest.raises(InvalidArgument) as e:
            await subscribe(client, url)
        assert [v.field for v in e.value.field_violations] == ["url"]
        resp = await client.call(
            stub(client).ListSubscriptions, webhook_pb2.ListSubscriptionsRequest()
        )
        assert list(resp.subscriptions) == []


async def test_unknown_subscription_and_bad_event_type(hub: Hub) -> None:
    from hub_client import NotFound

    async with HubClient(hub.address) as client:
        with pytest.raises(NotFound):
            await client.call(
                stub(client).DeleteSubscription, webhook_pb2.DeleteSubscriptionRequest(id="wh-0")
            )
        with pytest.raises(InvalidArgument) as e:
            await client.call(
                stub(client).CreateSubscription,
                webhook_pb2.CreateSubscriptionRequest(url="https://example.com/", event_types=[99]),
            )
        assert e.value.field_violations[0].field == "event_types[0]"


async def test_secret_is_never_in_list_nor_in_backups(hub_factory: HubFactory) -> None:
    hub = await hub_factory(**FAST)
    async with HubClient(hub.address) as client:
        created = await subscribe(client, "http://127.0.0.1:9/hook")
        secret = created.secret.encode()
        listed = await client.call(
            stub(client).ListSubscriptions, webhook_pb2.ListSubscriptionsRequest()
        )
        assert listed.subscriptions[0].id == created.subscription.id
        assert secret not in listed.SerializeToString()
        data, _ = await hub.services.backups.export()
        assert secret not in data
        assert created.subscription.id.encode() in data  # the subscription itself is there
        # Restoring that backup keeps the secret in place (it is not in the file).
        await client.restore(data, dry_run=False)
        assert hub.store is not None
        kv, _ = await hub.store.get(keys.webhook_secret_key(created.subscription.id))
        assert kv is not None and secret in kv.value


# -- hubctl -----------------------------------------------------------------------


async def test_hubctl_webhooks_commands(
    hub_factory: HubFactory, receivers: Callable[[], Awaitable[Receiver]]
) -> None:
    hub = await hub_factory(**FAST)
    receiver = await receivers()
    made = await hubctl(hub, "webhooks", "create", receiver.url, "--event", "config.changed",
                        "--tenant", "acme", "-o", "json")  # fmt: skip
    assert made.code == 0, made.err
    sub_id, secret = made.json()["id"], made.json()["secret"]
    assert secret.startswith("whsec_")
    listed = await hubctl(hub, "webhooks", "list")
    assert table_row(listed.out, sub_id)[1] == "active" and secret not in listed.out
    tested = await hubctl(hub, "webhooks", "test", sub_id)
    assert tested.code == 0 and "delivered: HTTP 200" in tested.out
    r = receiver.got[-1]
    assert signing.verify(secret, r.headers[signing.TIMESTAMP_HEADER], r.body,
                          r.headers[signing.SIGNATURE_HEADER])  # fmt: skip
    async with HubClient(hub.address) as client:
        await client.set_config_layer("tenant/acme", {"settings": {"limit": 1}})
        await client.set_config_layer("tenant/beta", {"settings": {"limit": 1}})  # filtered out
    await eventually(lambda: len(receiver.got) == 2)
    shown = await hubctl(hub, "webhooks", "deliveries", sub_id, "-o", "json")
    [d] = shown.json()["deliveries"]
    assert d["event_type"] == "config.changed" and d["state"] == "WEBHOOK_DELIVERY_STATE_SUCCEEDED"
    rotated = await hubctl(hub, "webhooks", "rotate", sub_id, "-o", "json")
    assert rotated.code == 0 and rotated.json()["secret"] != secret
    bad = await hubctl(hub, "webhooks", "create", "ftp://example.com/", "--event", "nope")
    assert bad.code == 2 and "unknown event 'nope'" in bad.err
    assert (await hubctl(hub, "webhooks", "delete", sub_id)).code == 0
    gone = await hubctl(hub, "webhooks", "delete", sub_id)
    assert gone.code != 0 and "no webhook subscription" in gone.err


async def test_delivery_records_are_pruned(
    hub_factory: HubFactory, receivers: Callable[[], Awaitable[Receiver]]
) -> None:
    hub = await hub_factory(**FAST)
    receiver = await receivers()
    async with HubClient(hub.address) as client:
        created = await subscribe(client, receiver.url, CONFIG)
        for n in range(3):
            await set_global(client, n)
        await eventually(lambda: len(receiver.got) == 3)
        await eventually(lambda: _count(client, created.subscription.id, 3))
        webhooks = hub.services.webhooks
        assert await webhooks.prune() == 0  # all younger than the retention
        webhooks._retention = 0.0
        assert await webhooks.prune() == 3
        assert await deliveries(client, created.subscription.id) == []


async def test_webhooks_over_the_http_json_api(
    hub_factory: HubFactory, receivers: Callable[[], Awaitable[Receiver]]
) -> None:
    hub = await hub_factory(**FAST, http_listen="127.0.0.1:0")
    receiver = await receivers()
    assert hub.http is not None
    async with httpx.AsyncClient(base_url=hub.http.url, timeout=10) as web:
        body = {"url": receiver.url, "eventTypes": ["WEBHOOK_EVENT_TYPE_CONFIG_CHANGED"]}
        made = await web.post("/v1/webhooks", json=body)
        assert made.status_code == 200, made.text
        sub_id, secret = made.json()["subscription"]["id"], made.json()["secret"]
        listed = await web.get("/v1/webhooks")
        assert listed.json()["subscriptions"][0]["id"] == sub_id and secret not in listed.text
        tested = await web.post(f"/v1/webhooks/{sub_id}:test", json={})
        assert tested.json()["attempt"]["httpStatus"] == 200
        refused = await web.post("/v1/webhooks", json={"url": "gopher://example.com/"})
        assert refused.status_code == 400 and "url" in refused.text
        assert (await web.delete(f"/v1/webhooks/{sub_id}")).status_code == 200
        assert (await web.get(f"/v1/webhooks/{sub_id}/deliveries")).status_code == 404
