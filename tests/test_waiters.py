"""Waiters (many tasks, one wake-up) and the EventLog waits built on it."""

from __future__ import annotations

import asyncio
import gc
import time

from hub_server.store import collector_pause
from hub_server.store.event_log import EventLog
from hub_server.store.waiters import Waiters


async def _wait(waiters: Waiters, timeout: float) -> None:
    await waiters.wait(timeout)


async def test_wake_all_resumes_every_waiter_at_once() -> None:
    waiters = Waiters()
    tasks = [asyncio.create_task(_wait(waiters, 30.0)) for _ in range(100)]
    await asyncio.sleep(0)
    assert len(waiters) == 100 and not any(t.done() for t in tasks)
    waiters.wake_all()
    await asyncio.wait_for(asyncio.gather(*tasks), 1.0)
    assert len(waiters) == 0


async def test_each_waiter_times_out_on_its_own_deadline() -> None:
    waiters = Waiters()
    t0 = time.monotonic()

    async def wait(timeout: float) -> float:
        await waiters.wait(timeout)
        return time.monotonic() - t0

    short, long_, longer = await asyncio.gather(wait(0.05), wait(0.2), wait(0.1))
    assert 0.04 <= short < 0.15
    assert 0.09 <= longer < 0.2
    assert 0.19 <= long_ < 0.4
    assert len(waiters) == 0


async def test_a_cancelled_waiter_leaves_the_others_waiting() -> None:
    waiters = Waiters()
    gone = asyncio.create_task(_wait(waiters, 30.0))
    stays = asyncio.create_task(_wait(waiters, 30.0))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.sleep(0.01)
    assert gone.cancelled() and not stays.done()
    waiters.wake_all()
    await asyncio.wait_for(stays, 1.0)


async def test_a_wake_up_before_the_timeout_cancels_nothing_later() -> None:
    waiters = Waiters()
    first = asyncio.create_task(_wait(waiters, 0.05))
    await asyncio.sleep(0)
    waiters.wake_all()
    await first
    # A waiter that came after the wake-up still gets its full timeout.
    t0 = time.monotonic()
    await waiters.wait(0.1)
    assert time.monotonic() - t0 >= 0.09


async def test_event_log_wait_returns_on_append_or_timeout() -> None:
    log: EventLog[str] = EventLog()
    log.reset(10)
    waiting = asyncio.create_task(log.wait(10, 30.0))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    log.append([(11, "a")], 11)
    await asyncio.wait_for(waiting, 1.0)
    await log.wait(10, 30.0)  # the head is past 10 already: no wait
    t0 = time.monotonic()
    await log.wait(11, 0.05)
    assert time.monotonic() - t0 >= 0.04


async def test_event_log_at_head_is_emptied_when_the_log_changes() -> None:
    log: EventLog[str] = EventLog()
    log.reset(1)
    log.at_head["k"] = b"built"
    log.append([(2, "a")], 2)
    assert log.at_head == {}
    log.at_head["k"] = b"built"
    log.reset(5)
    assert log.at_head == {}


async def _waiting_again(waiters: Waiters, timeout: float) -> None:
    """A stream's loop in miniature: woken once, then waiting for the next change."""
    await waiters.wait(timeout)
    await asyncio.sleep(0)
    await waiters.wait(timeout)


async def test_a_large_wake_up_holds_the_collector_until_its_waiters_wait_again() -> None:
    assert gc.isenabled()
    waiters = Waiters()
    n = collector_pause.BURST
    tasks = [asyncio.create_task(_waiting_again(waiters, 30.0)) for _ in range(n)]
    await asyncio.sleep(0)
    waiters.wake_all()
    assert not gc.isenabled() and collector_pause.held()
    await asyncio.sleep(0.05)  # every task is waiting again
    assert gc.isenabled() and not collector_pause.held()
    await asyncio.sleep(collector_pause.COOLDOWN)
    waiters.wake_all()
    await asyncio.wait_for(asyncio.gather(*tasks), 1.0)
    # Held again by the second wake-up (1,000 waiters), released after LIMIT at
    # the latest: none of them waits again.
    assert not gc.isenabled()
    await asyncio.sleep(collector_pause.LIMIT + 0.2)
    assert gc.isenabled() and not collector_pause.held()


