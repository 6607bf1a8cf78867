"""Health: the probe-result state machine (pure), the health view every replica
keeps, and the monitor the elected replica runs to probe every instance.

Records live in etcd under the instance's own lease, so they disappear with it.
The monitor writes a record when the status changes, when latency moves a lot,
or often enough that ``last_check`` is never older than max(interval, REFRESH)
while probing runs (the proto's promise), not after every probe: 10,000
instances probed every 10 s would otherwise be 1,000 writes/s fanned out to
every watcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aitrading.hub.v1 import types_pb2

from hub_server.registry.service import RegistryView, StoredInstance, check_kind, on_service_change
from hub_server.store import keys
from hub_server.store.etcd import EtcdStore, KeyValue
from hub_server.store.event_log import EventLog
from hub_server.store.mirror import REMOVED, Change, PrefixMirror

log = logging.getLogger(__name__)

HEALTHY = types_pb2.HEALTH_STATUS_HEALTHY
DEGRADED = types_pb2.HEALTH_STATUS_DEGRADED
UNHEALTHY = types_pb2.HEALTH_STATUS_UNHEALTHY
UNKNOWN = types_pb2.HEALTH_STATUS_UNSPECIFIED
STARTING = types_pb2.HEALTH_STATUS_STARTING

REFRESH = 30.0  # the most an unchanged record's last_check lags, when interval is shorter


@dataclass(frozen=True)
class Policy:
    interval: float = 10.0
    timeout: float = 2.0
    degraded_latency_ms: float = 1000.0
    unhealthy_threshold: int = 3
    healthy_threshold: int = 2

    @classmethod
    def of(cls, check: types_pb2.HealthCheck) -> Policy:
        def seconds(name: str, default: float) -> float:
            if not check.HasField(name):
                return default
            d = getattr(check, name)
            return float(d.seconds + d.nanos / 1e9)

        return cls(
            interval=seconds("interval", cls.interval),
            timeout=seconds("timeout", cls.timeout),
            degraded_latency_ms=seconds("degraded_latency", cls.degraded_latency_ms / 1000) * 1000,
            unhealthy_threshold=check.unhealthy_threshold or cls.unhealthy_threshold,
            healthy_threshold=check.healthy_threshold or cls.healthy_threshold,
        )


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    latency_ms: float
    # The instance said it is degraded (an HTTP check's body or header).
    degraded: bool = False
    message: str = ""


@dataclass(frozen=True)
class State:
    status: int = STARTING
    failures: int = 0
    successes: int = 0


def next_state(prev: State, result: ProbeResult, policy: Policy) -> State:
    """The status after one probe, with hysteresis.

    A new instance is STARTING: its first success makes it HEALTHY (nothing to
    recover from), ``unhealthy_threshold`` failures in a row make it UNHEALTHY.
    A HEALTHY or DEGRADED instance becomes UNHEALTHY only after
    ``unhealthy_threshold`` failures in a row, and an UNHEALTHY one recovers only
    after ``healthy_threshold`` successes in a row, so one lost packet does not
    flap it. Up-but-slow is DEGRADED, with no delay.
    """
    if result.ok:
        successes, failures = prev.successes + 1, 0
        up = (
            DEGRADED
            if result.degraded or result.latency_ms > policy.degraded_latency_ms
            else HEALTHY
        )
        if prev.status == UNHEALTHY and successes < policy.healthy_threshold:
            return State(UNHEALTHY, failures, successes)
        return State(up, failures, successes)
    successes, failures = 0, prev.failures + 1
    if failures < policy.unhealthy_threshold:
        if prev.status in (HEALTHY, DEGRADED, STARTING):
            return State(prev.status, failures, successes)
        if prev.status == UNKNOWN:  # no status yet is starting
            return State(STARTING, failures, successes)
    return State(UNHEALTHY, failures, successes)


def worth_writing(
    old: types_pb2.InstanceHealth | None,
    new: types_pb2.InstanceHealth,
    now: float,
    *,
    interval: float = 0.0,
    refresh: float = REFRESH,
) -> bool:
    """Whether a probe result made at ``now`` must be stored.

    An unchanged one is stored when skipping it would let the stored
    ``last_check`` grow older than ``refresh`` before the next probe, due
    ``interval`` from now: so it is never older than max(interval, refresh).
    """
    if old is None or old.status != new.status:
        return True
    moved = abs(new.latency_ms - old.latency_ms)
    if moved > 5 and moved > 0.5 * max(old.latency_ms, 1.0):
        return True
    return now - old.last_check.ToMicroseconds() / 1e6 + interval >= refresh


def decode_health(kv: KeyValue) -> types_pb2.InstanceHealth:
    record = types_pb2.InstanceHealth.FromString(kv.value)
    record.revision = kv.mod_revision
    return record


class HealthView:
    """Every instance's last health record, in memory (every replica has one)."""

    def __init__(self, store: EtcdStore) -> None:
        # Records by (service, instance id) as well: of() is on every path that
        # reads instances, and a tuple is cheaper to build than an etcd key.
        self._records: dict[tuple[str, str], types_pb2.InstanceHealth] = {}
        self.mirror: PrefixMirror[types_pb2.InstanceHealth] = PrefixMirror(
            store, keys.HEALTH, decode_health, on_change=self._index
        )

    def _index(self, change: Change[types_pb2.InstanceHealth]) -> None:
        key = keys.parse_pair(keys.HEALTH, change.key)
        if change.type == REMOVED:
            self._records.pop(key, None)
        elif change.value is not None:
            self._records[key] = change.value

    @property
    def revision(self) -> int:
        return self.mirror.revision

    @property
    def log(self) -> EventLog[Change[types_pb2.InstanceHealth]]:
        return self.mirror.log

    def ensure_live(self) -> None:
        self.mirror.ensure_live()

    async def barrier(self) -> int:
        """Waits until everything written before the call is in the view."""
        return await self.mirror.barrier()

    def add_listener(self, listener: Callable[[Change[types_pb2.InstanceHealth]], None]) -> None:
        self.mirror.add_listener(listener)

    def on_service_change(self, callback: Callable[[str], None]) -> None:
        on_service_change(self.mirror, callback)

    def get(self, service: str, instance_id: str) -> types_pb2.InstanceHealth | None:
        return self._records.get((service, instance_id))

    def of(self, instance: types_pb2.Instance) -> types_pb2.InstanceHealth:
        """The instance's health; an instance without a check is healthy while its
        lease lives, one with a check and no probe result yet is STARTING."""
        return self.of_stored(instance.service, instance.instance_id, instance)

    def of_stored(
        self, service: str, instance_id: str, instance: StoredInstance | types_pb2.Instance
    ) -> types_pb2.InstanceHealth:
        """``of`` the instance, without decoding a stored one."""
        record = self._records.get((service, instance_id))
        if record is not None:
            return record
        kind = instance.check if isinstance(instance, StoredInstance) else check_kind(instance)
        return types_pb2.InstanceHealth(
            service=service, instance_id=instance_id, status=_unprobed_status(kind), check=kind
        )

    def status(self, service: str, instance_id: str, stored: StoredInstance) -> int:
        """``of(instance).status``, without decoding the instance."""
        record = self._records.get((service, instance_id))
        return record.status if record is not None else _unprobed_status(stored.check)


