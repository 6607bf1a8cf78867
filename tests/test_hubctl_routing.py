"""hubctl policy get|set|delete and hubctl xds clients against live hubs (two
replicas with real ADS streams for the xDS listing)."""

from __future__ import annotations

from hub_client import HubClient, Strategy
from hub_server.app import Hub
from hub_server.xds.protocol import CLUSTER
from tests.support.ads import ads_stream
from tests.support.hubctl import hubctl, table_row
from tests.support.hubs import HubFactory, crash
from tests.support.waiting import eventually

# -- policy ------------------------------------------------------------------------


async def test_policy_get_set_delete(hub: Hub, client: HubClient) -> None:
    res = await hubctl(hub, "policy", "get", "quotes", "-o", "json")
    assert res.code == 0, res.err
    got = res.json()
    assert got["is_default"] and got["policy"]["strategy"] == "least_load"
    assert "default (none stored)" in (await hubctl(hub, "policy", "get", "quotes")).out

    res = await hubctl(
        hub, "policy", "set", "quotes", "--strategy", "round_robin", "--retries", "2",
        "--retry-on", "unavailable,internal", "--failure-percentage", "30", "-o", "json",
    )  # fmt: skip
    assert res.code == 0, res.err
    policy = res.json()["policy"]
    assert policy["strategy"] == "round_robin"
    assert policy["retry"]["num_retries"] == 2
    assert policy["retry"]["retry_on"] == ["unavailable", "internal"]
    assert policy["outlier"]["failure_percentage_threshold"] == 30

    # Options not given keep what is in force.
    res = await hubctl(hub, "policy", "set", "quotes", "--call-timeout-ms", "750")
    assert res.code == 0, res.err
    info = await client.routing_policy("quotes")
    assert info.policy.timeout_ms == 750 and info.policy.strategy is Strategy.ROUND_ROBIN
    assert info.policy.retry.num_retries == 2
    text = (await hubctl(hub, "policy", "get", "quotes")).out
    assert table_row(text, "strategy:")[1] == "round_robin"
    assert "750 ms" in text and "2 on unavailable,internal" in text

    # gRPC's own spelling of the codes is taken too.
    res = await hubctl(
        hub, "policy", "set", "quotes", "--retry-on", "UNAVAILABLE,DEADLINE_EXCEEDED", "-o", "json"
    )
    assert res.code == 0, res.err
    assert res.json()["policy"]["retry"]["retry_on"] == ["unavailable", "deadline-exceeded"]

    # --reset starts from the defaults.
    res = await hubctl(hub, "policy", "set", "quotes", "--reset", "--strategy", "weighted")
    assert res.code == 0, res.err
    info = await client.routing_policy("quotes")
    assert info.policy.strategy is Strategy.WEIGHTED and info.policy.timeout_ms == 0

    res = await hubctl(hub, "policy", "delete", "quotes")
    assert res.code == 0, res.err
    assert (await client.routing_policy("quotes")).is_default
    again = await hubctl(hub, "policy", "delete", "quotes")
    assert again.code == 4 and "NotFound" in again.err


async def test_policy_set_refuses_out_of_range_values(hub: Hub, client: HubClient) -> None:
    res = await hubctl(hub, "policy", "set", "quotes", "--retries", "9")
    assert res.code == 1
    assert "policy.retry.num_retries" in res.err and "between 0 and 4" in res.err
    res = await hubctl(hub, "policy", "set", "quotes", "--retry-on", "teapot")
    assert res.code == 1 and "policy.retry.retry_on[0]" in res.err
    bad = await hubctl(hub, "policy", "set", "quotes", "--strategy", "fastest")
    assert bad.code == 2  # not a choice
    assert (await client.routing_policy("quotes")).is_default


# -- xds clients -------------------------------------------------------------------


async def test_xds_clients_of_every_replica(hub_factory: HubFactory) -> None:
    one, two = await hub_factory(), await hub_factory()
    async with HubClient(one.address, timeout=5) as admin:
        await admin.create_tenant("acme", tier="pro")
        await admin.register("pricing", host="127.0.0.1", port=7001)
    async with (
        ads_stream(one, "orders-1", tenant_id="acme", tier="pro"),
        ads_stream(two, "orders-2", nack="no thanks"),
    ):

        async def both_settled() -> bool:
            res = await hubctl(one, "xds", "clients", "-o", "json")
            clients = {c["node_id"]: c for c in res.json()["clients"]}
            return (
                set(clients) == {"orders-1", "orders-2"}
                and clients["orders-1"]["subscriptions"][0]["acked_version"] != ""
                and clients["orders-2"]["last_nack"] is not None
            )

        await eventually(both_settled, timeout=15)
        res = await hubctl(one, "xds", "clients", "-o", "json")
        assert res.code == 0, res.err
        clients = {c["node_id"]: c for c in res.json()["clients"]}
        first, second = clients["orders-1"], clients["orders-2"]
        assert (first["hub_id"], second["hub_id"]) == (one.hub_id, two.hub_id)
        assert (first["tenant_id"], first["tier"]) == ("acme", "pro")
        assert first["subscriptions"][0]["type"] == CLUSTER
        assert first["subscriptions"][0]["resources"] == ["pricing"]
        assert first["last_nack"] is None
        assert second["last_nack"]["error"] == "no thanks"
        assert second["subscriptions"][0]["acked_version"] == ""

        text = await hubctl(one, "xds", "clients")
        row = table_row(text.out, "orders-2")
        assert row[1] == two.hub_id and "no thanks" in text.out

        # A replica that does not answer is named, and the exit code says so.
        await crash(two)
        res = await hubctl(one, "--timeout", "2", "xds", "clients", "-o", "json")
        if res.code == 3:  # its presence record has not expired yet
            assert [u["hub_id"] for u in res.json()["unanswered"]] == [two.hub_id]
        else:
            assert res.code == 0, res.err
        assert [c["node_id"] for c in res.json()["clients"]] == ["orders-1"]


async def test_pick_without_strategy_follows_the_policy(hub: Hub, client: HubClient) -> None:
    for i in range(3):
        await client.register("feed", instance_id=f"f{i}", host="10.0.0.1", port=8000 + i)
    await client.report_load("feed", "f0", 0.9)
    await client.report_load("feed", "f1", 0.1)
    await client.report_load("feed", "f2", 0.5)

    async def picked() -> str:
        res = await hubctl(hub, "pick", "feed", "-o", "json")
        assert res.code == 0, res.err
        assert res.json()["strategy"] == "policy"
        return str(res.json()["instance_id"])

    async def least_loaded() -> bool:
        return await picked() == "f1"

    await eventually(least_loaded)  # no policy: least load
    res = await hubctl(hub, "policy", "set", "feed", "--strategy", "round_robin")
    assert res.code == 0, res.err
    assert {await picked() for _ in range(6)} == {"f0", "f1", "f2"}
    assert "the service's routing policy" in (await hubctl(hub, "pick", "feed")).out
