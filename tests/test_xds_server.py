"""The hub's ADS server (envoy.service.discovery.v3, state of the world) driven
by raw streams from grpc stubs against real hubs: the LDS -> RDS -> CDS -> EDS
handshake, ACK/NACK bookkeeping as operators see it, pushes on registry changes
(and none otherwise), hostile requests, tenancy and authentication, and a
client that outlives its hub (restart, second replica, etcd lost)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from hub_client import HubClient
from hub_server.app import Hub
from hub_server.xds.protocol import CLUSTER, ENDPOINT, LISTENER, MAX_NAMES, ROUTE, node_metadata
from tests.support.waiting import eventually

TIMEOUT = 15.0


def node(node_id: str = "test-node", *, tenant_id: str = "", tier: str = "") -> base_pb2.Node:
    return base_pb2.Node(id=node_id, metadata=node_metadata(tenant_id, tier))


class Ads:
    """One raw ADS stream, spoken by hand."""

    def __init__(self, channel: grpc.aio.Channel, metadata: Any = None) -> None:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        self.call = stub.StreamAggregatedResources(metadata=metadata)
        self.node: base_pb2.Node | None = node()

    async def send(
        self,
        type_url: str,
        names: tuple[str, ...] = (),
        *,
        nonce: str = "",
        version: str = "",
        error: str | None = None,
    ) -> None:
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url, resource_names=names, response_nonce=nonce, version_info=version
        )
        if self.node is not None:  # only on the first request, as clients do
            request.node.CopyFrom(self.node)
            self.node = None
        if error is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        await self.call.write(request)

    async def recv(self, timeout: float = TIMEOUT) -> discovery_pb2.DiscoveryResponse:
        response = await asyncio.wait_for(self.call.read(), timeout)
        assert response is not grpc.aio.EOF, "the hub ended the stream"
        return response

    async def ack(self, response: discovery_pb2.DiscoveryResponse, names: tuple[str, ...]) -> None:
        await self.send(
            response.type_url, names, nonce=response.nonce, version=response.version_info
        )

    async def handshake(self, service: str) -> dict[str, discovery_pb2.DiscoveryResponse]:
        """What a proxyless gRPC client does for xds:///service."""
        got = {}
        for type_url in (LISTENER, ROUTE, CLUSTER, ENDPOINT):
            await self.send(type_url, (service,))
            got[type_url] = response = await self.recv()
            assert response.type_url == type_url
            await self.ack(response, (service,))
        return got

    async def status(self) -> grpc.StatusCode:
        return await asyncio.wait_for(self.call.code(), TIMEOUT)

    def close(self) -> None:
        self.call.cancel()


def unpack(response: discovery_pb2.DiscoveryResponse, cls: Any) -> list[Any]:
    return [cls.FromString(a.value) for a in response.resources]


def endpoints(response: discovery_pb2.DiscoveryResponse) -> set[tuple[str, int]]:
    [assignment] = unpack(response, endpoint_pb2.ClusterLoadAssignment)
    return {
        (e.endpoint.address.socket_address.address, e.endpoint.address.socket_address.port_value)
        for locality in assignment.endpoints
        for e in locality.lb_endpoints
    }


async def until(check: Callable[[], None]) -> None:
    """Waits until ``check`` stops failing; fails with its own assertion."""

    def holds() -> bool:
        try:
            check()
        except AssertionError:
            return False
        return True

    try:
        await eventually(holds)
    except AssertionError:
        check()
        raise


@pytest.fixture
async def channel(hub: Hub) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(hub.address) as ch:
        yield ch


@pytest.fixture
async def ads(channel: grpc.aio.Channel) -> AsyncIterator[Ads]:
    stream = Ads(channel)
    yield stream
    stream.close()


# -- the handshake and what operators see ---------------------------------------


