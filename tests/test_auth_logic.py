"""The pure parts of authorization: the role table against the protos, the
credentials file, binding a caller to its tenant and service, per-caller limits."""

from __future__ import annotations

import pytest
from aitrading.hub.v1 import (
    balancer_pb2,
    config_pb2,
    observability_pb2,
    registry_pb2,
)

from hub_server.auth.authorizer import Authorizer
from hub_server.auth.credentials import (
    ANONYMOUS,
    CredentialsError,
    Identity,
    hash_token,
    parse_credentials,
    token_entry,
)
from hub_server.auth.limits import CallerLimits
from hub_server.auth.roles import RULES, Role, Scope, rule_for
from hub_server.kernel.errors import PermissionDenied, TooManyCalls, Unauthenticated
from tests.support.auth import every_rpc
from tests.support.clock import FakeClock


def test_the_role_table_has_one_row_per_rpc() -> None:
    assert set(RULES) == set(every_rpc())


def test_admin_may_call_everything_and_unknown_methods_are_admin_only() -> None:
    assert all(Role.ADMIN in rule.roles for rule in RULES.values())
    assert rule_for("/aitrading.hub.v1.RegistryService/NoSuchCall").roles == {Role.ADMIN}


def test_readers_may_call_no_mutating_rpc() -> None:
    mutating = ("Register", "KeepAlive", "Deregister", "Set", "Create", "Update", "Delete")
    mutating += ("Allocate", "Release", "Report", "Override", "Rollback", "Restore", "Start")
    mutating += ("Pause", "Resume", "Abort")
    for method, rule in RULES.items():
        if method.rsplit("/", 1)[1].startswith(mutating):
            assert Role.READER not in rule.roles, method


# -- the credentials file -------------------------------------------------------


def test_credentials_round_trip_through_token_entry() -> None:
    text = token_entry("orders@acme", Role.SERVICE, "s3cret", tenant="acme", service="orders")
    text += token_entry("ops", Role.ADMIN, "root")
    text += '[[certificates]]\nsubject = "gw.internal"\nrole = "gateway"\n'
    creds = parse_credentials(text)
    assert creds.by_token_hash[hash_token("s3cret")] == Identity(
        "token:orders@acme", Role.SERVICE, "acme", "orders"
    )
    assert creds.by_token_hash[hash_token("root")].role is Role.ADMIN
    assert creds.by_subject["gw.internal"] == Identity("cert:gw.internal", Role.GATEWAY)
    assert "root" not in text  # only the hash is stored


SHA = "a" * 64


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("tokens = [", "not valid TOML"),
        ("[[users]]\nname='x'", "unknown section"),
        (f'[[tokens]]\nrole="admin"\nsha256="{SHA}"', "tokens[0].name"),
        (f'[[tokens]]\nname="a/b"\nrole="admin"\nsha256="{SHA}"', "tokens[0].name"),
        (f'[[tokens]]\nname="a\\n"\nrole="admin"\nsha256="{SHA}"', "tokens[0].name"),
        (f'[[tokens]]\nname="a"\nrole="admin"\nsha256="{SHA}\\n"', "tokens[0].sha256"),
        (f'[[tokens]]\nname="a"\nrole="root"\nsha256="{SHA}"', "tokens[0].role"),
        ('[[tokens]]\nname="a"\nrole="admin"\nsha256="abc"', "tokens[0].sha256"),
        (f'[[tokens]]\nname="a"\nrole="service"\nsha256="{SHA}"', "tokens[0].service"),
        (f'[[tokens]]\nname="a"\nrole="admin"\ntenant="t"\nsha256="{SHA}"', "bound to no"),
        (f'[[tokens]]\nname="a"\nrole="gateway"\nservice="s"\nsha256="{SHA}"', "bound to no"),
        (f'[[tokens]]\nname="a"\nrole="reader"\nservice="s"\nsha256="{SHA}"', "tenant only"),
        (
            f'[[tokens]]\nname="a"\nrole="reader"\ntenant="../x"\nsha256="{SHA}"',
            "tokens[0].tenant",
        ),
        (
            f'[[tokens]]\nname="a"\nrole="admin"\nsha256="{SHA}"\n'
            f'[[tokens]]\nname="b"\nrole="reader"\nsha256="{SHA}"',
            "same token as token:a",
        ),
        ('[[certificates]]\nrole="admin"', "certificates[0].subject"),
        ("tokens = [1]", "expected a table"),
    ],
)
def test_bad_credentials_files_name_the_entry(text: str, complaint: str) -> None:
    with pytest.raises(CredentialsError, match=complaint.replace("[", r"\[").replace("]", r"\]")):
        parse_credentials(text)


