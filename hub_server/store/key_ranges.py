"""Where to end the next page of a paged read, so that etcd visits only that page.

etcd (3.5) answers a Range with a limit by visiting every key of the range to
count them: reading a million keys in pages of 50,000 over one open-ended range
visits ~10 million keys, which took etcd half of the read's time. A page read
over a range that ends near its last key visits only its own keys. Where that
end lies is guessed from the density of the keys read so far: keys are compared
as numbers (the bytes after what the whole range's keys share), and the next
range spans what held ``page`` keys on average so far. A guess that holds too
many keys goes on over a range as narrow as its first page's keys were; each
guess in a row that holds none doubles the span. Either way the read goes on
until ``end``, and every key is read once, in order.
"""

from __future__ import annotations

from dataclasses import dataclass

# Bytes of a key read as its number: the longest hub key (two names of up to 128
# bytes after a prefix), so that no two keys are one number (which would make
# their ranges open-ended again).
WIDTH = 272


def _shared(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass(frozen=True)
class KeySpace:
    """Keys in [start, end) as numbers, for guessing range ends."""

    base: bytes  # what every key of the range starts with
    end: bytes

    @classmethod
    def of(cls, start: bytes, end: bytes) -> KeySpace:
        return cls(start[: _shared(start, end)], end)

    def number(self, key: bytes) -> int:
        digits = key[len(self.base) : len(self.base) + WIDTH]
        return int.from_bytes(digits.ljust(WIDTH, b"\0"), "big")

    def key(self, number: int) -> bytes:
        return self.base + number.to_bytes(WIDTH, "big")

    def next_end(self, start: bytes, span: int) -> bytes:
        """The end of the range from ``start`` that spans ``span`` (at least 1),
        never past the whole range's end."""
        number = self.number(start) + max(span, 1)
        if number >= self.number(self.end) or number >= 256**WIDTH:
            return self.end
        return self.key(number)


class PageRanges:
    """The ranges of a paged read of [start, end) after its first page, which is
    read over the whole range (it finds where the keys start)."""

    def __init__(self, start: bytes, end: bytes, page: int) -> None:
        self.space = KeySpace.of(start, end)
        self.page = page
        self._origin: bytes | None = None  # the first key
        self._found = 0
        self._empty_in_a_row = 0

    def after(
        self, bound: bytes, found: int, first: bytes, last: bytes, more: bool
    ) -> tuple[bytes, bytes] | None:
        """The range to read after a page of ``found`` keys, ``first`` to
        ``last``, read from a range that ends at ``bound`` (``more``: the range
        holds more than those); None when that was the last."""
        if self._origin is None and found:
            self._origin = first
        self._found += found
        self._empty_in_a_row = 0 if found else self._empty_in_a_row + 1
        if more:
            # Keys denser here than so far: the next range spans what this
            # page's keys did (never past the range they came from).
            start = last + b"\0"
            span = self._span(first, last, found - 1)
            return start, min(self.space.next_end(start, span), bound)
        if bound >= self.space.end:
            return None
        # The next range spans what ``page`` keys did on average so far.
        assert self._origin is not None  # a range ends before ``end`` only after a key
        return bound, self.space.next_end(bound, self._span(self._origin, bound, self._found))

    def _span(self, low: bytes, high: bytes, gaps: int) -> int:
        """What ``page`` keys span where ``gaps`` spanned [low, high]; doubled
        for each range in a row that held none."""
        covered = max(self.space.number(high) - self.space.number(low), 1)
        return max(covered * self.page // max(gaps, 1), 1) << self._empty_in_a_row