async def _back_after(waiters: Waiters, delay: float) -> None:
    await waiters.wait(30.0)
    await asyncio.sleep(delay)
    await waiters.wait(30.0)


async def test_a_hold_lasts_past_limit_while_its_waiters_are_still_coming_back(
    monkeypatch,
) -> None:
    """A slow fan-out (20,000 streams on busy cores) outlasts LIMIT: the hold goes
    on while waiters keep coming back, and ends once they stop."""
    monkeypatch.setattr(collector_pause, "LIMIT", 0.2)
    monkeypatch.setattr(collector_pause, "STALL", 0.1)
    monkeypatch.setattr(collector_pause, "PER_WAITER", 0.001)  # 2,000 waiters: 2 s at most
    await asyncio.sleep(collector_pause.COOLDOWN)  # after an earlier test's hold
    waiters = Waiters()
    n = 2000
    # Back one by one over 0.6 s; the last ten never come back.
    tasks = [asyncio.create_task(_back_after(waiters, 0.6 * i / n)) for i in range(n - 10)]
    tasks += [asyncio.create_task(_wait(waiters, 30.0)) for _ in range(10)]
    await asyncio.sleep(0)
    waiters.wake_all()
    try:
        await asyncio.sleep(0.4)  # past LIMIT, still coming back
        assert collector_pause.held() and not gc.isenabled()
        await asyncio.sleep(0.5)  # all but ten back by 0.6 s: stalled since
        assert gc.isenabled() and not collector_pause.held()
    finally:
        # Cancelled, not woken: a wake-up of 2,000 would start a hold that the
        # next test would find.
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _back_later(waiters: Waiters) -> None:
    """A stream that takes its time to wait again, then waits for two changes."""
    await waiters.wait(30.0)
    await asyncio.sleep(0.05)
    await waiters.wait(30.0)
    await waiters.wait(30.0)


async def test_a_wake_up_before_the_last_ones_waiters_are_back_runs_with_the_collector() -> None:
    waiters = Waiters()
    half = collector_pause.BURST // 2
    tasks = [asyncio.create_task(_waiting_again(waiters, 30.0)) for _ in range(half)]
    tasks += [asyncio.create_task(_back_later(waiters)) for _ in range(half)]
    await asyncio.sleep(0)
    waiters.wake_all()
    assert collector_pause.held()
    await asyncio.sleep(0.01)  # half of them are waiting again
    assert collector_pause.held()
    waiters.wake_all()  # ends the hold; the collector runs between holds
    assert gc.isenabled() and not collector_pause.held()
    await asyncio.sleep(0.1)  # the other half are back
    await asyncio.sleep(collector_pause.COOLDOWN)
    for _ in range(2):
        assert len(waiters) == half
        waiters.wake_all()  # 500: no hold
        assert not collector_pause.held()
        await asyncio.sleep(0.01)
    await asyncio.wait_for(asyncio.gather(*tasks), 1.0)


async def test_a_small_wake_up_and_a_disabled_collector_are_left_alone() -> None:
    waiters = Waiters()
    tasks = [asyncio.create_task(_wait(waiters, 30.0)) for _ in range(collector_pause.BURST - 1)]
    await asyncio.sleep(0)
    waiters.wake_all()
    assert gc.isenabled() and not collector_pause.held()
    await asyncio.gather(*tasks)
    gc.disable()
    try:
        tasks = [asyncio.create_task(_waiting_again(waiters, 30.0)) for _ in range(2000)]
        await asyncio.sleep(0)
        waiters.wake_all()
        assert collector_pause.held()
        await asyncio.sleep(0.05)
        assert not collector_pause.held()
        assert not gc.isenabled()  # disabled by someone else: stays so
    finally:
        gc.enable()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def test_a_hold_whose_loop_closed_is_ended_by_the_backstop(monkeypatch) -> None:
    monkeypatch.setattr(collector_pause, "LIMIT", 0.2)
    time.sleep(collector_pause.COOLDOWN)  # after an earlier test's hold
    loop = asyncio.new_event_loop()
    try:
        # Its timer never runs: the loop closes first.
        assert collector_pause.hold(loop, collector_pause.BURST) is not None
    finally:
        loop.close()
    assert not gc.isenabled()
    deadline = time.monotonic() + 5.0  # the backstop may be mid-sleep of the last LIMIT
    while not gc.isenabled() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gc.isenabled() and not collector_pause.held()
