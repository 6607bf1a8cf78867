"""What operators see of the xDS clients connected to this replica: one status
per open ADS stream (who, what it subscribed, what it ACKed, its last NACK) and
the counters behind the xDS metrics (open streams, pushes, push latency, NACKs).

The streams own their state (hub_server/xds/protocol.py); this table only asks
each open stream for its status when an operator looks, so keeping it costs a
stream nothing between looks.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class XdsNack:
    """A response the client rejected: it stays on ``version`` (its last good one)."""

    type_url: str
    version: str  # the version the client kept (the NACK's version_info)
    rejected_version: str  # the version of the response it rejected
    nonce: str
    error: str  # the client's error_detail message
    at: float  # wall clock, seconds


@dataclass(slots=True)
class XdsClientStatus:
    """One open ADS stream, as it was when asked."""

    stream_id: int
    node_id: str
    tenant_id: str
    tier: str  # the tier its view is filtered by; "" for an unfiltered view
    peer: str
    connected_at: float  # wall clock, seconds
    subscribed: dict[str, list[str]]  # type_url -> resource names ("*" for a wildcard)
    acked_version: dict[str, str]  # type_url -> last ACKed version
    last_nack: XdsNack | None


class XdsClients:
    """The open ADS streams of this replica and the xDS counters.

    Not thread-safe: used from the server's event loop only."""

    def __init__(self) -> None:
        self._streams: dict[int, Callable[[], XdsClientStatus]] = {}
        self._ids = itertools.count(1)
        self.pushes = 0  # responses sent
        self.nacks = 0  # responses rejected by a client
        self._latency: list[Callable[[float, str], None]] = []

    def register(self, status: Callable[[], XdsClientStatus]) -> tuple[int, Callable[[], None]]:
        """Adds an open stream, whose ``status()`` is asked on each snapshot.
        Returns its stream id and the function that removes it."""
        stream_id = next(self._ids)
        self._streams[stream_id] = status

        def unregister() -> None:
            self._streams.pop(stream_id, None)

        return stream_id, unregister

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def snapshot(self) -> list[XdsClientStatus]:
        """Every open stream's status, oldest connection first."""
        statuses = [status() for status in self._streams.values()]
        return sorted(statuses, key=lambda s: (s.connected_at, s.stream_id))

    # -- counters ----------------------------------------------------------

    def on_push_latency(self, observer: Callable[[float, str], None]) -> None:
        """``observer(milliseconds, type_url)`` for every push (the metrics' histogram)."""
        self._latency.append(observer)

    def pushed(self, type_url: str, latency_ms: float) -> None:
        """A response was sent ``latency_ms`` after the change it carries was seen
        (or after the request that asked for it)."""
        self.pushes += 1
        for observer in self._latency:
            observer(latency_ms, type_url)

    def nacked(self) -> None:
        self.nacks += 1
