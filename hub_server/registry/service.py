"""The service registry: instances under etcd leases, an in-memory view kept current
by one etcd watch per hub process, and a log of recent changes for Watch streams.

Reads never touch etcd: they come from the view and report the revision it has
reached. Writes go to etcd and wait until the view has seen them, so a caller
reads its own writes on the same replica.
"""

from __future__ import annotations

import logging
import re
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from aitrading.hub.v1 import registry_pb2, types_pb2
from aitrading.hub.v1.errors_pb2 import (
    ERROR_REASON_INSTANCE_NOT_FOUND,
    ERROR_REASON_LEASE_NOT_FOUND,
    ERROR_REASON_SERVICE_NOT_FOUND,
    ERROR_REASON_SUBSCRIPTION_TIER_TOO_LOW,
)
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from hub_server.kernel import validation
from hub_server.kernel.errors import NotFound, PermissionDenied, Violations
from hub_server.kernel.tiers import filtered_event_type, visible_to
from hub_server.store import keys
from hub_server.store.etcd import EtcdStore, KeyValue
from hub_server.store.mirror import REMOVED, Change, PrefixMirror

log = logging.getLogger(__name__)

DEFAULT_TTL = 30
DEFAULT_WEIGHT = 100
MAX_THRESHOLD = 100  # consecutive probes (HealthCheck.*_threshold)
_TIERS = (
    types_pb2.SUBSCRIPTION_TIER_FREE,
    types_pb2.SUBSCRIPTION_TIER_PRO,
    types_pb2.SUBSCRIPTION_TIER_ENTERPRISE,
)


def _tier_name(tier: int) -> str:
    return types_pb2.SubscriptionTier.Name(tier).removeprefix("SUBSCRIPTION_TIER_").lower()


_TIER_NAMES = {t: _tier_name(t) for t in _TIERS}
# Known enum numbers, once (EnumTypeWrapper.values() builds a list per call).
_PROTOCOLS = frozenset(types_pb2.Protocol.values())
_RESOURCE_TIERS = frozenset(types_pb2.ResourceTier.values())


def _tier_names_of(required: Iterable[int]) -> tuple[str, ...]:
    return tuple(
        _TIER_NAMES.get(t) or _tier_name(t)
        for t in required
        if t != types_pb2.SUBSCRIPTION_TIER_UNSPECIFIED
    )


def _required_tiers(instance: types_pb2.Instance) -> tuple[str, ...]:
    # Asked of every instance a read filters: most have no requirements.
    required = instance.subscription_requirements
    return _tier_names_of(required) if required else ()


def check_kind(instance: types_pb2.Instance) -> str:
    """How the hub checks the instance: its health check's kind, or "lease"."""
    kind = instance.health_check.WhichOneof("check") if instance.HasField("health_check") else None
    return kind or "lease"


# The few distinct (tier names, check kind) pairs, shared by every instance.
_FACTS: dict[tuple[tuple[str, ...], str], tuple[tuple[str, ...], str]] = {}


def _facts_message() -> Any:
    """A message of the two Instance fields every read asks about (the health
    check kept as bytes), with the same numbers: parsing a stored Instance as it
    skips the rest (~0.3 µs where the whole message takes ~1.1)."""
    fields = types_pb2.Instance.DESCRIPTOR.fields_by_name
    Field = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="hub_server/registry/instance_facts.proto", package="hub_server.registry"
    )
    file.syntax = "proto3"
    facts = file.message_type.add(name="InstanceFacts")
    facts.field.add(
        name="health_check", number=fields["health_check"].number,
        type=Field.TYPE_BYTES, label=Field.LABEL_OPTIONAL,
    )  # fmt: skip
    facts.field.add(
        name="subscription_requirements", number=fields["subscription_requirements"].number,
        type=Field.TYPE_INT32, label=Field.LABEL_REPEATED,
    )  # fmt: skip
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("hub_server.registry.InstanceFacts")
    )


_InstanceFacts = _facts_message()


