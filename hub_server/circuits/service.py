"""Fleet-wide circuits: one etcd key per circuit, changed only by compare-and-set.

Any replica may apply a batch of outcomes: it reads the stored circuit, applies
the batch with the pure state machine (hub_server/circuits/breaker.py) and writes
it back if nobody wrote in between, else retries from a fresh read. So the
sequence of CAS writes is the one history all replicas share, and a transition
happens exactly once whichever replica the reports reached. Time-based steps
(OPEN -> HALF_OPEN) are taken by the elected replica's ticker.

Outcomes that name an instance feed that instance's circuit; the others feed
the service's circuit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from hub_server.circuits.breaker import Call, Circuit, CircuitSettings
from hub_server.store import keys
from hub_server.store.cas import CompareAndSet, contended
from hub_server.store.etcd import EtcdStore, KeyValue, Txn
from hub_server.store.event_log import EventLog
from hub_server.store.mirror import Change, PrefixMirror

log = logging.getLogger(__name__)

SERVICE_LEVEL = keys.SERVICE_LEVEL  # the instance part of a service circuit's key


@dataclass(frozen=True)
class StoredCircuit:
    service: str
    instance_id: str  # "" for the service circuit
    circuit: Circuit
    revision: int  # etcd mod revision; 0 for a circuit never written


circuit_key = keys.circuit_key
settings_key = keys.circuit_settings_key


def _decode_circuit(kv: KeyValue) -> StoredCircuit:
    service, instance_id = keys.parse_pair(keys.CIRCUITS, kv.key)
    circuit = Circuit.from_dict(json.loads(kv.value))
    return StoredCircuit(
        service, "" if instance_id == SERVICE_LEVEL else instance_id, circuit, kv.mod_revision
    )


def _decode_settings(kv: KeyValue) -> CircuitSettings:
    return CircuitSettings.from_dict(json.loads(kv.value))


class Circuits:
    def __init__(self, store: EtcdStore, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self.mirror: PrefixMirror[StoredCircuit] = PrefixMirror(
            store, keys.CIRCUITS, _decode_circuit
        )
        self.settings: PrefixMirror[CircuitSettings] = PrefixMirror(
            store, keys.CIRCUIT_SETTINGS, _decode_settings
        )

    @property
    def revision(self) -> int:
        return self.mirror.revision

    @property
    def log(self) -> EventLog[Change[StoredCircuit]]:
        return self.mirror.log

    def ensure_live(self) -> None:
        self.mirror.ensure_live()

    def find(self, service: str = "") -> list[StoredCircuit]:
        """The stored circuits (of ``service``, or all), by service and instance id."""
        self.mirror.ensure_live()
        found = [s for s in self.mirror.items.values() if not service or s.service == service]
        return sorted(found, key=lambda s: (s.service, s.instance_id))

    def settings_for(self, service: str) -> CircuitSettings:
        return self.settings.items.get(settings_key(service)) or CircuitSettings()

    def get(self, service: str, instance_id: str = "") -> StoredCircuit:
        """The stored circuit, or a fresh CLOSED one with the service's settings."""
        stored = self.mirror.items.get(circuit_key(service, instance_id))
        if stored is not None:
            return stored
        return StoredCircuit(
            service, instance_id, Circuit(self.settings_for(service), now=self._clock()), 0
        )

    def refuses(self, service: str, instance_id: str = "") -> bool:
        """Whether the circuit turns calls away now (OPEN whose wait has not passed,
        or forced open). Served from memory, for the balancer."""
        stored = self.mirror.items.get(circuit_key(service, instance_id))
        return stored is not None and not stored.circuit.allows_call(self._clock())

    async def report(self, outcomes: Iterable[tuple[str, str, Call]]) -> list[StoredCircuit]:
        """Applies outcomes (service, instance id, call) grouped by circuit, in order."""
        groups: dict[tuple[str, str], list[Call]] = {}
        for service, instance_id, call in outcomes:
            groups.setdefault((service, instance_id), []).append(call)

        def recorder(calls: list[Call]) -> Callable[[Circuit, float], object]:
            return lambda circuit, now: circuit.record_batch(calls, now)

        updates = (self._update(s, i, recorder(calls)) for (s, i), calls in groups.items())
        return list(await asyncio.gather(*updates))

    async def override(self, service: str, instance_id: str, action: str) -> StoredCircuit:
        """``force_open``, ``force_closed`` or ``reset``."""
        return await self._update(service, instance_id, lambda c, now: getattr(c, action)(now))

    async def set_settings(self, service: str, settings: CircuitSettings) -> StoredCircuit:
        settings.ensure_valid()
        await self._store.put(settings_key(service), json.dumps(settings.to_dict()).encode())
        await self.settings.barrier()
        return await self._update(service, "", lambda c, now: c.configure(settings))

    async def tick_forever(self, interval: float = 0.25) -> None:
        """Leader work: time-based transitions of every circuit."""
        while True:
            await asyncio.sleep(interval)
            now = self._clock()
            for stored in list(self.mirror.items.values()):
                probe = stored.circuit.copy()
                if probe.tick(now):
                    try:
                        await self._update(
                            stored.service, stored.instance_id, lambda c, now: c.tick(now)
                        )
                    except Exception as e:
                        log.debug("circuit tick failed: %r", e)

    async def _update(
        self, service: str, instance_id: str, step: Callable[[Circuit, float], object]
    ) -> StoredCircuit:
        """Read, step, compare-and-set; retried from a fresh read on conflict."""
        key = circuit_key(service, instance_id)
        # First try from memory; the txn checks it.
        cas = CompareAndSet(self._store, key, _decode_circuit, known=self.mirror.items.get(key))
        for stored in cas.attempts():
            now = self._clock()
            if stored is not None:
                circuit, revision = stored.circuit.copy(), stored.revision
            else:
                circuit, revision = Circuit(self.settings_for(service), now=now), 0
            step(circuit, now)
            if stored is not None and circuit == stored.circuit:
                return stored  # nothing changed (e.g. outcomes ignored while OPEN)
            txn = Txn().mod_revision_is(key, revision) if revision else Txn().absent(key)
            txn.success.append(Txn.put(key, json.dumps(circuit.to_dict()).encode()))
            result = await cas.write(txn)
            if result is not None:
                # Read-your-writes on this replica: reads come from the mirror.
                await self.mirror.log.wait_for_revision(result.revision, 5.0)
                return StoredCircuit(service, instance_id, circuit, result.revision)
        raise contended(f"circuit {service}/{instance_id or '*'}")
