"""The hub's ADS server (envoy.service.discovery.v3, state of the world) driven
by raw streams from grpc stubs against real hubs: the LDS -> RDS -> CDS -> EDS
handshake, ACK/NACK bookkeeping as operators see it, pushes on registry changes
(and none otherwise), hostile requests, tenancy and authentication, and a
client that outlives its hub (restart, second replica, etcd lost)."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
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

from hub_client import TLS, HubClient
from hub_server.app import Hub
from hub_server.auth.credentials import token_entry
from hub_server.auth.roles import Role
from hub_server.embedded_etcd import EtcdProcess, free_port
from hub_server.xds.protocol import CLUSTER, ENDPOINT, LISTENER, MAX_NAMES, ROUTE, node_metadata
from tests.support.bridge import Bridge
from tests.support.certs import CertificateAuthority
from tests.support.hubs import HubFactory, crash
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
        self._reading: asyncio.Future[Any] | None = None

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
        # A read cancelled by a timeout would cancel the call: a timed-out read
        # stays pending for the next recv instead.
        if self._reading is None:
            self._reading = asyncio.ensure_future(self.call.read())
        done, _ = await asyncio.wait({self._reading}, timeout=timeout)
        if not done:
            raise TimeoutError
        reading, self._reading = self._reading, None
        response = reading.result()
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
        if self._reading is not None:
            self._reading.cancel()


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


async def test_xds_metrics_reach_the_metrics_endpoint(hub_factory: HubFactory) -> None:
    hub = await hub_factory(metrics_listen="127.0.0.1:0")
    async with HubClient(hub.address) as client, grpc.aio.insecure_channel(hub.address) as ch:
        await client.register("pricing", host="127.0.0.1", port=7001)
        stream = Ads(ch)
        try:
            await stream.send(CLUSTER, ("pricing",))
            answer = await stream.recv()
            await stream.send(CLUSTER, ("pricing",), nonce=answer.nonce, error="rejected")
            await eventually(lambda: hub.services.xds_clients.nacks == 1)
            port = hub.services.telemetry.metrics_port
            text = await asyncio.to_thread(_scrape, port)
        finally:
            stream.close()
    lines = text.splitlines()
    assert any(line.startswith("hub_xds_streams") and line.endswith(" 1.0") for line in lines)
    assert any(line.startswith("hub_xds_pushes") and line.endswith(" 1.0") for line in lines)
    assert any(line.startswith("hub_xds_nacks") and line.endswith(" 1.0") for line in lines)
    assert any(line.startswith("hub_xds_push_latency") and "_count" in line for line in lines)


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


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


async def test_xds_streams_count_against_the_callers_stream_limit(
    hub_factory: HubFactory,
) -> None:
    hub = await hub_factory(caller_max_streams=1)
    async with grpc.aio.insecure_channel(hub.address) as channel:
        first = Ads(channel)
        try:
            await first.send(LISTENER)
            await first.recv()
            second = Ads(channel)  # (the call starts here)
            with contextlib.suppress(asyncio.InvalidStateError, grpc.aio.AioRpcError):
                await second.send(LISTENER)  # (refused at once)
            assert await second.status() == grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            first.close()
    method = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"

    def both_seen() -> bool:  # the refused one, and the first once it ends
        ads = hub.services.telemetry.rpc_summary().get(method)
        return ads is not None and ads.count >= 2 and ads.errors >= 1

    await eventually(both_seen)


async def test_reflection_describes_the_ads_service(channel: grpc.aio.Channel) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    ask = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="envoy.service.discovery.v3.AggregatedDiscoveryService"
        ),
    ]
    answers = [a async for a in stub.ServerReflectionInfo(iter(ask))]
    listed = {s.name for s in answers[0].list_services_response.service}
    assert "envoy.service.discovery.v3.AggregatedDiscoveryService" in listed
    assert answers[1].file_descriptor_response.file_descriptor_proto


# -- tenancy ---------------------------------------------------------------------


def listeners(response: discovery_pb2.DiscoveryResponse) -> list[str]:
    return sorted(x.name for x in unpack(response, listener_pb2.Listener))


async def test_node_metadata_names_the_tier_on_a_hub_without_credentials(
    client: HubClient, channel: grpc.aio.Channel
) -> None:
    await client.register("public", host="127.0.0.1", port=7001)
    await client.register(
        "premium", host="127.0.0.1", port=7002, subscription_requirements=["enterprise"]
    )
    for tier, expected in (("free", ["public"]), ("enterprise", ["premium", "public"]), ("", None)):
        stream = Ads(channel)
        stream.node = node(tier=tier)
        try:
            await stream.send(LISTENER)
            lds = await stream.recv()
            # No tier and no tenant: no tenant context, an unfiltered view (as GetService).
            assert listeners(lds) == (expected or ["premium", "public"]), tier
            await stream.send(ENDPOINT, ("premium",))
            eds = await stream.recv()
            assert bool(endpoints(eds)) == (tier != "free"), tier
        finally:
            stream.close()


async def test_a_client_whose_tier_drops_while_connected_loses_the_service(
    hub: Hub, client: HubClient, ads: Ads
) -> None:
    await client.create_tenant("acme", tier="enterprise")
    await client.register("public", host="127.0.0.1", port=7001)
    await client.register(
        "premium", host="127.0.0.1", port=7002, subscription_requirements=["enterprise"]
    )
    ads.node = node(tenant_id="acme", tier="free")  # the stored tier wins over the claim
    await ads.send(LISTENER)
    lds = await ads.recv()
    assert listeners(lds) == ["premium", "public"]
    await ads.ack(lds, ())
    got: dict[str, discovery_pb2.DiscoveryResponse] = {}
    for type_url in (CLUSTER, ENDPOINT):
        await ads.send(type_url, ("premium",))
        got[type_url] = await ads.recv()
        await ads.ack(got[type_url], ("premium",))
    assert endpoints(got[ENDPOINT]) == {("127.0.0.1", 7002)}

    await client.set_tier("acme", "free")
    pushed: dict[str, discovery_pb2.DiscoveryResponse] = {}
    while len(pushed) < 3:  # LDS and CDS lose premium, its endpoints are emptied
        response = await ads.recv()
        pushed[response.type_url] = response
        await ads.ack(response, () if response.type_url == LISTENER else ("premium",))
    assert listeners(pushed[LISTENER]) == ["public"]
    assert unpack(pushed[CLUSTER], cluster_pb2.Cluster) == []
    [empty] = unpack(pushed[ENDPOINT], endpoint_pb2.ClusterLoadAssignment)
    assert empty.cluster_name == "premium" and not empty.endpoints
    [status] = hub.services.xds_clients.snapshot()
    assert (status.tenant_id, status.tier) == ("acme", "free")

    await client.set_tier("acme", "enterprise")  # and back
    while True:
        response = await ads.recv()
        await ads.ack(response, () if response.type_url == LISTENER else ("premium",))
        if response.type_url == ENDPOINT:
            assert endpoints(response) == {("127.0.0.1", 7002)}
            break


async def test_deleted_services_and_raised_requirements_empty_the_endpoints(
    client: HubClient, ads: Ads
) -> None:
    gone = await client.register("gone", host="127.0.0.1", port=7001, instance_id="g1")
    await client.register("gated", host="127.0.0.1", port=7002, instance_id="q1")
    ads.node = node(tier="pro")
    await ads.send(ENDPOINT, ("gone", "gated"))
    first = await ads.recv()
    assert len(first.resources) == 2
    await ads.ack(first, ("gone", "gated"))
    await gone.deregister()
    deleted = await ads.recv()
    [empty] = unpack(deleted, endpoint_pb2.ClusterLoadAssignment)
    assert empty.cluster_name == "gone" and not empty.endpoints
    await ads.ack(deleted, ("gone", "gated"))
    # Re-registered with requirements a pro tier does not meet.
    await client.register(
        "gated",
        host="127.0.0.1",
        port=7002,
        instance_id="q1",
        subscription_requirements=["enterprise"],
    )
    raised = await ads.recv()
    [empty] = unpack(raised, endpoint_pb2.ClusterLoadAssignment)
    assert empty.cluster_name == "gated" and not empty.endpoints


# -- authentication: the credential, never the node, says who a client is ---------


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path)


def mtls(ca: CertificateAuthority, issued: Any | None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=ca.cert.read_bytes(),
        private_key=issued.key.read_bytes() if issued else None,
        certificate_chain=issued.cert.read_bytes() if issued else None,
    )


async def test_on_a_hub_with_credentials_the_certificate_names_tenant_and_tier(
    hub_factory: HubFactory, tmp_path: Path, ca: CertificateAuthority
) -> None:
    server = ca.issue("hub.internal", server=True)
    acme, stranger = ca.issue("xds.acme"), ca.issue("stranger")
    credentials = tmp_path / "credentials.toml"
    credentials.write_text(
        '[[certificates]]\nsubject = "xds.acme"\nrole = "reader"\ntenant = "acme"\n'
        + token_entry("ops", Role.ADMIN, "admin-secret")
    )
    hub = await hub_factory(
        credentials_file=credentials,
        tls_cert=server.cert,
        tls_key=server.key,
        tls_client_ca=ca.cert,
    )
    tls = TLS(ca=ca.cert, cert=acme.cert, key=acme.key)
    async with HubClient(hub.address, token="admin-secret", tls=tls) as admin:
        await admin.create_tenant("acme", tier="free")
        await admin.register("public", host="127.0.0.1", port=7001)
        await admin.register(
            "premium", host="127.0.0.1", port=7002, subscription_requirements=["enterprise"]
        )

        async with grpc.aio.secure_channel(hub.address, mtls(ca, acme)) as channel:
            stream = Ads(channel)
            # Claims of another tenant and tier in the node count for nothing here.
            stream.node = node(tenant_id="bigcorp", tier="enterprise")
            try:
                await stream.send(LISTENER)
                lds = await stream.recv()
                assert listeners(lds) == ["public"]
                await stream.ack(lds, ())
                await stream.send(ENDPOINT, ("premium",))
                eds = await stream.recv()
                assert endpoints(eds) == set()
                await stream.ack(eds, ("premium",))
                [status] = hub.services.xds_clients.snapshot()
                assert (status.tenant_id, status.tier) == ("acme", "free")
                # The tenant's record is what counts, and it is followed.
                await admin.set_tier("acme", "enterprise")
                seen: set[str] = set()
                while ENDPOINT not in seen:
                    pushed = await stream.recv()
                    seen.add(pushed.type_url)
                    if pushed.type_url == ENDPOINT:
                        assert endpoints(pushed) == {("127.0.0.1", 7002)}
                    await stream.ack(pushed, ("premium",) if pushed.type_url == ENDPOINT else ())
            finally:
                stream.close()

    # A certificate the hub has no entry for: UNAUTHENTICATED.
    async with grpc.aio.secure_channel(hub.address, mtls(ca, stranger)) as channel:
        refused = Ads(channel)
        with contextlib.suppress(
            asyncio.InvalidStateError, grpc.aio.AioRpcError
        ):  # refused already?
            await refused.send(LISTENER)
        assert await refused.status() == grpc.StatusCode.UNAUTHENTICATED
    # No certificate at all: refused in the TLS handshake.
    async with grpc.aio.secure_channel(hub.address, mtls(ca, None)) as channel:
        refused = Ads(channel)
        with contextlib.suppress(asyncio.InvalidStateError, grpc.aio.AioRpcError):
            await refused.send(LISTENER)
        assert await refused.status() == grpc.StatusCode.UNAVAILABLE


async def test_a_token_hub_refuses_an_xds_client_without_credentials(
    hub_factory: HubFactory, tmp_path: Path
) -> None:
    credentials = tmp_path / "credentials.toml"
    credentials.write_text(
        token_entry("dash", Role.READER, "reader-secret")
        + token_entry("orders", Role.SERVICE, "svc-secret", tenant="acme", service="orders")
    )
    hub = await hub_factory(credentials_file=credentials)
    async with grpc.aio.insecure_channel(hub.address) as channel:
        anonymous = Ads(channel)
        anonymous.node = node(tenant_id="acme", tier="enterprise")
        with contextlib.suppress(asyncio.InvalidStateError, grpc.aio.AioRpcError):
            await anonymous.send(LISTENER)
        assert await anonymous.status() == grpc.StatusCode.UNAUTHENTICATED
        # A reader's token is enough (a proxyless client cannot send one, but an
        # Envoy or a load generator can).
        reader = Ads(channel, metadata=[("authorization", "Bearer reader-secret")])
        try:
            await reader.send(LISTENER)
            assert listeners(await reader.recv()) == []
        finally:
            reader.close()


async def test_a_credentials_reload_that_revokes_the_client_ends_its_stream(
    hub_factory: HubFactory, tmp_path: Path
) -> None:
    credentials = tmp_path / "credentials.toml"
    credentials.write_text(token_entry("dash", Role.READER, "reader-secret"))
    hub = await hub_factory(credentials_file=credentials)
    async with grpc.aio.insecure_channel(hub.address) as channel:
        stream = Ads(channel, metadata=[("authorization", "Bearer reader-secret")])
        await stream.send(LISTENER)
        await stream.recv()
        credentials.write_text(token_entry("ops", Role.ADMIN, "admin-secret"))
        assert hub.reload_credentials()
        assert await stream.status() == grpc.StatusCode.UNAUTHENTICATED
    await eventually(lambda: hub.services.xds_clients.snapshot() == [])


# -- a client that outlives its hub --------------------------------------------------


def contents(got: dict[str, discovery_pb2.DiscoveryResponse]) -> dict[str, list[bytes]]:
    """What a handshake delivered, without versions and nonces (a replica's own)."""
    return {t: [a.value for a in r.resources] for t, r in got.items()}


async def stream_ends(stream: Ads) -> None:
    with contextlib.suppress(grpc.aio.AioRpcError, AssertionError):
        while True:
            await stream.recv()


async def test_a_restarted_hub_serves_the_reconnecting_client_the_same_resources(
    hub_factory: HubFactory,
) -> None:
    listen = f"127.0.0.1:{free_port()}"
    first = await hub_factory(listen=listen)
    async with HubClient(first.address) as admin:  # (closing it deregisters)
        await admin.register("pricing", host="127.0.0.1", port=7001, ttl=60, keep_alive=False)
        async with grpc.aio.insecure_channel(first.address) as channel:
            before = Ads(channel)
            got = await before.handshake("pricing")
            await first.stop()
            await asyncio.wait_for(stream_ends(before), TIMEOUT)
            await hub_factory(listen=listen)
            # The client's channel reconnects by itself; its new stream asks again.
            after = Ads(channel)
            try:
                again = await after.handshake("pricing")
            finally:
                after.close()
    assert contents(again) == contents(got)
    assert endpoints(again[ENDPOINT]) == {("127.0.0.1", 7001)}


async def test_a_client_moves_to_a_second_replica_when_its_hub_dies(
    hub_factory: HubFactory,
) -> None:
    one, two = await hub_factory(), await hub_factory()
    async with HubClient(two.address) as admin:
        await admin.register("pricing", host="127.0.0.1", port=7001, ttl=60, keep_alive=False)
        async with (
            grpc.aio.insecure_channel(one.address) as to_one,
            grpc.aio.insecure_channel(two.address) as to_two,
        ):
            on_one = Ads(to_one)
            got = await on_one.handshake("pricing")
            await crash(one)
            await asyncio.wait_for(stream_ends(on_one), TIMEOUT)
            on_two = Ads(to_two)
            try:
                again = await on_two.handshake("pricing")
                assert contents(again) == contents(got)
                # and it follows changes from its new hub
                await admin.register(
                    "pricing", host="127.0.0.1", port=7002, ttl=60, keep_alive=False
                )
                pushed = await on_two.recv()
                assert endpoints(pushed) == {("127.0.0.1", 7001), ("127.0.0.1", 7002)}
            finally:
                on_two.close()


async def test_nothing_is_answered_while_the_hubs_view_is_not_current(
    hub_factory: HubFactory, etcd: EtcdProcess
) -> None:
    bridge = Bridge(etcd.client_port)
    await bridge.start()
    try:
        hub = await hub_factory(endpoints=[bridge.endpoint])
        admin = HubClient(hub.address)  # (closing it would deregister)
        await admin.register("pricing", host="127.0.0.1", port=7001, ttl=60, keep_alive=False)
        async with grpc.aio.insecure_channel(hub.address) as channel:
            holding = Ads(channel)
            await holding.send(LISTENER)
            assert listeners(await holding.recv()) == ["pricing"]
            await bridge.cut()
            await eventually(lambda: not hub.services.projection.live)
            late = Ads(channel)
            late.node = node("late-node")
            await late.send(LISTENER)
            # While the view is not current: no answer (an empty one would
            # delete every service in the client), to the new stream or the old.
            with pytest.raises(TimeoutError):
                await late.recv(timeout=2.0)
            await bridge.restore()
            assert listeners(await late.recv()) == ["pricing"]
            late.close()
            holding.close()
        await admin.close()
    finally:
        await bridge.close()