def _facts_of(value: bytes) -> tuple[tuple[str, ...], str]:
    found = _InstanceFacts.FromString(value)
    required = found.subscription_requirements
    tiers = _tier_names_of(required) if required else ()
    check = "lease"
    if found.health_check:
        check = types_pb2.HealthCheck.FromString(found.health_check).WhichOneof("check") or "lease"
    facts = (tiers, check)
    return _FACTS.setdefault(facts, facts)


class StoredInstance:
    """One registered instance as etcd holds it: the serialized Instance and what
    the key-value adds (revisions, lease), decoded when read.

    A decoded upb message costs ~1.2 KiB (an arena of its own, the metadata map)
    where this costs ~0.3 KiB, and a starting hub decodes nothing. What reads ask
    of every instance (its tier requirements, its kind of health check) is parsed
    alone the first time it is asked (``_facts_of``), then kept.
    """

    __slots__ = ("_checked", "_facts", "create_revision", "lease_id", "mod_revision", "value")

    def __init__(self, value: bytes, create_revision: int, mod_revision: int, lease_id: int):
        self.value = value
        self.create_revision = create_revision
        self.mod_revision = mod_revision
        self.lease_id = lease_id
        self._facts: tuple[tuple[str, ...], str] | None = None
        self._checked = False  # the value is known to be well-formed

    def instance(self, service: str, instance_id: str) -> types_pb2.Instance:
        """A new message (the caller's to change), with what etcd knows filled in."""
        return self.fill(types_pb2.Instance(), service, instance_id)

    def fill(self, inst: types_pb2.Instance, service: str, instance_id: str) -> types_pb2.Instance:
        """Decodes into ``inst``, an empty message (a field of an answer: no
        copy), with what etcd knows filled in; returns it."""
        inst.MergeFromString(self.value)
        if not self._checked:
            # A value stored before requests were checked (a Duration with nanos
            # past a second) would break every JSON reader of GetService: normalise
            # or drop it, and keep the repaired value. Checked at the first read
            # only: the check costs ~3x the decode.
            repaired = validation.repair_wellformed(inst)
            if repaired:
                log.warning(
                    "stored instance %s/%s: repaired bad values of %s",
                    service, instance_id, ", ".join(repaired),
                )  # fmt: skip
                self.value = inst.SerializeToString()
            self._checked = True
        inst.service, inst.instance_id = service, instance_id
        inst.create_revision = self.create_revision
        inst.mod_revision = self.mod_revision
        inst.lease_id = self.lease_id
        return inst

    def _known(self) -> tuple[tuple[str, ...], str]:
        if self._facts is None:
            self._facts = _facts_of(self.value)
        return self._facts

    @property
    def tiers(self) -> tuple[str, ...]:
        """The names of the tiers of which one is needed to use it (empty: public)."""
        return self._known()[0]

    @property
    def check(self) -> str:
        """Its health check's kind ("http", "grpc", "tcp"), or "lease"."""
        return self._known()[1]


def store_instance(kv: KeyValue) -> StoredInstance:
    """What the registry's view keeps of a key-value."""
    # The mirror keeps the same mod_revision object, and a fresh key's revisions
    # are one number: one int object where there were three (~60 MB a million).
    mod = kv.mod_revision
    create = mod if kv.create_revision == mod else kv.create_revision
    return StoredInstance(kv.value, create, mod, kv.lease)


def tier_names(instance: types_pb2.Instance | StoredInstance) -> tuple[str, ...]:
    if isinstance(instance, StoredInstance):
        return instance.tiers
    return _required_tiers(instance)


def visible(instance: types_pb2.Instance | StoredInstance, tier: str | None) -> bool:
    """Whether a caller of ``tier`` may see the instance (None: no filtering)."""
    return visible_to(tier_names(instance), tier)


def removed_instance(change: Change[StoredInstance]) -> types_pb2.Instance:
    """The instance a change is about (for a removal whose last value etcd had
    compacted away, just its names): the message of its WatchEvent, decoded once
    however many streams ask; not to be changed."""
    return watch_event(change).instance