async def test_lds_rds_cds_eds_handshake(hub: Hub, client: HubClient, ads: Ads) -> None:
    await client.register("pricing", host="127.0.0.1", port=7001, keep_alive=True)
    got = await ads.handshake("pricing")
    [listener] = unpack(got[LISTENER], listener_pb2.Listener)
    assert listener.name == "pricing" and listener.HasField("api_listener")
    [route] = unpack(got[ROUTE], route_pb2.RouteConfiguration)
    assert route.name == "pricing"
    [cluster] = unpack(got[CLUSTER], cluster_pb2.Cluster)
    assert cluster.name == "pricing" and cluster.type == cluster_pb2.Cluster.EDS
    assert endpoints(got[ENDPOINT]) == {("127.0.0.1", 7001)}
    nonces = {r.nonce for r in got.values()}
    assert len(nonces) == 4

    def acked() -> None:
        [status] = hub.services.xds_clients.snapshot()
        assert status.node_id == "test-node"
        assert status.subscribed == {t: ["pricing"] for t in got}
        assert status.acked_version == {t: r.version_info for t, r in got.items()}
        assert status.last_nack is None
        assert status.peer

    await until(acked)
    assert hub.services.xds_clients.open_streams == 1
    ads.close()
    await eventually(lambda: hub.services.xds_clients.snapshot() == [])


async def test_a_nack_is_recorded_and_the_client_is_not_sent_it_again(
    hub: Hub, client: HubClient, ads: Ads
) -> None:
    await client.register("pricing", host="127.0.0.1", port=7001)
    await ads.send(CLUSTER, ("pricing",))
    first = await ads.recv()
    await ads.send(
        CLUSTER, ("pricing",), nonce=first.nonce, version="", error="cluster rejected by test"
    )

    def nacked() -> None:
        [status] = hub.services.xds_clients.snapshot()
        assert status.last_nack is not None
        assert status.last_nack.error == "cluster rejected by test"
        assert status.last_nack.rejected_version == first.version_info
        assert status.acked_version == {}

    await until(nacked)
    assert hub.services.xds_clients.nacks >= 1
    # Nothing is resent while nothing changed; a change is sent (and ACKed).
    await client.register("pricing", host="127.0.0.1", port=7002)
    await ads.send(ENDPOINT, ("pricing",))
    eds = await ads.recv()
    assert eds.type_url == ENDPOINT  # no second, unchanged cluster answer came first
    assert endpoints(eds) == {("127.0.0.1", 7001), ("127.0.0.1", 7002)}


# -- pushes ------------------------------------------------------------------------


async def test_a_registry_change_is_pushed_and_an_unrelated_one_is_not(
    hub: Hub, client: HubClient, ads: Ads
) -> None:
    await client.register("pricing", host="127.0.0.1", port=7001)
    got = await ads.handshake("pricing")
    assert endpoints(got[ENDPOINT]) == {("127.0.0.1", 7001)}
    pushes = hub.services.xds_clients.pushes
    # Another service: nothing this client holds changes (its listener, cluster
    # and endpoints are pricing's), so nothing is pushed...
    await client.register("other", host="127.0.0.1", port=7100)
    # ...and the next push is the relevant change's.
    await client.register("pricing", host="127.0.0.1", port=7002)
    pushed = await ads.recv()
    assert pushed.type_url == ENDPOINT
    assert endpoints(pushed) == {("127.0.0.1", 7001), ("127.0.0.1", 7002)}
    assert int(pushed.nonce) > int(got[ENDPOINT].nonce)
    assert hub.services.xds_clients.pushes == pushes + 1


async def test_changes_while_unacknowledged_are_coalesced(
    hub: Hub, client: HubClient, ads: Ads
) -> None:
    await client.register("pricing", host="127.0.0.1", port=7001)
    await ads.send(ENDPOINT, ("pricing",))
    first = await ads.recv()  # not ACKed yet
    for port in (7002, 7003, 7004):
        await client.register("pricing", host="127.0.0.1", port=port)
    await eventually(lambda: len(hub.services.projection.project("pricing", None).endpoints) == 4)
    await ads.ack(first, ("pricing",))
    second = await ads.recv()
    assert endpoints(second) == {("127.0.0.1", p) for p in (7001, 7002, 7003, 7004)}


