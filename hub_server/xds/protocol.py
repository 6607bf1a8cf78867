"""The aggregated discovery protocol (state of the world, v3) of one ADS stream,
as a pure state machine: no I/O, no clock of its own, no resources of its own.

The stream loop (hub_server/xds/stream.py) feeds it the client's requests
(``receive``) and the hub's changes (``invalidate``), asks which types need an
answer (``due``), computes the resources of the names it says the client
subscribed (``subscription``) and hands them back (``respond``), which returns
the response to send, or None when nothing the client holds would change.

The rules, per type URL (each type is independent on an aggregated stream):

- Every response has a new nonce. A request that repeats the last nonce sent is
  an ACK, or a NACK when it carries ``error_detail``: the client stays on its
  last good version, which is recorded for operators; the rejected content is
  not sent again (only a later change is). A request with an older nonce is
  stale and ignored: the client repeats its subscription with the current one.
- While a response is unanswered, no other response of that type is sent:
  every change meanwhile is coalesced into one push after the ACK or NACK.
- A resource is sent again only when its serialized content changed. Listener
  and Cluster answers hold the full state (a resource missing from one is a
  deletion to the client); RouteConfiguration and ClusterLoadAssignment answers
  hold only the resources that changed or were newly subscribed.
- An empty name list is a wildcard only on the first Listener or Cluster request
  (or "*" names it explicitly); later it unsubscribes from everything.
- A type URL the hub does not serve is ignored (as go-control-plane and istiod
  do): the stream and the other types go on.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, struct_pb2

from hub_server.kernel.errors import InvalidArgument
from hub_server.kernel.validation import is_key_name
from hub_server.xds.clients import XdsClientStatus, XdsNack

_PREFIX = "type.googleapis.com/"
LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
TYPES = (LISTENER, ROUTE, CLUSTER, ENDPOINT)
# Answers of these types hold every subscribed resource (a missing one is a deletion).
FULL_STATE = frozenset((LISTENER, CLUSTER))
WILDCARD = "*"

# Bounds on what one client may make the hub keep. A gRPC client subscribes to
# a handful of names per target; these leave room for an Envoy with thousands.
MAX_NAMES = 10_000
MAX_NAME_LENGTH = 256
MAX_ERROR_LENGTH = 1024  # of a NACK's message, as kept for operators
MAX_NODE_ID_LENGTH = 256

# Node metadata keys that name the client's tenant and tier, honoured only on a
# hub without credentials (with credentials, both come from the certificate).
NODE_TENANT = "tenant_id"
NODE_TIER = "tier"


class Received(enum.Enum):
    """What a request was, for the stream loop's bookkeeping and the tests."""

    FIRST = "first"  # a request of its type before any answer of that type
    ACK = "ack"
    NACK = "nack"
    STALE = "stale"  # an older nonce: ignored
    UNKNOWN_TYPE = "unknown_type"  # a type the hub does not serve: ignored


@dataclass(slots=True)
class _TypeState:
    wildcard: bool = False
    names: frozenset[str] = frozenset()
    nonce: str = ""  # of the last response sent
    version: str = ""  # of the last response sent
    acked_version: str = ""
    awaiting: bool = False  # a response sent and not yet ACKed or NACKed
    dirty: bool = True  # the hub's state may differ from what was sent
    dirty_since: float | None = None  # when the oldest unsent change was seen
    responses: int = 0
    # A full-state type is answered once even when empty: the client learns at
    # once that what it asked for does not exist.
    answered: bool = False
    # name -> serialized resource, as last sent (what "changed" is compared with)
    sent: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Subscription:
    """What a type's answer must cover: every resource the hub has for the
    client (wildcard), else the named ones."""

    wildcard: bool
    names: frozenset[str]


@dataclass(frozen=True, slots=True)
class NodeClaims:
    """What a node says about itself (trusted only on a hub without credentials)."""

    node_id: str
    tenant_id: str
    tier: str


def node_claims(node: base_pb2.Node) -> NodeClaims:
    """The node's id, and the tenant and tier in its metadata; raises
    InvalidArgument naming the field when they are not plain names."""
    if len(node.id) > MAX_NODE_ID_LENGTH:
        raise InvalidArgument.single("node.id", f"must be at most {MAX_NODE_ID_LENGTH} characters")
    claims = {}
    for key in (NODE_TENANT, NODE_TIER):
        value = node.metadata.fields.get(key)
        if value is None:
            claims[key] = ""
            continue
        if value.WhichOneof("kind") != "string_value" or (
            value.string_value and not is_key_name(value.string_value)
        ):
            raise InvalidArgument.single(
                f"node.metadata.{key}", "must be a string of letters, digits, '.', '_', ':' or '-'"
            )
        claims[key] = value.string_value
    return NodeClaims(node.id, claims[NODE_TENANT], claims[NODE_TIER].lower())


def node_metadata(tenant_id: str = "", tier: str = "") -> struct_pb2.Struct:
    """The node metadata that names a tenant and tier (what a bootstrap writes)."""
    metadata = struct_pb2.Struct()
    if tenant_id:
        metadata[NODE_TENANT] = tenant_id
    if tier:
        metadata[NODE_TIER] = tier
    return metadata


