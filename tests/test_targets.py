"""Several hubs as one gRPC target (hub_client/_private/targets.py): the rules
directly, then a client whose first replica is down."""

from __future__ import annotations

import pytest

from hub_client import HubClient
from hub_client._private.targets import channel_target
from hub_server.app import Hub
from hub_server.embedded_etcd import free_port
from tests.support.hubctl import hubctl

NAMES = {
    "hub-a": ["10.0.0.1", "fd00::1"],
    "hub-b": ["10.0.0.2"],
    "hub-c": ["10.0.0.3", "10.0.0.1"],
    "v6-only": ["fd00::2"],
}


def fake_resolve(host: str, port: int) -> list[str]:
    if host not in NAMES:
        raise ValueError(f"hub address {host!r} does not resolve")
    return NAMES[host]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        # One hub, or a target in gRPC's own syntax: untouched (no lookup).
        ("127.0.0.1:7000", "127.0.0.1:7000"),
        ("hub-a:7000", "hub-a:7000"),
        ("dns:///hub-a:7000", "dns:///hub-a:7000"),
        ("ipv4:10.0.0.1:7000,10.0.0.2:7000", "ipv4:10.0.0.1:7000,10.0.0.2:7000"),
        ("unix:/run/hub.sock", "unix:/run/hub.sock"),
        (["hub-a:7000"], "hub-a:7000"),
        ("hub-a:7000, ", "hub-a:7000"),
        # Several: IPv4 when every hub has an IPv4 address; addresses deduplicated.
        ("10.0.0.1:7000,10.0.0.2:7001", "ipv4:10.0.0.1:7000,10.0.0.2:7001"),
        (["hub-a:7000", "hub-b:7000"], "ipv4:10.0.0.1:7000,10.0.0.2:7000"),
        (["hub-a:7000", "hub-c:7000"], "ipv4:10.0.0.1:7000,10.0.0.3:7000"),
        (" hub-b:1 , 10.0.0.9:2 ", "ipv4:10.0.0.2:1,10.0.0.9:2"),
        # IPv6 when only that is common to all; literals in brackets.
        (["[fd00::9]:7000", "v6-only:7000"], "ipv6:[fd00::9]:7000,[fd00::2]:7000"),
        (["hub-a:7000", "v6-only:7000"], "ipv6:[fd00::1]:7000,[fd00::2]:7000"),
    ],
)
def test_targets(given: str | list[str], expected: str) -> None:
    assert channel_target(given, resolve=fake_resolve) == expected


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ([], "no hub address"),
        (",", "no hub address"),
        ("hub-a,hub-b:7000", "is not host:port"),
        ("hub-a:7000,hub-b:", "is not host:port"),
        ("hub-a:7000,hub-b:70000", "is not host:port"),
        ("hub-a:7000,:7000", "is not host:port"),
        ("hub-a:7000,nowhere:7000", "does not resolve"),
        ("hub-b:7000,v6-only:7000", "mix IPv4-only and IPv6-only"),
    ],
)
def test_bad_targets(given: str | list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        channel_target(given, resolve=fake_resolve)


def test_names_are_resolved_by_the_system() -> None:
    assert channel_target("localhost:1,127.0.0.2:2").startswith("ipv4:127.0.0.1:1,")


async def test_client_moves_past_a_replica_that_is_down(hub: Hub) -> None:
    dead = f"127.0.0.1:{free_port()}"
    async with HubClient([dead, hub.address], timeout=10) as client:
        await client.register("prices", instance_id="a", host="10.0.0.1", port=81)
        assert [i.instance_id for i in (await client.discover("prices")).instances] == ["a"]


async def test_hubctl_takes_several_targets(hub: Hub) -> None:
    dead = f"127.0.0.1:{free_port()}"
    listed = await hubctl(f"{dead},{hub.address}", "services", "list", "-o", "json")
    assert listed.code == 0, listed.err
    refused = await hubctl(f"{dead},nohost", "services", "list")
    assert refused.code == 2
    assert "--target: hub address 'nohost' is not host:port" in refused.err