async def test_wildcard_lds_and_cds_list_every_service_in_full(client: HubClient, ads: Ads) -> None:
    for name in ("a-svc", "b-svc"):
        await client.register(name, host="127.0.0.1", port=7001)
    await ads.send(LISTENER)
    lds = await ads.recv()
    assert sorted(x.name for x in unpack(lds, listener_pb2.Listener)) == ["a-svc", "b-svc"]
    await ads.ack(lds, ())
    await client.register("c-svc", host="127.0.0.1", port=7001)
    lds = await ads.recv()
    names = sorted(x.name for x in unpack(lds, listener_pb2.Listener))
    assert names == ["a-svc", "b-svc", "c-svc"]  # the full state, not only c-svc


# -- hostile input ------------------------------------------------------------------


async def test_unknown_type_urls_and_stale_nonces_do_not_harm_the_stream(
    client: HubClient, ads: Ads
) -> None:
    await client.register("pricing", host="127.0.0.1", port=7001)
    secret = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
    await ads.send(secret, ("anything",))
    await ads.send("not even a url", ("x",))
    await ads.send(
        CLUSTER, ("pricing",), nonce="999999", error="forged nack"
    )  # first: no nonce yet
    await ads.send(ENDPOINT, ("pricing",))
    got = await ads.recv()
    assert got.type_url in (CLUSTER, ENDPOINT)
    # A stale nonce neither ACKs nor changes the subscription.
    await ads.send(got.type_url, ("pricing", "ghost"), nonce="12345")
    await ads.ack(got, ("pricing",))
    rest = await ads.recv()
    assert {got.type_url, rest.type_url} == {CLUSTER, ENDPOINT}


@pytest.mark.parametrize(
    "bad, field",
    [
        (discovery_pb2.DiscoveryRequest(resource_names=["x"]), "type_url"),
        (
            discovery_pb2.DiscoveryRequest(
                type_url=ENDPOINT, resource_names=[f"n{i}" for i in range(MAX_NAMES + 1)]
            ),
            "resource_names",
        ),
        (
            discovery_pb2.DiscoveryRequest(type_url=ENDPOINT, resource_names=["x" * 5000]),
            "resource_names",
        ),
        (
            discovery_pb2.DiscoveryRequest(
                type_url=LISTENER, node=base_pb2.Node(id="n", metadata=node_metadata("a/b"))
            ),
            "node.metadata.tenant_id",
        ),
    ],
    ids=["no-type-url", "too-many-names", "huge-name", "garbage-node"],
)
async def test_malformed_requests_end_the_stream_with_invalid_argument(
    hub: Hub, client: HubClient, channel: grpc.aio.Channel, bad: Any, field: str
) -> None:
    stream = Ads(channel)
    stream.node = None
    await stream.call.write(bad)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stream.recv()
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (e.value.details() or "")
    # The hub goes on serving other streams.
    await client.register("pricing", host="127.0.0.1", port=7001)
    ok = Ads(channel)
    try:
        got = await ok.handshake("pricing")
        assert endpoints(got[ENDPOINT]) == {("127.0.0.1", 7001)}
    finally:
        ok.close()
    await eventually(lambda: hub.services.xds_clients.open_streams == 0)


async def test_bytes_that_are_no_discovery_request_are_invalid_argument(
    channel: grpc.aio.Channel,
) -> None:
    raw = channel.stream_stream(
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    call = raw(iter([b"\xff\xff\xff\xff"]))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        async for _ in call:
            pass
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_delta_variant_is_unimplemented(channel: grpc.aio.Channel) -> None:
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    call = stub.DeltaAggregatedResources(iter([discovery_pb2.DeltaDiscoveryRequest()]))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        async for _ in call:
            pass
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_a_client_closing_its_side_ends_the_stream_cleanly(hub: Hub, ads: Ads) -> None:
    await ads.send(LISTENER)
    await ads.recv()
    await ads.call.done_writing()
    assert await ads.status() == grpc.StatusCode.OK
    await eventually(lambda: hub.services.xds_clients.open_streams == 0)
