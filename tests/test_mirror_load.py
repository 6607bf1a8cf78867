"""A mirror's load pauses Python's cyclic collector (issue 18: a million objects
that all stay alive set it off again and again); mirrors load concurrently, and
the collector must be on again when the last load ends, off if it was off."""

from __future__ import annotations

import gc

from hub_server.store.mirror import collector_paused


def test_overlapping_loads_turn_the_collector_on_when_the_last_ends() -> None:
    assert gc.isenabled()
    first, second = collector_paused(), collector_paused()
    first.__enter__()
    assert not gc.isenabled()
    second.__enter__()
    first.__exit__(None, None, None)  # the first ends while the second loads
    assert not gc.isenabled()
    second.__exit__(None, None, None)
    assert gc.isenabled()


def test_a_collector_turned_off_elsewhere_stays_off() -> None:
    gc.disable()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_failed_load_turns_it_on_again() -> None:
    try:
        with collector_paused():
            raise RuntimeError("etcd unreachable")
    except RuntimeError:
        pass
    assert gc.isenabled()
