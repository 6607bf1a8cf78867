"""PageRanges: the ranges of a paged read (hub_server.store.key_ranges), driven
over sorted key sets with etcd's Range semantics (keys in [start, end), at most
``limit``, ``more`` when the range holds more; etcd visits every key of the
range to count it). Every key is read once in order, and the keys etcd visits
stay within a few times the keys read, where pages of one open range visit
the square of them."""

from __future__ import annotations

import bisect
import random

import pytest

from hub_server.store.etcd import prefix_end
from hub_server.store.key_ranges import WIDTH, KeySpace, PageRanges

PREFIX = b"/hub/registry/"


def _read(keys: list[bytes], page: int) -> tuple[list[bytes], int, int]:
    """(keys read, keys etcd visited, requests) of a paged read of ``keys``."""
    end = prefix_end(PREFIX)
    ranges = PageRanges(PREFIX, end, page)
    start, bound = PREFIX, end
    read: list[bytes] = []
    visited = requests = 0
    while True:
        lo = bisect.bisect_left(keys, start)
        hi = bisect.bisect_left(keys, bound)
        got = keys[lo : min(hi, lo + page)]
        visited += hi - lo
        requests += 1
        read += got
        first, last = (got[0], got[-1]) if got else (b"", b"")
        after = ranges.after(bound, len(got), first, last, hi - lo > page)
        if after is None:
            return read, visited, requests
        assert after[0] < after[1] or after[1] == end
        assert after[0] >= (got[-1] + b"\0" if got else start)
        start, bound = after


def _uniform(n: int) -> list[bytes]:
    return [PREFIX + b"svc-%d/i%02d" % divmod(k, 20) for k in range(n)]


def _long_names(n: int) -> list[bytes]:
    # Names of 100 bytes, alike but for their last characters.
    return [PREFIX + b"orders-service-eu-west-1-%s-%04d/instance-%02d" % (b"x" * 70, s, i)
            for s in range(n // 20) for i in range(20)]  # fmt: skip


def _clustered(n: int) -> list[bytes]:
    # Dense clusters far apart, binary bytes included.
    rng = random.Random(7)
    out = set()
    for c in range(8):
        head = bytes([rng.randrange(256) for _ in range(3)])
        for _ in range(n // 8):
            out.add(PREFIX + head + bytes([c]) + rng.randbytes(6))
    return list(out)


def _one_far_key(n: int) -> list[bytes]:
    return [*_uniform(n - 1), PREFIX + b"\xff" * 40]


@pytest.mark.parametrize("make", [_uniform, _long_names, _clustered, _one_far_key])
@pytest.mark.parametrize("page", [1, 7, 100])
def test_every_key_once_in_order(make, page) -> None:
    keys = sorted(set(make(2_000)))
    assert _read(keys, page)[0] == keys


@pytest.mark.parametrize("make", [_uniform, _long_names, _clustered, _one_far_key])
@pytest.mark.parametrize("page", [50, 200, 1_000])
def test_etcd_visits_a_few_times_the_keys_not_their_square(make, page) -> None:
    keys = sorted(set(make(10_000)))
    read, visited, requests = _read(keys, page)
    assert read == keys
    pages = len(keys) / page
    open_range = len(keys) * (pages + 1) / 2  # pages of one open range
    assert visited <= min(15 * len(keys), 0.7 * open_range)
    assert requests <= 3 * pages + 40


def test_an_empty_or_small_prefix_is_one_request() -> None:
    assert _read([], 10) == ([], 0, 1)
    keys = _uniform(10)
    assert _read(keys, 10)[2] == 1
    assert _read(keys, 9)[0] == keys


def test_ends_are_never_past_the_range() -> None:
    end = prefix_end(PREFIX)
    space = KeySpace.of(PREFIX, end)
    assert space.base == b"/hub/registry"
    assert space.next_end(PREFIX + b"a", 2 ** (8 * WIDTH)) == end
    near = space.next_end(PREFIX + b"a", 1)
    assert PREFIX + b"a" < near < end
    # The whole keyspace (end b"\0", etcd's "to the last key"): no guess.
    assert KeySpace.of(b"", b"\0").next_end(b"k", 5) == b"\0"