def _instance_of(change: Change[StoredInstance]) -> types_pb2.Instance:
    service, instance_id = keys.parse_instance_key(change.key)
    if change.value is None:
        return types_pb2.Instance(service=service, instance_id=instance_id)
    return change.value.instance(service, instance_id)


def watch_event(change: Change[StoredInstance]) -> registry_pb2.WatchEvent:
    """The change as a message, built once however many watchers send it."""
    if change.cache is None:
        change.cache = registry_pb2.WatchEvent(
            type=change.type, instance=_instance_of(change), revision=change.revision
        )
    return change.cache


def filtered_watch_event(
    change: Change[StoredInstance], tier: str | None
) -> registry_pb2.WatchEvent | None:
    """The change as a stream filtered by ``tier`` sees it (None: not at all).

    An update that moves an instance into the caller's view is ADDED, one that
    moves it out is REMOVED carrying the instance as the caller last saw it, so
    a watch always holds what GetService answers the same caller.
    """
    if tier is None:
        return watch_event(change)
    before = change.previous
    was = visible(before, tier) if before is not None else None
    now = visible(change.value, tier) if change.value is not None else visible_to((), tier)
    kind = filtered_event_type(change.type, was, now)
    if kind is None:
        return None
    if kind == change.type:
        return watch_event(change)
    service, instance_id = keys.parse_instance_key(change.key)
    if kind == REMOVED:  # as the caller last saw it, never what it may not see now
        shown = (
            before.instance(service, instance_id)
            if before is not None
            else types_pb2.Instance(service=service, instance_id=instance_id)
        )
    else:
        shown = removed_instance(change)
    return registry_pb2.WatchEvent(type=kind, instance=shown, revision=change.revision)


def on_service_change(mirror: PrefixMirror[Any], callback: Callable[[str], None]) -> None:
    """Calls ``callback(service)`` after every change to ``mirror``, whose keys are
    laid out like the registry's (``<prefix><service>/<instance id>``: registry,
    health, load, drain marks, circuits), so that what is derived per service is
    redone for that service alone; while the mirror loads, once per service
    (``PrefixMirror.on_group_change``)."""
    mirror.on_group_change(callback)


class ServiceInstances(Mapping[str, types_pb2.Instance]):
    """One service's instances by id, kept as stored (``stored``) and decoded when
    read: each read gives a new message. Readers that ask something of every
    instance (visibility, check kind) use ``stored``, which decodes nothing."""

    __slots__ = ("service", "stored")

    def __init__(self, service: str) -> None:
        self.service = service
        self.stored: dict[str, StoredInstance] = {}

    def __getitem__(self, instance_id: str) -> types_pb2.Instance:
        return self.stored[instance_id].instance(self.service, instance_id)

    def __contains__(self, instance_id: object) -> bool:
        return instance_id in self.stored

    def __iter__(self) -> Iterator[str]:
        return iter(self.stored)

    def __len__(self) -> int:
        return len(self.stored)

    def visible(self, tier: str | None) -> list[types_pb2.Instance]:
        """The instances ``tier`` may see (None: all), by instance id."""
        return [
            s.instance(self.service, k)
            for k, s in sorted(self.stored.items())
            if visible_to(s.tiers, tier)
        ]

    def any_visible(self, tier: str | None) -> bool:
        return any(visible_to(s.tiers, tier) for s in self.stored.values())


