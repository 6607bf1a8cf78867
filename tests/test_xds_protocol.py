"""The ADS protocol state machine of one stream (hub_server/xds/protocol.py),
driven directly: versions and nonces, ACK/NACK, stale nonces, wildcards, full
state, subscriptions, coalescing and content comparison."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from hub_server.kernel.errors import InvalidArgument
from hub_server.xds.protocol import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    MAX_NAME_LENGTH,
    MAX_NAMES,
    ROUTE,
    TYPES,
    Received,
    StreamProtocol,
    Subscription,
    node_claims,
    node_metadata,
)


def request(
    type_url: str,
    names: tuple[str, ...] = (),
    *,
    nonce: str = "",
    version: str = "",
    error: str | None = None,
    node: base_pb2.Node | None = None,
) -> discovery_pb2.DiscoveryRequest:
    r = discovery_pb2.DiscoveryRequest(
        type_url=type_url, resource_names=names, response_nonce=nonce, version_info=version
    )
    if error is not None:
        r.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    if node is not None:
        r.node.CopyFrom(node)
    return r


def sent_names(response: discovery_pb2.DiscoveryResponse) -> list[str]:
    return [a.value.decode() for a in response.resources]


def answer(
    p: StreamProtocol, type_url: str, resources: dict[str, bytes], revision: int = 7
) -> discovery_pb2.DiscoveryResponse | None:
    out = p.respond(type_url, resources, revision)
    return None if out is None else out[0]


def res(*names: str, tag: str = "") -> dict[str, bytes]:
    """Resources whose serialized form is their name (plus a tag to change them)."""
    return {n: (n + tag).encode() for n in names}


def ack(p: StreamProtocol, r: discovery_pb2.DiscoveryResponse, names: tuple[str, ...] = ()):
    return p.receive(request(r.type_url, names, nonce=r.nonce, version=r.version_info), 1.0)


# -- first requests, wildcards and full state -----------------------------------


def test_first_lds_request_with_no_names_is_a_wildcard_answered_with_full_state() -> None:
    p = StreamProtocol()
    assert p.subscription(LISTENER) is None
    assert p.due() == []
    assert p.receive(request(LISTENER), 1.0) is Received.FIRST
    assert p.subscription(LISTENER) == Subscription(True, frozenset())
    assert p.due() == [LISTENER]
    r = answer(p, LISTENER, res("a", "b"))
    assert r is not None
    assert r.type_url == LISTENER
    assert sent_names(r) == ["a", "b"]
    assert all(a.type_url == LISTENER for a in r.resources)
    assert r.version_info and r.nonce


def test_first_request_naming_resources_subscribes_to_those_only() -> None:
    p = StreamProtocol()
    p.receive(request(CLUSTER, ("a",)), 1.0)
    assert p.subscription(CLUSTER) == Subscription(False, frozenset({"a"}))
    assert p.interested(CLUSTER, "a")
    assert not p.interested(CLUSTER, "b")
    assert not p.interested(LISTENER, "a")


def test_an_explicit_star_is_a_wildcard_even_with_names() -> None:
    p = StreamProtocol()
    p.receive(request(CLUSTER, ("*", "a")), 1.0)
    assert p.subscription(CLUSTER) == Subscription(True, frozenset({"a"}))
    assert p.interested(CLUSTER, "anything")


@pytest.mark.parametrize("type_url", [ROUTE, ENDPOINT])
def test_an_empty_first_rds_or_eds_request_is_no_wildcard(type_url: str) -> None:
    p = StreamProtocol()
    p.receive(request(type_url), 1.0)
    assert p.subscription(type_url) == Subscription(False, frozenset())
    assert not p.interested(type_url, "a")


def test_an_empty_list_after_the_first_request_unsubscribes_rather_than_wildcards() -> None:
    p = StreamProtocol()
    p.receive(request(CLUSTER, ("a",)), 1.0)
    r = answer(p, CLUSTER, res("a"))
    assert r is not None
    ack(p, r, ())
    assert p.subscription(CLUSTER) == Subscription(False, frozenset())


def test_a_wildcard_stays_a_wildcard_while_the_client_keeps_sending_empty_lists() -> None:
    p = StreamProtocol()
    p.receive(request(LISTENER), 1.0)
    r = answer(p, LISTENER, res("a"))
    assert r is not None
    ack(p, r, ())
    assert p.subscription(LISTENER) == Subscription(True, frozenset())
    # and a name list replaces it
    p.invalidate(2.0)
    r = answer(p, LISTENER, res("a", "b"))
    assert r is not None
    ack(p, r, ("b",))
    assert p.subscription(LISTENER) == Subscription(False, frozenset({"b"}))


def test_full_state_answers_hold_every_resource_and_drop_deleted_ones() -> None:
    p = StreamProtocol()
    p.receive(request(LISTENER), 1.0)
    r = answer(p, LISTENER, res("a", "b"))
    assert r is not None
    ack(p, r)
    p.invalidate(2.0)
    r = answer(p, LISTENER, res("a", "b", "c"))
    assert r is not None and sent_names(r) == ["a", "b", "c"]  # not only "c"
    ack(p, r)
    p.invalidate(3.0)
    r = answer(p, LISTENER, res("a", "c"))
    assert r is not None and sent_names(r) == ["a", "c"]  # "b" deleted


def test_rds_and_eds_answers_hold_only_changed_or_newly_subscribed_resources() -> None:
    p = StreamProtocol()
    p.receive(request(ENDPOINT, ("a", "b")), 1.0)
    r = answer(p, ENDPOINT, res("a", "b"))
    assert r is not None and sent_names(r) == ["a", "b"]
    ack(p, r, ("a", "b"))
    p.invalidate(2.0)
    r = answer(p, ENDPOINT, {**res("a"), **res("b", tag="!")})
    assert r is not None and sent_names(r) == ["b!"]
    ack(p, r, ("a", "b", "c"))  # subscribes to c too
    assert p.due() == [ENDPOINT]
    r = answer(p, ENDPOINT, {**res("a"), **res("b", tag="!"), **res("c")})
    assert r is not None and sent_names(r) == ["c"]


# -- nonces, versions, ACK and NACK ---------------------------------------------


def test_every_response_has_a_new_nonce_and_version() -> None:
    p = StreamProtocol()
    p.receive(request(LISTENER), 1.0)
    p.receive(request(CLUSTER), 1.0)
    seen_nonces, seen_versions = set(), set()
    for i in range(3):
        for type_url in (LISTENER, CLUSTER):
            p.invalidate(float(i))
            r = answer(p, type_url, res("a", tag=str(i)), revision=10 + i)
            assert r is not None
            assert r.nonce not in seen_nonces
            seen_nonces.add(r.nonce)
            seen_versions.add((type_url, r.version_info))
            assert r.version_info.startswith(f"{10 + i}.")
            ack(p, r)
    assert len(seen_versions) == 6


def test_an_ack_records_the_version_and_allows_the_next_push() -> None:
    p = StreamProtocol()
    p.receive(request(CLUSTER, ("a",)), 1.0)
    r = answer(p, CLUSTER, res("a"))
    assert r is not None
    assert p.status(stream_id=1, tenant_id="", tier="", peer="", connected_at=0).acked_version == {}
    assert ack(p, r, ("a",)) is Received.ACK
    status = p.status(stream_id=1, tenant_id="t", tier="pro", peer="ipv4:1", connected_at=5.0)
    assert status.acked_version == {CLUSTER: r.version_info}
    assert status.subscribed == {CLUSTER: ["a"]}
    assert status.last_nack is None
    assert (status.tenant_id, status.tier, status.peer, status.connected_at) == (
        "t",
        "pro",
        "ipv4:1",
        5.0,
    )


def test_a_nack_keeps_the_last_good_version_is_recorded_and_is_not_resent() -> None:
    p = StreamProtocol()
    p.receive(request(CLUSTER, ("a",)), 1.0)
    good = answer(p, CLUSTER, res("a"))
    assert good is not None
    ack(p, good, ("a",))
    p.invalidate(2.0)
    bad = answer(p, CLUSTER, res("a", tag="bad"))
    assert bad is not None
    nack = request(CLUSTER, ("a",), nonce=bad.nonce, version=good.version_info, error="no router")
    assert p.receive(nack, 42.0) is Received.NACK
    status = p.status(stream_id=1, tenant_id="", tier="", peer="", connected_at=0)
    assert status.acked_version == {CLUSTER: good.version_info}
    assert status.last_nack is not None
    assert status.last_nack.type_url == CLUSTER
    assert status.last_nack.version == good.version_info
    assert status.last_nack.rejected_version == bad.version_info
    assert status.last_nack.nonce == bad.nonce
    assert status.last_nack.error == "no router"
    assert status.last_nack.at == 42.0
    # The same rejected content is not sent again, even when asked to look...
    p.invalidate(3.0)
    assert answer(p, CLUSTER, res("a", tag="bad")) is None
    # ...but a change is, and its ACK moves the client on.
    p.invalidate(4.0)
    fixed = answer(p, CLUSTER, res("a", tag="fixed"))
    assert fixed is not None
    ack(p, fixed, ("a",))
    status = p.status(stream_id=1, tenant_id="", tier="", peer="", connected_at=0)
    assert status.acked_version == {CLUSTER: fixed.version_info}
    assert status.last_nack is not None  # still shown: the last one there was


def test_a_nack_message_is_bounded() -> None:
    p = StreamProtocol()
    p.receive(request(CLUSTER, ("a",)), 1.0)
    r = answer(p, CLUSTER, res("a"))
    assert r is not None
    p.receive(request(CLUSTER, ("a",), nonce=r.nonce, error="x" * 100_000), 1.0)
    assert p.last_nack is not None and len(p.last_nack.error) == 1024


def test_stale_nonces_are_ignored() -> None:
    p = StreamProtocol()
    p.receive(request(CLUSTER, ("a",)), 1.0)
    first = answer(p, CLUSTER, res("a"))
    assert first is not None
    ack(p, first, ("a",))
    p.invalidate(2.0)
    second = answer(p, CLUSTER, res("a", tag="2"))
    assert second is not None
    # A request with the first nonce (sent before the client saw the second
    # response) neither acknowledges nor changes the subscription.
    stale = request(CLUSTER, ("a", "b"), nonce=first.nonce, version=first.version_info)
    assert p.receive(stale, 3.0) is Received.STALE
    assert p.subscription(CLUSTER) == Subscription(False, frozenset({"a"}))
    p.invalidate(3.0)
    assert p.due() == []  # still awaiting the second's ACK
    garbage = request(CLUSTER, ("a",), nonce="no-such-nonce", error="forged")
    assert p.receive(garbage, 3.0) is Received.STALE
    assert p.last_nack is None
    assert ack(p, second, ("a", "b")) is Received.ACK
    assert p.subscription(CLUSTER) == Subscription(False, frozenset({"a", "b"}))


def test_types_are_independent_on_one_stream() -> None:
    p = StreamProtocol()
    p.receive(request(LISTENER, ("a",)), 1.0)
    p.receive(request(CLUSTER, ("a",)), 1.0)
    lds = answer(p, LISTENER, res("a"))
    cds = answer(p, CLUSTER, res("a"))
    assert lds is not None and cds is not None
    # The listener nonce does not acknowledge the cluster response.
    assert p.receive(request(CLUSTER, ("a",), nonce=lds.nonce), 1.0) is Received.STALE
    ack(p, lds, ("a",))
    p.invalidate(2.0)
    assert p.due() == [LISTENER]  # the cluster answer still awaits its ACK


# -- pushes: coalescing and content ---------------------------------------------


def test_changes_while_a_response_is_unacknowledged_make_one_push() -> None:
    p = StreamProtocol()
    p.receive(request(ENDPOINT, ("a",)), 1.0)
    r = answer(p, ENDPOINT, res("a"))
    assert r is not None
    for t in (2.0, 3.0, 4.0):
        p.invalidate(t)
        assert p.due() == []
    ack(p, r, ("a",))
    assert p.due() == [ENDPOINT]
    out = p.respond(ENDPOINT, res("a", tag="3"), 9)
    assert out is not None
    pushed, since = out
    assert sent_names(pushed) == ["a3"]
    assert since == 2.0  # the oldest change it carries
    assert p.due() == []


def test_nothing_is_sent_when_nothing_the_client_holds_changed() -> None:
    p = StreamProtocol()
    p.receive(request(LISTENER), 1.0)
    p.receive(request(ENDPOINT, ("a",)), 1.0)
    for type_url in (LISTENER, ENDPOINT):
        r = answer(p, type_url, res("a"))
        assert r is not None
        ack(p, r, ("a",) if type_url == ENDPOINT else ())
    p.invalidate(2.0)
    assert sorted(p.due()) == sorted([LISTENER, ENDPOINT])
    assert answer(p, LISTENER, res("a")) is None
    assert answer(p, ENDPOINT, res("a")) is None
    assert p.due() == []


def test_a_change_seen_while_computing_is_not_lost() -> None:
    p = StreamProtocol()
    p.receive(request(CLUSTER, ("a",)), 1.0)
    r = answer(p, CLUSTER, res("a"))
    assert r is not None
    ack(p, r, ("a",))
    p.invalidate(2.0)
    assert p.due() == [CLUSTER]
    # the loop computes; it answers, then a change arrives
    assert answer(p, CLUSTER, res("a")) is None
    p.invalidate(3.0)
    assert p.due() == [CLUSTER]


def test_unsubscribing_sends_nothing_and_resubscribing_sends_again() -> None:
    p = StreamProtocol()
    p.receive(request(ENDPOINT, ("a", "b")), 1.0)
    r = answer(p, ENDPOINT, res("a", "b"))
    assert r is not None
    ack(p, r, ("a",))  # drops b
    assert p.due() == []
    p.invalidate(2.0)
    assert answer(p, ENDPOINT, res("a")) is None
    p.receive(request(ENDPOINT, ("a", "b"), nonce=r.nonce), 3.0)  # same nonce: still current
    assert p.due() == [ENDPOINT]
    r2 = answer(p, ENDPOINT, res("a", "b"))
    assert r2 is not None and sent_names(r2) == ["b"]


def test_shrinking_a_full_state_subscription_needs_no_push() -> None:
    p = StreamProtocol()
    p.receive(request(CLUSTER, ("a", "b")), 1.0)
    r = answer(p, CLUSTER, res("a", "b"))
    assert r is not None
    ack(p, r, ("a",))
    assert p.due() == []
    p.invalidate(2.0)
    assert answer(p, CLUSTER, res("a")) is None


def test_an_empty_nonce_after_an_answer_is_stale() -> None:
    p = StreamProtocol()
    p.receive(request(ENDPOINT, ("a",)), 1.0)
    r = answer(p, ENDPOINT, res("a"))
    assert r is not None
    # Asking again from scratch on the same stream is ignored (no amplification:
    # one answer per ACK at most).
    assert p.receive(request(ENDPOINT, ("a", "b")), 2.0) is Received.STALE
    assert p.subscription(ENDPOINT) == Subscription(False, frozenset({"a"}))
    assert p.due() == []
    ack(p, r, ("a",))
    assert p.due() == []


def test_the_subscription_may_change_before_the_first_answer() -> None:
    p = StreamProtocol()
    p.receive(request(ROUTE, ("a",)), 1.0)
    assert p.respond(ROUTE, {}, 3) is None  # the hub has no route "a": no answer yet
    assert p.receive(request(ROUTE, ("a", "b")), 2.0) is Received.FIRST
    assert p.subscription(ROUTE) == Subscription(False, frozenset({"a", "b"}))
    assert p.due() == [ROUTE]
    r = answer(p, ROUTE, res("b"))
    assert r is not None and sent_names(r) == ["b"]


def test_a_first_full_state_request_is_answered_even_when_nothing_exists() -> None:
    p = StreamProtocol()
    p.receive(request(LISTENER, ("missing",)), 1.0)
    r = answer(p, LISTENER, {})
    assert r is not None and list(r.resources) == []
    ack(p, r, ("missing",))
    p.invalidate(2.0)
    assert answer(p, LISTENER, {}) is None  # once is enough


def test_a_missing_rds_or_eds_resource_is_not_answered_until_it_exists() -> None:
    p = StreamProtocol()
    p.receive(request(ROUTE, ("a",)), 5.0)
    out = p.respond(ROUTE, {}, 3)  # the hub has no such route (yet)
    assert out is None
    assert p.due() == []
    p.invalidate(6.0)
    out = p.respond(ROUTE, res("a"), 4)
    assert out is not None and out[1] == 6.0


# -- what the client may not do -------------------------------------------------


def test_unknown_type_urls_are_ignored_without_harming_the_stream() -> None:
    p = StreamProtocol()
    unknown = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
    assert p.receive(request(unknown, ("x",)), 1.0) is Received.UNKNOWN_TYPE
    assert p.receive(request("garbage", ("x",)), 1.0) is Received.UNKNOWN_TYPE
    assert p.due() == []
    assert p.subscription(unknown) is None
    assert p.receive(request(LISTENER), 1.0) is Received.FIRST
    assert p.due() == [LISTENER]
    assert set(
        p.status(stream_id=1, tenant_id="", tier="", peer="", connected_at=0).subscribed
    ) == {LISTENER}


def test_a_request_without_type_url_is_refused() -> None:
    with pytest.raises(InvalidArgument) as e:
        StreamProtocol().receive(request(""), 1.0)
    assert e.value.violations[0].field == "type_url"


def test_too_many_or_too_long_names_are_refused() -> None:
    p = StreamProtocol()
    with pytest.raises(InvalidArgument) as e:
        p.receive(request(ENDPOINT, tuple(f"n{i}" for i in range(MAX_NAMES + 1))), 1.0)
    assert e.value.violations[0].field == "resource_names"
    with pytest.raises(InvalidArgument):
        p.receive(request(ENDPOINT, ("x" * (MAX_NAME_LENGTH + 1),)), 1.0)
    assert p.subscription(ENDPOINT) is None  # nothing was kept
    p.receive(request(ENDPOINT, tuple(f"n{i}" for i in range(MAX_NAMES))), 1.0)


def test_all_four_types_are_served() -> None:
    assert set(TYPES) == {LISTENER, ROUTE, CLUSTER, ENDPOINT}


# -- the node --------------------------------------------------------------------


def test_node_claims_read_tenant_and_tier_from_metadata() -> None:
    node = base_pb2.Node(id="orders-7", metadata=node_metadata("acme", "Pro"))
    claims = node_claims(node)
    assert (claims.node_id, claims.tenant_id, claims.tier) == ("orders-7", "acme", "pro")
    assert node_claims(base_pb2.Node()) == node_claims(base_pb2.Node(id=""))
    assert node_claims(base_pb2.Node()).tenant_id == ""


@pytest.mark.parametrize(
    "metadata, field",
    [
        ({"tenant_id": 7}, "node.metadata.tenant_id"),
        ({"tenant_id": "a/b"}, "node.metadata.tenant_id"),
        ({"tier": ["pro"]}, "node.metadata.tier"),
        ({"tier": "x" * 500}, "node.metadata.tier"),
    ],
)
def test_garbage_node_metadata_is_refused_naming_the_field(metadata: dict, field: str) -> None:
    node = base_pb2.Node(id="n")
    node.metadata.update(metadata)
    with pytest.raises(InvalidArgument) as e:
        node_claims(node)
    assert e.value.violations[0].field == field
    p = StreamProtocol()
    with pytest.raises(InvalidArgument):
        p.receive(request(LISTENER, node=node), 1.0)
    assert p.node is None


def test_the_first_node_sent_is_the_streams_node() -> None:
    p = StreamProtocol()
    p.receive(request(LISTENER, node=base_pb2.Node(id="first")), 1.0)
    p.receive(request(CLUSTER, node=base_pb2.Node(id="second")), 1.0)
    assert p.node is not None and p.node.id == "first"
    assert p.status(stream_id=1, tenant_id="", tier="", peer="", connected_at=0).node_id == "first"


def test_node_id_length_is_bounded() -> None:
    with pytest.raises(InvalidArgument) as e:
        node_claims(base_pb2.Node(id="n" * 257))
    assert e.value.violations[0].field == "node.id"
