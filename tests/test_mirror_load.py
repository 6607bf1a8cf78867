"""A mirror's load pauses Python's cyclic collector (issue 18: a million objects
that all stay alive set it off again and again); mirrors load concurrently, and
the collector must be on again when the last load ends, off if it was off."""

from __future__ import annotations

import gc

from hub_server.kernel.changes import ADDED
from hub_server.registry.service import on_service_change
from hub_server.store.collector_pause import while_loading
from hub_server.store.mirror import Change, PrefixMirror


def test_overlapping_loads_turn_the_collector_on_when_the_last_ends() -> None:
    assert gc.isenabled()
    first, second = while_loading(), while_loading()
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
        with while_loading():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_failed_load_turns_it_on_again() -> None:
    try:
        with while_loading():
            raise RuntimeError("etcd unreachable")
    except RuntimeError:
        pass
    assert gc.isenabled()


def test_per_service_listeners_hear_a_load_once_per_service() -> None:
    mirror: PrefixMirror[bytes] = PrefixMirror(None, b"/r/", lambda kv: kv.value)  # type: ignore[arg-type]
    heard: list[str] = []
    on_service_change(mirror, heard.append)

    def change(key: bytes) -> None:
        mirror._changed(Change(ADDED, key, b"", 1))

    mirror.loading = True
    for key in (b"/r/a/1", b"/r/a/2", b"/r/b/1", b"/r/b/2", b"/r/c/1"):
        change(key)
    mirror.loading = False
    assert heard == ["a", "b", "c"]
    change(b"/r/c/2")  # live changes: every one
    change(b"/r/c/3")
    assert heard == ["a", "b", "c", "c", "c"]
    mirror.loading = True  # a later load starts afresh
    change(b"/r/c/1")
    assert heard[-1] == "c" and len(heard) == 6
