"""A starting mirror replays recent history into its log (so streams resume on it
by revision), but no further back than its log holds: the revision at which its
newest ``capacity`` keys were written."""

from __future__ import annotations

import uuid

from hub_server.store.etcd import EtcdStore, KeyValue
from hub_server.store.mirror import PrefixMirror


def _value(kv: KeyValue) -> bytes:
    return kv.value


async def test_history_starts_where_the_log_can_hold_it(etcd_store: EtcdStore) -> None:
    prefix = f"/test/history/{uuid.uuid4().hex}/".encode()
    revisions = [await etcd_store.put(prefix + b"%02d" % i, b"v") for i in range(20)]
    # One key written twice: its first write is history too.
    revisions.append(await etcd_store.put(prefix + b"19", b"w"))
    mirror: PrefixMirror[bytes] = PrefixMirror(etcd_store, prefix, _value, history_capacity=5)
    await mirror.start()
    try:
        assert len(mirror.items) == 20 and mirror.items[prefix + b"19"] == b"w"
        # The 5 newest keys were last written at revisions[15..18] and revisions[20]:
        # the replay starts at revisions[15], and nothing before it is decoded.
        assert mirror.log.since(revisions[15] - 1) is not None
        assert mirror.log.since(revisions[15] - 2) is None
        replayed = mirror.log.since(revisions[15] - 1)
        assert replayed is not None and [c.revision for c in replayed] == revisions[15:]
    finally:
        await mirror.stop()


async def test_small_prefixes_keep_their_whole_history(etcd_store: EtcdStore) -> None:
    prefix = f"/test/history/{uuid.uuid4().hex}/".encode()
    first = await etcd_store.put(prefix + b"a", b"1")
    await etcd_store.put(prefix + b"a", b"2")
    await etcd_store.delete(prefix + b"a")
    await etcd_store.put(prefix + b"b", b"1")
    mirror: PrefixMirror[bytes] = PrefixMirror(etcd_store, prefix, _value, history_capacity=100)
    await mirror.start()
    try:
        # Deletes and overwrites included: fewer keys than the log holds.
        replayed = mirror.log.since(first - 1)
        assert replayed is not None and [c.key for c in replayed][-4:] == [
            prefix + b"a", prefix + b"a", prefix + b"a", prefix + b"b"
        ]  # fmt: skip
    finally:
        await mirror.stop()