def _unprobed_status(kind: str) -> int:
    return HEALTHY if kind == "lease" else STARTING


def usable(
    instances: list[tuple[types_pb2.Instance, types_pb2.InstanceHealth]],
) -> list[tuple[types_pb2.Instance, types_pb2.InstanceHealth]]:
    """What discovery answers by default, of (instance, health) pairs: the
    HEALTHY instances; if none, the DEGRADED ones; if none, the STARTING ones
    (not proven yet either way). Never UNHEALTHY ones."""
    by_status: dict[int, list[tuple[types_pb2.Instance, types_pb2.InstanceHealth]]] = {}
    for pair in instances:
        # UNKNOWN (no status) ranks as STARTING, keeping the order of the pairs.
        status = STARTING if pair[1].status == UNKNOWN else pair[1].status
        by_status.setdefault(status, []).append(pair)
    for status in (HEALTHY, DEGRADED, STARTING):
        if by_status.get(status):
            return by_status[status]
    return []


Prober = Callable[[types_pb2.Instance, float], Awaitable[ProbeResult]]
Key = tuple[str, str]


class HealthMonitor:
    """Probes every instance that declared a check; run only by the leader.

    Probes are scheduled per instance by their own interval on one heap, and at
    most ``concurrency`` run at once, so 1,000 instances at 10 s are 100 probes
    per second spread evenly rather than 1,000 at once every 10 s.
    """

    def __init__(
        self,
        store: EtcdStore,
        registry: RegistryView,
        view: HealthView,
        probe: Prober,
        *,
        concurrency: int = 200,
        clock: Callable[[], float] = time.time,
        refresh: float = REFRESH,
    ) -> None:
        self._store = store
        self._registry = registry
        self._view = view
        self._probe = probe
        self._limit = asyncio.Semaphore(concurrency)
        self._clock = clock
        self._refresh = refresh
        # Bumped by every run(): a probe of an earlier term that finishes late
        # must not schedule into this one's heap.
        self._term = 0
        self._states: dict[Key, State] = {}
        self._due: list[tuple[float, Key]] = []
        self._scheduled: set[Key] = set()
        self._running: set[asyncio.Task[None]] = set()
        self.probes_done = 0
        # Instances registered, changed or gone since the loop last looked (None
        # while it is not running): it schedules from these rather than
        # rescanning every instance each round, which stalled the event loop for
        # tens of ms with 10,000 instances.
        self._changed: set[Key] | None = None
        # Set when the loop should look again before its timer: an instance
        # changed, or a probe finished and its next one is due sooner.
        self._wake = asyncio.Event()
        registry.mirror.add_listener(self._note_change)

    def _note_change(self, change: Change[StoredInstance]) -> None:
        if change.type != REMOVED and self._changed is None:
            return  # not running, nothing to forget (a starting hub's million)
        key = keys.parse_instance_key(change.key)
        if change.type == REMOVED:
            # Registered again under this id, it is a new instance: STARTING.
            self._states.pop(key, None)
        if self._changed is not None:
            self._changed.add(key)
            self._wake.set()

    def _schedule(self, due: float, key: Key) -> None:
        if not self._due or due < self._due[0][0]:
            self._wake.set()
        heapq.heappush(self._due, (due, key))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        # A new term starts afresh: every instance is probed now, not when a timer
        # of an earlier term says (its records have aged meanwhile), and from its
        # stored record, which another leader may have written since.
        self._term += 1
        self._states.clear()
        self._due.clear()
        self._scheduled.clear()
        # What changed while this was not running is unknown: look at everything
        # once (without a key per instance: most of a million need no probe).
        self._changed = set()
        try:
            now = loop.time()
            for service, instances in self._registry.services.items():
                for instance_id, kept in instances.stored.items():
                    if kept.check != "lease":
                        self._scheduled.add((service, instance_id))
                        self._schedule(now, (service, instance_id))
            while True:
                self._wake.clear()
                now = loop.time()
                changed, self._changed = self._changed, set()
                for key in changed:
                    stored = self._registry.get_stored(*key)
                    if (
                        stored is not None
                        and key not in self._scheduled
                        and stored.check != "lease"
                    ):
                        self._scheduled.add(key)
                        self._schedule(now, key)
                while self._due and self._due[0][0] <= now:
                    due, key = heapq.heappop(self._due)
                    stored = self._registry.get_stored(*key)
                    if stored is None or stored.check == "lease":
                        self._scheduled.discard(key)
                        self._states.pop(key, None)
                        continue
                    await self._limit.acquire()
                    inst = stored.instance(*key)  # decoded for its probe alone
                    task = asyncio.create_task(self._probe_one(key, inst, due, self._term))
                    self._running.add(task)
                    task.add_done_callback(self._running.discard)
                wait = self._due[0][0] - loop.time() if self._due else 60.0
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), wait)
        finally:
            self._changed = None
            for task in list(self._running):
                task.cancel()

    async def _probe_one(self, key: Key, inst: types_pb2.Instance, due: float, term: int) -> None:
        policy = Policy.of(inst.health_check)
        try:
            try:
                result = await self._probe(inst, policy.timeout)
            except Exception as e:  # a probe bug must not stop the monitor
                result = ProbeResult(False, policy.timeout * 1000, message=f"probe error: {e!r}")
            await self._record(key, inst, result, policy)
        except Exception as e:
            log.debug("recording health of %s failed: %r", key, e)
        finally:
            self._limit.release()
            self.probes_done += 1
            if term == self._term and key in self._scheduled:
                # Counted from when this probe was due, not when it finished, so
                # the interval does not stretch by each probe's latency; a probe
                # that fell behind by a whole interval is simply due now.
                now = asyncio.get_running_loop().time()
                self._schedule(max(due + policy.interval, now), key)

    async def _record(
        self, key: Key, inst: types_pb2.Instance, result: ProbeResult, policy: Policy
    ) -> None:
        old = self._view.get(*key)
        prev = self._states.get(key)
        if prev is None:
            # A new leader continues from the stored record.
            prev = (
                State(old.status, old.consecutive_failures, old.consecutive_successes)
                if old is not None
                else State()
            )
        state = next_state(prev, result, policy)
        self._states[key] = state
        now = self._clock()
        record = types_pb2.InstanceHealth(
            service=inst.service,
            instance_id=inst.instance_id,
            status=state.status,
            latency_ms=round(result.latency_ms, 3),
            consecutive_failures=state.failures,
            consecutive_successes=state.successes,
            message=result.message[:500],
            check=check_kind(inst),
        )
        record.last_check.FromMicroseconds(int(now * 1e6))
        if worth_writing(old, record, now, interval=policy.interval, refresh=self._refresh):
            # Under the instance's lease: the record goes when the instance goes.
            # Grouped with the other probes' records finishing meanwhile: 10,000
            # instances appearing at once are 10,000 first records to write.
            await self._store.put_grouped(
                keys.health_key(*key), record.SerializeToString(), lease=inst.lease_id
            )
