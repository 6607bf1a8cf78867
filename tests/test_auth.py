"""Authentication and authorization against a live hub: every RPC x every role,
tenant isolation, service binding, per-caller limits, credentials reload, TLS
and mTLS, and the loopback-only default."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from aitrading.hub.v1 import (
    balancer_pb2,
    config_pb2,
    deployment_pb2,
    observability_pb2,
    registry_pb2,
    registry_pb2_grpc,
    tenant_pb2,
)
from google.protobuf import message_factory
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from hub_client import TLS, HubClient, PermissionDenied, RateLimited, Unauthenticated
from hub_server.app import Hub
from hub_server.auth.authorizer import Authorizer
from hub_server.auth.credentials import Identity, token_entry
from hub_server.auth.roles import Role
from hub_server.embedded_etcd import EtcdProcess
from hub_server.kernel import errors
from tests.support.auth import TOKENS, credentials_text, every_rpc, md, secret
from tests.support.certs import CertificateAuthority
from tests.support.hubs import HubFactory
from tests.support.waiting import eventually


def identity(who: str) -> Identity:
    name, role, tenant, service = TOKENS[who]
    return Identity(f"token:{name}", role, tenant, service)


def write(path: Path, text: str) -> None:
    path.write_text(text)


@pytest.fixture
def credentials(tmp_path: Path) -> Path:
    path = tmp_path / "credentials.toml"
    path.write_text(credentials_text())
    return path


@pytest.fixture
async def secured(hub_factory: HubFactory, credentials: Path) -> Hub:
    return await hub_factory(credentials_file=credentials)


@pytest.fixture
async def channel(secured: Hub) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(secured.address) as ch:
        yield ch


def client(hub: Hub, who: str, **context: str) -> HubClient:
    return HubClient(hub.address, token=secret(who), timeout=5, **context)


async def call(
    channel: grpc.aio.Channel, method: str, request: Any, metadata: list[tuple[str, str]]
) -> grpc.StatusCode:
    """Calls any RPC by name; OK, or the status it ended with. Streams count as
    OK once their first message (or their deadline) arrives."""
    desc = every_rpc()[method]
    out = message_factory.GetMessageClass(desc.output_type)
    kw: dict[str, Any] = {
        "request_serializer": lambda m: m.SerializeToString(),
        "response_deserializer": out.FromString,
    }
    try:
        if desc.client_streaming and desc.server_streaming:  # envoy's ADS
            both = channel.stream_stream(method, **kw)(iter(()), metadata=metadata, timeout=3)
            async for _ in both:
                break
        elif desc.client_streaming:
            await channel.stream_unary(method, **kw)(iter(()), metadata=metadata, timeout=3)
        elif desc.server_streaming:
            stream = channel.unary_stream(method, **kw)(request, metadata=metadata, timeout=1.5)
            await stream.read()
            stream.cancel()
        else:
            await channel.unary_unary(method, **kw)(request, metadata=metadata, timeout=3)
    except grpc.aio.AioRpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def empty_request(method: str) -> Any:
    return message_factory.GetMessageClass(every_rpc()[method].input_type)()


# -- every RPC x every role ------------------------------------------------------


@pytest.mark.parametrize("who", [*TOKENS, None, "nobody"])
async def test_every_rpc_for_every_role(channel: grpc.aio.Channel, who: str | None) -> None:
    methods = sorted(every_rpc())
    codes = await asyncio.gather(*(call(channel, m, empty_request(m), md(who)) for m in methods))
    got = dict(zip(methods, codes, strict=True))
    if who not in TOKENS:  # no token, or one the hub does not know
        assert set(got.values()) == {grpc.StatusCode.UNAUTHENTICATED}
        return
    for method, code in got.items():
        try:
            Authorizer.check_method(identity(who), method)
            allowed = True
        except errors.PermissionDenied:
            allowed = False
        if allowed:
            assert code not in (
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.UNAUTHENTICATED,
            ), (method, code)
        else:
            assert code == grpc.StatusCode.PERMISSION_DENIED, (method, code)


async def test_standard_health_needs_no_credentials(channel: grpc.aio.Channel) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


# -- tenant isolation -------------------------------------------------------------


@pytest.fixture
async def fleet(secured: Hub) -> AsyncIterator[Hub]:
    """Tenants acme (free) and beta (enterprise); services open-feed and
    premium-feed (enterprise only), registered by the admin for the test's length."""
    async with client(secured, "admin") as admin:
        await admin.create_tenant("acme", tier="free")
        await admin.create_tenant("beta", tier="enterprise")
        await admin.register("open-feed", host="127.0.0.1", port=9001)
        await admin.register(
            "premium-feed",
            host="127.0.0.1",
            port=9002,
            subscription_requirements=["enterprise"],
        )
        yield secured


