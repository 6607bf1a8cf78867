"""The betterproto2 stubs (gen/python_betterproto) against a live hub over grpcio:
register, discover, then watch a snapshot and the ADDED event of a second instance.

betterproto2 output is meant to live inside a package of its own: the generated
modules import their message pool as ``from ....message_pool import ...``, so
gen/python_betterproto is the package ``python_betterproto`` and must be imported
with gen/ on the path (which also keeps it apart from the protobuf ``aitrading``
package installed from gen/python):

    PYTHONPATH=gen python tests/polyglot/betterproto_client.py 127.0.0.1:50051

The stubs come both ways (``client_generation=sync_async``): RegistryServiceStub
over a grpcio ``grpc.Channel`` and RegistryServiceAsyncStub over a grpclib
``Channel``, each method taking ``timeout=`` and ``metadata=`` (the sync ones
through our template in scripts/betterproto2/). The script runs the same checks
both ways and exits non-zero, with a traceback, on any failure.
tests/test_polyglot.py runs it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import sys
from collections.abc import Iterator

import betterproto2
import grpc
import grpclib
import grpclib.client
import python_betterproto.aitrading.hub.v1 as hub_v1
from python_betterproto.aitrading.hub.v1 import (
    DeregisterRequest,
    GetServiceRequest,
    Protocol,
    RegisterRequest,
    RegistryServiceAsyncStub,
    RegistryServiceStub,
    ResourceTier,
    SubscriptionTier,
    WatchEvent,
    WatchEventType,
    WatchRequest,
    WatchResponse,
    WatchResponseKind,
)

SERVICE = "betterproto-svc"
ASYNC_SERVICE = "betterproto-async-svc"
# A free-tier tenant's context: it may not see an ENTERPRISE-only service, so
# the metadata visibly reaches the hub.
FREE_TENANT = [("x-tenant-id", "bp-free"), ("x-subscription-tier", "free")]


def shadowing_fields() -> list[str]:
    """Fields whose names hide a betterproto2.Message method. betterproto2_compiler
    renames only Python keywords, so a proto field named like a method (``load``,
    ``dump``, ``parse``, ``to_dict``, ``is_set``...) becomes an instance attribute
    over that method; ``Message.parse`` calls ``cls().load(stream)``, so a message
    with a ``load`` field cannot be decoded at all ("'float' object is not
    callable", which grpcio reports as "Exception deserializing response!")."""
    methods = {name for name in dir(betterproto2.Message) if not name.startswith("_")}
    clashes = []
    for name, cls in vars(hub_v1).items():
        if isinstance(cls, type) and dataclasses.is_dataclass(cls):
            clashes += [f"{name}.{f.name}" for f in dataclasses.fields(cls) if f.name in methods]
    return sorted(clashes)


def next_events(
    watch: Iterator[WatchResponse], instance_id: str
) -> tuple[WatchResponse, WatchEvent]:
    """Reads watch messages until one has an event about ``instance_id``."""
    for msg in watch:
        assert msg.kind in (WatchResponseKind.EVENTS, WatchResponseKind.PROGRESS), msg.kind
        for event in msg.events:
            if event.instance is not None and event.instance.instance_id == instance_id:
                return msg, event
    raise AssertionError("the watch stream ended early")


def run(address: str) -> None:
    clashes = shadowing_fields()
    assert not clashes, (
        "these proto fields shadow betterproto2.Message methods, so the betterproto2 "
        f"stubs cannot decode the messages that hold them: {', '.join(clashes)}; "
        "rename the fields in protos/"
    )
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        registry = RegistryServiceStub(channel)

        first = registry.register(
            RegisterRequest(
                service=SERVICE,
                host="10.30.0.1",
                port=8001,
                protocol=Protocol.GRPC,
                version="3.1.0",
                metadata={"lang": "python-betterproto"},
                subscription_requirements=[SubscriptionTier.ENTERPRISE],
                resource_tier=ResourceTier.ENTERPRISE,
                ttl_seconds=30,
                weight=5,
            )
        )
        assert first.instance is not None and first.header is not None
        assert first.instance.instance_id == "10.30.0.1-8001", first.instance.instance_id
        assert first.instance.lease_id > 0
        assert first.header.revision > 0 and first.header.hub_id

        found = registry.get_service(GetServiceRequest(service=SERVICE))
        assert found.service is not None and found.header is not None
        assert found.service.name == SERVICE
        assert [i.instance_id for i in found.service.instances] == ["10.30.0.1-8001"]
        inst = found.service.instances[0]
        assert (inst.service, inst.host, inst.port) == (SERVICE, "10.30.0.1", 8001)
        assert inst.protocol == Protocol.GRPC
        assert (inst.version, inst.weight, inst.ttl_seconds) == ("3.1.0", 5, 30)
        assert inst.metadata == {"lang": "python-betterproto"}
        assert inst.subscription_requirements == [SubscriptionTier.ENTERPRISE]
        assert inst.resource_tier == ResourceTier.ENTERPRISE
        assert inst.tenant_capable is True
        assert inst.lease_id == first.instance.lease_id
        assert isinstance(inst.registered_at, datetime.datetime)
        assert inst.mod_revision == first.header.revision
        assert found.header.revision >= inst.mod_revision

        # watch() returns grpcio's call: an iterator of messages with cancel().
        watch = registry.watch(WatchRequest(service=SERVICE, start_revision=0))
        snapshot = []
        while True:
            msg = next(watch)
            assert msg.kind == WatchResponseKind.SNAPSHOT, msg.kind
            snapshot.extend(msg.instances)
            if not msg.more:
                break
        assert [i.instance_id for i in snapshot] == ["10.30.0.1-8001"]

        second = registry.register(
            RegisterRequest(service=SERVICE, host="10.30.0.2", port=8002, version="3.1.1")
        )
        assert second.header is not None
        msg, event = next_events(watch, "10.30.0.2-8002")
        assert event.type == WatchEventType.ADDED, event.type
        assert event.instance.version == "3.1.1"
        assert event.revision == second.header.revision
        assert msg.header is not None and msg.header.revision >= event.revision

        registry.deregister(DeregisterRequest(service=SERVICE, instance_id="10.30.0.2-8002"))
        _, event = next_events(watch, "10.30.0.2-8002")
        assert event.type == WatchEventType.REMOVED, event.type
        registry.deregister(DeregisterRequest(service=SERVICE, instance_id="10.30.0.1-8001"))

        try:
            registry.get_service(GetServiceRequest(service=SERVICE))
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.NOT_FOUND, err.code()
        else:
            raise AssertionError("the service is still there after deregistering")
        watch.cancel()

        # metadata= and timeout= reach the hub.
        registry.register(
            RegisterRequest(
                service=SERVICE,
                host="10.30.0.3",
                port=8003,
                subscription_requirements=[SubscriptionTier.ENTERPRISE],
            ),
            timeout=5.0,
        )
        try:
            registry.get_service(GetServiceRequest(service=SERVICE), metadata=FREE_TENANT)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err.code()
        else:
            raise AssertionError("a free tenant saw an enterprise-only service")
        idle = registry.watch(WatchRequest(service=SERVICE, start_revision=0), timeout=1.0)
        try:
            for _ in idle:
                pass
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.code()
        else:
            raise AssertionError("a watch with timeout=1.0 ended without DEADLINE_EXCEEDED")
        registry.deregister(DeregisterRequest(service=SERVICE, instance_id="10.30.0.3-8003"))
        # Leaving the with block closes the channel.


async def run_async(address: str) -> None:
    """The same over the async stubs (grpclib), with a grpclib timeout and metadata."""
    host, _, port = address.rpartition(":")
    channel = grpclib.client.Channel(host, int(port))
    try:
        registry = RegistryServiceAsyncStub(channel)
        first = await registry.register(
            RegisterRequest(
                service=ASYNC_SERVICE,
                host="10.31.0.1",
                port=8101,
                version="4.0.0",
                subscription_requirements=[SubscriptionTier.ENTERPRISE],
            ),
            timeout=5.0,
        )
        assert first.instance is not None and first.header is not None
        assert first.instance.instance_id == "10.31.0.1-8101"

        found = await registry.get_service(GetServiceRequest(service=ASYNC_SERVICE), timeout=5.0)
        assert found.service is not None
        assert [i.instance_id for i in found.service.instances] == ["10.31.0.1-8101"]
        assert found.service.instances[0].version == "4.0.0"

        try:
            await registry.get_service(
                GetServiceRequest(service=ASYNC_SERVICE), metadata=dict(FREE_TENANT)
            )
        except grpclib.GRPCError as err:
            assert err.status == grpclib.Status.PERMISSION_DENIED, err.status
        else:
            raise AssertionError("a free tenant saw an enterprise-only service")

        # A snapshot, then the ADDED event of a second instance; then the
        # watch's timeout ends it.
        watch = registry.watch(WatchRequest(service=ASYNC_SERVICE, start_revision=0), timeout=3.0)
        snapshot: list[str] = []
        while True:
            msg = await anext(watch)
            assert msg.kind == WatchResponseKind.SNAPSHOT, msg.kind
            snapshot.extend(i.instance_id for i in msg.instances)
            if not msg.more:
                break
        assert snapshot == ["10.31.0.1-8101"], snapshot
        second = await registry.register(
            RegisterRequest(service=ASYNC_SERVICE, host="10.31.0.2", port=8102)
        )
        assert second.header is not None
        while True:
            msg = await anext(watch)
            added = [
                e for e in msg.events if e.instance and e.instance.instance_id == "10.31.0.2-8102"
            ]
            if added:
                assert added[0].type == WatchEventType.ADDED
                assert added[0].revision == second.header.revision
                break
        try:
            async for _ in watch:
                pass
        except (TimeoutError, grpclib.GRPCError) as err:
            # grpclib ends a call past its timeout with asyncio's TimeoutError
            # (or DEADLINE_EXCEEDED when the hub's answer races it).
            if isinstance(err, grpclib.GRPCError):
                assert err.status == grpclib.Status.DEADLINE_EXCEEDED, err.status
        else:
            raise AssertionError("a watch with timeout=3.0 ended without a timeout")

        for iid in ("10.31.0.1-8101", "10.31.0.2-8102"):
            await registry.deregister(DeregisterRequest(service=ASYNC_SERVICE, instance_id=iid))
    finally:
        channel.close()


def main() -> int:
    if len(sys.argv) != 2:
        print(f"usage: {sys.argv[0]} HOST:PORT", file=sys.stderr)
        return 2
    run(sys.argv[1])
    asyncio.run(run_async(sys.argv[1]))
    print("betterproto2 client: register, discover and watch OK, sync and async")
    return 0


if __name__ == "__main__":
    sys.exit(main())
