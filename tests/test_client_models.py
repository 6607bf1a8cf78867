"""hub_client's typed models: StrEnums for the free-string options (a typo is
refused at the call, naming the field, before any RPC), Instance.health, py.typed."""

from __future__ import annotations

import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import hub_client
from hub_client import (
    HubClient,
    InvalidArgument,
    Protocol,
    QuotaResource,
    ResourceTier,
    Strategy,
    Tier,
)
from hub_server.app import Hub


def _refused(err: pytest.ExceptionInfo[InvalidArgument], field: str) -> None:
    assert [v.field for v in err.value.field_violations] == [field]
    assert field in str(err.value)


@pytest.mark.parametrize(
    ("field", "call"),
    [
        ("protocol", lambda c: c.register("s", host="h", port=1, protocol="htp")),
        ("resource_tier", lambda c: c.register("s", host="h", port=1, resource_tier="gold")),
        (
            "subscription_requirements",
            lambda c: c.register("s", host="h", port=1, subscription_requirements=["gold"]),
        ),
        ("strategy", lambda c: c.pick("s", strategy="fastest")),
        ("resource", lambda c: c.check_quota("api_calls", tenant="t")),
        ("resource", lambda c: c.allocate("api_calls", tenant="t")),
    ],
)
async def test_a_typo_is_refused_before_any_rpc(
    field: str, call: Callable[[HubClient], Awaitable[Any]]
) -> None:
    # Nothing listens on this address: any RPC would fail Unavailable, not InvalidArgument.
    async with HubClient("127.0.0.1:1", timeout=0.5) as c:
        with pytest.raises(InvalidArgument) as err:
            await call(c)
    _refused(err, field)


async def test_an_unknown_subscription_tier_is_refused() -> None:
    with pytest.raises(InvalidArgument) as err:
        HubClient("127.0.0.1:1", subscription_tier="gold")
    _refused(err, "subscription_tier")
    async with HubClient("127.0.0.1:1") as c:
        with pytest.raises(InvalidArgument) as err:
            c.with_context(subscription_tier="gold")
        _refused(err, "subscription_tier")


@pytest.mark.parametrize("typed", [True, False])
async def test_str_enums_and_equal_strings_both_work(hub: Hub, typed: bool) -> None:
    def v(member: Any) -> Any:
        return (
            member
            if typed
            else (member.name.lower() if isinstance(member, Strategy) else str(member))
        )

    async with HubClient(hub.address) as hub_c:
        c = hub_c.with_context(subscription_tier=v(Tier.PRO))
        reg = await c.register(
            "quotes",
            instance_id="q1",
            host="10.0.0.1",
            port=80,
            protocol=v(Protocol.GRPC),
            resource_tier=v(ResourceTier.PREMIUM),
            subscription_requirements=[v(Tier.PRO)],
        )
        assert reg.instance is not None
        inst = reg.instance
        assert (inst.protocol, inst.resource_tier) == ("grpc", "premium")
        assert inst.subscription_requirements == ("pro",)
        ep = await c.pick("quotes", strategy=v(Strategy.ROUND_ROBIN))
        assert ep.instance_id == "q1"
        await c.create_tenant("acme", tier=v(Tier.PRO))
        assert await c.check_quota(v(QuotaResource.API_CALLS_PER_HOUR), tenant="acme")


async def test_discover_fills_instance_health(client: HubClient) -> None:
    await client.register("prices", instance_id="a", host="10.0.0.1", port=81)
    [inst] = (await client.discover("prices")).instances
    assert inst.health is not None
    assert (inst.health.instance_id, inst.health.status) == ("a", "healthy")
    assert inst.health.check == "lease"


def test_the_package_ships_py_typed() -> None:
    package = Path(hub_client.__file__).parent
    assert (package / "py.typed").is_file()
    # hub_client ships in central-hub-client (tests/test_dists.py installs its wheel).
    project = package.parent / "packaging/central-hub-client/pyproject.toml"
    pyproject = tomllib.loads(project.read_text())
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["hub_client"]


async def test_watch_events_carry_instance_health(client: HubClient) -> None:
    await client.register("prices", instance_id="a", host="10.0.0.1", port=81)
    async for event in client.watch("prices"):
        assert event.instance.instance_id == "a"
        assert event.instance.health is not None
        assert event.instance.health.instance_id == "a"
        break
