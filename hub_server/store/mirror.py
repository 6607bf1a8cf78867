"""An in-memory mirror of one etcd prefix, kept current by one watch, with a log
of recent changes that any number of streams read at their own pace.

Every read-mostly view of the hub (registry, health, circuits, config) is a
mirror plus a little indexing, so reads never go to etcd and every stream
resumes by revision the same way.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from hub_server.kernel.changes import ADDED, REMOVED, UPDATED
from hub_server.kernel.errors import Compacted, StoreUnavailable
from hub_server.store import collector_pause
from hub_server.store.etcd import EtcdStore, Event, KeyValue
from hub_server.store.event_log import EventLog
from hub_server.store.watch import FENCE, PrefixWatch

log = logging.getLogger(__name__)

T = TypeVar("T")

# How many revisions of history a starting mirror loads, so that streams that
# were connected to a replica that died resume on this one without a resync.
HISTORY_REVISIONS = 10_000
# Keys per answer when a mirror loads its prefix. etcd (3.5) counts the whole
# rest of the range for every paged answer, so small pages make a load
# quadratic: a million instances read in 10.7 s in pages of 10,000, 4.9 s in
# pages of 50,000 (about 12 MB each at the registry's typical sizes).
LOAD_PAGE = 50_000


@dataclass(slots=True)
class Change(Generic[T]):
    type: int  # ADDED, UPDATED or REMOVED
    key: bytes
    # The value after the change; for REMOVED, the value before it (None if etcd
    # no longer had it).
    value: T | None
    revision: int
    # Whatever a view wants to build once per change (a response message), not
    # once per stream that sends it.
    cache: Any = None
    # For UPDATED, the value before it, when the mirror keeps previous values
    # (``keep_previous``) and etcd still had it: filtered streams need it to
    # tell an item that enters or leaves their filter (ADDED/REMOVED for them).
    previous: T | None = None


class PrefixMirror(Generic[T]):
    def __init__(
        self,
        store: EtcdStore,
        prefix: bytes,
        decode: Callable[[KeyValue], T],
        *,
        on_change: Callable[[Change[T]], None] | None = None,
        history_capacity: int = 20_000,
        history_revisions: int = HISTORY_REVISIONS,
        keep_previous: bool = False,
    ) -> None:
        self._store = store
        self._keep_previous = keep_previous
        self.prefix = prefix
        self._decode = decode
        self._on_change = on_change or (lambda change: None)
        self._listeners: list[Callable[[Change[T]], None]] = []
        # on_group_change's callbacks, behind one listener.
        self._group_callbacks: list[Callable[[str], None]] = []
        self._last_group = b""  # the last key's <prefix><group>/ while loading
        self._history_revisions = history_revisions
        self.items: dict[bytes, T] = {}
        self._mod_revisions: dict[bytes, int] = {}
        self.log: EventLog[Change[T]] = EventLog(history_capacity)
        self.live = False
        # True while ``start`` tells the listeners what the snapshot holds (one
        # ADDED per key, in key order), so they may batch what they do per key.
        self.loading = False
        self._snapshot_revision = 0
        self._history_start = 1
        self._watch = PrefixWatch(
            store, prefix, on_batch=self._apply, on_compacted=self._resync, on_state=self._set_live
        )

    @property
    def revision(self) -> int:
        return self.log.head

    def add_listener(self, listener: Callable[[Change[T]], None]) -> None:
        """Also calls ``listener`` with every change, after ``on_change``, so that
        readers other than the view that owns the mirror can keep derived state
        (caches, dirty marks) current. Added after ``start``, it misses what the
        mirror already holds."""
        self._listeners.append(listener)

    def on_group_change(self, callback: Callable[[str], None]) -> None:
        """Calls ``callback(group)`` after every change, for keys laid out as
        ``<prefix><group>/<rest>`` (the registry, health, loads, drain marks and
        circuits, grouped by service), so that what is derived per group is
        redone for that group alone. While the mirror loads its snapshot (keys
        in order), once per group rather than once per key. All callbacks share
        one listener: the group is read from each key once."""
        if not self._group_callbacks:
            self.add_listener(self._group_changed)
        self._group_callbacks.append(callback)

    def _group_changed(self, change: Change[T]) -> None:
        key, cut = change.key, len(self.prefix)
        if self.loading:
            if self._last_group and key.startswith(self._last_group):
                return  # the same group as the key before
            group = key[cut:].partition(b"/")[0]
            self._last_group = key[: cut + len(group) + 1]
        else:
            group = key[cut:].partition(b"/")[0]
            self._last_group = b""  # the next load starts afresh
        name = group.decode()
        for callback in self._group_callbacks:
            callback(name)

    def _changed(self, change: Change[T]) -> None:
        self._on_change(change)
        for listener in self._listeners:
            listener(change)

    def mod_revision(self, key: bytes) -> int:
        """The revision the key was last written at (0: not present)."""
        return self._mod_revisions.get(key, 0)

    def _wanted(self, key: bytes) -> bool:
        return not key.startswith(self.prefix + FENCE)

    async def start(self) -> None:
        """Loads the prefix, then follows it.

        The watch starts up to ``history_revisions`` before the snapshot so that
        the log also holds recent history; changes the snapshot already has go to
        the log only.
        """
        with collector_pause.while_loading():
            revision = await self._load()
        self._snapshot_revision = revision
        self._history_start = self._history_floor(revision)
        self.log.reset(revision)
        self._watch.start(self._history_start)
        await self._watch.barrier()
        self.log.complete_after = min(self.log.complete_after, self._history_start - 1)
        self.live = True

    async def _load(self) -> int:
        """Loads the prefix page by page (all at one revision, which it returns):
        etcd reads the next page while this one is put in ``items`` and told to
        the listeners, one ADDED per key in key order, with ``loading`` set."""
        self.items, self._mod_revisions = {}, {}
        revision = 0
        self.loading = True
        try:
            pages = self._store.prefix_pages(self.prefix, page=LOAD_PAGE)
            async with contextlib.aclosing(pages):
                async for kvs, revision in pages:
                    self._load_page(kvs, revision)
            return revision
        except Compacted:
            # That revision was compacted between pages: what was loaded stands,
            # and the difference from a new read comes as changes.
            log.info("prefix %r compacted while loading; reading it again", self.prefix)
            self.loading = False
            return await self._reread()
        finally:
            self.loading = False

    def _load_page(self, kvs: Sequence[KeyValue], revision: int) -> None:
        # etcd's messages, read once each: no KeyValue is built (a million were
        # ~1 s of a start), and no change is built for a fence key.
        page: list[bytes] = []
        for kv in kvs:
            key = kv.key
            if self._wanted(key):
                self.items[key] = self._decode(kv)
                self._mod_revisions[key] = kv.mod_revision
                page.append(key)
        for key in page:
            self._changed(Change(ADDED, key, self.items[key], revision))

    def _history_floor(self, revision: int) -> int:
        """Where the history the watch replays starts: ``history_revisions`` back,
        but never before the revision at which the newest ``log.capacity`` keys
        were written, since the log would keep no more than that: a registry
        written in large transactions (a bulk load, group-committed Registers)
        would otherwise be decoded twice at every start, once for the log only."""
        start = max(1, revision - self._history_revisions)
        capacity = self.log.capacity
        if len(self._mod_revisions) > capacity > 0:
            # Only keys written after ``start`` can move it. sorted, not
            # heapq.nlargest: keys loaded in the order they were written (a bulk
            # load) are nlargest's worst case (0.4 s a million) and sorted's best.
            recent = [r for r in self._mod_revisions.values() if r > start]
            if len(recent) >= capacity:
                start = sorted(recent)[-capacity]
        return start

    async def stop(self) -> None:
        await self._watch.stop()

    async def barrier(self) -> int:
        """Waits until everything written before the call is mirrored."""
        return await self._watch.barrier()

    def ensure_live(self) -> None:
        if not self.live:
            raise StoreUnavailable("the hub's view is not current: etcd is unreachable")

    def _set_live(self, live: bool) -> None:
        if live != self.live:
            log.info("mirror of %r %s", self.prefix, "live" if live else "lost its etcd watch")
        self.live = live

    def _change(self, ev: Event) -> Change[T]:
        if ev.kind == "delete":
            prev = self._decode(ev.prev) if ev.prev is not None else self.items.get(ev.kv.key)
            return Change(REMOVED, ev.kv.key, prev, ev.revision)
        # etcd restarts a key's version at 1 whenever it is created anew.
        kind = ADDED if ev.kv.version == 1 else UPDATED
        change = Change(kind, ev.kv.key, self._decode(ev.kv), ev.revision)
        if kind == UPDATED and self._keep_previous and ev.prev is not None:
            change.previous = self._decode(ev.prev)
        return change

    def _store_change(self, change: Change[T]) -> None:
        if change.type == REMOVED:
            self.items.pop(change.key, None)
            self._mod_revisions.pop(change.key, None)
        else:
            self.items[change.key] = change.value  # type: ignore[assignment]
            self._mod_revisions[change.key] = change.revision
        self._changed(change)

    async def _apply(self, events: list[Event], revision: int) -> None:
        changes = [self._change(ev) for ev in events]
        for change in changes:
            if change.revision > self._snapshot_revision:  # older: history, for the log only
                self._store_change(change)
        self.log.append([(c.revision, c) for c in changes], revision)

    async def _resync(self, compact_revision: int) -> int:
        """etcd compacted past the watch: list everything and turn the difference
        into changes, so streams reach the same end state with nothing repeated."""
        if compact_revision <= self._snapshot_revision + 1:
            # Only history from before the snapshot is gone: keep less of it.
            self._history_start = compact_revision
            return compact_revision
        log.warning("watch of %r compacted at %d; resyncing", self.prefix, compact_revision)
        revision = await self._reread()
        return revision + 1

    async def _reread(self) -> int:
        """Reads the prefix again and turns the difference from what the mirror
        holds into changes (in the log too once it is started); returns the
        revision read at, the new snapshot's."""
        kvs, revision = await self._store.get_prefix_paged(self.prefix, page=LOAD_PAGE)
        fresh = {kv.key: kv for kv in kvs if self._wanted(kv.key)}
        changes: list[Change[T]] = [
            Change(REMOVED, key, old, revision)
            for key, old in self.items.items()
            if key not in fresh
        ]
        for key, kv in fresh.items():
            if key not in self.items:
                changes.append(Change(ADDED, key, self._decode(kv), revision))
            elif self._mod_revisions.get(key) != kv.mod_revision:
                change = Change(UPDATED, key, self._decode(kv), revision)
                if self._keep_previous:
                    change.previous = self.items[key]
                changes.append(change)
        self._snapshot_revision = revision
        for change in changes:
            self._store_change(change)
            if change.type != REMOVED:
                self._mod_revisions[change.key] = fresh[change.key].mod_revision
        self.log.append([(c.revision, c) for c in changes], revision)
        return revision
