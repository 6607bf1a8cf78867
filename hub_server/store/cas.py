"""Compare-and-set, the hub's one read-modify-write of a stored record: decide
from what was last seen of the key, write with a transaction whose compares
check that it is still so, and when it is not, decide again from what that
transaction read back. At most ATTEMPTS times: then the write gives up with
:func:`contended` (UNAVAILABLE, which clients retry)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from hub_server.kernel.errors import StoreUnavailable
from hub_server.store.etcd import EtcdStore, KeyValue, Txn, TxnResult

# Only a key that many writers change without pause (a livelock) uses them up.
ATTEMPTS = 100

V = TypeVar("V")


def contended(what: str) -> StoreUnavailable:
    """The error of a write whose attempts ran out."""
    return StoreUnavailable(f"{what}: too much contention, try again")


class CompareAndSet(Generic[V]):
    """Compare-and-set on one key. ``value`` is its record as last seen (None:
    absent): first as the caller knew it (from a mirror, say), then as etcd
    returned it, and then ``fresh`` is true. A refusal decided on a value that
    is not fresh is confirmed by :meth:`read` first.

    ::

        cas = CompareAndSet(store, key, decode, known=mirror.items.get(key))
        for current in cas.attempts():
            ...  # decide; maybe return, raise, or read and continue
            result = await cas.write(txn)  # txn compares what was decided on
            if result is not None:
                return ...
        raise contended("what")
    """

    def __init__(
        self,
        store: EtcdStore,
        key: bytes,
        decode: Callable[[KeyValue], V],
        *,
        known: V | None,
    ) -> None:
        self._store = store
        self._key = key
        self._decode = decode
        self.value = known
        self.fresh = False

    def attempts(self) -> Iterator[V | None]:
        """``value`` for each of ATTEMPTS attempts."""
        for _ in range(ATTEMPTS):
            yield self.value

    async def read(self) -> None:
        """Reads ``value`` from etcd."""
        kv, _ = await self._store.get(self._key)
        self._saw(kv)

    async def write(self, txn: Txn) -> TxnResult | None:
        """Runs ``txn``: its result if it succeeded; else None, and ``value`` is
        the key as the transaction found it (its first read on failure)."""
        txn.failure.insert(0, Txn.get(self._key))
        result = await self._store.txn(txn)
        if result.succeeded:
            return result
        found = result.ranges[0]
        self._saw(found[0] if found else None)
        return None

    def _saw(self, kv: KeyValue | None) -> None:
        self.value = self._decode(kv) if kv is not None else None
        self.fresh = True
