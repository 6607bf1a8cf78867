"""The only code that talks to etcd.

We use aetcd's generated etcd v3 stubs (``aetcd.rpc``) on our own grpc.aio channel
rather than aetcd's high-level client: the hub needs what that client lacks
(a multiplexed lease keep-alive stream, watches that resume by revision, progress
requests) and keeping to the raw etcd API makes the client easy to swap.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections import defaultdict, deque
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from aetcd import rpc

from hub_server.kernel.errors import Compacted, InvalidArgument, StoreUnavailable
from hub_server.store import keys
from hub_server.store.etcd_access import (
    AuthToken,
    EtcdAccess,
    EtcdRefused,
    handshake_refusal,
    is_stale_token,
)
from hub_server.store.key_ranges import PageRanges

log = logging.getLogger(__name__)

_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]

# Status codes that mean "etcd is not reachable right now"; anything else from
# etcd is a bug or a bad request and propagates as is.
_UNAVAILABLE_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
}


# etcd's default --max-txn-ops, and a transaction size well under its default
# --max-request-bytes (1.5 MiB).
MAX_TXN_OPS = 128
MAX_TXN_BYTES = 1024 * 1024
# Under load (the last grouped transaction was shared), the next one waits this
# long for more puts: fewer, fuller transactions (at 64 concurrent Registers
# about a third fewer) and ~10% less CPU per Register for the hub and etcd. A
# lone writer never waits.
GROUP_LINGER = 0.001
# Seconds one page of a paged read may take (the other calls take ``timeout``):
# the next page is asked for while the caller works on the one before, so its
# answer may wait on a starting hub's busy event loop, and etcd, which counts
# the rest of the range for every page, takes seconds for a big page under load.
PAGE_TIMEOUT = 60.0

# What a caller is told while etcd cannot be reached, the words of the mirrors'
# refusal: the raw client error names etcd's address and port, so it is logged only.
UNREACHABLE = "the hub's view is not current: etcd is unreachable"


def prefix_end(prefix: bytes) -> bytes:
    """The range end that selects every key starting with ``prefix``."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True, slots=True)
class Event:
    """One change under a watched prefix. ``prev`` is the value before it (if kept)."""

    kind: str  # "put" or "delete"
    kv: KeyValue
    prev: KeyValue | None

    @property
    def revision(self) -> int:
        return self.kv.mod_revision


def _kv(m: rpc.KeyValue) -> KeyValue:
    return KeyValue(m.key, m.value, m.create_revision, m.mod_revision, m.version, m.lease)


def decode_event(e: rpc.Event) -> Event:
    prev = _kv(e.prev_kv) if e.HasField("prev_kv") else None
    return Event("delete" if e.type == rpc.Event.DELETE else "put", _kv(e.kv), prev)


def _channel_target(endpoints: Sequence[str]) -> str:
    """One gRPC target for all endpoints, so the channel fails over between members.

    Host names are resolved once here: gRPC's ipv4:/ipv6: schemes take address
    lists, dns: takes a single name.
    """
    addrs: list[str] = []
    family = "ipv4"
    for ep in endpoints:
        host, _, port = ep.strip().removeprefix("http://").removeprefix("https://").rpartition(":")
        host = host.strip("[]")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = ipaddress.ip_address(socket.getaddrinfo(host, int(port))[0][4][0])
        if ip.version == 6:
            family = "ipv6"
            addrs.append(f"[{ip}]:{port}")
        else:
            addrs.append(f"{ip}:{port}")
    return f"{family}:{','.join(addrs)}"


