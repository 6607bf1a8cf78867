"""Local resolution: ``discover()`` and ``pick()`` answered from an in-process view.

One :class:`LocalView` per (service, tenant context, legacy mode) a client uses,
opened on first use and shared by every caller of the client (and of its
``with_context`` clones). Each is fed by one WatchEndpoints stream: full
snapshots of the service's usable-endpoint projection for the caller's tier, the
one the hub's PickEndpoint and xDS answer from. A pick runs hub_client's
:class:`Balancer` over the snapshot's usable set (the hub's own strategy code),
with the service's routing-policy strategy when the caller names none, so it
chooses as PickEndpoint does. The instance records ``discover()`` returns (the
fields a snapshot does not carry: protocol, metadata, requirements, ...) come
from one GetService call whenever a snapshot brings an instance the view has not
seen (or one that moved): the hub's load follows the rate of change.

Staleness: the view is current while its stream delivers; from the moment the
stream breaks it ages (:attr:`LocalView.age`) and keeps answering from its last
snapshot until ``max_age``, then lookups raise :class:`ViewTooOld`. A reconnect
asks for a full snapshot (after_revision 0), so the first message after it says
the view is current again.

Push-empty protection: a snapshot without endpoints replaces a view that has
some only when the hub says why the service is empty for this caller
(``visible`` False: deregistered or not for its tier; or ``circuit_open``) *and*
its revision is not older than the view's. Otherwise the view keeps its
endpoints (:attr:`LocalView.protected`): an empty snapshot with the service
visible and its circuit closed (every instance unhealthy or draining: what a
hub whose probes lost the network sees too), or one from an older etcd history
(a hub restarted on an empty or restored etcd). A snapshot from an older history
also makes the view reconnect after a while and age until a current hub answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from aitrading.hub.v1 import balancer_pb2, registry_pb2, types_pb2

from hub_client._private.balancer import strategy_of
from hub_client._private.errors import (
    RateLimited,
    Unavailable,
    channel_closed,
    deadline_exceeded,
    from_rpc_error,
)
from hub_client._private.models import Endpoint, Instance, Service
from hub_client._private.resume import RETRYABLE, Backoff
from hub_client._private.routing import EndpointsSnapshot, UsableEndpoint
from hub_client._private.strategies import Balancer, Candidate, Strategy
from hub_client._private.transport import Transport

log = logging.getLogger(__name__)

# How long a lookup after this client's own register() waits for the instance
# to reach the view before answering remotely instead (once).
READ_YOUR_WRITES_WAIT = 2.0
# How long a registration counts as "this client's own write" for views opened later.
_RECENT_FOR = 30.0
# Reconnect delay after a snapshot from an older etcd history was refused.
_REFUSED_RETRY = 1.0

ViewKey = tuple[str, str, str, bool]  # service, tenant id, tier header, legacy mode


class ViewTooOld(Unavailable):
    """The local view of a service has not been confirmed by the hub for longer
    than the client's ``max_view_age`` (the hub is unreachable): a lookup refuses
    to answer from it. ``age`` is its age in seconds."""

    @property
    def age(self) -> float:
        return float(self.metadata.get("age", "nan"))


@dataclass(frozen=True, slots=True)
class ViewState:
    """What ``HubClient.view_state`` says of a local view.

    Attributes:
        service: The service.
        age: Seconds since the hub last confirmed the view (0 while its stream
            is current).
        revision: The revision of the snapshot in use (0 before the first).
        protected: The view keeps endpoints an empty snapshot would have
            removed (push-empty protection).
        visible: The hub's last word: the service is visible to this caller.
        endpoints: How many usable endpoints the view holds.
    """

    service: str
    age: float
    revision: int
    protected: bool
    visible: bool
    endpoints: int


class _Refused(Exception):
    """A snapshot from an older etcd history: reconnect later."""


def _moved(e: UsableEndpoint, inst: Instance) -> bool:
    """The endpoint differs from the record held: the instance registered again."""
    held = (inst.host, inst.port, inst.version, inst.weight)
    return (e.host, e.port, e.version, e.weight) != held


@dataclass(frozen=True, slots=True)
class _Answers:
    """What one snapshot answers, built once per snapshot."""

    snapshot: EndpointsSnapshot
    candidates: tuple[Candidate, ...]
    instances: dict[str, Instance]  # per usable instance id
    service: Service  # what discover() returns: the best-ranked usable instances


class LocalView:
    """The local view of one service for one tenant context.

    Attributes:
        service: The service.
        protected: True while the view keeps endpoints an empty snapshot would
            have removed (push-empty protection).
    """

    def __init__(
        self,
        transport: Transport,
        service: str,
        legacy_mode: bool,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.protected = False
        self._transport = transport
        self._legacy = legacy_mode
        self._clock = clock
        self._answers: _Answers | None = None
        self._details: dict[str, Instance] = {}
        self._stale_since: float | None = clock()  # not current until a first snapshot
        self._error: BaseException | None = None
        self._changed = asyncio.Event()
        self._balancer = Balancer()
        # This client's own writes not seen yet: instance id -> (present, until).
        self.expected: dict[str, tuple[bool, float]] = {}
        self.last_used = clock()
        self._task = asyncio.get_running_loop().create_task(self._run())

    # -- what lookups read ---------------------------------------------------

    @property
    def age(self) -> float:
        """Seconds since the hub last confirmed this view (0 while its stream
        is current)."""
        since = self._stale_since
        return 0.0 if since is None else max(0.0, self._clock() - since)

    @property
    def revision(self) -> int:
        """The revision of the snapshot in use (0 before the first)."""
        return self._answers.snapshot.revision if self._answers else 0

    @property
    def snapshot(self) -> EndpointsSnapshot | None:
        """The snapshot in use (None before the first)."""
        return self._answers.snapshot if self._answers else None

    @property
    def closed(self) -> bool:
        return self._task.done()

    def state(self) -> ViewState:
        snap = self.snapshot
        return ViewState(
            self.service,
            self.age,
            self.revision,
            self.protected,
            snap is not None and snap.visible,
            len(snap.endpoints) if snap is not None else 0,
        )

    async def answers(self, timeout: float, max_age: float | None) -> _Answers:
        """The current answers: waits up to ``timeout`` for a first snapshot;
        raises the stream's error, or ViewTooOld past ``max_age``."""
        self.last_used = self._clock()
        if self._answers is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._first(), timeout)
        if self._error is not None:
            raise self._error
        if self._answers is None:
            raise deadline_exceeded(f"the local view of service {self.service!r}", timeout)
        age = self.age
        if max_age is not None and age > max_age:
            raise ViewTooOld(
                f"the local view of service {self.service!r} is {age:.1f}s old "
                f"(max_view_age {max_age:g}s): the hub is unreachable",
                code=grpc.StatusCode.UNAVAILABLE,
                metadata={"service": self.service, "age": f"{age:.3f}"},
            )
        return self._answers

    def latest(self) -> _Answers:
        """The answers of the snapshot in use (after :meth:`answers` returned)."""
        assert self._answers is not None
        return self._answers

    async def _first(self) -> None:
        while True:
            changed = self._changed  # taken before the check: no wake-up is missed
            if self._answers is not None or self._error is not None or self._task.done():
                return
            await changed.wait()

    async def seen(self, wanted: dict[str, bool], timeout: float) -> bool:
        """Whether, within ``timeout``, each instance is in the view's usable set
        (True) or out of it (False) as ``wanted`` says."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            changed = self._changed  # taken before the check: no wake-up is missed
            answers = self._answers
            if answers is not None and all(
                (i in answers.instances) == present for i, present in wanted.items()
            ):
                return True
            left = deadline - loop.time()
            if left <= 0 or self._error is not None or self._task.done():
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), left)

    def pick(self, strategy: Strategy | None, affinity_key: str) -> Endpoint | None:
        """A pick as PickEndpoint makes it, or None when the snapshot offers
        nothing (the caller asks the hub, whose answer is then its precise error)."""
        answers = self._answers
        if answers is None or not answers.candidates:
            return None
        chosen = self._balancer.choose(
            self.service,
            answers.candidates,
            strategy or answers.snapshot.policy.strategy,
            affinity_key=affinity_key or None,
            legacy=True,  # the snapshot is filtered for the caller's tier already
        )
        return Endpoint(
            chosen.host, chosen.port, chosen.instance_id, chosen.load,
            answers.instances[chosen.instance_id],
        )  # fmt: skip

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task

    # -- the stream ----------------------------------------------------------

    async def _run(self) -> None:
        t = self._transport
        backoff = Backoff()
        try:
            while True:
                # after_revision 0: a full snapshot at once, so its arrival says
                # the view is current again.
                call = t.open_stream(
                    t.balancer_stub.WatchEndpoints,
                    balancer_pb2.WatchEndpointsRequest(
                        service=self.service, after_revision=0, legacy_mode=self._legacy
                    ),
                )
                delay: float | None = None
                try:
                    async for msg in call:
                        await self._receive(EndpointsSnapshot.from_pb(msg))
                        backoff.reset()
                    why = "the hub ended the stream"
                except _Refused:
                    why, delay = "a snapshot from an older etcd history", _REFUSED_RETRY
                except grpc.aio.AioRpcError as e:
                    if e.code() not in RETRYABLE:
                        raise from_rpc_error(e) from None
                    why = e.code().name
                except Unavailable as e:  # the GetService of instance records
                    why = str(e)
                except asyncio.CancelledError:
                    if channel_closed() is None:
                        raise
                    why = "the channel was closed"
                finally:
                    call.cancel()
                if self._stale_since is None:
                    self._stale_since = self._clock()
                log.info("local view of %s interrupted (%s); reconnecting", self.service, why)
                self._wake()
                await asyncio.sleep(delay if delay is not None else backoff.next_delay())
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a status that no reconnect cures (bad name, denied)
            self._error = e
            self._wake()

    def _wake(self) -> None:
        # Each change sets the event waiters hold and starts a new one.
        self._changed.set()
        self._changed = asyncio.Event()

    async def _receive(self, snap: EndpointsSnapshot) -> None:
        current = self._answers.snapshot if self._answers else None
        if current is not None and current.endpoints and not snap.endpoints:
            if snap.revision < current.revision:
                self.protected = True
                log.warning(
                    "local view of %s: refused an empty snapshot at revision %d older than "
                    "the view's %d (a hub on another etcd history)",
                    self.service, snap.revision, current.revision,
                )  # fmt: skip
                raise _Refused
            if snap.visible and not snap.circuit_open:
                # The hub is current and says the service is there: keep routing
                # to the last usable instances rather than to nothing.
                self.protected = True
                self._stale_since = None
                self._wake()
                return
        if any(
            (i := self._details.get(e.instance_id)) is None or _moved(e, i) for e in snap.endpoints
        ):
            await self._fetch_details()
        self._apply(snap)

    async def _fetch_details(self) -> None:
        """The instance records (every instance the caller's tier may see)."""
        t = self._transport
        resp = await t.call(
            t.registry_stub.GetService,
            registry_pb2.GetServiceRequest(
                service=self.service, legacy_mode=self._legacy, include_unhealthy=True
            ),
        )
        self._details = {m.instance_id: Instance.from_pb(m) for m in resp.service.instances}

    def _apply(self, snap: EndpointsSnapshot) -> None:
        instances = {e.instance_id: self._instance(e) for e in snap.endpoints}
        best = min((e.priority for e in snap.endpoints), default=0)
        self._answers = _Answers(
            snapshot=snap,
            candidates=tuple(
                Candidate(
                    instance_id=e.instance_id,
                    host=e.host,
                    port=e.port,
                    weight=e.weight,
                    load=e.load,
                    latency_ms=e.latency_ms,
                    health=e.health,
                    version=e.version,
                )
                for e in snap.endpoints
            ),
            instances=instances,
            service=Service(
                self.service,
                [instances[e.instance_id] for e in snap.endpoints if e.priority == best],
                snap.revision,
            ),
        )
        if not snap.endpoints:
            self._balancer.forget(self.service)
        for instance_id, (present, _) in list(self.expected.items()):
            if (instance_id in instances) == present:
                del self.expected[instance_id]
        self.protected = False
        self._stale_since = None
        self._wake()

    def _instance(self, e: UsableEndpoint) -> Instance:
        """The instance record with the snapshot's health; a bare one built from
        the endpoint when GetService did not list it (it came and went between)."""
        inst = self._details.get(e.instance_id)
        status = e.health.name.lower()
        if inst is None:
            raw = types_pb2.Instance(
                service=self.service,
                instance_id=e.instance_id,
                host=e.host,
                port=e.port,
                version=e.version,
                weight=e.weight,
            )
            return Instance.from_pb(raw)
        if inst.health is not None and inst.health.status != status:
            inst = dataclasses.replace(inst, health=dataclasses.replace(inst.health, status=status))
        return inst


class LocalViews:
    """Every local view of one client (and its ``with_context`` clones), by
    (service, tenant, tier, legacy mode); closes views unused for ``idle_after``.

    Args:
        max_age: Seconds a view may go unconfirmed before lookups fail with
            ViewTooOld; None: no limit.
        idle_after: Seconds without a lookup after which a view is closed.
        read_your_writes_wait: How long a lookup waits for this client's own
            registration (or deregistration) to reach the view before asking
            the hub instead.
    """

    def __init__(
        self,
        *,
        max_age: float | None,
        idle_after: float,
        read_your_writes_wait: float = READ_YOUR_WRITES_WAIT,
    ) -> None:
        self.max_age = max_age
        self.idle_after = idle_after
        self.read_your_writes_wait = read_your_writes_wait
        self._views: dict[ViewKey, LocalView] = {}
        # Own (de)registrations: (service, instance id) -> (present, until).
        self._recent: dict[tuple[str, str], tuple[bool, float]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task[None] | None = None

    @staticmethod
    def key(transport: Transport, service: str, legacy_mode: bool) -> ViewKey:
        c = transport.context
        return (service, c.tenant_id, c.subscription_tier, legacy_mode)

    def find(self, transport: Transport, service: str, legacy_mode: bool) -> LocalView | None:
        return self._views.get(self.key(transport, service, legacy_mode))

    def view(self, transport: Transport, service: str, legacy_mode: bool) -> LocalView:
        """The view for this caller, opened on first use."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # Views belong to the loop that runs their streams; another loop
            # (a forked worker's, a new asyncio.run) opens its own.
            self._views.clear()
            self._loop, self._sweeper = loop, None
        key = self.key(transport, service, legacy_mode)
        view = self._views.get(key)
        if view is None or view.closed:
            view = self._views[key] = LocalView(transport, service, legacy_mode)
            now = time.monotonic()
            for (svc, instance_id), (present, until) in list(self._recent.items()):
                if until < now:
                    del self._recent[(svc, instance_id)]
                elif svc == service:
                    view.expected[instance_id] = (present, until)
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep())
        return view

    def registered(self, service: str, instance_id: str) -> None:
        """This client registered an instance: its next lookups of the service
        wait (briefly) until their view has it."""
        self._wrote(service, instance_id, present=True)

    def deregistered(self, service: str, instance_id: str) -> None:
        """This client deregistered an instance: its next lookups of the
        service wait (briefly) until their view no longer has it."""
        self._wrote(service, instance_id, present=False)

    def _wrote(self, service: str, instance_id: str, *, present: bool) -> None:
        expected = (present, time.monotonic() + _RECENT_FOR)
        self._recent[(service, instance_id)] = expected
        for (svc, *_), view in self._views.items():
            if svc == service:
                view.expected[instance_id] = expected

    async def _usable(self, view: LocalView, timeout: float) -> bool:
        """Whether this lookup may answer from the view (raising its error, or
        ViewTooOld); False: ask the hub instead."""
        try:
            await view.answers(timeout, self.max_age)
        except RateLimited:  # over the caller's share of streams: ask instead
            return False
        return await self._ready(view, timeout)

    async def _ready(self, view: LocalView, timeout: float) -> bool:
        """False when this client's own registration did not reach the view in
        time: this lookup then goes to the hub (and later ones do not wait)."""
        if not view.expected:
            return True
        now = time.monotonic()
        waiting = {i: present for i, (present, until) in view.expected.items() if until >= now}
        if not waiting:
            view.expected.clear()
            return True
        # At most half the lookup's timeout: the hub, if asked, gets the rest.
        if await view.seen(waiting, min(timeout / 2, self.read_your_writes_wait)):
            return True
        for instance_id in waiting:
            view.expected.pop(instance_id, None)
        return False

    async def discover(
        self, transport: Transport, service: str, legacy_mode: bool, timeout: float
    ) -> Service | None:
        """The local answer, or None when this lookup must ask the hub: the
        view offers nothing (GetService's answer or error says why)."""
        view = self.view(transport, service, legacy_mode)
        if not await self._usable(view, timeout):
            return None
        answers = view.latest()
        return answers.service if answers.candidates else None

    async def pick(
        self,
        transport: Transport,
        service: str,
        strategy: str | Strategy | None,
        affinity_key: str,
        legacy_mode: bool,
        timeout: float,
    ) -> Endpoint | None:
        """The local pick, or None when this pick must ask the hub."""
        chosen = strategy_of(strategy)
        view = self.view(transport, service, legacy_mode)
        if not await self._usable(view, timeout):
            return None
        # As the hub: a user sticks to one instance unless the caller says otherwise.
        return view.pick(chosen, affinity_key or transport.context.user_id)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(max(0.05, self.idle_after / 4))
            cutoff = time.monotonic() - self.idle_after
            for key, view in list(self._views.items()):
                if view.last_used < cutoff or view.closed:
                    del self._views[key]
                    await view.close()

    async def close(self) -> None:
        """Closes every view (with the client)."""
        views, self._views = list(self._views.values()), {}
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None and self._loop is asyncio.get_running_loop():
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        if self._loop is asyncio.get_running_loop():
            await asyncio.gather(*(v.close() for v in views))