# -- authentication ---------------------------------------------------------------


def _authorizer(tmp_path, text: str, **kw) -> Authorizer:  # type: ignore[no-untyped-def]
    path = tmp_path / "credentials.toml"
    path.write_text(text)
    return Authorizer(path, **kw)


def test_without_credentials_everyone_is_the_anonymous_admin() -> None:
    assert Authorizer().authenticate([("authorization", "Bearer junk")]) is ANONYMOUS


def test_bearer_tokens_and_certificate_names(tmp_path) -> None:  # type: ignore[no-untyped-def]
    auth = _authorizer(
        tmp_path,
        token_entry("ops", Role.ADMIN, "root")
        + '[[certificates]]\nsubject = "gw.internal"\nrole = "gateway"\n',
        client_certs=True,
    )
    assert auth.authenticate([("authorization", "Bearer root")]).name == "token:ops"
    assert auth.authenticate([("authorization", "bearer  root ")]).name == "token:ops"
    assert auth.authenticate([], ["other", "gw.internal"]).name == "cert:gw.internal"
    with pytest.raises(Unauthenticated, match="unknown or revoked"):
        auth.authenticate([("authorization", "Bearer nope")])
    with pytest.raises(Unauthenticated, match="Bearer <token>"):
        auth.authenticate([("authorization", "Basic cm9vdA==")])
    with pytest.raises(Unauthenticated, match="'stranger' has no credentials"):
        auth.authenticate([], ["stranger"])
    with pytest.raises(Unauthenticated, match="requires credentials"):
        auth.authenticate([("x-tenant-id", "acme")])


def test_reload_swaps_credentials_and_keeps_them_when_the_file_is_bad(tmp_path) -> None:  # type: ignore[no-untyped-def]
    auth = _authorizer(tmp_path, token_entry("old", Role.READER, "one"))
    assert auth.credentials_file is not None
    auth.credentials_file.write_text(token_entry("new", Role.READER, "two"))
    assert auth.reload()
    assert auth.authenticate([("authorization", "Bearer two")]).name == "token:new"
    with pytest.raises(Unauthenticated):
        auth.authenticate([("authorization", "Bearer one")])
    auth.credentials_file.write_text("[[tokens]]\nname=")
    assert not auth.reload()
    assert auth.authenticate([("authorization", "Bearer two")]).name == "token:new"


# -- authorization ------------------------------------------------------------------

ORDERS = Identity("token:orders", Role.SERVICE, tenant="acme", service="orders")
ACME_READER = Identity("token:acme-ro", Role.READER, tenant="acme")
READER = Identity("token:ro", Role.READER)
GATEWAY = Identity("token:gw", Role.GATEWAY)

IDENTITIES = (ANONYMOUS, GATEWAY, ORDERS, ACME_READER, READER)


@pytest.mark.parametrize("identity", IDENTITIES, ids=lambda i: i.name)
def test_check_method_follows_the_table_for_every_rpc(identity: Identity) -> None:
    for method, rule in RULES.items():
        bound_out = rule.scope is Scope.FLEET and identity.tenant and not identity.trusts_headers
        allowed = identity.role in rule.roles and not bound_out
        if allowed:
            assert Authorizer.check_method(identity, method) is rule
        else:
            with pytest.raises(PermissionDenied):
                Authorizer.check_method(identity, method)


def test_health_and_reflection_are_open_to_everyone() -> None:
    Authorizer.check_method(READER, "/grpc.health.v1.Health/Check")
    Authorizer.check_method(ORDERS, "/grpc.reflection.v1alpha.ServerReflection/Info")


def _check(identity: Identity, method: str, request) -> None:  # type: ignore[no-untyped-def]
    Authorizer.check_request(identity, rule_for(f"/aitrading.hub.v1.{method}"), request)