class RegistryView:
    """Every instance, in memory, indexed by service; fed by one etcd watch.

    Instances are kept as etcd stores them and decoded on read
    (:class:`StoredInstance`): the view of a million costs ~0.5 GiB instead of ~2,
    and a starting hub loads it without decoding any."""

    def __init__(self, store: EtcdStore, *, history_capacity: int = 20_000) -> None:
        self.services: dict[str, ServiceInstances] = {}
        self._names: list[str] | None = None  # sorted(self.services), until one comes or goes
        self.mirror: PrefixMirror[StoredInstance] = PrefixMirror(
            store,
            keys.REGISTRY,
            store_instance,
            on_change=self._index,
            history_capacity=history_capacity,
            keep_previous=True,  # for filtered watches (filtered_watch_event)
        )
        self.log = self.mirror.log

    @property
    def revision(self) -> int:
        return self.mirror.revision

    @property
    def live(self) -> bool:
        return self.mirror.live

    async def start(self) -> None:
        await self.mirror.start()

    async def stop(self) -> None:
        await self.mirror.stop()

    async def barrier(self) -> int:
        """Waits until everything written before the call is in the view."""
        return await self.mirror.barrier()

    def add_listener(self, listener: Callable[[Change[StoredInstance]], None]) -> None:
        self.mirror.add_listener(listener)

    def on_service_change(self, callback: Callable[[str], None]) -> None:
        on_service_change(self.mirror, callback)

    def _index(self, change: Change[StoredInstance]) -> None:
        service, instance_id = keys.parse_instance_key(change.key)
        if change.type == REMOVED:
            instances = self.services.get(service)
            if instances is not None:
                instances.stored.pop(instance_id, None)
                if not instances.stored:
                    del self.services[service]
                    self._names = None
        elif change.value is not None:
            instances = self.services.get(service)
            if instances is None:
                instances = self.services[service] = ServiceInstances(service)
                self._names = None
            instances.stored[instance_id] = change.value

    def _sorted_names(self) -> list[str]:
        if self._names is None:
            self._names = sorted(self.services)
        return self._names

    # -- reads -------------------------------------------------------------

    def ensure_live(self) -> None:
        self.mirror.ensure_live()

    def get_instance(self, service: str, instance_id: str) -> types_pb2.Instance | None:
        """The instance, decoded (a new message), or None."""
        stored = self.get_stored(service, instance_id)
        return stored.instance(service, instance_id) if stored is not None else None

    def get_stored(self, service: str, instance_id: str) -> StoredInstance | None:
        instances = self.services.get(service)
        return instances.stored.get(instance_id) if instances is not None else None

    def instances(self, service: str, tier: str | None) -> list[types_pb2.Instance]:
        """The service's instances visible to ``tier``, by instance id.

        Raises NotFound for an unknown service and PermissionDenied when it exists
        but the caller's tier may use none of its instances.
        """
        self.ensure_live()
        instances = self.services.get(service)
        if not instances:
            raise NotFound(
                f"service {service!r} is not registered",
                reason=ERROR_REASON_SERVICE_NOT_FOUND,
                service=service,
            )
        found = instances.visible(tier)
        if not found:
            raise PermissionDenied(
                f"service {service!r} requires a higher subscription tier than {tier!r}",
                reason=ERROR_REASON_SUBSCRIPTION_TIER_TOO_LOW,
                service=service,
                tier=tier or "",
            )
        return found

    def list_services(
        self, tier: str | None, *, after: str = "", limit: int = 0
    ) -> tuple[list[tuple[str, list[types_pb2.Instance]]], bool]:
        """(name, visible instances) of the services named after ``after`` with at
        least one visible instance, by name, at most ``limit`` (0: all); and
        whether more follow. A page costs what its services hold, not the registry."""
        self.ensure_live()
        names = self._sorted_names()
        out: list[tuple[str, list[types_pb2.Instance]]] = []
        for i in range(bisect_right(names, after) if after else 0, len(names)):
            instances = self.services[names[i]]
            if not instances.any_visible(tier):
                continue
            if limit and len(out) == limit:
                return out, True
            out.append((names[i], instances.visible(tier)))
        return out, False

    def snapshot(self, service: str, tier: str | None) -> tuple[list[types_pb2.Instance], int]:
        """A consistent snapshot (no await inside) and the revision it reflects."""
        self.ensure_live()
        if service:
            instances = self.services.get(service)
            found = instances.visible(tier) if instances is not None else []
        else:
            found = [i for name in self._sorted_names() for i in self.services[name].visible(tier)]
        return found, self.revision


