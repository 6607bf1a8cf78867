"""Webhook subscriptions and their delivery, kept in etcd.

Subscriptions are mirrored on every replica; their secrets are under a prefix
of their own that backups do not export. The elected replica:

- turns the changes of the sources' logs (config layers, active alerts,
  deployments, the registry) into events and enqueues one delivery per
  matching subscription, in one transaction with its cursor (the revision of
  each source it got to, and the queues' sequence): a new leader resumes from
  the cursor, so no event is lost or enqueued twice by a change of leader;
- runs one task per subscription that delivers its queue in order, one at a
  time, each attempt with a timeout, retrying with backoff (backoff.py) for a
  bounded time; a delivery that runs out of retries marks the subscription
  FAILING (an alert), and while it is failing its deliveries are recorded as
  not sent;
- moves a finished delivery from the queue to the records, which it prunes
  after ``retention``.

A delivery is at least once: a leader that dies during an attempt leaves the
delivery queued, and the next leader sends it again with the same event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aitrading.hub.v1 import webhook_pb2

from hub_server.kernel.errors import InvalidArgument, NotFound, Violations
from hub_server.kernel.validation import check_safe_id
from hub_server.observability.alerts import WARNING, Condition
from hub_server.store import keys
from hub_server.store.etcd import EtcdStore, KeyValue, Txn, prefix_end
from hub_server.store.event_log import EventLog
from hub_server.store.mirror import Change, PrefixMirror
from hub_server.webhooks import signing
from hub_server.webhooks.backoff import Backoff
from hub_server.webhooks.envelope import TYPE_NAMES, Event, matches
from hub_server.webhooks.events import ToEvents
from hub_server.webhooks.targets import TargetPolicy

log = logging.getLogger(__name__)

ACTIVE = webhook_pb2.WEBHOOK_SUBSCRIPTION_STATE_ACTIVE
FAILING = webhook_pb2.WEBHOOK_SUBSCRIPTION_STATE_FAILING
PENDING = webhook_pb2.WEBHOOK_DELIVERY_STATE_PENDING
SUCCEEDED = webhook_pb2.WEBHOOK_DELIVERY_STATE_SUCCEEDED
FAILED = webhook_pb2.WEBHOOK_DELIVERY_STATE_FAILED

FAILING_RULE = "WEBHOOK_FAILING"
ATTEMPT_TIMEOUT = 10.0  # one POST, connection to answer
RETENTION = 7 * 24 * 3600.0  # delivery records
MAX_RECORDS = 10_000  # delivery records kept per subscription
ROTATION_GRACE = 24 * 3600.0  # a rotated-out secret still signs this long
MAX_TXN_PUTS = 100  # deliveries per enqueue transaction (etcd allows 128 ops)
MAX_RESPONSE = 64 * 1024  # read (and dropped) of a receiver's answer
NOT_SENT = "not sent: the subscription is failing (a successful test delivery reactivates it)"


def _decode(kv: KeyValue) -> webhook_pb2.WebhookSubscription:
    return webhook_pb2.WebhookSubscription.FromString(kv.value)


@dataclass(frozen=True)
class Source:
    name: str
    log: EventLog[Change[Any]]
    to_events: ToEvents
    types: frozenset[int]  # the event types to_events makes


@dataclass
class Attempt:
    at: float
    http_status: int = 0
    latency: float = 0.0
    error: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.http_status < 300 and not self.error

    def to_pb(self) -> webhook_pb2.WebhookAttempt:
        m = webhook_pb2.WebhookAttempt(http_status=self.http_status, error=self.error)
        m.at.FromNanoseconds(int(self.at * 1e9))
        m.latency.FromNanoseconds(int(self.latency * 1e9))
        return m


class Webhooks:
    def __init__(
        self,
        store: EtcdStore,
        *,
        policy: TargetPolicy,
        backoff: Backoff,
        attempt_timeout: float = ATTEMPT_TIMEOUT,
        retention: float = RETENTION,
        rotation_grace: float = ROTATION_GRACE,
        poll_interval: float = 0.2,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.policy = policy
        self.backoff = backoff
        self._attempt_timeout = attempt_timeout
        self._retention = retention
        self._rotation_grace = rotation_grace
        self._poll = poll_interval
        self._clock = clock
        self._sources: list[Source] = []
        self._wake: dict[str, asyncio.Event] = {}
        self._cursor_written = 0.0
        # The cursor and its mod revision as this leader last read or wrote it:
        # only the leader writes it, and every write is guarded by that revision,
        # so a pass need not read it from etcd (a failed guard drops it).
        self._cursor: tuple[dict[str, Any], int] | None = None
        self.subscriptions: PrefixMirror[webhook_pb2.WebhookSubscription] = PrefixMirror(
            store, keys.WEBHOOKS, _decode
        )

    def add_source(
        self, name: str, log: EventLog[Change[Any]], to_events: ToEvents, types: frozenset[int]
    ) -> None:
        self._sources.append(Source(name, log, to_events, types))

    # -- the API ---------------------------------------------------------------

    def _get(self, subscription_id: str) -> webhook_pb2.WebhookSubscription:
        v = Violations()
        check_safe_id(v, "id", subscription_id)
        v.raise_if_any()
        self.subscriptions.ensure_live()
        sub = self.subscriptions.items.get(keys.webhook_key(subscription_id))
        if sub is None:
            raise NotFound(f"no webhook subscription {subscription_id}")
        return sub

    async def create(
        self, url: str, event_types: Iterable[int], tenant_id: str, description: str
    ) -> tuple[webhook_pb2.WebhookSubscription, str]:
        types = sorted(set(event_types))
        v = Violations()
        for i, t in enumerate(types):
            if t not in TYPE_NAMES:
                v.add(f"event_types[{i}]", f"{t} is not a webhook event type")
        check_safe_id(v, "tenant_id", tenant_id, required=False)
        if len(description) > 1024:
            v.add("description", "is longer than 1024 characters")
        v.raise_if_any()
        await self.policy.check(url)
        now = self._clock()
        sub = webhook_pb2.WebhookSubscription(
            id="wh-" + uuid.uuid4().hex[:16],
            url=url,
            event_types=types,
            tenant_id=tenant_id,
            description=description,
            state=ACTIVE,
        )
        sub.created_at.FromNanoseconds(int(now * 1e9))
        sub.secret_set_at.CopyFrom(sub.created_at)
        secret = signing.new_secret()
        txn = Txn().absent(keys.webhook_key(sub.id))
        txn.success += [
            Txn.put(keys.webhook_key(sub.id), sub.SerializeToString()),
            Txn.put(keys.webhook_secret_key(sub.id), _secret_record(secret)),
        ]
        await self._store.txn(txn)
        await self.subscriptions.barrier()
        return sub, secret

    async def list_all(self) -> list[webhook_pb2.WebhookSubscription]:
        self.subscriptions.ensure_live()
        kvs, _ = await self._store.get_range(keys.WEBHOOK_QUEUE, prefix_end(keys.WEBHOOK_QUEUE))
        pending: dict[str, int] = {}
        for kv in kvs:
            sub_id = kv.key[len(keys.WEBHOOK_QUEUE) :].split(b"/", 1)[0].decode()
            pending[sub_id] = pending.get(sub_id, 0) + 1
        out = []
        for sub in sorted(self.subscriptions.items.values(), key=lambda s: s.id):
            copy = webhook_pb2.WebhookSubscription()
            copy.CopyFrom(sub)
            copy.pending = pending.get(sub.id, 0)
            out.append(copy)
        return out

    async def delete(self, subscription_id: str) -> None:
        self._get(subscription_id)
        txn = Txn()
        txn.success += [
            Txn.delete(keys.webhook_key(subscription_id)),
            Txn.delete(keys.webhook_secret_key(subscription_id)),
            Txn.delete(keys.webhook_queue_prefix(subscription_id), prefix=True),
            Txn.delete(keys.webhook_log_prefix(subscription_id), prefix=True),
        ]
        await self._store.txn(txn)
        await self.subscriptions.barrier()

    async def rotate(self, subscription_id: str) -> tuple[str, float]:
        """A new secret; the current one (if any) stays valid for the grace period."""
        sub = self._get(subscription_id)
        now = self._clock()
        current = await self._secrets(subscription_id, now)
        secret = signing.new_secret()
        until = now + self._rotation_grace if current else 0.0
        updated = webhook_pb2.WebhookSubscription()
        updated.CopyFrom(sub)
        updated.secret_set_at.FromNanoseconds(int(now * 1e9))
        txn = Txn()
        txn.success += [
            Txn.put(
                keys.webhook_secret_key(subscription_id),
                _secret_record(secret, current[0] if current else "", until),
            ),
            Txn.put(keys.webhook_key(subscription_id), updated.SerializeToString()),
        ]
        await self._store.txn(txn)
        return secret, until

    async def test(self, subscription_id: str) -> tuple[str, Attempt]:
        """Sends a test event now (from this replica); a success reactivates a
        failing subscription."""
        sub = self._get(subscription_id)
        event = Event(
            "evt_test_" + uuid.uuid4().hex,
            0,
            self._clock(),
            sub.tenant_id,
            {"subscription_id": sub.id, "note": "a test delivery"},
        )
        async with _session() as session:
            attempt = await self._post(session, sub, event)
        if attempt.ok and sub.state == FAILING:
            await self._set_state(sub.id, ACTIVE, "")
        return event.id, attempt

    async def deliveries(
        self, subscription_id: str, limit: int
    ) -> list[webhook_pb2.WebhookDelivery]:
        """Pending and finished deliveries, newest first."""
        self._get(subscription_id)
        if limit < 0:
            raise InvalidArgument.single("limit", "must not be negative")
        limit = limit or 100
        out = []
        for prefix in (
            keys.webhook_queue_prefix(subscription_id),
            keys.webhook_log_prefix(subscription_id),
        ):
            kvs, _ = await self._store.get_range(
                prefix, prefix_end(prefix), limit=limit, descending=True
            )
            out += [_delivery_pb(json.loads(kv.value)) for kv in kvs]
        out.sort(key=lambda d: d.sequence, reverse=True)
        return out[:limit]

    def conditions(self) -> list[Condition]:
        """WEBHOOK_FAILING for each subscription marked failing (for the alerts engine)."""
        return [
            Condition(
                FAILING_RULE,
                WARNING,
                f"webhook {s.id} to {s.url} is failing: {s.last_error}"[:500],
                instance_id=s.id,
                tenant_id=s.tenant_id,
            )
            for s in self.subscriptions.items.values()
            if s.state == FAILING
        ]

    # -- secrets ---------------------------------------------------------------

    async def _secrets(self, subscription_id: str, now: float) -> list[str]:
        """The secrets that sign now: the current one, then a rotated-out one in its grace."""
        kv, _ = await self._store.get(keys.webhook_secret_key(subscription_id))
        if kv is None:
            return []
        record = json.loads(kv.value)
        out = [record["current"]]
        if record.get("previous") and record.get("previous_until", 0) > now:
            out.append(record["previous"])
        return out

    # -- leader work -----------------------------------------------------------

    async def run(self) -> None:
        """Leader work: enqueue events, keep one delivery task per subscription,
        prune old records."""
        tasks: dict[str, asyncio.Task[None]] = {}
        last_prune = 0.0
        self._cursor = None  # a new term reads what the last leader left
        async with _session() as session:
            try:
                while True:
                    try:
                        await self._enqueue()
                        if self._clock() - last_prune > 3600:
                            await self.prune()
                            last_prune = self._clock()
                    except Exception as e:  # etcd away: again next round
                        log.warning("webhook enqueue failed: %r", e)
                        self._cursor = None
                    self._keep_tasks(tasks, session)
                    await asyncio.sleep(self._poll)
            finally:
                for task in tasks.values():
                    task.cancel()
                for task in tasks.values():
                    with contextlib.suppress(BaseException):
                        await task

    def _keep_tasks(
        self, tasks: dict[str, asyncio.Task[None]], session: aiohttp.ClientSession
    ) -> None:
        wanted = {s.id for s in self.subscriptions.items.values()}
        for sub_id in list(tasks):
            if sub_id not in wanted or tasks[sub_id].done():
                tasks.pop(sub_id).cancel()
        for sub_id in wanted - set(tasks):
            self._wake.setdefault(sub_id, asyncio.Event())
            tasks[sub_id] = asyncio.create_task(
                self._deliver_forever(sub_id, session), name=f"webhook {sub_id}"
            )

    async def _load_cursor(self) -> tuple[dict[str, Any], int]:
        kv, _ = await self._store.get(keys.WEBHOOK_CURSOR)
        if kv is not None:
            return json.loads(kv.value), kv.mod_revision
        # The first leader ever starts from now: history is not replayed.
        cursor = {"sources": {s.name: s.log.head for s in self._sources}, "seq": 0}
        txn = Txn().absent(keys.WEBHOOK_CURSOR)
        txn.success.append(Txn.put(keys.WEBHOOK_CURSOR, json.dumps(cursor).encode()))
        await self._store.txn(txn)
        kv, _ = await self._store.get(keys.WEBHOOK_CURSOR)
        assert kv is not None
        return json.loads(kv.value), kv.mod_revision

    async def _enqueue(self) -> None:
        """One pass: the sources' events since the cursor, in revision order,
        enqueued in transactions that also move the cursor."""
        if self._cursor is None:
            self._cursor = await self._load_cursor()
        cursor, cursor_rev = self._cursor
        positions: dict[str, int] = cursor["sources"]
        now = self._clock()
        events: list[tuple[int, Event]] = []
        heads: dict[str, int] = {}
        subs = list(self.subscriptions.items.values())
        wanted = _wanted_types(subs)
        for source in self._sources:
            head = source.log.head
            heads[source.name] = head
            if wanted is not None and not source.types & wanted:
                continue  # its events would match no subscription: not built
            after = positions.get(source.name, head)
            changes = source.log.since(after)
            if changes is None:
                log.error(
                    "webhook events of %s after revision %d are no longer kept: skipped",
                    source.name,
                    after,
                )
                changes = []
            for change in changes:
                if change.revision <= head:
                    events += [(change.revision, e) for e in source.to_events(change, now)]
        events.sort(key=lambda pair: pair[0])
        seq = int(cursor["seq"])
        i = 0
        while True:
            txn = Txn().mod_revision_is(keys.WEBHOOK_CURSOR, cursor_rev)
            woken: set[str] = set()
            # A transaction holds whole revisions (never half of one's events).
            while i < len(events) and len(txn.success) < MAX_TXN_PUTS:
                revision = events[i][0]
                while i < len(events) and events[i][0] == revision:
                    event = events[i][1]
                    for sub in subs:
                        if matches(event, list(sub.event_types), sub.tenant_id):
                            seq += 1
                            key = keys.webhook_queue_prefix(sub.id) + f"{seq:020d}".encode()
                            txn.success.append(Txn.put(key, _queued(seq, event, now)))
                            woken.add(sub.id)
                    i += 1
            done = i >= len(events)
            upto = events[i - 1][0] if events and not done else None
            positions = {
                name: head if upto is None else min(head, upto) for name, head in heads.items()
            }
            if not woken and not done:
                continue
            # A cursor moved past changes that made no delivery need not be
            # written each pass: going over them again makes none either.
            if not woken and (positions == cursor["sources"] or now - self._cursor_written < 5):
                return
            cursor = {"sources": positions, "seq": seq}
            txn.success.append(Txn.put(keys.WEBHOOK_CURSOR, json.dumps(cursor).encode()))
            result = await self._store.txn(txn)
            if not result.succeeded:  # another leader moved it: start again from it
                self._cursor = None
                return
            cursor_rev = result.revision
            self._cursor = (cursor, cursor_rev)
            self._cursor_written = now
            for sub_id in woken:
                self._wake.setdefault(sub_id, asyncio.Event()).set()
            if done:
                return

    async def _deliver_forever(self, sub_id: str, session: aiohttp.ClientSession) -> None:
        wake = self._wake.setdefault(sub_id, asyncio.Event())
        prefix = keys.webhook_queue_prefix(sub_id)
        while True:
            wake.clear()  # before reading the queue: an enqueue after this wakes the wait
            try:
                wait = await self._deliver_next(sub_id, prefix, session)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # etcd away: again shortly
                log.warning("webhook %s: %r", sub_id, e)
                wait = 1.0
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), wait)

    async def _deliver_next(
        self, sub_id: str, prefix: bytes, session: aiohttp.ClientSession
    ) -> float:
        """Makes the queue's first delivery progress; returns how long to wait."""
        kvs, _ = await self._store.get_range(prefix, prefix_end(prefix), limit=1)
        if not kvs:
            return 5.0  # woken by the enqueuer
        kv = kvs[0]
        record = json.loads(kv.value)
        sub = self.subscriptions.items.get(keys.webhook_key(sub_id))
        if sub is None:
            return 1.0
        if sub.state == FAILING:
            record["error"] = NOT_SENT
            await self._finish(sub_id, kv, record, FAILED)
            return 0
        now = self._clock()
        if record["next_at"] > now:
            return record["next_at"] - now
        attempt = await self._post(session, sub, _event(record["event"]))
        record["attempts"].append(attempt.__dict__)
        if attempt.ok:
            await self._finish(sub_id, kv, record, SUCCEEDED)
            return 0
        first_at = record["attempts"][0]["at"]
        retry_at = self.backoff.next_attempt(first_at, self._clock(), len(record["attempts"]))
        if retry_at is None:
            if await self._finish(sub_id, kv, record, FAILED):
                log.warning("webhook %s failing: %s", sub_id, attempt.error)
                await self._set_state(sub_id, FAILING, attempt.error)
            return 0
        record["next_at"] = retry_at
        txn = Txn().mod_revision_is(kv.key, kv.mod_revision)
        txn.success.append(Txn.put(kv.key, json.dumps(record).encode()))
        await self._store.txn(txn)
        return max(0.0, retry_at - self._clock())

    async def _finish(self, sub_id: str, kv: KeyValue, record: dict[str, Any], state: int) -> bool:
        """Moves a delivery from the queue to the records (if it is still queued)."""
        record["state"] = state
        record["finished_at"] = self._clock()
        log_key = keys.webhook_log_prefix(sub_id) + f"{record['seq']:020d}".encode()
        txn = Txn().mod_revision_is(kv.key, kv.mod_revision)
        txn.success += [Txn.delete(kv.key), Txn.put(log_key, json.dumps(record).encode())]
        return (await self._store.txn(txn)).succeeded

    async def _set_state(self, sub_id: str, state: int, last_error: str) -> None:
        key = keys.webhook_key(sub_id)
        for _ in range(5):
            kv, _rev = await self._store.get(key)
            if kv is None:
                return
            sub = _decode(kv)
            sub.state = state
            if last_error:
                sub.last_error = last_error
            txn = Txn().mod_revision_is(key, kv.mod_revision)
            txn.success.append(Txn.put(key, sub.SerializeToString()))
            if (await self._store.txn(txn)).succeeded:
                await self.subscriptions.barrier()
                return

    async def _post(
        self, session: aiohttp.ClientSession, sub: webhook_pb2.WebhookSubscription, event: Event
    ) -> Attempt:
        """One signed POST of the event; never raises."""
        now = self._clock()
        attempt = Attempt(at=now)
        secrets = await self._secrets(sub.id, now)
        if not secrets:
            attempt.error = "no secret (restored from a backup?): rotate the secret"
            return attempt
        try:
            await self.policy.check(sub.url)
        except InvalidArgument as e:
            attempt.error = f"target refused: {e}"
            return attempt
        body = event.body()
        timestamp = str(int(now))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "central-hub-webhooks/1",
            signing.EVENT_ID_HEADER: event.id,
            signing.EVENT_TYPE_HEADER: event.type_name,
            signing.TIMESTAMP_HEADER: timestamp,
            signing.SIGNATURE_HEADER: signing.signature_header(secrets, timestamp, body),
        }
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            async with session.post(
                sub.url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self._attempt_timeout),
            ) as resp:
                attempt.http_status = resp.status
                await resp.content.read(MAX_RESPONSE)
        except TimeoutError:
            attempt.error = f"no answer within {self._attempt_timeout:g} s"
        except aiohttp.ClientError as e:
            attempt.error = f"{type(e).__name__}: {e}"[:500]
        attempt.latency = loop.time() - start
        if not attempt.error and not attempt.ok:
            attempt.error = f"HTTP {attempt.http_status}"
        return attempt

    async def prune(self) -> int:
        """Deletes delivery records finished more than ``retention`` ago, and a
        subscription's beyond its newest ``MAX_RECORDS``."""
        cutoff = self._clock() - self._retention
        kvs, _ = await self._store.get_range(keys.WEBHOOK_LOG, prefix_end(keys.WEBHOOK_LOG))
        kept: dict[bytes, int] = {}
        old = []
        for kv in reversed(kvs):  # newest first within each subscription
            sub = kv.key[len(keys.WEBHOOK_LOG) :].split(b"/", 1)[0]
            kept[sub] = kept.get(sub, 0) + 1
            if kept[sub] > MAX_RECORDS or json.loads(kv.value).get("finished_at", 0) < cutoff:
                old.append(kv.key)
        for start in range(0, len(old), MAX_TXN_PUTS):
            txn = Txn()
            txn.success += [Txn.delete(k) for k in old[start : start + MAX_TXN_PUTS]]
            await self._store.txn(txn)
        return len(old)


