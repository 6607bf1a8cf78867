"""Deployments: roll-out records in etcd, stepped by the elected replica.

Each step (hub_server/deployments/rollout.py computes it) is written in one etcd
transaction that compares the record's mod revision: the new record, the drain
marks and the directives it implies, and (for a final state) the release of the
service's active-deployment key. So a step is taken exactly once, whichever
replica takes it, and a new leader continues from the last record written.

Drain marks and directives are put under the instance's own lease: they vanish
with the instance, and a dead instance never keeps a key alive.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aitrading.hub.v1 import deployment_pb2, types_pb2
from aitrading.hub.v1.errors_pb2 import (
    ERROR_REASON_DEPLOYMENT_ACTIVE,
    ERROR_REASON_DEPLOYMENT_NOT_FOUND,
    ERROR_REASON_DEPLOYMENT_STATE,
    ERROR_REASON_NOTHING_TO_DEPLOY,
    ERROR_REASON_SERVICE_NOT_FOUND,
)

from hub_server.deployments import rollout
from hub_server.health.service import HEALTHY, HealthView
from hub_server.kernel.errors import FailedPrecondition, NotFound
from hub_server.registry.service import RegistryView
from hub_server.store import keys
from hub_server.store.cas import CompareAndSet, contended
from hub_server.store.etcd import EtcdStore, KeyValue, Txn
from hub_server.store.event_log import EventLog
from hub_server.store.mirror import Change, PrefixMirror

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredDeployment:
    deployment: rollout.Deployment
    revision: int


def _decode_deployment(kv: KeyValue) -> StoredDeployment:
    return StoredDeployment(rollout.Deployment.from_dict(json.loads(kv.value)), kv.mod_revision)


def _decode_directive(kv: KeyValue) -> deployment_pb2.Directive:
    d = deployment_pb2.Directive.FromString(kv.value)
    d.revision = kv.mod_revision
    return d


def _decode_drain(kv: KeyValue) -> str:
    return kv.value.decode()  # the deployment id


def new_id(now: float) -> str:
    """Sorts by creation time."""
    return f"dep-{int(now * 1000):013d}-{uuid.uuid4().hex[:6]}"


class Deployments:
    def __init__(
        self,
        store: EtcdStore,
        registry: RegistryView,
        health: HealthView,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._registry = registry
        self._health = health
        self._clock = clock
        self.mirror: PrefixMirror[StoredDeployment] = PrefixMirror(
            store, keys.DEPLOYMENTS, _decode_deployment
        )
        self.drains: PrefixMirror[str] = PrefixMirror(store, keys.DRAIN, _decode_drain)
        self.directives: PrefixMirror[deployment_pb2.Directive] = PrefixMirror(
            store, keys.DIRECTIVES, _decode_directive
        )
        self.steps_taken = 0  # by this replica, as leader

    @property
    def mirrors(self) -> list[PrefixMirror]:
        return [self.mirror, self.drains, self.directives]

    def is_draining(self, service: str, instance_id: str) -> bool:
        # Asked for every instance of every discovery answer; almost always
        # nothing is draining, and then no key need be built.
        drains = self.drains.items
        return bool(drains) and keys.drain_key(service, instance_id) in drains

    def any_draining(self) -> bool:
        """Whether any instance is draining now (almost always not)."""
        return bool(self.drains.items)

    # -- reads -------------------------------------------------------------

    @property
    def revision(self) -> int:
        return self.mirror.revision

    @property
    def log(self) -> EventLog[Change[StoredDeployment]]:
        return self.mirror.log

    @property
    def directives_log(self) -> EventLog[Change[deployment_pb2.Directive]]:
        return self.directives.log

    def lookup(self, deployment_id: str) -> StoredDeployment | None:
        """The deployment, or None if there is none of that id."""
        self.mirror.ensure_live()
        return self.mirror.items.get(keys.deployment_key(deployment_id))

    def get(self, deployment_id: str) -> StoredDeployment:
        stored = self.lookup(deployment_id)
        if stored is None:
            raise NotFound(
                f"deployment {deployment_id!r} does not exist",
                reason=ERROR_REASON_DEPLOYMENT_NOT_FOUND,
                deployment_id=deployment_id,
            )
        return stored

    def find(self, service: str = "", *, active_only: bool = False) -> list[StoredDeployment]:
        self.mirror.ensure_live()
        found = [
            s
            for s in self.mirror.items.values()
            if (not service or s.deployment.service == service)
            and (not active_only or not s.deployment.final)
        ]
        return sorted(found, key=lambda s: (s.deployment.created_at, s.deployment.id), reverse=True)

    def directives_snapshot(self) -> tuple[list[deployment_pb2.Directive], int]:
        """Every directive, by instance id, and the revision they reflect."""
        self.directives.ensure_live()
        items = sorted(self.directives.items.values(), key=lambda d: d.instance_id)
        return items, self.directives.revision

    def facts(self, service: str) -> dict[str, rollout.InstanceFact]:
        """The service's instances as the planner sees them."""
        return {
            instance_id: rollout.InstanceFact(
                version=inst.version,
                healthy=self._health.of(inst).status == HEALTHY,
                draining=inst.draining or self.is_draining(service, instance_id),
            )
            for instance_id, inst in self._registry.services.get(service, {}).items()
        }

    # -- writes ------------------------------------------------------------

    async def start(
        self, service: str, target_version: str, strategy: int, settings: rollout.Settings
    ) -> StoredDeployment:
        self._registry.ensure_live()
        facts = self.facts(service)
        if not facts:
            raise NotFound(
                f"service {service!r} is not registered", reason=ERROR_REASON_SERVICE_NOT_FOUND,
                service=service,
            )  # fmt: skip
        now = self._clock()
        try:
            d = rollout.plan(new_id(now), service, target_version, strategy, settings, facts, now)
        except rollout.Refused as e:
            raise FailedPrecondition(
                str(e), reason=ERROR_REASON_NOTHING_TO_DEPLOY, service=service
            ) from e
        active = keys.deployment_active_key(service)
        txn = Txn().absent(active)
        txn.success += [
            Txn.put(active, d.id.encode()),
            Txn.put(keys.deployment_key(d.id), json.dumps(d.to_dict()).encode()),
        ]
        txn.failure.append(Txn.get(active))
        result = await self._store.txn(txn)
        if not result.succeeded:
            current = result.ranges[0][0].value.decode() if result.ranges[0] else "?"
            raise FailedPrecondition(
                f"service {service!r} already has an active deployment ({current})",
                reason=ERROR_REASON_DEPLOYMENT_ACTIVE, service=service, deployment_id=current,
            )  # fmt: skip
        await self.mirror.barrier()
        return StoredDeployment(d, result.revision)

    async def pause(self, deployment_id: str, reason: str = "") -> StoredDeployment:
        return await self._operate(
            deployment_id, lambda d, now: (rollout.pause(d, now, reason), rollout.Actions())
        )

    async def resume(self, deployment_id: str) -> StoredDeployment:
        return await self._operate(
            deployment_id, lambda d, now: (rollout.resume(d, now), rollout.Actions())
        )

    async def abort(self, deployment_id: str, reason: str = "") -> StoredDeployment:
        return await self._operate(deployment_id, lambda d, now: rollout.abort(d, now, reason))

    async def rollback(self, deployment_id: str, reason: str = "") -> StoredDeployment:
        def op(d: rollout.Deployment, now: float) -> tuple[rollout.Deployment, rollout.Actions]:
            newest = self.find(d.service)
            latest = bool(newest) and newest[0].deployment.id == d.id
            return rollout.rollback(d, now, reason, latest=latest)

        return await self._operate(deployment_id, op)

    async def release_drains(self, deployment_id: str) -> tuple[StoredDeployment, list[str], int]:
        """Takes back every drain mark of the deployment on a still-registered
        instance, whatever its state, and tells each to RESUME: the operator's
        way to put a service back into use. Returns the deployment, the released
        instance ids and the revision of the write (the mirror's if none)."""
        stored = self.get(deployment_id)
        d = stored.deployment
        self._registry.ensure_live()
        await self.drains.barrier()  # every mark written so far, ours included
        instances: Mapping[str, types_pb2.Instance] = self._registry.services.get(d.service, {})
        released = sorted(
            i for i in instances if self.drains.items.get(keys.drain_key(d.service, i)) == d.id
        )
        if not released:
            return stored, [], self.drains.revision
        actions = rollout.Actions(
            undrain=released, directives=[rollout.Directive(i, rollout.RESUME) for i in released]
        )
        txn = Txn()
        txn.success += self._effects(d, actions, instances)
        result = await self._store.txn(txn)
        await self.drains.barrier()
        return stored, released, result.revision

    async def _operate(
        self,
        deployment_id: str,
        op: Callable[[rollout.Deployment, float], tuple[rollout.Deployment, rollout.Actions]],
    ) -> StoredDeployment:
        stored = self.get(deployment_id)
        key = keys.deployment_key(deployment_id)
        cas = CompareAndSet(self._store, key, _decode_deployment, known=stored)
        for _ in cas.attempts():
            try:
                new, actions = op(stored.deployment, self._clock())
            except rollout.Refused as e:
                raise FailedPrecondition(
                    str(e), reason=ERROR_REASON_DEPLOYMENT_STATE, deployment_id=deployment_id
                ) from e
            result = await cas.write(self._txn(stored, new, actions))
            if result is not None:
                await self.mirror.barrier()
                return StoredDeployment(new, result.revision)
            if cas.value is None:
                raise NotFound(f"deployment {deployment_id!r} does not exist")
            if cas.value.revision == stored.revision:
                # The record did not move: the other compare failed, i.e. a
                # finished roll-out cannot take the service back from an active one.
                raise FailedPrecondition(
                    f"service {new.service!r} has another active deployment",
                    reason=ERROR_REASON_DEPLOYMENT_ACTIVE,
                    service=new.service,
                    deployment_id=deployment_id,
                )
            stored = cas.value
        raise contended(f"deployment {deployment_id}")

    async def _write(
        self, old: StoredDeployment, new: rollout.Deployment, actions: rollout.Actions
    ) -> int:
        """Runs :meth:`_txn`: the revision, or 0 if the record had changed meanwhile."""
        result = await self._store.txn(self._txn(old, new, actions))
        return result.revision if result.succeeded else 0

    def _txn(self, old: StoredDeployment, new: rollout.Deployment, actions: rollout.Actions) -> Txn:
        """One transaction: the record (compared on its revision) and its effects."""
        key = keys.deployment_key(new.id)
        active = keys.deployment_active_key(new.service)
        txn = Txn().mod_revision_is(key, old.revision)
        if new.state == rollout.ROLLING_BACK and old.deployment.final:
            txn.absent(active)  # a finished one rolled back takes the service again
            txn.success.append(Txn.put(active, new.id.encode()))
        txn.success.append(Txn.put(key, json.dumps(new.to_dict()).encode()))
        if new.final and not old.deployment.final:
            txn.success.append(Txn.delete(active))
        instances: Mapping[str, types_pb2.Instance] = self._registry.services.get(new.service, {})
        txn.success += self._effects(new, actions, instances)
        return txn

    def _effects(
        self,
        d: rollout.Deployment,
        actions: rollout.Actions,
        instances: Mapping[str, types_pb2.Instance],
    ) -> list:
        ops = []
        now = self._clock()
        for instance_id in actions.drain:
            inst = instances.get(instance_id)
            if inst is not None and inst.lease_id:
                ops.append(
                    Txn.put(keys.drain_key(d.service, instance_id), d.id.encode(), inst.lease_id)
                )
        for instance_id in actions.undrain:
            ops.append(Txn.delete(keys.drain_key(d.service, instance_id)))
        for directive in actions.directives:
            inst = instances.get(directive.instance_id)
            if inst is None or not inst.lease_id:
                continue  # gone already: nobody to tell
            msg = deployment_pb2.Directive(
                service=d.service,
                instance_id=directive.instance_id,
                action=directive.action,
                target_version=directive.target_version,
                deployment_id=d.id,
                batch=directive.batch,
            )
            msg.issued_at.FromNanoseconds(int(now * 1e9))
            ops.append(
                Txn.put(
                    keys.directive_key(d.service, directive.instance_id),
                    msg.SerializeToString(),
                    inst.lease_id,
                )
            )
        return ops

    # -- leader work -------------------------------------------------------

    async def step_all(self) -> int:
        """One step of every deployment that can move; returns how many moved."""
        moved = 0
        for stored in list(self.mirror.items.values()):
            d = stored.deployment
            if d.state not in (rollout.PENDING, rollout.RUNNING, rollout.ROLLING_BACK):
                continue
            new, actions = rollout.step(d, self.facts(d.service), self._clock())
            if new is None:
                continue
            if await self._write(stored, new, actions):
                moved += 1
                self.steps_taken += 1
                log.info(
                    "deployment %s of %s: %s, %s",
                    d.id, d.service, rollout.state_name(new.state), new.phase,
                )  # fmt: skip
        return moved

    async def run(self, interval: float = 0.2) -> None:
        """Leader work: steps every deployment every ``interval`` seconds."""
        while True:
            try:
                if self.mirror.live and self._registry.live:
                    if await self.step_all():
                        await self.mirror.barrier()  # next step starts from what we wrote
            except Exception as e:
                log.warning("deployment step failed: %r", e)
            await asyncio.sleep(interval)