def test_a_tenant_bound_caller_gets_its_tenant_and_may_name_no_other() -> None:
    req = config_pb2.GetTenantConfigRequest()
    _check(ORDERS, "ConfigService/GetTenantConfig", req)
    assert req.tenant_id == "acme"
    _check(
        ORDERS, "ConfigService/GetTenantConfig", config_pb2.GetTenantConfigRequest(tenant_id="acme")
    )
    with pytest.raises(PermissionDenied, match="not 'beta'"):
        _check(
            ORDERS,
            "ConfigService/GetTenantConfig",
            config_pb2.GetTenantConfigRequest(tenant_id="beta"),
        )
    alerts = observability_pb2.ListAlertsRequest()
    _check(ACME_READER, "ObservabilityService/ListAlerts", alerts)
    assert alerts.tenant_id == "acme"


def test_nested_tenant_fields_are_checked_too() -> None:
    ref = config_pb2.ConfigLayerRef(kind=config_pb2.CONFIG_LAYER_KIND_TENANT, tenant_id="beta")
    with pytest.raises(PermissionDenied):
        _check(
            ACME_READER, "ConfigService/GetConfigLayer", config_pb2.GetConfigLayerRequest(layer=ref)
        )
    ref.tenant_id = "acme"
    _check(ACME_READER, "ConfigService/GetConfigLayer", config_pb2.GetConfigLayerRequest(layer=ref))


def test_trusted_callers_and_unbound_readers_choose_any_tenant() -> None:
    for identity in (ANONYMOUS, GATEWAY, READER):
        req = config_pb2.GetTenantConfigRequest(tenant_id="beta")
        _check(identity, "ConfigService/GetTenantConfig", req)
        assert req.tenant_id == "beta"


def test_a_service_bound_caller_acts_for_its_own_service_only() -> None:
    req = registry_pb2.RegisterRequest(host="h", port=1)
    _check(ORDERS, "RegistryService/Register", req)
    assert req.service == "orders"
    with pytest.raises(PermissionDenied, match="bound to service 'orders', not 'payments'"):
        _check(
            ORDERS, "RegistryService/KeepAlive", registry_pb2.KeepAliveRequest(service="payments")
        )
    with pytest.raises(PermissionDenied):
        _check(
            ORDERS, "LoadBalancerService/ReportLoad", balancer_pb2.ReportLoadRequest(service="x")
        )
    # Discovery of other services is what a service is for.
    _check(ORDERS, "RegistryService/GetService", registry_pb2.GetServiceRequest(service="payments"))


# -- limits -----------------------------------------------------------------------


def test_rate_limit_is_a_token_bucket_per_caller() -> None:
    clock = FakeClock()
    limits = CallerLimits(10, 0, clock=clock)
    for _ in range(10):
        limits.take_call("a")
    with pytest.raises(TooManyCalls):
        limits.take_call("a")
    limits.take_call("b")  # another caller has its own bucket
    clock.now += 0.1  # one call's worth refills
    limits.take_call("a")
    with pytest.raises(TooManyCalls):
        limits.take_call("a")
    clock.now += 60  # never more than the burst
    for _ in range(10):
        limits.take_call("a")
    with pytest.raises(TooManyCalls):
        limits.take_call("a")


def test_no_rate_limit_when_zero() -> None:
    limits = CallerLimits(0, 0)
    for _ in range(100_000):
        limits.take_call("a")


def test_forgotten_callers_start_full() -> None:
    limits = CallerLimits(1, 0, clock=FakeClock())
    limits.MAX_CALLERS = 2
    limits.take_call("a")
    limits.take_call("b")
    limits.take_call("c")  # evicts a
    limits.take_call("a")
    assert len(limits._buckets) == 2


def test_open_streams_are_bounded_per_caller() -> None:
    limits = CallerLimits(0, 2)
    limits.open_stream("a")
    limits.open_stream("a")
    with pytest.raises(TooManyCalls, match="2 open streams"):
        limits.open_stream("a")
    limits.open_stream("b")
    limits.close_stream("a")
    limits.open_stream("a")
    limits.close_stream("a")
    limits.close_stream("a")
    assert "a" not in limits._streams


def test_the_readme_shows_the_current_role_table() -> None:
    from pathlib import Path

    from hub_server.auth.table import markdown

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    start = readme.index("<!-- role-table")
    start = readme.index("\n", start) + 1
    assert readme[start : readme.index("<!-- /role-table -->")] == markdown()