def _wanted_types(subs: Iterable[webhook_pb2.WebhookSubscription]) -> frozenset[int] | None:
    """The event types some subscription wants; None when one wants every type."""
    wanted: set[int] = set()
    for sub in subs:
        if not sub.event_types:
            return None
        wanted.update(sub.event_types)
    return frozenset(wanted)


def _session() -> aiohttp.ClientSession:
    # No cookies, no proxies from the environment: a delivery goes where its URL says.
    return aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)


def _secret_record(current: str, previous: str = "", previous_until: float = 0.0) -> bytes:
    return json.dumps(
        {"current": current, "previous": previous, "previous_until": previous_until}
    ).encode()


def _queued(seq: int, event: Event, now: float) -> bytes:
    return json.dumps(
        {
            "seq": seq,
            "event": {
                "id": event.id,
                "type": event.type,
                "time": event.time,
                "tenant": event.tenant,
                "data": event.data,
            },
            "queued_at": now,
            "next_at": 0.0,
            "attempts": [],
            "state": PENDING,
        }
    ).encode()


def _event(d: dict[str, Any]) -> Event:
    return Event(d["id"], d["type"], d["time"], d["tenant"], d["data"])


def _delivery_pb(record: dict[str, Any]) -> webhook_pb2.WebhookDelivery:
    event = _event(record["event"])
    d = webhook_pb2.WebhookDelivery(
        event_id=event.id, event_type=event.type_name, state=record["state"], sequence=record["seq"]
    )
    d.queued_at.FromNanoseconds(int(record["queued_at"] * 1e9))
    for a in record["attempts"]:
        d.attempts.append(Attempt(**a).to_pb())
    return d