class Registry:
    """Registry writes: register, keep alive, deregister."""

    def __init__(self, store: EtcdStore, view: RegistryView, *, write_wait: float = 5.0) -> None:
        self._store = store
        self.view = view
        self._write_wait = write_wait

    async def register(self, req: registry_pb2.RegisterRequest) -> types_pb2.Instance:
        inst = validate_registration(req)
        self.view.ensure_live()
        key = keys.instance_key(inst.service, inst.instance_id)
        previous = self.view.get_instance(inst.service, inst.instance_id)
        now = time.time()
        if previous is not None and previous.HasField("registered_at"):
            inst.registered_at.CopyFrom(previous.registered_at)
        else:
            inst.registered_at.FromNanoseconds(int(now * 1e9))
        inst.updated_at.FromNanoseconds(int(now * 1e9))

        # Each instance has a lease of its own (a KeepAlive renews that instance
        # alone, and one that stops renewing expires alone); the put is grouped
        # with concurrent Registers' (and audit records') into one transaction.
        lease = await self._store.grant_lease(inst.ttl_seconds)
        revision = await self._store.put_grouped(key, inst.SerializeToString(), lease=lease)
        if previous is not None and previous.lease_id and previous.lease_id != lease:
            # The key now lives on the new lease; the old one holds nothing.
            await self._revoke_quietly(previous.lease_id)
        await self.view.log.wait_for_revision(revision, self._write_wait)
        stored = self.view.get_instance(inst.service, inst.instance_id)
        if stored is not None and stored.mod_revision == revision:
            return stored
        inst.lease_id, inst.create_revision, inst.mod_revision = lease, revision, revision
        return inst

    async def keep_alive(self, service: str, instance_id: str, lease_id: int) -> int:
        v = Violations()
        validation.check_dns_label(v, "service", service)
        validation.check_safe_id(v, "instance_id", instance_id)
        if lease_id <= 0:
            v.add("lease_id", "is required")
        v.raise_if_any()
        self.view.ensure_live()  # a stale view could wrongly say NOT_FOUND
        inst = self.view.get_stored(service, instance_id)
        if inst is None or inst.lease_id != lease_id:
            raise NotFound(
                f"instance {service}/{instance_id} is not registered under lease {lease_id}; "
                "register again",
                reason=ERROR_REASON_INSTANCE_NOT_FOUND,
                service=service,
                instance_id=instance_id,
            )
        ttl = await self._store.keep_alive(lease_id)
        if ttl <= 0:
            raise NotFound(
                f"lease {lease_id} has expired; register again",
                reason=ERROR_REASON_LEASE_NOT_FOUND,
                service=service,
                instance_id=instance_id,
            )
        return ttl

    async def deregister(self, service: str, instance_id: str) -> int:
        v = Violations()
        validation.check_dns_label(v, "service", service)
        validation.check_safe_id(v, "instance_id", instance_id)
        v.raise_if_any()
        inst = self.view.get_stored(service, instance_id)
        deleted, revision = await self._store.delete(keys.instance_key(service, instance_id))
        if not deleted:
            raise NotFound(
                f"instance {service}/{instance_id} is not registered",
                reason=ERROR_REASON_INSTANCE_NOT_FOUND,
                service=service,
                instance_id=instance_id,
            )
        if inst is not None and inst.lease_id:
            await self._revoke_quietly(inst.lease_id)
        await self.view.log.wait_for_revision(revision, self._write_wait)
        return revision

    async def _revoke_quietly(self, lease_id: int) -> None:
        try:
            await self._store.revoke_lease(lease_id)
        except Exception as e:  # it lapses by itself anyway
            log.debug("revoking lease %x failed: %r", lease_id, e)


