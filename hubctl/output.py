"""How hubctl prints: aligned tables with optional colour, or JSON for scripts."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from google.protobuf import duration_pb2, timestamp_pb2

_ANSI = re.compile(r"\x1b\[[0-9;]*m")

_CODES = {
    "bold": "1",
    "dim": "2",
    "red": "31",
    "green": "32",
    "yellow": "33",
    "blue": "34",
    "magenta": "35",
    "cyan": "36",
}

# Colours by the words the hub uses for states.
STATE_COLOURS = {
    "healthy": "green",
    "degraded": "yellow",
    "unhealthy": "red",
    "unspecified": "dim",
    "closed": "green",
    "half_open": "yellow",
    "open": "red",
    "forced_open": "red",
    "forced_closed": "cyan",
    "ADDED": "green",
    "UPDATED": "yellow",
    "REMOVED": "red",
    # tiers
    "free": "dim",
    "pro": "cyan",
    "enterprise": "magenta",
    # alerts, error patterns
    "critical": "red",
    "high": "red",
    "warning": "yellow",
    "medium": "yellow",
    "low": "dim",
    "RAISED": "red",
    "RESOLVED": "green",
    "ACTIVE": "yellow",
    # feature flags, audit outcomes
    "on": "green",
    "off": "dim",
    "OK": "green",
}


def use_colour(stream: IO[str], disabled: bool = False) -> bool:
    """Colour only for a terminal, and never when NO_COLOR is set (no-color.org)."""
    if disabled or "NO_COLOR" in os.environ or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


@dataclass(frozen=True)
class Style:
    """Wraps text in ANSI colours when enabled; identity otherwise."""

    enabled: bool

    def __call__(self, text: str, *styles: str) -> str:
        codes = [_CODES[s] for s in styles if s in _CODES]
        if not self.enabled or not codes or not text:
            return text
        return f"\x1b[{';'.join(codes)}m{text}\x1b[0m"

    def state(self, word: str, text: str | None = None) -> str:
        """``text`` (default ``word``) in the colour of the state ``word``."""
        return self(word if text is None else text, STATE_COLOURS.get(word, ""))


def visible_len(text: str) -> int:
    return len(_ANSI.sub("", text))


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], style: Style) -> list[str]:
    """Left-aligned columns, two spaces apart; cells may already carry colour."""
    body = [list(r) for r in rows]
    widths = [len(h) for h in headers]
    for row in body:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], visible_len(cell))

    def line(cells: Sequence[str]) -> str:
        padded = [c + " " * (widths[i] - visible_len(c)) for i, c in enumerate(cells)]
        return "  ".join(padded).rstrip()

    return [style(line(headers), "bold"), *(line(r) for r in body)]


def key_values(pairs: Sequence[tuple[str, str]], style: Style) -> list[str]:
    """``key:  value`` lines with the values aligned."""
    width = max((len(k) for k, _ in pairs), default=0)
    return [f"{style(k + ':', 'bold')}{' ' * (width - len(k))}  {v}" for k, v in pairs]


def ago(seconds_since_epoch: float, now: float | None = None) -> str:
    """``"3s ago"``, ``"5m ago"``; ``"never"`` for 0."""
    if not seconds_since_epoch:
        return "never"
    return f"{span(max((now or time.time()) - seconds_since_epoch, 0.0))} ago"


def span(seconds: float) -> str:
    """A short human duration: 850ms, 12s, 5m, 3h, 2d."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def iso(ts: timestamp_pb2.Timestamp | float) -> str | None:
    """RFC 3339 UTC time, or None when unset."""
    seconds = ts if isinstance(ts, float | int) else ts.ToNanoseconds() / 1e9
    if not seconds:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


def seconds_of(d: duration_pb2.Duration) -> float:
    return d.seconds + d.nanos / 1e9


def clock(now: float | None = None) -> str:
    """Local wall-clock time for watch lines."""
    return datetime.fromtimestamp(now or time.time()).strftime("%H:%M:%S")


def local_time(ts: timestamp_pb2.Timestamp | float) -> str:
    """Local date and time to the second (``2024-05-01 14:03:07``); "-" when unset."""
    seconds = ts if isinstance(ts, float | int) else ts.ToNanoseconds() / 1e9
    if not seconds:
        return "-"
    return datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M:%S")


def plain(value: Any) -> Any:
    """JSON-ish values with integral floats as ints (protobuf Struct numbers are
    doubles: a setting written as 5 comes back as 5.0)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


# Proto3 JSON writes int64 as strings: jq and JavaScript keep 53 bits, and a lease
# id (3493845877466214136) would come out rounded. Lease ids and revisions are
# int64 in the API, so hubctl's JSON writes them as strings too; counts stay numbers.
_USER_DATA = frozenset({"values", "settings"})  # config as its author wrote it


def _int64_key(key: str) -> bool:
    return key in ("lease_id", "revision") or key.endswith("_revision")


def int64_strings(value: Any) -> Any:
    """``value`` with every lease id and revision (by key) as a decimal string."""
    if isinstance(value, list):
        return [int64_strings(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for k, v in value.items():
        if _int64_key(k) and isinstance(v, int) and not isinstance(v, bool):
            out[k] = str(v)
        elif k in _USER_DATA:
            out[k] = v
        else:
            out[k] = int64_strings(v)
    return out


def show(value: Any, style: Style | None = None) -> str:
    """A config value for a table: on/off for booleans, compact JSON for the rest."""
    if isinstance(value, bool):
        word = "on" if value else "off"
        return style.state(word) if style else word
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return json.dumps(plain(value), separators=(",", ":"))


def usage_bar(used: int, limit: int, style: Style, width: int = 20) -> str:
    """``[#######.............]  35%``: green, yellow from 80%, red at the limit."""
    if limit <= 0:
        share = 1.0 if used > 0 else 0.0
        percent = "over" if used > 0 else "none allowed"
    else:
        share = used / limit
        percent = f"{share * 100:.0f}%"
    filled = min(width, round(min(share, 1.0) * width))
    if used > 0 and filled == 0:
        filled = 1  # something is in use: show it
    colour = "red" if share >= 1.0 else "yellow" if share >= 0.8 else "green"
    bar = style("#" * filled, colour) + style("." * (width - filled), "dim")
    return f"[{bar}] {percent:>4}"


class Output:
    """Where a command's results go: text (tables, colours) or JSON.

    ``emit`` prints one result; ``event`` prints one element of a stream (a line
    of text, or one JSON object per line) and flushes at once.
    """

    def __init__(self, out: IO[str], err: IO[str], *, json_mode: bool, colour: bool) -> None:
        self.out = out
        self.err = err
        self.json = json_mode
        self.style = Style(colour and not json_mode)
        self.err_style = Style(use_colour(err) if colour else False)

    def emit(self, data: Any, text: Callable[[Style], Iterable[str]]) -> None:
        if self.json:
            body = json.dumps(int64_strings(data), indent=2, sort_keys=False, default=str)
            self.out.write(body + "\n")
        else:
            for line in text(self.style):
                self.out.write(line + "\n")
        self.out.flush()

    def event(self, data: Any, text: Callable[[Style], str]) -> None:
        if self.json:
            line = json.dumps(int64_strings(data), separators=(",", ":"), default=str)
            self.out.write(line + "\n")
        else:
            self.out.write(text(self.style) + "\n")
        self.out.flush()

    def note(self, message: str) -> None:
        """A remark for people (stderr, so it never mixes into JSON on stdout)."""
        self.err.write(self.err_style(message, "dim") + "\n")
        self.err.flush()