class Txn:
    """A small builder for etcd transactions: compares, then ops on success/failure."""

    def __init__(self) -> None:
        self.compare: list[rpc.Compare] = []
        self.success: list[rpc.RequestOp] = []
        self.failure: list[rpc.RequestOp] = []

    # Compares
    def mod_revision_is(self, key: bytes, revision: int) -> Txn:
        """True when the key was last written at ``revision`` (0: the key is absent)."""
        self.compare.append(
            rpc.Compare(
                key=key,
                result=rpc.Compare.EQUAL,
                target=rpc.Compare.MOD,
                mod_revision=revision,
            )
        )
        return self

    def absent(self, key: bytes) -> Txn:
        self.compare.append(
            rpc.Compare(key=key, result=rpc.Compare.EQUAL, target=rpc.Compare.VERSION, version=0)
        )
        return self

    # Ops
    @staticmethod
    def put(key: bytes, value: bytes, lease: int = 0) -> rpc.RequestOp:
        return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))

    @staticmethod
    def delete(key: bytes, *, prefix: bool = False) -> rpc.RequestOp:
        req = rpc.DeleteRangeRequest(key=key, range_end=prefix_end(key) if prefix else b"")
        return rpc.RequestOp(request_delete_range=req)

    @staticmethod
    def get(key: bytes, *, prefix: bool = False) -> rpc.RequestOp:
        req = rpc.RangeRequest(key=key, range_end=prefix_end(key) if prefix else b"")
        return rpc.RequestOp(request_range=req)


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    # For every range op of the branch taken, the key-values it read.
    ranges: list[list[KeyValue]]


