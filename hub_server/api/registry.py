"""RegistryService: check the request, call the registry, fill the header."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aitrading.hub.v1 import registry_pb2, registry_pb2_grpc, types_pb2

from hub_server.health.service import usable
from hub_server.kernel import validation
from hub_server.kernel.errors import InvalidArgument, Violations
from hub_server.kernel.validation import MAX_PAGE
from hub_server.registry.service import StoredInstance, filtered_watch_event, removed_instance
from hub_server.rpc.context import audit_note, audited, current
from hub_server.rpc.header import response_header
from hub_server.rpc.paging import decode_page_token, encode_page_token
from hub_server.rpc.streaming import SNAPSHOT, watch_stream
from hub_server.store.event_log import EventLog
from hub_server.store.mirror import Change

log = logging.getLogger(__name__)

GET_SERVICE = f"/{registry_pb2.DESCRIPTOR.package}.RegistryService/GetService"


def _service_name(service: str, *, required: bool = True) -> None:
    v = Violations()
    validation.check_dns_label(v, "service", service, required=required)
    v.raise_if_any()


def _fill(
    out: types_pb2.Instance,
    inst: types_pb2.Instance,
    health: types_pb2.InstanceHealth,
    draining: bool,
) -> None:
    """Makes ``out`` a copy of the instance carrying its current health (the
    stored one stays as etcd has it)."""
    out.CopyFrom(inst)
    out.health.CopyFrom(health)
    out.draining = out.draining or draining


def instance_view(
    inst: types_pb2.Instance, health: types_pb2.InstanceHealth, draining: bool
) -> types_pb2.Instance:
    """A copy of the instance as reads answer it: with its current health and
    drain mark (also what the dashboard shows)."""
    out = types_pb2.Instance()
    _fill(out, inst, health, draining)
    return out


@dataclass(slots=True)
class _Answer:
    """A built GetService response and the drain marks it was built with."""

    response: registry_pb2.GetServiceResponse
    instance_ids: tuple[str, ...]
    drained: tuple[bool, ...]
    any_drained: bool = False  # any(drained)
    # The response as sent, and the header revision it was serialized with.
    data: bytes = b""
    data_revision: int = -1


class Instances(Protocol):
    """What the servicer reads of the registry (hub_server.registry.service.RegistryView)."""

    @property
    def revision(self) -> int: ...
    @property
    def log(self) -> EventLog[Change[StoredInstance]]: ...
    def ensure_live(self) -> None: ...
    def instances(self, service: str, tier: str | None) -> list[types_pb2.Instance]: ...
    def list_services(
        self, tier: str | None, *, after: str = "", limit: int = 0
    ) -> tuple[list[tuple[str, list[types_pb2.Instance]]], bool]: ...
    def snapshot(self, service: str, tier: str | None) -> tuple[list[types_pb2.Instance], int]: ...
    def on_service_change(self, callback: Callable[[str], None]) -> None: ...


class Registrar(Protocol):
    """The registry's writes (hub_server.registry.service.Registry) and the view
    they are read back from."""

    @property
    def view(self) -> Instances: ...
    async def register(self, req: registry_pb2.RegisterRequest) -> types_pb2.Instance: ...
    async def keep_alive(self, service: str, instance_id: str, lease_id: int) -> int: ...
    async def deregister(self, service: str, instance_id: str) -> int: ...


class HealthRecords(Protocol):
    """What it reads of the health records (hub_server.health.service.HealthView)."""

    def of(self, instance: types_pb2.Instance) -> types_pb2.InstanceHealth: ...
    def on_service_change(self, callback: Callable[[str], None]) -> None: ...


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(
        self,
        registry: Registrar,
        health: HealthRecords,
        hub_id: str,
        *,
        progress_interval: float = 10.0,
        is_draining: Callable[[str, str], bool] = lambda service, instance_id: False,
        draining_any: Callable[[], bool] = lambda: True,
    ):
        self._is_draining = is_draining
        # False when no instance at all is draining: an answer built without
        # drain marks then needs no check (True: always check).
        self._draining_any = draining_any
        self._registry = registry
        self._view = registry.view
        self._health = health
        self._hub_id = hub_id
        self.progress_interval = progress_interval
        # GetService answers by service, then by (tier filter, include_unhealthy).
        # Building one copies every instance and its health; serving it again
        # costs a dict lookup. A change to a service's instances or health drops
        # only that service's answers.
        self._answers: dict[str, dict[tuple[str | None, bool], _Answer]] = {}
        # The same answers by id of their response message, for the method's
        # response serializer (``serialize_answer``).
        self._serving: dict[int, _Answer] = {}
        self._view.on_service_change(self._forget_answers)
        health.on_service_change(self._forget_answers)

    def _forget_answers(self, service: str) -> None:
        for answer in self._answers.pop(service, {}).values():
            self._serving.pop(id(answer.response), None)

    @property
    def response_serializers(self) -> dict[str, Callable[[Any], bytes]]:
        """The methods whose answers this servicer serializes itself (install
        with ``hub_server.rpc.wrapping.serializing``)."""
        return {GET_SERVICE: self.serialize_answer}

    def serialize_answer(self, response: registry_pb2.GetServiceResponse) -> bytes:
        """GetService's response serializer: a cached answer is serialized once
        per revision of its header (the only field a call changes; grpc
        serializes right after the handler returns, before another call can
        change it), anything else as usual. Serializing 20 instances costs
        about as much as the rest of the servicer."""
        answer = self._serving.get(id(response))
        if answer is None or answer.response is not response:
            return response.SerializeToString()
        revision = response.header.revision
        if answer.data_revision != revision:
            answer.data = response.SerializeToString()
            answer.data_revision = revision
        return answer.data

    def _drained(self, service: str, instance_ids: tuple[str, ...]) -> tuple[bool, ...]:
        # Drain marks are only reachable through is_draining (no change feed), so
        # an answer is checked against them on every call while any instance
        # drains or the answer carries a mark: ~0.1 us per instance.
        is_draining = self._is_draining
        return tuple([is_draining(service, i) for i in instance_ids])

    def _with_health(self, inst: types_pb2.Instance) -> types_pb2.Instance:
        draining = self._is_draining(inst.service, inst.instance_id)
        return instance_view(inst, self._health.of(inst), draining)

    @audited
    async def Register(self, request, context):
        audit_note(target=f"registry/{request.service}/{request.instance_id}")
        inst = await self._registry.register(request)
        audit_note(
            target=f"registry/{inst.service}/{inst.instance_id}",
            version_after=inst.mod_revision,
            version=inst.version,
        )
        return registry_pb2.RegisterResponse(
            header=response_header(self._hub_id, inst.mod_revision), instance=inst
        )

    async def KeepAlive(self, request, context):
        ttl = await self._registry.keep_alive(
            request.service, request.instance_id, request.lease_id
        )
        return registry_pb2.KeepAliveResponse(
            header=response_header(self._hub_id, self._view.revision), ttl_seconds=ttl
        )

    @audited
    async def Deregister(self, request, context):
        audit_note(target=f"registry/{request.service}/{request.instance_id}")
        revision = await self._registry.deregister(request.service, request.instance_id)
        return registry_pb2.DeregisterResponse(header=response_header(self._hub_id, revision))

    async def GetService(self, request, context):
        service = request.service
        answers = self._answers.get(service)
        if answers is None:
            _service_name(service)  # a service with answers had its name checked
        key = (current().tier_filter(request.legacy_mode), request.include_unhealthy)
        answer = answers.get(key) if answers is not None else None
        if answer is None or (
            (answer.any_drained or self._draining_any())
            and answer.drained != self._drained(service, answer.instance_ids)
        ):
            answer = self._answer(service, *key)
            replaced = self._answers.setdefault(service, {}).get(key)
            if replaced is not None:
                self._serving.pop(id(replaced.response), None)
            self._answers[service][key] = answer
            self._serving[id(answer.response)] = answer
        else:
            self._view.ensure_live()
        # The cached message is shared by every call that serves it, and only this
        # field changes: an answer still cached is what the view holds for the
        # service now, so the current revision is as true as when it was built.
        answer.response.header.revision = self._view.revision
        return answer.response

    def _answer(self, service: str, tier: str | None, include_unhealthy: bool) -> _Answer:
        of = self._health.of
        pairs = [(i, of(i)) for i in self._view.instances(service, tier)]
        if not include_unhealthy:
            pairs = usable(pairs)
        ids = tuple(i.instance_id for i, _ in pairs)
        drained = self._drained(service, ids)
        response = registry_pb2.GetServiceResponse(
            header=response_header(self._hub_id, self._view.revision)
        )
        response.service.name = service
        add = response.service.instances.add
        for (inst, health), draining in zip(pairs, drained, strict=True):
            _fill(add(), inst, health, draining)  # in place: one copy, not two
        return _Answer(response, ids, drained, any(drained))

    async def ListServices(self, request, context):
        if not 0 <= request.page_size <= MAX_PAGE:
            raise InvalidArgument.single("page_size", f"must be between 0 and {MAX_PAGE}")
        after = decode_page_token("after", request.page_token)
        size = request.page_size or MAX_PAGE
        tier = current().tier_filter(request.legacy_mode)
        page, more = self._view.list_services(tier, after=after, limit=size)
        return registry_pb2.ListServicesResponse(
            header=response_header(self._hub_id, self._view.revision),
            services=[types_pb2.Service(name=name, instances=inst) for name, inst in page],
            next_page_token=encode_page_token("after", page[-1][0]) if more else "",
        )

    def Watch(self, request, context) -> AsyncIterator[registry_pb2.WatchResponse]:
        # Returns watch_stream's generator itself (the call wrapper iterates it):
        # a generator of its own here re-yielding each response cost one more
        # resumption per stream and change.
        service = request.service
        _service_name(service, required=False)
        tier = current().tier_filter(request.legacy_mode)

        def snapshot() -> tuple[list[types_pb2.Instance], int]:
            instances, revision = self._view.snapshot(service, tier)
            return [self._with_health(i) for i in instances], revision

        def select(change: Change[StoredInstance]) -> registry_pb2.WatchEvent | None:
            if service and removed_instance(change).service != service:
                return None
            return filtered_watch_event(change, tier)

        def respond(kind, items, revision, more, compact):
            msg = registry_pb2.WatchResponse(
                header=response_header(self._hub_id, revision),
                kind=kind,
                more=more,
                compact_revision=compact,
            )
            if kind == SNAPSHOT:
                msg.instances.extend(items)
            else:
                msg.events.extend(items)
            return msg

        return watch_stream(
            self._view.log,
            start_revision=request.start_revision,
            snapshot=snapshot,
            select=select,
            respond=respond,
            progress_interval=self.progress_interval,
            share=("registry", service, tier),
        )
