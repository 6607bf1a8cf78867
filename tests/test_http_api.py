"""The HTTP/JSON API (--http-listen) against real hubs over real HTTP (httpx):
the transcoded gRPC methods, their refusals (google.rpc.Status bodies, HTTP
statuses by gRPC code), tenant headers, Server-Sent Events with Last-Event-ID
resume and revocation, the body limit, CORS, and the listener's exposure rule."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hub_server.app import Hub, HubConfig
from hub_server.auth.roles import Role
from hub_server.gateway.server import MAX_REQUEST_BYTES
from tests.support.auth import TOKENS, credentials_text, secret
from tests.support.hubs import HubFactory

ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"


def base(hub: Hub) -> str:
    assert hub.http is not None
    return hub.http.url


def bearer(who: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret(who)}", **headers}


@pytest.fixture
async def http_hub(hub_factory: HubFactory) -> Hub:
    return await hub_factory(http_listen="127.0.0.1:0")


@pytest.fixture
async def web(http_hub: Hub) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base(http_hub), timeout=10) as c:
        yield c


@pytest.fixture
def credentials(tmp_path: Path) -> Path:
    path = tmp_path / "credentials.toml"
    path.write_text(credentials_text())
    return path


def detail(body: dict[str, Any], type_url: str) -> dict[str, Any]:
    return next(d for d in body["details"] if d["@type"] == type_url)


async def register(web: httpx.AsyncClient, service: str, instance: str, **fields: Any) -> None:
    body = {"instance_id": instance, "host": "10.0.0.1", "port": 8080, **fields}
    r = await web.post(f"/v1/services/{service}/instances", json=body)
    assert r.status_code == 200, r.text


async def test_a_transcoded_call_takes_either_spelling_and_answers_in_camel_case(
    web: httpx.AsyncClient,
) -> None:
    r = await web.post(
        "/v1/services/orders/instances",
        json={"instanceId": "o-1", "host": "10.0.0.1", "port": 8080, "ttl_seconds": 30},
        headers={"x-correlation-id": "c-42"},
    )
    assert r.status_code == 200, r.text
    instance = r.json()["instance"]
    assert instance["instanceId"] == "o-1" and instance["ttlSeconds"] == 30
    assert instance["protocol"] == "PROTOCOL_HTTP"
    assert r.headers["x-correlation-id"] == "c-42"  # echoed like the gRPC header
    r = await web.get("/v1/services/orders")
    assert [i["instanceId"] for i in r.json()["service"]["instances"]] == ["o-1"]
    # A query parameter sets a request field (either spelling; bools as true/false).
    r = await web.get("/v1/services", params={"legacyMode": "true", "page_size": "10"})
    assert [s["name"] for s in r.json()["services"]] == ["orders"]
    r = await web.delete("/v1/services/orders/instances/o-1")
    assert r.status_code == 200, r.text
    r = await web.get("/v1/services/orders")
    assert r.status_code == 404


async def test_refusals_are_statuses_with_details_under_the_matching_http_status(
    web: httpx.AsyncClient,
) -> None:
    # INVALID_ARGUMENT: the field named, as on gRPC.
    r = await web.post("/v1/services/Not_A_Label/instances", json={"host": "h", "port": 0})
    assert r.status_code == 400
    body = r.json()
    assert body["code"] == 3 and body["message"]
    assert detail(body, ERROR_INFO)["domain"] == "hub.aitrading"
    fields = {v["field"] for v in detail(body, BAD_REQUEST)["fieldViolations"]}
    assert {"service", "port"} <= fields
    # A body that is not the request message: INVALID_ARGUMENT too.
    r = await web.post("/v1/services/orders/instances", json={"port": "many"})
    assert r.status_code == 400 and r.json()["code"] == 3
    r = await web.get("/v1/services", params={"legacy_mode": "maybe"})
    assert r.status_code == 400
    assert detail(r.json(), BAD_REQUEST)["fieldViolations"][0]["field"] == "legacy_mode"
    r = await web.get("/v1/services", params={"no_such_field": "1"})
    assert r.status_code == 400
    # NOT_FOUND, with the hub's reason.
    r = await web.get("/v1/services/nowhere")
    assert r.status_code == 404 and r.json()["code"] == 5
    assert detail(r.json(), ERROR_INFO)["reason"]
    # No route, or not this method: 404 and 405, still Status bodies.
    r = await web.get("/v2/nothing")
    assert r.status_code == 404 and r.json()["code"] == 5
    r = await web.get("/v1/services/orders:pick")
    assert r.status_code == 405 and r.headers["Allow"] == "POST"


async def test_authentication_roles_and_limits_are_the_grpc_ones(
    hub_factory: HubFactory, credentials: Path
) -> None:
    hub = await hub_factory(
        http_listen="127.0.0.1:0", credentials_file=credentials, caller_rate_limit=20
    )
    async with httpx.AsyncClient(base_url=base(hub), timeout=10) as web:
        r = await web.get("/v1/services")
        assert r.status_code == 401 and r.json()["code"] == 16
        r = await web.get("/v1/services", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        r = await web.get("/v1/services", headers=bearer("reader"))
        assert r.status_code == 200
        # PERMISSION_DENIED: a reader may not register.
        r = await web.post(
            "/v1/services/orders/instances",
            json={"host": "10.0.0.1", "port": 1},
            headers=bearer("reader"),
        )
        assert r.status_code == 403 and r.json()["code"] == 7
        # A service token registers only its own service.
        r = await web.post(
            "/v1/services/billing/instances",
            json={"host": "10.0.0.1", "port": 1},
            headers=bearer("service"),
        )
        assert r.status_code == 403
        # RESOURCE_EXHAUSTED past the caller's rate: 429.
        results = await asyncio.gather(
            *(web.get("/v1/services", headers=bearer("gateway")) for _ in range(60))
        )
        refused = [x for x in results if x.status_code != 200]
        assert refused and {x.status_code for x in refused} == {429}
        assert {detail(x.json(), ERROR_INFO)["reason"] for x in refused} == {"CALLER_RATE_LIMITED"}
        assert {x.json()["code"] for x in refused} == {8}
    # Audit records name the authenticated caller, as for gRPC calls.
    events, _, _ = await hub.services.audit.list(
        method="/aitrading.hub.v1.RegistryService/Register"
    )
    assert {(e.caller, e.outcome) for e in events} == {
        ("token:dash", "PERMISSION_DENIED"),
        ("token:orders@acme", "PERMISSION_DENIED"),
    }
    assert all(e.details["peer"].startswith("ipv4:127.0.0.1:") for e in events)


async def test_discovery_is_filtered_by_the_tenant_headers(web: httpx.AsyncClient) -> None:
    await register(web, "quotes", "q-1")
    await register(web, "signals", "s-1", subscriptionRequirements=["SUBSCRIPTION_TIER_PRO"])

    async def names(**headers: str) -> list[str]:
        r = await web.get("/v1/services", headers=headers)
        assert r.status_code == 200, r.text
        return sorted(s["name"] for s in r.json().get("services", []))

    assert await names() == ["quotes", "signals"]
    assert await names(**{"x-subscription-tier": "free"}) == ["quotes"]
    assert await names(**{"x-subscription-tier": "pro"}) == ["quotes", "signals"]
    r = await web.get(
        "/v1/services", params={"legacy_mode": "true"}, headers={"x-subscription-tier": "free"}
    )
    assert sorted(s["name"] for s in r.json()["services"]) == ["quotes", "signals"]


# -- Server-Sent Events --------------------------------------------------------


class Events:
    """The events of an SSE response, as (id, event, data)."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.aiter_lines()

    async def next(self, timeout: float = 10) -> tuple[str, str, dict[str, Any]]:
        return await asyncio.wait_for(self._next(), timeout)

    async def _next(self) -> tuple[str, str, dict[str, Any]]:
        event_id, event, data = "", "message", ""
        async for line in self._lines:
            if not line:
                if data:
                    return event_id, event, json.loads(data)
                continue
            key, _, value = line.partition(": ")
            if key == "id":
                event_id = value
            elif key == "event":
                event = value
            elif key == "data":
                data = value
        raise EOFError

    async def until(self, kind: str) -> tuple[str, str, dict[str, Any]]:
        while True:
            found = await self.next()
            if found[2].get("kind") == kind:
                return found