class StreamProtocol:
    """One ADS stream's protocol state (see the module's doc)."""

    def __init__(self) -> None:
        self._types: dict[str, _TypeState] = {}
        self._nonces = itertools.count(1)
        self.node: base_pb2.Node | None = None
        self.last_nack: XdsNack | None = None

    # -- the client's side -------------------------------------------------

    def receive(self, request: discovery_pb2.DiscoveryRequest, now: float) -> Received:
        """Takes one request; raises InvalidArgument (naming the field) for one
        no client may send. ``now``: the wall clock, for the NACK record."""
        type_url = request.type_url
        if not type_url:
            raise InvalidArgument.single("type_url", "is required on an aggregated stream")
        if self.node is None and request.HasField("node"):
            node_claims(request.node)  # refused before it is kept
            self.node = request.node
        if type_url not in TYPES:
            return Received.UNKNOWN_TYPE
        names = _checked_names(request.resource_names)
        state = self._types.get(type_url)
        nonce = request.response_nonce
        if state is None:
            state = self._types[type_url] = _TypeState()
            state.wildcard = type_url in FULL_STATE and (not names or WILDCARD in names)
            state.names = names - {WILDCARD}
            state.dirty_since = now
            return Received.FIRST
        if nonce != state.nonce:
            # Not about the last answer (an older nonce, or none once there was
            # an answer): ignored, as go-control-plane does; the client repeats
            # its subscription when it answers the last one.
            return Received.STALE
        if not nonce:  # no answer yet: the subscription changes before the first
            self._subscribe(state, names, now)
            return Received.FIRST
        state.awaiting = False
        received = Received.ACK
        if request.HasField("error_detail"):
            received = Received.NACK
            self.last_nack = XdsNack(
                type_url=type_url,
                version=request.version_info,
                rejected_version=state.version,
                nonce=nonce,
                error=request.error_detail.message[:MAX_ERROR_LENGTH],
                at=now,
            )
        else:
            state.acked_version = state.version
        self._subscribe(state, names, now)
        return received

    def _subscribe(self, state: _TypeState, names: frozenset[str], now: float) -> None:
        if WILDCARD in names:
            wildcard, names = True, names - {WILDCARD}
        else:
            # An empty list keeps a wildcard from the first request (the legacy
            # wildcard); any name list replaces it.
            wildcard = state.wildcard and not names
        if wildcard == state.wildcard and names == state.names:
            return
        added = names - state.names
        state.wildcard, state.names = wildcard, names
        if not wildcard:
            for name in list(state.sent):
                if name not in names:
                    del state.sent[name]  # sent again if subscribed again
        if wildcard or added:
            self._invalidate(state, now)

    # -- the hub's side ----------------------------------------------------

    def invalidate(self, now: float, type_urls: tuple[str, ...] = TYPES) -> None:
        """The hub's state changed in a way that may concern these types."""
        for type_url in type_urls:
            state = self._types.get(type_url)
            if state is not None:
                self._invalidate(state, now)

    @staticmethod
    def _invalidate(state: _TypeState, now: float) -> None:
        if not state.dirty:
            state.dirty, state.dirty_since = True, now

    def due(self) -> list[str]:
        """The types whose answer may have changed and may be sent now (requested,
        changed since the last answer, and no answer awaiting its ACK)."""
        return [t for t, s in self._types.items() if s.dirty and not s.awaiting]

    def subscription(self, type_url: str) -> Subscription | None:
        """What the client asked for of this type; None before its first request."""
        state = self._types.get(type_url)
        if state is None:
            return None
        return Subscription(state.wildcard, state.names)

    def interested(self, type_url: str, name: str) -> bool:
        """Whether a change of this resource concerns the client."""
        state = self._types.get(type_url)
        return state is not None and (state.wildcard or name in state.names)

    def respond(
        self, type_url: str, resources: Mapping[str, bytes], revision: int
    ) -> tuple[discovery_pb2.DiscoveryResponse, float | None] | None:
        """The answer for ``type_url`` given what the hub has now for the client's
        subscription (name -> serialized resource; a name the hub has nothing for
        is left out), and when the oldest change it carries was seen; None when
        the client already holds all of it. ``revision``: the hub's revision the
        resources were computed at, part of the version."""
        state = self._types[type_url]
        state.dirty = False
        since, state.dirty_since = state.dirty_since, None
        if type_url in FULL_STATE:
            if (
                state.answered
                and resources.keys() == state.sent.keys()
                and all(state.sent[name] == value for name, value in resources.items())
            ):
                return None
            send = dict(resources)
            state.sent = dict(resources)
        else:
            send = {n: v for n, v in resources.items() if state.sent.get(n) != v}
            if not send:
                return None
            state.sent.update(send)
        state.responses += 1
        state.answered = True
        state.version = f"{revision}.{state.responses}"
        state.nonce = str(next(self._nonces))
        state.awaiting = True
        response = discovery_pb2.DiscoveryResponse(
            version_info=state.version,
            type_url=type_url,
            nonce=state.nonce,
            resources=[any_pb2.Any(type_url=type_url, value=send[name]) for name in sorted(send)],
        )
        return response, since

    # -- what operators see --------------------------------------------------

    def status(
        self,
        *,
        stream_id: int,
        tenant_id: str,
        tier: str,
        peer: str,
        connected_at: float,
    ) -> XdsClientStatus:
        return XdsClientStatus(
            stream_id=stream_id,
            node_id=self.node.id if self.node is not None else "",
            tenant_id=tenant_id,
            tier=tier,
            peer=peer,
            connected_at=connected_at,
            subscribed={
                t: ([WILDCARD] if s.wildcard else []) + sorted(s.names)
                for t, s in self._types.items()
            },
            acked_version={t: s.acked_version for t, s in self._types.items() if s.acked_version},
            last_nack=self.last_nack,
        )


def _checked_names(names: Iterable[str]) -> frozenset[str]:
    listed = list(names)
    if len(listed) > MAX_NAMES:
        raise InvalidArgument.single("resource_names", f"must list at most {MAX_NAMES} names")
    for name in listed:
        if len(name) > MAX_NAME_LENGTH:
            raise InvalidArgument.single(
                "resource_names", f"each name must be at most {MAX_NAME_LENGTH} characters"
            )
    return frozenset(listed)