async def test_a_bound_service_sees_its_tenant_whatever_headers_it_sends(
    fleet: Hub, channel: grpc.aio.Channel
) -> None:
    async with (
        client(fleet, "service", subscription_tier="enterprise") as svc,
        client(fleet, "gateway", tenant_id="beta", subscription_tier="enterprise") as gw,
    ):
        # The stored tier (free) decides for the service, the header for the gateway.
        assert [s.name for s in await svc.list_services()] == ["open-feed"]
        assert {s.name for s in await gw.list_services()} == {"open-feed", "premium-feed"}
        config = await svc.config()
        assert (config.tenant_id, config.tier) == ("acme", "free")
        with pytest.raises(PermissionDenied):
            await svc.config("beta")
        with pytest.raises(PermissionDenied):
            await svc.usage("beta")
    # Headers naming beta: the allocation still lands on acme.
    allocate = channel.unary_unary(
        "/aitrading.hub.v1.TenantService/Allocate",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=tenant_pb2.AllocateResponse.FromString,
    )
    request = tenant_pb2.AllocateRequest(
        resource=tenant_pb2.QUOTA_RESOURCE_API_CALLS_PER_HOUR, amount=3
    )
    await allocate(request, metadata=md("service", x_tenant_id="beta", x_company_id="beta"))
    async with client(fleet, "admin") as admin:
        assert (await admin.usage("acme"))["api_calls_per_hour"].used == 3
        assert (await admin.usage("beta"))["api_calls_per_hour"].used == 0


def _audit_stub(channel: grpc.aio.Channel) -> Any:
    return channel.unary_unary(
        "/aitrading.hub.v1.ObservabilityService/ListAuditEvents",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=observability_pb2.ListAuditEventsResponse.FromString,
    )


async def test_a_bound_reader_reads_only_its_tenant(fleet: Hub, channel: grpc.aio.Channel) -> None:
    reader = md("acme-reader")
    obs = "/aitrading.hub.v1.ObservabilityService/"
    for method, request in [
        (f"{obs}ListAuditEvents", observability_pb2.ListAuditEventsRequest(tenant_id="beta")),
        (f"{obs}ListAlerts", observability_pb2.ListAlertsRequest(tenant_id="beta")),
        (f"{obs}GetSystemMetrics", observability_pb2.GetSystemMetricsRequest()),
        (
            "/aitrading.hub.v1.TenantService/GetTenant",
            tenant_pb2.GetTenantRequest(tenant_id="beta"),
        ),
        ("/aitrading.hub.v1.TenantService/ListTenants", tenant_pb2.ListTenantsRequest()),
        (
            "/aitrading.hub.v1.ConfigService/GetConfigLayer",
            config_pb2.GetConfigLayerRequest(
                layer=config_pb2.ConfigLayerRef(
                    kind=config_pb2.CONFIG_LAYER_KIND_TENANT, tenant_id="beta"
                )
            ),
        ),
    ]:
        assert await call(channel, method, request, reader) == grpc.StatusCode.PERMISSION_DENIED
    # Its own audit trail: the records of calls made for acme, none of beta's.
    async with client(fleet, "service") as svc:
        await svc.allocate("api_calls_per_hour", 10)  # audited (>= 10)
    async with client(fleet, "admin", tenant_id="beta") as admin:
        await admin.allocate("api_calls_per_hour", 10)
    reply = await _audit_stub(channel)(observability_pb2.ListAuditEventsRequest(), metadata=reader)
    assert reply.events and {e.tenant_id for e in reply.events} == {"acme"}