class EtcdStore:
    """An etcd connection: key-value, transactions, leases, watches, status."""

    def __init__(
        self, endpoints: Sequence[str], *, timeout: float = 5.0, access: EtcdAccess | None = None
    ) -> None:
        self.endpoints = list(endpoints)
        self.timeout = timeout
        access = access or EtcdAccess()
        self._channel = access.channel(_channel_target(self.endpoints), _CHANNEL_OPTIONS)
        self._token = (
            AuthToken(rpc.AuthStub(self._channel), access.user, access.password, timeout)
            if access.user
            else None
        )
        self._kv = rpc.KVStub(self._channel)
        self._lease = rpc.LeaseStub(self._channel)
        self._watch = rpc.WatchStub(self._channel)
        self._maintenance = rpc.MaintenanceStub(self._channel)
        self._keepalive = _LeaseKeepAliveStream(self._lease, self._metadata)
        self._group = _GroupCommit(self)

    async def close(self) -> None:
        await self._keepalive.close()
        await self._channel.close()

    # -- key-value ---------------------------------------------------------

    async def get(self, key: bytes) -> tuple[KeyValue | None, int]:
        """The key's value (or None) and the store revision of the read."""
        resp = await self._call(self._kv.Range, rpc.RangeRequest(key=key))
        return (_kv(resp.kvs[0]) if resp.kvs else None), resp.header.revision

    async def get_prefix(
        self, prefix: bytes, *, revision: int = 0, limit: int = 0, keys_only: bool = False
    ) -> tuple[list[KeyValue], int]:
        """Every key under ``prefix`` (sorted by key) and the revision of the read."""
        req = rpc.RangeRequest(
            key=prefix,
            range_end=prefix_end(prefix),
            revision=revision,
            limit=limit,
            keys_only=keys_only,
        )
        resp = await self._call(self._kv.Range, req)
        return [_kv(m) for m in resp.kvs], resp.header.revision

    async def get_prefix_paged(
        self, prefix: bytes, *, page: int = 10_000
    ) -> tuple[list[KeyValue], int]:
        """Like ``get_prefix``, read in pages of ``page`` keys at one revision, so
        that no answer nears gRPC's message limit however many keys there are (a
        million instances are ~250 MB in one answer). Starts over if etcd compacts
        that revision between pages."""
        while True:
            out: list[KeyValue] = []
            revision = 0
            try:
                async with contextlib.aclosing(self.prefix_pages(prefix, page=page)) as pages:
                    async for kvs, at in pages:
                        out += map(_kv, kvs)
                        revision = at
                return out, revision
            except Compacted:
                log.info("prefix %r compacted while being read in pages; reading again", prefix)

    async def prefix_pages(
        self, prefix: bytes, *, page: int
    ) -> AsyncGenerator[tuple[Sequence[rpc.KeyValue], int], None]:
        """The keys under ``prefix`` in pages of about ``page``, sorted by key, all
        at the revision of the first page (yielded with each; the first page is
        yielded even when empty, later ones only with keys). After the first,
        each page is read over a range that ends near where ``page`` more keys
        are expected (see :mod:`hub_server.store.key_ranges`): etcd visits every
        key of a range to count it, so pages of one open range cost it the
        square of the keys. The next page is asked for before one is yielded, so
        etcd reads it while the caller works on this one. The pages are etcd's
        own messages, which have the fields of a :class:`KeyValue` (read them;
        keeping one keeps its whole page). Raises Compacted if etcd compacts
        that revision between pages; use it under ``contextlib.aclosing`` so a
        request in flight is cancelled when the caller stops early."""
        end = prefix_end(prefix)
        ranges = PageRanges(prefix, end, page)
        bound = end  # where the range the response answers ends
        req = rpc.RangeRequest(key=prefix, range_end=end, limit=page)
        resp = await self._call(self._kv.Range, req, timeout=PAGE_TIMEOUT)
        revision = int(resp.header.revision)
        first = True
        while True:
            kvs = resp.kvs
            following: asyncio.Future[Any] | None = None
            first_key, last_key = (kvs[0].key, kvs[-1].key) if kvs else (b"", b"")
            after = ranges.after(bound, len(kvs), first_key, last_key, bool(resp.more))
            if after is not None:
                start, bound = after
                req = rpc.RangeRequest(key=start, range_end=bound, revision=revision, limit=page)
                following = asyncio.ensure_future(
                    self._call(self._kv.Range, req, timeout=PAGE_TIMEOUT)
                )
            try:
                if kvs or first:
                    yield kvs, revision
                first = False
            except BaseException:  # the caller stopped early, or failed
                if following is not None:
                    following.cancel()
                    # Its own error, if it failed first, is no one's to report.
                    following.add_done_callback(lambda f: f.cancelled() or f.exception())
                raise
            if following is None:
                return
            resp = await following

    async def get_range(
        self, start: bytes, end: bytes, *, limit: int = 0, descending: bool = False
    ) -> tuple[list[KeyValue], int]:
        """Keys in [start, end), sorted by key, at most ``limit`` (0: all)."""
        req = rpc.RangeRequest(key=start, range_end=end, limit=limit)
        if descending:
            req.sort_order = rpc.RangeRequest.DESCEND
            req.sort_target = rpc.RangeRequest.KEY
        resp = await self._call(self._kv.Range, req)
        return [_kv(m) for m in resp.kvs], resp.header.revision

    async def get_page(
        self, start: bytes, end: bytes, *, revision: int = 0, limit: int = 0
    ) -> tuple[list[KeyValue], int, bool]:
        """Keys in [start, end) at ``revision`` (0: now), sorted by key, at most
        ``limit``; returns them, the revision read at and whether more follow."""
        req = rpc.RangeRequest(key=start, range_end=end, revision=revision, limit=limit)
        resp = await self._call(self._kv.Range, req)
        return [_kv(m) for m in resp.kvs], resp.header.revision, bool(resp.more)

    async def delete_range(self, start: bytes, end: bytes) -> int:
        """Deletes keys in [start, end); returns how many."""
        resp = await self._call(
            self._kv.DeleteRange, rpc.DeleteRangeRequest(key=start, range_end=end)
        )
        return int(resp.deleted)

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        resp = await self._call(self._kv.Put, rpc.PutRequest(key=key, value=value, lease=lease))
        return int(resp.header.revision)

    async def put_grouped(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        """Like ``put``, but every put that arrives while a grouped write is in
        flight joins the next transaction (group commit): under load one etcd
        round trip, and one raft entry, is shared by many callers. Returns the
        revision the key was written at (shared by its transaction's keys)."""
        return await self._group.put(key, value, lease)

    async def delete(self, key: bytes, *, prefix: bool = False) -> tuple[int, int]:
        """Deletes a key (or a prefix); returns (number deleted, revision)."""
        req = rpc.DeleteRangeRequest(key=key, range_end=prefix_end(key) if prefix else b"")
        resp = await self._call(self._kv.DeleteRange, req)
        return int(resp.deleted), int(resp.header.revision)

    async def txn(self, txn: Txn) -> TxnResult:
        req = rpc.TxnRequest(compare=txn.compare, success=txn.success, failure=txn.failure)
        resp = await self._call(self._kv.Txn, req)
        ranges = [
            [_kv(m) for m in r.response_range.kvs]
            for r in resp.responses
            if r.WhichOneof("response") == "response_range"
        ]
        return TxnResult(bool(resp.succeeded), int(resp.header.revision), ranges)

    async def compact(self, revision: int) -> None:
        await self._call(self._kv.Compact, rpc.CompactionRequest(revision=revision, physical=True))

    # -- leases ------------------------------------------------------------

    async def grant_lease(self, ttl: int) -> int:
        resp = await self._call(self._lease.LeaseGrant, rpc.LeaseGrantRequest(TTL=ttl))
        return int(resp.ID)

    async def revoke_lease(self, lease_id: int) -> None:
        """Revokes a lease (deleting its keys); a lease that is already gone is fine."""
        try:
            await self._call(self._lease.LeaseRevoke, rpc.LeaseRevokeRequest(ID=lease_id))
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise

    async def keep_alive(self, lease_id: int) -> int:
        """Renews a lease once; returns its TTL, 0 when the lease no longer exists."""
        try:
            return await asyncio.wait_for(self._keepalive.renew(lease_id), self.timeout)
        except (TimeoutError, grpc.aio.AioRpcError, ConnectionError) as e:
            log.debug("etcd lease keep-alive failed: %r", e)
            raise StoreUnavailable(UNREACHABLE) from e

    async def lease_ttl(self, lease_id: int) -> int:
        """Remaining TTL of a lease in seconds, -1 when it does not exist."""
        resp = await self._call(
            self._lease.LeaseTimeToLive, rpc.LeaseTimeToLiveRequest(ID=lease_id)
        )
        return int(resp.TTL)

    # -- cluster -----------------------------------------------------------

    async def status(self, timeout: float | None = None) -> int:
        """Asks the connected member for its status; returns the store revision."""
        resp = await self._call(self._maintenance.Status, rpc.StatusRequest(), timeout=timeout)
        return int(resp.header.revision)

    # -- watches -----------------------------------------------------------

    def open_watch(self) -> grpc.aio.StreamStreamCall:
        return self._watch.Watch(metadata=self._metadata())

    # -- authentication ------------------------------------------------------

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Until etcd answers (it may be starting); a TLS handshake it refuses
        is a setting to fix, reported at once (EtcdRefused)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                await self.status(timeout=2.0)
                return
            except StoreUnavailable as e:
                cause = e.__cause__
                if isinstance(cause, grpc.aio.AioRpcError):
                    refusal = handshake_refusal(cause)
                    if refusal:
                        raise EtcdRefused(refusal) from cause
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def check_access(self) -> None:
        """Authenticates, with an etcd user (EtcdRefused for a wrong user or
        password), and reads one key of the hub's own (EtcdRefused when the
        user's roles, or those of the client certificate's CN, do not allow
        it), so that a hub refused by etcd says so at start rather than
        serving nothing."""
        probe = rpc.RangeRequest(
            key=keys.ROOT, range_end=prefix_end(keys.ROOT), limit=1, keys_only=True
        )
        user = repr(self._token.user) if self._token else "of the client certificate"
        try:
            if self._token is not None:
                await self._token.renew()
            await self._send(self._kv.Range, probe, self.timeout)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.PERMISSION_DENIED:
                raise EtcdRefused(
                    f"etcd user {user} may not read {keys.ROOT.decode()}: "
                    f"{(e.details() or '').removeprefix('etcdserver: ')} "
                    "(grant its role readwrite on the hub's prefix)"
                ) from e
            raise StoreUnavailable(UNREACHABLE) from e

    async def renew_token(self) -> None:
        """Authenticates again (a watch etcd cancelled may have carried a
        token it no longer accepts: it says "permission denied" either way)."""
        if self._token is not None:
            seen = self._token.generation
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self._token.renew(seen)

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return self._token.metadata() if self._token is not None else ()

    async def _send(self, method, request, timeout: float):
        token = self._token
        if token is None:
            return await method(request, timeout=timeout)
        if not token.generation:
            await token.renew(0)
        seen = token.generation
        try:
            return await method(request, timeout=timeout, metadata=token.metadata())
        except grpc.aio.AioRpcError as e:
            if not is_stale_token(e):
                raise
        await token.renew(seen)
        return await method(request, timeout=timeout, metadata=token.metadata())

    async def _call(self, method, request, *, timeout: float | None = None):
        try:
            return await self._send(method, request, timeout or self.timeout)
        except grpc.aio.AioRpcError as e:
            if e.code() in _UNAVAILABLE_CODES:
                log.debug("etcd call failed: %s: %s", e.code().name, e.details())
                raise StoreUnavailable(UNREACHABLE) from e
            revision = getattr(request, "revision", 0)
            if e.code() == grpc.StatusCode.OUT_OF_RANGE and revision > 0:
                # A revision compacted away or one in the future: etcd tells
                # which, and the compact revision, only to a watch started there.
                compact = await self._compact_revision(revision)
                if compact:
                    raise Compacted(
                        f"revision {revision} is compacted; the oldest kept is {compact}",
                        compact_revision=compact,
                    ) from e
            if _too_large(e):
                # The last line of defence: servicers bound what they store, so
                # this is a request whose values add up past etcd's limit.
                raise InvalidArgument.single("request", "is too large to store") from e
            raise

    async def _compact_revision(self, revision: int) -> int:
        """etcd's compact revision if ``revision`` is older than it, else 0 (a
        revision in the future): a watch created at ``revision`` is cancelled
        with it (after etcd's next sync of its watchers, ~100 ms)."""
        call = self.open_watch()
        try:
            create = rpc.WatchCreateRequest(key=b"\0", start_revision=revision)
            await call.write(rpc.WatchRequest(create_request=create))
            async with asyncio.timeout(self.timeout):
                while True:
                    resp = await call.read()
                    if resp is grpc.aio.EOF or (resp.canceled and not resp.compact_revision):
                        return 0
                    if resp.compact_revision:
                        return int(resp.compact_revision)
                    if resp.created and revision > resp.header.revision:
                        return 0  # a future revision: never compacted
        except (TimeoutError, grpc.aio.AioRpcError):
            return 0  # not known: the caller's own error stands
        finally:
            call.cancel()


def _too_large(e: grpc.aio.AioRpcError) -> bool:
    """etcd's "request is too large" (over --max-request-bytes), or a message over
    its gRPC receive limit."""
    code, details = e.code(), (e.details() or "").lower()
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return "too large" in details
    return code == grpc.StatusCode.RESOURCE_EXHAUSTED and "message larger" in details


class _GroupCommit:
    """The writer behind ``EtcdStore.put_grouped``: one transaction in flight at a
    time; puts that arrive meanwhile wait and go together in the next (after
    GROUP_LINGER when the last one was shared), up to MAX_TXN_OPS and
    MAX_TXN_BYTES. A shared transaction fails as a whole, so when
    one fails for any reason but an unreachable etcd its puts are retried one by
    one: each caller gets its own put's outcome (a lease that expired meanwhile
    fails that put alone)."""

    def __init__(self, store: EtcdStore) -> None:
        self._store = store
        self._pending: deque[tuple[rpc.RequestOp, int, asyncio.Future[int]]] = deque()
        self._writer: asyncio.Task[None] | None = None

    async def put(self, key: bytes, value: bytes, lease: int) -> int:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((Txn.put(key, value, lease), len(key) + len(value) + 16, fut))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        return await fut

    def _next_batch(self) -> list[tuple[rpc.RequestOp, asyncio.Future[int]]]:
        batch: list[tuple[rpc.RequestOp, asyncio.Future[int]]] = []
        size = 0
        while self._pending and len(batch) < MAX_TXN_OPS:
            op, op_size, fut = self._pending[0]
            if batch and size + op_size > MAX_TXN_BYTES:
                break
            self._pending.popleft()
            if not fut.done():  # its caller gave up (cancelled): nothing to write
                batch.append((op, fut))
                size += op_size
        return batch

    async def _write(self) -> None:
        shared = False
        while self._pending:
            if shared and len(self._pending) < MAX_TXN_OPS:
                await asyncio.sleep(GROUP_LINGER)
            batch = self._next_batch()
            if not batch:
                continue
            shared = len(batch) > 1
            if len(batch) == 1:
                await self._commit(batch)
                continue
            txn = Txn()
            txn.success.extend(op for op, _ in batch)
            try:
                revision = (await self._store.txn(txn)).revision
            except StoreUnavailable as e:
                _settle(batch, error=e)
            except Exception:
                for one in batch:  # each put's own outcome
                    await self._commit([one])
            else:
                _settle(batch, revision=revision)

    async def _commit(self, batch: list[tuple[rpc.RequestOp, asyncio.Future[int]]]) -> None:
        ((op, _),) = batch
        put = op.request_put
        try:
            revision = await self._store.put(put.key, put.value, lease=put.lease)
        except Exception as e:
            _settle(batch, error=e)
        else:
            _settle(batch, revision=revision)


def _settle(
    batch: list[tuple[rpc.RequestOp, asyncio.Future[int]]],
    *,
    revision: int = 0,
    error: BaseException | None = None,
) -> None:
    for _, fut in batch:
        if fut.done():
            continue
        if error is not None:
            fut.set_exception(error)
            fut.exception()  # a caller that was cancelled meanwhile never looks
        else:
            fut.set_result(revision)


class _LeaseKeepAliveStream:
    """One bidirectional LeaseKeepAlive stream shared by every renewal.

    etcd answers each request on the stream with the lease id and its new TTL, so
    many instances' leases are renewed over a single stream instead of one stream
    (or one unary round trip) each. If the stream breaks, pending renewals fail
    and the next renewal opens a new stream.
    """

    def __init__(
        self, stub: rpc.LeaseStub, metadata: Callable[[], tuple[tuple[str, str], ...]]
    ) -> None:
        self._stub = stub
        self._metadata = metadata
        self._call: grpc.aio.StreamStreamCall | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, deque[asyncio.Future[int]]] = defaultdict(deque)
        self._lock = asyncio.Lock()

    async def renew(self, lease_id: int) -> int:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        async with self._lock:  # grpc.aio allows one write at a time per stream
            call = self._ensure_open()
            # Queued before the write: the answer may be read before write() returns.
            self._pending[lease_id].append(fut)
            try:
                await call.write(rpc.LeaseKeepAliveRequest(ID=lease_id))
            except Exception as e:
                fut.cancel()  # ours is raised below, not through the future
                self._fail_all(e)
                self._call = None
                raise
        return await fut

    def _ensure_open(self) -> grpc.aio.StreamStreamCall:
        if self._call is None or self._call.done():
            self._call = self._stub.LeaseKeepAlive(metadata=self._metadata())
            self._reader = asyncio.create_task(self._read(self._call))
        return self._call

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        try:
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    raise ConnectionError("lease keep-alive stream closed")
                queue = self._pending.get(resp.ID)
                if queue:
                    fut = queue.popleft()
                    if not queue:
                        del self._pending[resp.ID]
                    if not fut.done():
                        fut.set_result(int(resp.TTL))
        except asyncio.CancelledError:
            self._fail_all(ConnectionError("lease keep-alive stream closed"))
            raise
        except Exception as e:
            log.debug("lease keep-alive stream failed: %r", e)
            self._fail_all(e)
            if self._call is call:
                self._call = None

    def _fail_all(self, exc: BaseException) -> None:
        for queue in self._pending.values():
            for fut in queue:
                if not fut.done():
                    fut.set_exception(exc)
                    fut.exception()  # a caller that timed out never looks: mark it seen
        self._pending.clear()

    async def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
