"""EtcdStore.get_prefix_paged (what every mirror loads with): the same keys as one
read, at one revision, however the pages fall."""

from __future__ import annotations

import uuid

from hub_server.store.etcd import EtcdStore


async def test_paged_read_is_one_read_at_one_revision(etcd_store: EtcdStore) -> None:
    prefix = f"/test/paged/{uuid.uuid4().hex}/".encode()
    for i in range(10):
        await etcd_store.put(prefix + b"%02d" % i, b"v%d" % i)
    await etcd_store.put(prefix[:-1] + b"0", b"outside")  # sorts right after the prefix
    whole, _ = await etcd_store.get_prefix(prefix)
    for page in (1, 3, 10, 11):
        paged, revision = await etcd_store.get_prefix_paged(prefix, page=page)
        assert paged == whole
        assert revision >= whole[-1].mod_revision


async def test_later_writes_are_not_in_a_paged_read(etcd_store: EtcdStore) -> None:
    prefix = f"/test/paged/{uuid.uuid4().hex}/".encode()
    for i in range(4):
        await etcd_store.put(prefix + b"%02d" % i, b"v")
    # One page read, then a key added past it: the next pages are read at the
    # first page's revision, so the new key is not seen.
    first, revision, more = await etcd_store.get_page(prefix, prefix + b"\xff", revision=0, limit=2)
    assert more
    await etcd_store.put(prefix + b"99", b"late")
    rest, _, _ = await etcd_store.get_page(
        first[-1].key + b"\0", prefix + b"\xff", revision=revision
    )
    assert [kv.key for kv in first + rest] == [prefix + b"%02d" % i for i in range(4)]
    empty, _ = await etcd_store.get_prefix_paged(f"/test/paged/{uuid.uuid4().hex}/".encode())
    assert empty == []


async def test_pages_over_guessed_ranges_miss_no_key(etcd_store: EtcdStore) -> None:
    # Later pages are read over ranges guessed from the keys' density
    # (hub_server.store.key_ranges): clusters, wide gaps, binary bytes and long
    # names are all read, once each, in order.
    prefix = f"/test/paged/{uuid.uuid4().hex}/".encode()
    names = [b"a%03d" % i for i in range(60)]
    names += [b"m" + b"x" * 120 + b"%02d" % i for i in range(40)]
    names += [b"\xfe\x00%c" % i for i in range(0, 250, 5)]
    names += [b"\xff" * 30]
    for name in names:
        await etcd_store.put(prefix + name, b"v")
    whole, _ = await etcd_store.get_prefix(prefix)
    for page in (1, 7, 50):
        paged, _ = await etcd_store.get_prefix_paged(prefix, page=page)
        assert paged == whole
        assert len(whole) == len(names)
