"""Leader election among hub replicas, on one etcd key held under a lease.

Work that must happen once (probing, circuit timers, roll-out stepping) runs only
on the replica whose id is in the key. The leader renews its lease every third
of the TTL; if it cannot confirm the lease for longer than the TTL it stops
leading at once, because by then another replica may have taken over. A replica
that dies holds the key until its lease lapses; one that stops cleanly revokes
the lease so that another takes over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from hub_server.kernel.errors import StoreUnavailable
from hub_server.store import keys
from hub_server.store.etcd import EtcdStore, Txn

log = logging.getLogger(__name__)

LeaderWork = Callable[[], Coroutine[Any, Any, None]]

# How long stepping down waits for cancelled leader work to end. Work that
# outlives it is a bug (something swallowed its cancellation): it is logged with
# its stack and left behind, so that neither a stop nor the next campaign hangs.
STEP_DOWN_WAIT = 10.0


class Election:
    def __init__(
        self,
        store: EtcdStore,
        candidate_id: str,
        *,
        name: str = "leader",
        ttl: int = 5,
        poll_interval: float = 0.5,
    ) -> None:
        self._store = store
        self.candidate_id = candidate_id
        self.key = keys.election_key(name)
        self.ttl = ttl
        self._poll = poll_interval
        self.leader_id = ""
        self.is_leader = False
        self._work: list[LeaderWork] = []
        self._work_tasks: list[asyncio.Task[None]] = []
        self._task: asyncio.Task[None] | None = None
        self._lease = 0
        self.changed = asyncio.Event()  # set on every change of leader

    def add_work(self, work: LeaderWork) -> None:
        """A coroutine to run while this replica leads (cancelled when it stops)."""
        self._work.append(work)

    def start(self) -> None:
        self._task = asyncio.create_task(self._campaign(), name="election")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._step_down()
        if self._lease:
            with contextlib.suppress(Exception):
                await self._store.revoke_lease(self._lease)  # hand over at once
            self._lease = 0

    def _set_leader(self, leader_id: str) -> None:
        if leader_id != self.leader_id:
            self.leader_id = leader_id
            log.info("hub leader is now %r", leader_id or None)
            self.changed.set()
            self.changed = asyncio.Event()

    async def _campaign(self) -> None:
        while True:
            try:
                current, _ = await self._store.get(self.key)
                holder = current.value.decode() if current is not None else ""
                if holder == self.candidate_id and current is not None:
                    # Our own key from before (an etcd restart, a lost stream).
                    self._lease = current.lease
                    await self._lead()
                    continue
                if current is None:
                    # A lease only when there is a chance to lead: a follower's
                    # lease would lapse unused while it waits.
                    self._lease = await self._store.grant_lease(self.ttl)
                    txn = Txn().absent(self.key)
                    txn.success.append(Txn.put(self.key, self.candidate_id.encode(), self._lease))
                    if (await self._store.txn(txn)).succeeded:
                        await self._lead()  # returns when leadership is lost
                        continue
                    await self._store.revoke_lease(self._lease)
                    self._lease = 0
                self._set_leader(holder)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # etcd unreachable, or a lease that lapsed meanwhile
                log.debug("election: %r", e)
                self._lease = 0
                self._set_leader("")
            await asyncio.sleep(self._poll)

    async def _lead(self) -> None:
        self.is_leader = True
        self._set_leader(self.candidate_id)
        self._work_tasks = [_named_task(w()) for w in self._work]
        loop = asyncio.get_running_loop()
        confirmed = loop.time()
        try:
            while True:
                await asyncio.sleep(self.ttl / 3)
                try:
                    if await self._store.keep_alive(self._lease) <= 0:
                        log.warning("leader lease lost; stepping down")
                        self._lease = 0
                        return
                    confirmed = loop.time()
                except StoreUnavailable:
                    if loop.time() - confirmed >= self.ttl:
                        log.warning("leader lease unconfirmed for %ss; stepping down", self.ttl)
                        self._lease = 0
                        return
        finally:
            await self._step_down()

    async def _step_down(self) -> None:
        tasks, self._work_tasks = self._work_tasks, []
        for task in tasks:
            task.cancel()
        try:
            if tasks:
                # Not ``await task`` under suppress(CancelledError): that also
                # swallowed a cancel of the campaign itself (stop(), a crash)
                # arriving while it stepped down, and the campaign ran on.
                done, stuck = await asyncio.wait(tasks, timeout=STEP_DOWN_WAIT)
                for task in done:
                    if not task.cancelled():
                        task.exception()  # retrieved: not logged as never retrieved
                for task in stuck:
                    log.error(
                        "leader work %s still runs %gs after it was cancelled:\n%s",
                        task.get_name(), STEP_DOWN_WAIT, _stack(task),
                    )  # fmt: skip
        finally:
            if self.is_leader:
                self.is_leader = False
                self._set_leader("")


def _named_task(work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    return asyncio.create_task(work, name=f"leader:{getattr(work, '__qualname__', 'work')}")


def _stack(task: asyncio.Task[None]) -> str:
    out = io.StringIO()
    task.print_stack(file=out)
    return out.getvalue()
