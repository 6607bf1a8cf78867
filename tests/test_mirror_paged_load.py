"""A mirror loads its prefix page by page (issue 18: etcd reads the next page
while the hub converts this one): every key heard once, ADDED in key order with
``loading`` set, all at one revision; writes made meanwhile come after, from the
watch; and a compaction between pages ends in etcd's state, told as changes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import pytest

from hub_server.kernel.changes import ADDED, REMOVED, UPDATED
from hub_server.store import mirror as mirror_module
from hub_server.store.etcd import EtcdStore, KeyValue
from hub_server.store.mirror import Change, PrefixMirror
from tests.support.waiting import eventually


def _value(kv: KeyValue) -> bytes:
    return kv.value


def _after_first_page(
    store: EtcdStore, monkeypatch: pytest.MonkeyPatch, act: Callable[[], Awaitable[None]]
) -> None:
    """Runs ``act`` (real writes to etcd) once, after the first page read."""
    pages_of = store.prefix_pages
    pending = [act]

    async def pages(prefix: bytes, *, page: int) -> AsyncGenerator[Any, None]:
        async for item in pages_of(prefix, page=page):
            yield item
            if pending:
                await pending.pop()()

    monkeypatch.setattr(store, "prefix_pages", pages)


async def _ten_keys(store: EtcdStore, monkeypatch: pytest.MonkeyPatch) -> tuple[bytes, list[bytes]]:
    """Ten keys under a fresh prefix, loaded in pages of three."""
    monkeypatch.setattr(mirror_module, "LOAD_PAGE", 3)
    prefix = f"/test/paged-load/{uuid.uuid4().hex}/".encode()
    names = [prefix + b"%02d" % i for i in range(10)]
    for name in names:
        await store.put(name, b"v")
    return prefix, names


async def test_a_load_in_pages_is_one_snapshot(
    etcd_store: EtcdStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix, names = await _ten_keys(etcd_store, monkeypatch)

    async def late() -> None:
        await etcd_store.put(prefix + b"99", b"late")
        await etcd_store.put(names[0], b"w")  # a key already loaded

    _after_first_page(etcd_store, monkeypatch, late)
    mirror: PrefixMirror[bytes] = PrefixMirror(etcd_store, prefix, _value)
    heard: list[tuple[int, bytes, bytes | None, int, bool]] = []
    mirror.add_listener(
        lambda c: heard.append((c.type, c.key, c.value, c.revision, mirror.loading))
    )
    await mirror.start()
    try:
        loaded = heard[: len(names)]
        assert [(t, k, v, loading) for t, k, v, _, loading in loaded] == [
            (ADDED, name, b"v", True) for name in names
        ]
        assert len({rev for *_, rev, _ in loaded}) == 1  # one revision for all pages
        await eventually(lambda: len(heard) == len(names) + 2)
        assert [(t, k, v, loading) for t, k, v, _, loading in heard[len(names) :]] == [
            (ADDED, prefix + b"99", b"late", False),
            (UPDATED, names[0], b"w", False),
        ]
        assert mirror.items[names[0]] == b"w" and mirror.items[prefix + b"99"] == b"late"
    finally:
        await mirror.stop()


async def test_a_compaction_between_pages_ends_in_etcds_state(
    etcd_store: EtcdStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix, names = await _ten_keys(etcd_store, monkeypatch)

    async def rewrite_and_compact() -> None:
        await etcd_store.put(names[0], b"w")  # loaded already
        await etcd_store.delete(names[1])  # loaded already
        await etcd_store.delete(names[8])  # not loaded yet
        await etcd_store.compact(await etcd_store.put(prefix + b"99", b"new"))

    _after_first_page(etcd_store, monkeypatch, rewrite_and_compact)
    mirror: PrefixMirror[bytes] = PrefixMirror(etcd_store, prefix, _value)
    heard: list[Change[bytes]] = []
    mirror.add_listener(heard.append)
    await mirror.start()
    try:
        whole, _ = await etcd_store.get_prefix(prefix)
        assert mirror.items == {kv.key: kv.value for kv in whole}
        # What the first page told is corrected by changes, and the rest added.
        told: dict[bytes, bytes] = {}
        for change in heard:
            if change.type == REMOVED:
                told.pop(change.key, None)
            else:
                assert change.value is not None
                told[change.key] = change.value
        assert told == mirror.items
        assert (REMOVED, names[1]) in [(c.type, c.key) for c in heard]
        assert (UPDATED, names[0]) in [(c.type, c.key) for c in heard]
        assert mirror.live and not mirror.loading
    finally:
        await mirror.stop()
