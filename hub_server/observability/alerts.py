"""Alerts: conditions the elected replica evaluates every second from the views
it already has, raised once and resolved once.

Each condition has a stable id (rule + subject). The engine computes the set of
conditions that hold now and compares it with the active alerts in etcd: a new
one is raised with a create-if-absent transaction (so even a deposed leader
racing the new one cannot raise it twice), a gone one is resolved with a
delete-if-present one; both leave a history record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aetcd import rpc
from aitrading.hub.v1 import observability_pb2 as obs

from hub_server.circuits.breaker import CircuitState
from hub_server.circuits.service import Circuits
from hub_server.health.service import DEGRADED, HEALTHY, UNHEALTHY, HealthView
from hub_server.registry.service import RegistryView, on_service_change
from hub_server.store import keys
from hub_server.store.etcd import EtcdStore, KeyValue, Txn
from hub_server.store.event_log import EventLog
from hub_server.store.mirror import Change, PrefixMirror

log = logging.getLogger(__name__)

WARNING = obs.ALERT_SEVERITY_WARNING
CRITICAL = obs.ALERT_SEVERITY_CRITICAL
HISTORY_RETENTION = 7 * 24 * 3600.0


@dataclass(frozen=True)
class Condition:
    rule: str
    severity: int
    summary: str
    service: str = ""
    instance_id: str = ""
    tenant_id: str = ""

    @property
    def id(self) -> str:
        return ":".join((self.rule, self.service, self.instance_id, self.tenant_id))


def service_conditions(service: str, statuses: dict[str, int]) -> list[Condition]:
    """Pure: the alerts one service's instance statuses call for.

    INSTANCE_DOWN per UNHEALTHY instance; SERVICE_DOWN when no probed instance
    is usable (HEALTHY or DEGRADED) and at least one is UNHEALTHY;
    SERVICE_DEGRADED when at least half of the usable instances are DEGRADED.
    Instances not probed yet count for nothing.
    """
    out = [
        Condition("INSTANCE_DOWN", CRITICAL, f"instance {service}/{iid} is unhealthy",
                  service, iid)
        for iid, status in sorted(statuses.items())
        if status == UNHEALTHY
    ]  # fmt: skip
    usable = [s for s in statuses.values() if s in (HEALTHY, DEGRADED)]
    if not usable and any(s == UNHEALTHY for s in statuses.values()):
        out.append(Condition("SERVICE_DOWN", CRITICAL,
                             f"service {service} has no healthy instance", service))  # fmt: skip
    elif usable and 2 * usable.count(DEGRADED) >= len(usable):
        n = usable.count(DEGRADED)
        out.append(Condition("SERVICE_DEGRADED", WARNING,
                             f"service {service}: {n} of {len(usable)} instances degraded",
                             service))  # fmt: skip
    return out


def circuit_conditions(circuits: Iterable[tuple[str, str, CircuitState]]) -> list[Condition]:
    """Pure: CIRCUIT_OPENED while a circuit is OPEN, FORCED_OPEN or HALF_OPEN."""
    out = []
    for service, instance_id, state in circuits:
        if state in (CircuitState.OPEN, CircuitState.FORCED_OPEN, CircuitState.HALF_OPEN):
            what = f"{service}/{instance_id}" if instance_id else service
            summary = f"circuit of {what} is {state.name}"
            out.append(Condition("CIRCUIT_OPENED", WARNING, summary, service, instance_id))
    return out


def _decode_alert(kv: KeyValue) -> obs.Alert:
    return obs.Alert.FromString(kv.value)


class Alerts:
    def __init__(
        self,
        store: EtcdStore,
        registry: RegistryView,
        health: HealthView,
        circuits: Circuits,
        *,
        extra_conditions: Callable[[], list[Condition]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._registry = registry
        self._health = health
        self._circuits = circuits
        self._extra = extra_conditions
        self._clock = clock
        self.active: PrefixMirror[obs.Alert] = PrefixMirror(
            store, keys.ALERTS_ACTIVE, _decode_alert
        )
        # Evaluating every instance of the fleet each second stalled the event
        # loop for tens of ms, so each service's conditions are kept and redone
        # only when its instances or their health changed. None: not tracking
        # (before the first evaluation, or while not leading): redo them all.
        self._by_service: dict[str, list[Condition]] = {}
        self._dirty: set[str] | None = None
        on_service_change(registry.mirror, self._mark_dirty)
        on_service_change(health.mirror, self._mark_dirty)
        # Circuit conditions, redone when the circuits mirror moved.
        self._circuit_conditions: tuple[int, list[Condition]] = (-1, [])

    @property
    def revision(self) -> int:
        return self.active.revision

    @property
    def log(self) -> EventLog[Change[obs.Alert]]:
        """The active alerts' changes (a resolved alert is REMOVED)."""
        return self.active.log

    def active_alerts(self) -> list[obs.Alert]:
        """The alerts raised and not resolved."""
        self.active.ensure_live()
        return list(self.active.items.values())

    def _mark_dirty(self, service: str) -> None:
        if self._dirty is not None:
            self._dirty.add(service)

    def _service_conditions(self) -> dict[str, list[Condition]]:
        services = self._registry.services
        if self._dirty is None:
            self._by_service, todo = {}, list(services)
        else:
            todo = list(self._dirty)
        for service in todo:
            instances = services.get(service)
            if instances:
                statuses = {
                    iid: self._health.status(service, iid, stored)
                    for iid, stored in instances.stored.items()
                }
                self._by_service[service] = service_conditions(service, statuses)
            else:
                self._by_service.pop(service, None)
        self._dirty = set()
        return self._by_service

    def conditions(self) -> list[Condition]:
        by_service = self._service_conditions()
        # In the registry's order of services, as when all were recomputed.
        out = [c for service in self._registry.services for c in by_service.get(service, ())]
        revision = self._circuits.mirror.revision
        if self._circuit_conditions[0] != revision:
            self._circuit_conditions = (
                revision,
                circuit_conditions(
                    (s.service, s.instance_id, s.circuit.state)
                    for s in self._circuits.mirror.items.values()
                ),
            )
        out += self._circuit_conditions[1]
        if self._extra is not None:
            out += self._extra()
        return out

    async def evaluate(self) -> None:
        """Raises what newly holds, resolves what no longer does."""
        wanted = {c.id: c for c in self.conditions()}
        active = {a.id: a for a in self.active.items.values()}
        for alert_id, condition in wanted.items():
            if alert_id not in active:
                await self._raise(condition)
        for alert_id, alert in active.items():
            if alert_id not in wanted:
                await self._resolve(alert)

    async def _raise(self, c: Condition) -> None:
        now = self._clock()
        alert = obs.Alert(
            id=c.id, rule=c.rule, severity=c.severity, service=c.service,
            instance_id=c.instance_id, tenant_id=c.tenant_id, summary=c.summary, active=True,
        )  # fmt: skip
        alert.raised_at.FromNanoseconds(int(now * 1e9))
        key = keys.alert_key(c.id)
        txn = Txn().absent(key)
        txn.success += [Txn.put(key, alert.SerializeToString()), self._history(alert, now)]
        if (await self._store.txn(txn)).succeeded:
            log.warning("alert raised: %s", c.summary)

    async def _resolve(self, alert: obs.Alert) -> None:
        now = self._clock()
        key = keys.alert_key(alert.id)
        txn = Txn().mod_revision_is(key, self.active.mod_revision(key))
        txn.success += [Txn.delete(key), self._history(as_resolved(alert, now), now)]
        if (await self._store.txn(txn)).succeeded:
            log.info("alert resolved: %s", alert.summary)

    @staticmethod
    def _history(alert: obs.Alert, now: float) -> rpc.RequestOp:
        key = keys.alert_history_key(int(now * 1e9), alert.id)
        return Txn.put(key, alert.SerializeToString())

    async def history(self, limit: int) -> list[obs.Alert]:
        """The most recent raise and resolve records, newest first."""
        if limit <= 0:
            return []
        kvs, _ = await self._store.get_range(
            keys.ALERTS_HISTORY, keys.ALERTS_HISTORY + b"\xff", limit=limit, descending=True
        )
        return [obs.Alert.FromString(kv.value) for kv in kvs]

    async def run(self, interval: float = 1.0) -> None:
        """Leader work: evaluate every ``interval``; prune old history hourly."""
        last_prune = 0.0
        try:
            while True:
                try:
                    await self.evaluate()
                    if self._clock() - last_prune > 3600:
                        cutoff = f"{int((self._clock() - HISTORY_RETENTION) * 1e9):020d}"
                        await self._store.delete_range(
                            keys.ALERTS_HISTORY, keys.ALERTS_HISTORY + cutoff.encode()
                        )
                        last_prune = self._clock()
                except Exception as e:  # etcd away: try again next round
                    log.debug("alert evaluation failed: %r", e)
                await asyncio.sleep(interval)
        finally:
            self._dirty = None  # stop tracking changes until evaluated again


def as_resolved(alert: obs.Alert, now: float) -> obs.Alert:
    """A copy of the alert marked resolved at ``now``."""
    done = obs.Alert()
    done.CopyFrom(alert)
    done.active = False
    done.resolved_at.FromNanoseconds(int(now * 1e9))
    return done
