"""Stepping down never hangs on leader work that ignores its cancellation."""

from __future__ import annotations

import asyncio
import logging

import pytest

from hub_server.store import election
from hub_server.store.election import Election
from hub_server.store.etcd import EtcdStore
from tests.support.waiting import eventually


async def test_stop_leaves_stuck_leader_work_behind_and_says_so(
    etcd_store: EtcdStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(election, "STEP_DOWN_WAIT", 0.3)
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:  # the bug this guards against
                await release.wait()

    e = Election(etcd_store, "replica-a", name="stuck-test", ttl=2, poll_interval=0.1)
    e.add_work(stubborn)
    e.start()
    await eventually(lambda: e.is_leader)
    with caplog.at_level(logging.ERROR, logger="hub_server.store.election"):
        await asyncio.wait_for(e.stop(), 30)
    assert not e.is_leader
    (record,) = [r for r in caplog.records if "still runs" in r.getMessage()]
    assert "leader:test_stop_leaves_stuck_leader_work_behind_and_says_so.<locals>.stubborn" in (
        record.getMessage()
    )
    assert "stubborn" in record.getMessage().split("cancelled:")[1]  # its stack
    release.set()
