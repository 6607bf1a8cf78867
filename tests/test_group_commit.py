"""EtcdStore.put_grouped: concurrent puts share transactions (group commit), and
a put that fails does not take the others of its transaction with it."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from hub_server.store.etcd import MAX_TXN_OPS, EtcdStore


async def test_concurrent_puts_share_transactions(etcd_store: EtcdStore) -> None:
    prefix = f"/test/group/{uuid.uuid4().hex}/".encode()
    n = 3 * MAX_TXN_OPS
    lease = await etcd_store.grant_lease(60)
    revisions = await asyncio.gather(
        *(etcd_store.put_grouped(prefix + b"%04d" % i, b"v%d" % i, lease=lease) for i in range(n))
    )
    kvs, _ = await etcd_store.get_prefix(prefix)
    assert [kv.value for kv in kvs] == [b"v%d" % i for i in range(n)]
    # Each put reports the revision its key was written at, and puts that
    # arrived together were written together (never more than etcd allows in one).
    assert {kv.key: kv.mod_revision for kv in kvs} == {
        prefix + b"%04d" % i: r for i, r in enumerate(revisions)
    }
    assert all(kv.lease == lease for kv in kvs)
    shared = len(set(revisions))
    assert shared < n
    assert max(revisions.count(r) for r in set(revisions)) <= MAX_TXN_OPS


async def test_a_failing_put_fails_alone(etcd_store: EtcdStore) -> None:
    prefix = f"/test/group/{uuid.uuid4().hex}/".encode()
    lease = await etcd_store.grant_lease(60)
    gone = await etcd_store.grant_lease(60)
    await etcd_store.revoke_lease(gone)
    results = await asyncio.gather(
        *(
            etcd_store.put_grouped(prefix + b"%02d" % i, b"v", lease=gone if i == 5 else lease)
            for i in range(20)
        ),
        return_exceptions=True,
    )
    failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert failed == [5]
    error = results[5]
    assert isinstance(error, grpc.aio.AioRpcError)
    assert error.code() == grpc.StatusCode.NOT_FOUND  # etcd: requested lease not found
    kvs, _ = await etcd_store.get_prefix(prefix)
    assert len(kvs) == 19


async def test_a_cancelled_caller_is_not_written_for(etcd_store: EtcdStore) -> None:
    prefix = f"/test/group/{uuid.uuid4().hex}/".encode()
    first = asyncio.ensure_future(etcd_store.put_grouped(prefix + b"a", b"1"))
    queued = asyncio.ensure_future(etcd_store.put_grouped(prefix + b"b", b"2"))
    await asyncio.sleep(0)  # both queued, the writer not yet run
    queued.cancel()
    await first
    with pytest.raises(asyncio.CancelledError):
        await queued
    kvs, _ = await etcd_store.get_prefix(prefix)
    assert [kv.key for kv in kvs] == [prefix + b"a"]