async def test_audit_records_carry_the_authenticated_identity(
    fleet: Hub, channel: grpc.aio.Channel
) -> None:
    request = observability_pb2.ListAuditEventsRequest(
        method="/aitrading.hub.v1.TenantService/CreateTenant"
    )
    events = (await _audit_stub(channel)(request, metadata=md("admin"))).events
    assert len(events) == 2 and {e.caller for e in events} == {"token:ops"}
    assert all(e.details["peer"].startswith("ipv4:127.0.0.1:") for e in events)


async def test_a_service_token_registers_only_its_own_service(fleet: Hub) -> None:
    async with client(fleet, "service") as svc:
        reg = await svc.register("orders", host="127.0.0.1", port=9100)
        assert reg.instance.service == "orders"
        with pytest.raises(PermissionDenied, match="not 'payments'"):
            await svc.register("payments", host="127.0.0.1", port=9101)
        open_feed = (await svc.discover("open-feed")).instances[0]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await svc.registry_stub.Deregister(
                registry_pb2.DeregisterRequest(
                    service="open-feed", instance_id=open_feed.instance_id
                ),
                metadata=md("service"),
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    async with client(fleet, "reader") as ro:
        assert len((await ro.discover("open-feed")).instances) == 1


# -- limits -----------------------------------------------------------------------


def _reason(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


async def test_a_caller_over_its_rate_gets_resource_exhausted(
    hub_factory: HubFactory, credentials: Path
) -> None:
    hub = await hub_factory(credentials_file=credentials, caller_rate_limit=20)
    async with grpc.aio.insecure_channel(hub.address) as ch:
        stub = ch.unary_unary(
            "/aitrading.hub.v1.RegistryService/ListServices",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=registry_pb2.ListServicesResponse.FromString,
        )
        results = await asyncio.gather(
            *(stub(registry_pb2.ListServicesRequest(), metadata=md("reader")) for _ in range(60)),
            return_exceptions=True,
        )
        refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert 0 < len(refused) <= 40
        assert {r.code() for r in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert {_reason(r) for r in refused} == {"CALLER_RATE_LIMITED"}
        # Another caller has its own budget.
        await stub(registry_pb2.ListServicesRequest(), metadata=md("gateway"))
    async with client(hub, "reader") as ro:
        with pytest.raises(RateLimited, match="over 20 calls/s"):
            for _ in range(100):
                await ro.list_services()


async def test_without_credentials_each_connection_has_its_own_rate(
    hub_factory: HubFactory,
) -> None:
    """Without credentials every caller is anonymous: the limit is per
    connection (its peer), on the wrapper's path for calls without tenant
    headers as on the one with them."""
    hub = await hub_factory(caller_rate_limit=20)
    request = registry_pb2.GetServiceRequest(service="orders")
    # Channels of one process share connections unless told otherwise.
    own = [("grpc.use_local_subchannel_pool", 1)]
    async with grpc.aio.insecure_channel(hub.address, options=own) as ch:
        stub = registry_pb2_grpc.RegistryServiceStub(ch)
        for metadata in ((), (("x-tenant-id", "acme"),)):
            results = await asyncio.gather(
                *(stub.GetService(request, metadata=metadata) for _ in range(60)),
                return_exceptions=True,
            )
            errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
            assert len(errors) == len(results)
            refused = [r for r in errors if r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED]
            # Admitted ones find no such service.
            assert {r.code() for r in errors} - {grpc.StatusCode.RESOURCE_EXHAUSTED} <= {
                grpc.StatusCode.NOT_FOUND
            }
            assert len(refused) >= 30  # 20 a second, and a burst of 20
            assert {_reason(r) for r in refused} == {"CALLER_RATE_LIMITED"}
            assert all("ipv4:127.0.0.1:" in (r.details() or "") for r in refused)
    async with grpc.aio.insecure_channel(hub.address, options=own) as other:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await registry_pb2_grpc.RegistryServiceStub(other).GetService(request)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND  # admitted: no such service


async def test_open_streams_are_bounded_per_caller(
    hub_factory: HubFactory, credentials: Path
) -> None:
    hub = await hub_factory(credentials_file=credentials, caller_max_streams=2)
    async with grpc.aio.insecure_channel(hub.address) as ch:
        watch = ch.unary_stream(
            "/aitrading.hub.v1.RegistryService/Watch",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=registry_pb2.WatchResponse.FromString,
        )
        first, second = (watch(registry_pb2.WatchRequest(), metadata=md("reader")) for _ in "ab")
        await first.read()
        await second.read()
        third = watch(registry_pb2.WatchRequest(), metadata=md("reader"))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await third.read()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _reason(refused.value) == "CALLER_STREAM_LIMIT"
        other = watch(registry_pb2.WatchRequest(), metadata=md("gateway"))
        await other.read()
        first.cancel()

        async def a_slot_is_free() -> bool:
            again = watch(registry_pb2.WatchRequest(), metadata=md("reader"))
            try:
                await again.read()
                return True
            except grpc.aio.AioRpcError:
                return False
            finally:
                again.cancel()

        await eventually(a_slot_is_free)
        second.cancel()
        other.cancel()


async def test_oversized_metadata_is_refused_and_the_hub_keeps_serving(
    secured: Hub, channel: grpc.aio.Channel
) -> None:
    method = "/aitrading.hub.v1.RegistryService/ListServices"
    big = md("reader", x_user_id="u" * 32_000)
    assert await call(channel, method, empty_request(method), big) != grpc.StatusCode.OK
    assert await call(channel, method, empty_request(method), md("reader")) == grpc.StatusCode.OK


# -- reload ---------------------------------------------------------------------------


async def test_reloaded_credentials_take_effect_and_a_bad_file_is_ignored(
    secured: Hub, credentials: Path
) -> None:
    rotated = dict(TOKENS)
    rotated["new-admin"] = ("ops2", Role.ADMIN, "", "")
    del rotated["admin"]
    write(credentials, credentials_text(rotated))
    assert secured.reload_credentials()
    async with client(secured, "new-admin") as new, client(secured, "admin") as old:
        await new.list_tenants()
        with pytest.raises(Unauthenticated):
            await old.list_tenants()
    write(credentials, "[[tokens]]\nname = ")
    assert not secured.reload_credentials()
    async with client(secured, "new-admin") as new:
        await new.list_tenants()


async def test_sighup_reloads_a_running_hub(
    etcd: EtcdProcess, etcd_store: Any, tmp_path: Path
) -> None:
    path = tmp_path / "credentials.toml"
    write(path, credentials_text({"admin": TOKENS["admin"]}))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hub_server.cli", "serve",
        "--listen", "127.0.0.1:0",
        "--etcd-endpoints", etcd.endpoint,
        "--credentials-file", str(path),
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        address = line.decode().strip().rsplit(" ", 1)[1]
        async with HubClient(address, token=secret("reader"), timeout=5) as ro:
            with pytest.raises(Unauthenticated):
                await ro.list_services()
            write(path, credentials_text())
            os.kill(proc.pid, signal.SIGHUP)

            async def reader_known() -> bool:
                try:
                    await ro.list_services()
                    return True
                except Unauthenticated:
                    return False

            await eventually(reader_known)
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)


def _stream(channel: grpc.aio.Channel, method: str, request: Any, who: str) -> Any:
    """A raw server stream of ``method`` (responses left as bytes)."""
    return channel.unary_stream(
        method, request_serializer=lambda m: m.SerializeToString(), response_deserializer=None
    )(request, metadata=md(who))


async def _ends_with(stream: Any) -> grpc.StatusCode:
    """Reads the stream to its end; the status it ended with."""

    async def drain() -> None:
        while await stream.read() is not grpc.aio.EOF:
            pass

    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await asyncio.wait_for(drain(), 10)
    return ended.value.code()  # type: ignore[no-any-return]


async def test_a_reload_ends_the_streams_its_credentials_no_longer_allow(
    hub_factory: HubFactory, tmp_path: Path
) -> None:
    tokens = dict(TOKENS, watcher=("ops-watch", Role.READER, "", ""))
    path = tmp_path / "credentials.toml"
    write(path, credentials_text(tokens))
    hub = await hub_factory(credentials_file=path)
    watch = "/aitrading.hub.v1.RegistryService/Watch"
    watch_config = "/aitrading.hub.v1.ConfigService/WatchConfig"
    async with grpc.aio.insecure_channel(hub.address) as ch:
        revoked = [
            _stream(ch, watch, registry_pb2.WatchRequest(), "reader"),
            _stream(ch, watch_config, config_pb2.WatchConfigRequest(), "reader"),
            _stream(
                ch,
                "/aitrading.hub.v1.LoadBalancerService/WatchEndpoints",
                balancer_pb2.WatchEndpointsRequest(service="orders"),
                "reader",
            ),
        ]
        downgraded = _stream(
            ch,
            "/aitrading.hub.v1.DeploymentService/WatchDirectives",
            deployment_pb2.WatchDirectivesRequest(service="orders"),
            "watcher",
        )
        rebound = _stream(ch, watch_config, config_pb2.WatchConfigRequest(), "acme-reader")
        kept = [
            _stream(ch, watch, registry_pb2.WatchRequest(), "gateway"),
            _stream(ch, watch_config, config_pb2.WatchConfigRequest(tenant_id="acme"), "gateway"),
        ]
        for stream in (*revoked, downgraded, rebound, *kept):
            await stream.read()  # open: its snapshot came

        changed = dict(tokens)
        del changed["reader"]
        changed["watcher"] = ("ops-watch", Role.GATEWAY, "", "")  # may not watch directives
        changed["acme-reader"] = ("acme-dash", Role.READER, "globex", "")
        write(path, credentials_text(changed))
        assert hub.reload_credentials()

        for stream in revoked:
            assert await _ends_with(stream) == grpc.StatusCode.UNAUTHENTICATED
        assert await _ends_with(downgraded) == grpc.StatusCode.PERMISSION_DENIED
        assert await _ends_with(rebound) == grpc.StatusCode.PERMISSION_DENIED
        # Other callers' streams go on: their next message (PROGRESS) comes.
        for stream in kept:
            assert await asyncio.wait_for(stream.read(), 10) is not grpc.aio.EOF
            assert not stream.done()
            stream.cancel()


# -- safe by default -----------------------------------------------------------------


async def test_no_credentials_means_loopback_only(hub_factory: HubFactory) -> None:
    with pytest.raises(ValueError, match=r"refusing to serve 0\.0\.0\.0:0 without credentials"):
        await hub_factory(listen="0.0.0.0:0")
    hub = await hub_factory(listen="0.0.0.0:0", insecure=True)
    async with HubClient(f"127.0.0.1:{hub.port}") as anyone:
        await anyone.create_tenant("t1")


def test_the_cli_refuses_a_hub_id_that_cannot_be_a_key() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hub_server.cli", "serve", "--hub-id", "../x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "hub_id" in done.stderr


def test_the_cli_refuses_to_expose_a_hub_without_credentials() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hub_server.cli", "serve", "--listen", "0.0.0.0:7999"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "refusing to serve 0.0.0.0:7999 without credentials" in done.stderr


# -- TLS and mTLS -----------------------------------------------------------------------


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path)


async def test_tls_with_a_token(
    hub_factory: HubFactory, credentials: Path, ca: CertificateAuthority
) -> None:
    server = ca.issue("hub.internal", server=True)
    hub = await hub_factory(credentials_file=credentials, tls_cert=server.cert, tls_key=server.key)
    async with HubClient(hub.address, token=secret("admin"), tls=TLS(ca=ca.cert)) as admin:
        await admin.create_tenant("acme")
    async with HubClient(hub.address, token=secret("admin"), timeout=2) as plaintext:
        with pytest.raises(Exception):  # noqa: B017 - the handshake fails, whatever it is called
            await plaintext.list_tenants()


async def test_mtls_identity_comes_from_the_certificate(
    hub_factory: HubFactory, tmp_path: Path, ca: CertificateAuthority
) -> None:
    server = ca.issue("hub.internal", server=True)
    gateway, stranger = ca.issue("gw.internal"), ca.issue("stranger")
    credentials = tmp_path / "certs.toml"
    credentials.write_text(
        '[[certificates]]\nsubject = "gw.internal"\nrole = "gateway"\n'
        + token_entry("ops", Role.ADMIN, secret("admin"))
    )
    hub = await hub_factory(
        credentials_file=credentials,
        tls_cert=server.cert,
        tls_key=server.key,
        tls_client_ca=ca.cert,
    )
    as_gateway = TLS(ca=ca.cert, cert=gateway.cert, key=gateway.key)
    async with HubClient(hub.address, tls=as_gateway, token="") as gw:
        await gw.list_tenants()  # gateway may read
        with pytest.raises(PermissionDenied):
            await gw.create_tenant("acme")  # but not administer
    # A token still wins over the certificate's identity.
    async with HubClient(hub.address, tls=as_gateway, token=secret("admin")) as admin:
        await admin.create_tenant("acme")
    as_stranger = TLS(ca=ca.cert, cert=stranger.cert, key=stranger.key)
    async with HubClient(hub.address, tls=as_stranger, token="") as nobody:
        with pytest.raises(Unauthenticated, match="'stranger' has no credentials"):
            await nobody.list_tenants()
    async with HubClient(hub.address, tls=TLS(ca=ca.cert), token="", timeout=2) as no_cert:
        with pytest.raises(Exception):  # noqa: B017 - refused in the handshake
            await no_cert.list_tenants()


async def test_hubctl_with_token_and_tls(
    hub_factory: HubFactory, credentials: Path, ca: CertificateAuthority
) -> None:
    from tests.support.hubctl import hubctl

    server = ca.issue("hub.internal", server=True)
    hub = await hub_factory(credentials_file=credentials, tls_cert=server.cert, tls_key=server.key)
    flags = ("--tls-ca", str(ca.cert))
    denied = await hubctl(
        hub, *flags, "--token", secret("reader"), "tenants", "create", "acme", "--tier", "pro"
    )
    assert denied.code != 0 and "may not call" in denied.err
    made = await hubctl(
        hub, *flags, "--token", secret("admin"), "tenants", "create", "acme", "--tier", "pro"
    )
    assert made.code == 0, made.err


async def test_a_token_rides_on_streams_and_background_keep_alives(fleet: Hub) -> None:
    async with client(fleet, "service") as svc:
        events = svc.watch("orders")
        reg = await svc.register("orders", host="127.0.0.1", port=9200, ttl=2)
        event = await asyncio.wait_for(anext(events), 10)
        assert event.instance.instance_id == reg.instance.instance_id
        async for config in svc.watch_config():
            assert config.tenant_id == "acme"
            break
        await asyncio.sleep(3)  # past the TTL: only keep-alives keep it
        assert len((await svc.discover("orders")).instances) == 1
        await events.aclose()


async def test_a_token_rides_on_client_streams(fleet: Hub) -> None:
    async with client(fleet, "admin") as admin, client(fleet, "reader") as ro:
        data = await admin.backup()
        assert data[:4] == b"CHUB"
        report = await admin.restore(data, dry_run=True)  # client-streaming RestoreBackup
        assert report.dry_run and report.transactions == 0
        with pytest.raises(PermissionDenied):
            await ro.restore(data, dry_run=True)


async def test_a_request_that_does_not_parse_is_invalid_argument_for_bound_callers_too(
    channel: grpc.aio.Channel,
) -> None:
    call = channel.unary_unary(
        "/aitrading.hub.v1.ConfigService/GetTenantConfig",
        request_serializer=lambda raw: raw,
        response_deserializer=lambda raw: raw,
    )
    for who in ("service", "admin"):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(b"\x0a\xff\xff", metadata=md(who))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, who
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(b"\x0a\xff\xff", metadata=md(None))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