async def test_a_watch_is_an_event_stream_resumable_by_last_event_id(
    web: httpx.AsyncClient,
) -> None:
    await register(web, "orders", "o-1")
    async with web.stream("GET", "/v1/services:watch", params={"service": "orders"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = Events(r)
        snapshot_id, _, snapshot = await events.next()
        assert snapshot["kind"] == "WATCH_RESPONSE_KIND_SNAPSHOT"
        assert [i["instanceId"] for i in snapshot["instances"]] == ["o-1"]
        assert int(snapshot_id) == int(snapshot["header"]["revision"])
    await register(web, "orders", "o-2")
    await register(web, "orders", "o-3")
    # Resumed after the snapshot: no snapshot, the two changes since.
    async with web.stream(
        "GET",
        "/v1/services:watch",
        params={"service": "orders"},
        headers={"Last-Event-ID": snapshot_id},
    ) as r:
        assert r.status_code == 200
        events = Events(r)
        seen: list[str] = []
        while len(seen) < 2:
            _, _, message = await events.next()
            assert message["kind"] != "WATCH_RESPONSE_KIND_SNAPSHOT"
            seen += [e["instance"]["instanceId"] for e in message.get("events", [])]
        assert seen == ["o-2", "o-3"]
    r = await web.get("/v1/services:watch", headers={"Last-Event-ID": "yesterday"})
    assert r.status_code == 400


async def test_a_stream_refused_at_its_start_gets_an_http_status(
    hub_factory: HubFactory, credentials: Path
) -> None:
    hub = await hub_factory(http_listen="127.0.0.1:0", credentials_file=credentials)
    async with httpx.AsyncClient(base_url=base(hub), timeout=10) as web:
        r = await web.get("/v1/config:watch")
        assert r.status_code == 401 and r.json()["code"] == 16


async def test_a_stream_whose_handler_refuses_its_request_gets_an_http_status(
    web: httpx.AsyncClient,
) -> None:
    # Admitted by the call path, refused by the handler's own checks: still a
    # plain HTTP error, not a 200 event stream carrying the status.
    r = await web.get("/v1/services:watch", params={"service": "Not_A_Label!"})
    assert r.status_code == 400 and r.json()["code"] == 3
    violations = detail(r.json(), "type.googleapis.com/google.rpc.BadRequest")["fieldViolations"]
    assert violations[0]["field"] == "service"
    r = await web.get("/v1/health:watch", params={"service": "Not_A_Label!"})
    assert r.status_code == 400 and r.json()["code"] == 3
    # A stream with nothing to send yet still answers 200 (its headers do not
    # wait for its first event).
    async with web.stream(
        "GET", "/v1/services:watch", params={"service": "idle"}, headers={"Last-Event-ID": "1"}
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")


async def test_a_credentials_reload_ends_the_event_streams_it_no_longer_allows(
    hub_factory: HubFactory, credentials: Path
) -> None:
    hub = await hub_factory(http_listen="127.0.0.1:0", credentials_file=credentials)
    async with httpx.AsyncClient(base_url=base(hub), timeout=10) as web:
        async with (
            web.stream("GET", "/v1/config:watch", headers=bearer("reader")) as revoked,
            web.stream("GET", "/v1/config:watch", headers=bearer("gateway")) as kept,
        ):
            assert revoked.status_code == kept.status_code == 200
            revoked_events, kept_events = Events(revoked), Events(kept)
            await revoked_events.next()
            await kept_events.next()
            changed = dict(TOKENS)
            del changed["reader"]
            await asyncio.to_thread(credentials.write_text, credentials_text(changed))
            assert hub.reload_credentials()
            _, event, status = await revoked_events.next()
            assert event == "status" and status["code"] == 16
            with pytest.raises(EOFError):
                await revoked_events.next()
            # Another caller's stream goes on (its next PROGRESS comes).
            _, event, message = await kept_events.next()
            assert event == "message" and message["kind"]
    # A caller that went away: its stream is ended on the hub (at its next
    # message at the latest), as a cancelled gRPC stream is.
    from tests.support.waiting import eventually

    await eventually(lambda: not hub.services.calls._streams)


async def test_a_body_over_the_grpc_receive_limit_is_refused(web: httpx.AsyncClient) -> None:
    big = {"host": "10.0.0.1", "port": 1, "metadata": {"k": "x" * MAX_REQUEST_BYTES}}
    r = await web.post("/v1/services/orders/instances", json=big)
    assert r.status_code == 413 and r.json()["code"] == 8
    r = await web.get("/v1/services")  # and the hub goes on
    assert r.status_code == 200


async def test_cors_is_off_unless_origins_are_configured(
    web: httpx.AsyncClient, hub_factory: HubFactory
) -> None:
    origin = {"Origin": "https://app.example"}
    r = await web.get("/v1/services", headers=origin)
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
    r = await web.options(
        "/v1/services", headers={**origin, "Access-Control-Request-Method": "GET"}
    )
    assert r.status_code != 204 and "access-control-allow-origin" not in r.headers

    hub = await hub_factory(http_listen="127.0.0.1:0", http_cors_origins=["https://app.example"])
    async with httpx.AsyncClient(base_url=base(hub), timeout=10) as cors:
        r = await cors.options(
            "/v1/services",
            headers={
                **origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, x-tenant-id",
            },
        )
        assert r.status_code == 204
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-tenant-id" in r.headers["access-control-allow-headers"]
        r = await cors.get("/v1/services", headers=origin)
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        r = await cors.get("/v1/services", headers={"Origin": "https://evil.example"})
        assert r.status_code == 403


async def test_a_hub_without_credentials_serves_http_on_loopback_only(tmp_path: Path) -> None:
    hub = Hub(HubConfig(listen="127.0.0.1:0", http_listen="0.0.0.0:0", data_dir=tmp_path))
    with pytest.raises(ValueError, match=r"refusing to serve HTTP on 0\.0\.0\.0:0"):
        await hub.start()


async def test_a_hub_without_credentials_answers_ip_and_local_host_names_only(
    web: httpx.AsyncClient,
) -> None:
    r = await web.get("/v1/services", headers={"Host": "attacker.example"})
    assert r.status_code == 421


def test_roles_cover_every_transcoded_method() -> None:
    """Every route's method is one the role table knows (a route to a method
    nobody may call would be a dead end, and one everybody may call a hole)."""
    from hub_server.auth.roles import RULES
    from hub_server.gateway.routes import hub_routes

    assert {r.grpc_method for r in hub_routes()} <= set(RULES)
    assert Role.ADMIN


async def test_workers_share_the_http_address(tmp_path: Path) -> None:
    """`serve --workers 2 --http-listen`: both workers answer on the one HTTP
    port (SO_REUSEPORT, as on gRPC)."""
    from hub_server.embedded_etcd import free_port
    from tests.support.waiting import eventually
    from tests.test_cli import Serve, _etcd_pids

    serve = Serve(tmp_path / "data")
    http = f"127.0.0.1:{free_port()}"
    try:
        await serve.start("--workers", "2", "--http-listen", http)
        answered: set[str] = set()

        async def both_workers_answer() -> bool:
            # A new connection each time: the kernel spreads them over the workers.
            async with httpx.AsyncClient(base_url=f"http://{http}", timeout=5) as web:
                try:
                    r = await web.get("/v1/cluster")
                except httpx.TransportError:
                    return False
            if r.status_code == 200:
                answered.add(r.json()["hubId"])
            return len(answered) == 2

        await eventually(both_workers_answer, timeout=30)
    finally:
        if serve.proc is not None and serve.proc.returncode is None:
            serve.proc.kill()
            await serve.proc.wait()
        for pid in _etcd_pids(serve.data_dir):
            os.kill(pid, signal.SIGKILL)


async def test_https_with_client_certificates_names_the_caller_as_grpc_does(
    hub_factory: HubFactory, tmp_path: Path
) -> None:
    import ssl

    from hub_server.auth.credentials import token_entry
    from tests.support.certs import CertificateAuthority

    ca = CertificateAuthority(tmp_path)
    server = ca.issue("hub.internal", server=True)
    gateway, stranger = ca.issue("gw.internal"), ca.issue("stranger")
    credentials = tmp_path / "certs.toml"
    credentials.write_text(
        '[[certificates]]\nsubject = "gw.internal"\nrole = "gateway"\n'
        + token_entry("ops", Role.ADMIN, secret("admin"))
    )
    hub = await hub_factory(
        http_listen="127.0.0.1:0",
        credentials_file=credentials,
        tls_cert=server.cert,
        tls_key=server.key,
        tls_client_ca=ca.cert,
    )
    assert base(hub).startswith("https://")

    def tls(cert: Any = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(ca.cert))
        if cert is not None:
            context.load_cert_chain(cert.cert, cert.key)
        return context

    async with httpx.AsyncClient(base_url=base(hub), verify=tls(gateway), timeout=10) as gw:
        assert (await gw.get("/v1/tenants")).status_code == 200  # a gateway may read
        r = await gw.post("/v1/tenants", json={"tenantId": "acme"})
        assert r.status_code == 403  # but not administer
        r = await gw.post("/v1/tenants", json={"tenantId": "acme"}, headers=bearer("admin"))
        assert r.status_code == 200, r.text  # a token wins over the certificate
    async with httpx.AsyncClient(base_url=base(hub), verify=tls(stranger), timeout=10) as nobody:
        r = await nobody.get("/v1/tenants")
        assert r.status_code == 401 and "'stranger' has no credentials" in r.json()["message"]
    async with httpx.AsyncClient(base_url=base(hub), verify=tls(), timeout=10) as no_cert:
        with pytest.raises(httpx.TransportError):  # refused in the handshake
            await no_cert.get("/v1/tenants")


def test_http_settings_that_do_not_go_together_are_refused_before_start() -> None:
    from hub_server.serve_settings import SettingsError, load_from

    with pytest.raises(SettingsError, match=r"http_listen .*port 0 .*workers"):
        load_from({"http_listen": "127.0.0.1:0", "workers": 2}, None)
    with pytest.raises(SettingsError, match=r"http_cors_origin .* needs http_listen"):
        load_from({"http_cors_origin": ["https://app.example"]}, None)
    settings = load_from(
        {
            "http_listen": "127.0.0.1:7080",
            "http_cors_origin": "https://a.example,https://b.example",
        },
        None,
    ).settings.hub_config()
    assert settings.http_listen == "127.0.0.1:7080"
    assert settings.http_cors_origins == ["https://a.example", "https://b.example"]


async def test_an_endpoints_stream_resumes_after_the_snapshot_it_holds(
    web: httpx.AsyncClient,
) -> None:
    """WatchEndpoints resumes by after_revision (the snapshot held): Last-Event-ID
    maps to it as is, so the resumed stream's first event is the next change."""
    await register(web, "quotes", "q-1")
    path = "/v1/services/quotes/endpoints:watch"
    async with web.stream("GET", path) as r:
        first_id, _, first = await Events(r).next()
        assert [e["instanceId"] for e in first["endpoints"]] == ["q-1"]
    async with web.stream("GET", path, headers={"Last-Event-ID": first_id}) as r:
        events = Events(r)
        waiting = asyncio.ensure_future(events.next())
        await asyncio.sleep(0.5)
        assert not waiting.done()  # nothing newer than what the caller holds
        await register(web, "quotes", "q-2")
        next_id, _, message = await asyncio.wait_for(waiting, 10)
        assert int(next_id) > int(first_id)
        assert sorted(e["instanceId"] for e in message["endpoints"]) == ["q-1", "q-2"]