def validate_registration(req: registry_pb2.RegisterRequest) -> types_pb2.Instance:
    """Checks every field of a RegisterRequest and builds the Instance to store.

    Reports all bad fields at once; raises InvalidArgument.
    """
    v = Violations()
    validation.check_dns_label(v, "service", req.service)
    validation.check_host(v, "host", req.host)
    validation.check_port(v, "port", req.port)
    if req.instance_id:
        validation.check_safe_id(v, "instance_id", req.instance_id)
    instance_id = req.instance_id or default_instance_id(req.host, req.port)
    bad_address = any(item.field in ("host", "port") for item in v.items)
    if not req.instance_id and not bad_address and not validation.is_key_name(instance_id):
        v.add("host", "is too long to make the default instance id: send an instance_id")
    validation.check_version(v, "version", req.version)
    metadata = dict(req.metadata)
    validation.check_metadata(v, "metadata", metadata)
    ttl = req.ttl_seconds or DEFAULT_TTL
    validation.check_range(v, "ttl_seconds", ttl, 2, 86_400)
    weight = req.weight or DEFAULT_WEIGHT
    validation.check_range(v, "weight", weight, 1, 1000)
    if req.protocol not in _PROTOCOLS:
        v.add("protocol", "is not a known protocol")
    if req.resource_tier not in _RESOURCE_TIERS:
        v.add("resource_tier", "is not a known resource tier")
    if len(req.subscription_requirements) > len(_TIERS):
        v.add("subscription_requirements", f"at most {len(_TIERS)} (one per tier)")
    for i, tier in enumerate(req.subscription_requirements[: len(_TIERS)]):
        if tier not in _TIERS:
            v.add(f"subscription_requirements[{i}]", "must be FREE, PRO or ENTERPRISE")
    _check_health_check(v, req.health_check)
    v.raise_if_any()

    inst = types_pb2.Instance(
        service=req.service,
        instance_id=instance_id,
        host=req.host,
        port=req.port,
        protocol=req.protocol or types_pb2.PROTOCOL_HTTP,
        version=req.version,
        metadata=metadata,
        tenant_capable=req.tenant_capable if req.HasField("tenant_capable") else True,
        subscription_requirements=req.subscription_requirements,
        resource_tier=req.resource_tier or types_pb2.RESOURCE_TIER_BASIC,
        ttl_seconds=ttl,
        weight=weight,
    )
    if req.HasField("health_check"):
        inst.health_check.CopyFrom(req.health_check)
    return inst


_PLAIN_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # IPv4, most host names
_UNSAFE_IN_ID = re.compile(r"[^A-Za-z0-9.:-]|(?<=\.)\.")  # "..": never in a key


def default_instance_id(host: str, port: int) -> str:
    """An id distinct for every distinct (host, port), and a valid key name.

    An IPv4 address or a host name starting with a letter or digit gives
    ``host-port`` as ever (the port is after the last '-'). Any other host is
    prefixed, ``ip6:`` for an IPv6 address and ``host:`` otherwise (a leading
    '_'): no plain id has a ':', and in the rest every character outside the key
    alphabet, '_' included (and a '.' after a '.', as a scope id may have), is
    written ``_XX`` (hex), so no two hosts meet."""
    if _PLAIN_HOST.fullmatch(host):
        return f"{host}-{port}"
    escaped = _UNSAFE_IN_ID.sub(lambda m: "".join(f"_{b:02x}" for b in m[0].encode()), host)
    return f"{'ip6' if ':' in host else 'host'}:{escaped}-{port}"


def _check_health_check(v: Violations, hc: types_pb2.HealthCheck) -> None:
    kind = hc.WhichOneof("check")
    if kind == "http":
        path = hc.http.path
        if not path.startswith("/") or len(path) > 1024 or any(c in path for c in " \r\n\0"):
            v.add("health_check.http.path", "must start with '/', at most 1024, no spaces")
    elif kind == "grpc" and len(hc.grpc.service) > 256:
        v.add("health_check.grpc.service", "must be at most 256 characters")
    for name, low in (("interval", 0.1), ("timeout", 0.1), ("degraded_latency", 0.001)):
        if hc.HasField(name):
            d = getattr(hc, name)
            seconds = d.seconds + d.nanos / 1e9
            if not low <= seconds <= 3600:
                v.add(f"health_check.{name}", f"must be between {low:g}s and 3600s")
    for name in ("unhealthy_threshold", "healthy_threshold"):
        if not 0 <= getattr(hc, name) <= MAX_THRESHOLD:
            v.add(f"health_check.{name}", f"must be between 0 (the default) and {MAX_THRESHOLD}")
