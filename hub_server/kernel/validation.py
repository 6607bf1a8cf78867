"""Input rules shared by every service. A name that passes them is safe to put in
an etcd key: no '/', no '..', no NUL or other control character, no space, no
look-alike unicode (ASCII only), bounded length.

Every pattern is applied with ``fullmatch``: ``re.match`` with a ``$`` anchor
lets a trailing newline through."""

from __future__ import annotations

import functools
import ipaddress
import math
import re
from typing import Any

from google.protobuf import descriptor, message, timestamp_pb2

from hub_server.kernel.errors import InvalidArgument, Violations

# The one alphabet of every name that becomes part of an etcd key (instance ids,
# tenant ids, deployment ids, circuit and alert ids, ...): 1-128 ASCII letters,
# digits and . _ : -, starting with a letter or digit (so never ".", ".hidden" or
# "-x"), never "..". Service names are DNS labels, a subset of it.
MAX_KEY_NAME = 128
_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
KEY_NAME_RULE = (
    f"must be 1-{MAX_KEY_NAME} ASCII letters, digits, '.', '_', ':' or '-', starting with a "
    "letter or digit, without '..'"
)
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_HOST_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_METADATA_KEY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}")

# Timestamps a request may carry: what google.protobuf.Timestamp can represent
# (0001-01-01 .. 9999-12-31); anything else cannot be converted or sent back.
_MIN_TIMESTAMP = -62_135_596_800
_MAX_TIMESTAMP = 253_402_300_799


def is_key_name(value: str) -> bool:
    """Whether ``value`` may be one segment of an etcd key."""
    return len(value) <= MAX_KEY_NAME and _is_key_name(value)


# Cached: the key builders ask about the same few names on hot paths. Only short
# strings get here, so the cache stays small whatever callers send.
@functools.lru_cache(maxsize=16_384)
def _is_key_name(value: str) -> bool:
    return _KEY_NAME.fullmatch(value) is not None and ".." not in value


def require_key_name(field_path: str, value: str) -> str:
    """``value`` if it may be a key segment; else InvalidArgument naming the field.
    The key builders (hub_server/store/keys.py) call this as the last line of
    defence; servicers check first with check_safe_id / check_dns_label."""
    if not is_key_name(value):
        raise InvalidArgument.single(field_path, "is required" if not value else KEY_NAME_RULE)
    return value


def check_dns_label(v: Violations, path: str, value: str, *, required: bool = True) -> None:
    if not value:
        if required:
            v.add(path, "is required")
        return
    if not _DNS_LABEL.fullmatch(value):
        v.add(
            path,
            "must be a DNS label: 1-63 lower-case letters, digits or '-', "
            "starting and ending with a letter or digit",
        )


def check_safe_id(v: Violations, path: str, value: str, *, required: bool = True) -> None:
    if not value:
        if required:
            v.add(path, "is required")
        return
    if not is_key_name(value):
        v.add(path, KEY_NAME_RULE)


def check_host(v: Violations, path: str, value: str) -> None:
    if not value:
        v.add(path, "is required")
        return
    try:
        ipaddress.ip_address(value)
        return
    except ValueError:
        pass
    labels = value.rstrip(".").split(".")
    if len(value) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        v.add(path, "must be an IP address or a host name (ASCII labels of 1-63, at most 253)")


def check_port(v: Violations, path: str, value: int) -> None:
    if not 1 <= value <= 65535:
        v.add(path, "must be between 1 and 65535")


# The most items one page of any listing holds (listing RPCs, the audit trail).
MAX_PAGE = 1000


def check_range(v: Violations, path: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        v.add(path, f"must be between {lo} and {hi}")


def check_version(v: Violations, path: str, value: str) -> None:
    if value and not _VERSION.fullmatch(value):
        v.add(path, "must be 1-64 characters: letters, digits, '.', '+', '_' or '-'")


TIMESTAMP_RULE = "must be a valid timestamp (years 1-9999, nanos 0-999999999)"
DURATION_RULE = (
    "must be a valid duration (seconds within ±315576000000, nanos within ±999999999 "
    "and of the same sign as seconds)"
)
FINITE_RULE = "must be a finite number (not NaN or Infinity)"
_MAX_DURATION = 315_576_000_000  # 10,000 years, google.protobuf.Duration's range


def timestamp_ok(value: timestamp_pb2.Timestamp) -> bool:
    return _MIN_TIMESTAMP <= value.seconds <= _MAX_TIMESTAMP and 0 <= value.nanos < 10**9


def duration_ok(value: message.Message) -> bool:
    """A normalised google.protobuf.Duration in range (json_format and grpcurl
    refuse any other, so one stored would break every JSON reader)."""
    seconds, nanos = value.seconds, value.nanos  # type: ignore[attr-defined]
    return (
        -_MAX_DURATION <= seconds <= _MAX_DURATION
        and -(10**9) < nanos < 10**9
        and not (seconds > 0 > nanos or seconds < 0 < nanos)
    )


def check_timestamp(v: Violations, path: str, value: timestamp_pb2.Timestamp) -> None:
    """A set timestamp must be one google.protobuf.Timestamp can hold."""
    if not timestamp_ok(value):
        v.add(path, TIMESTAMP_RULE)


# -- every request: well-known types and floating point --------------------------------

_F = descriptor.FieldDescriptor
_DURATION = "google.protobuf.Duration"
_TIMESTAMP = "google.protobuf.Timestamp"
_STRUCT = "google.protobuf.Struct"
_VALUE = "google.protobuf.Value"
_LIST_VALUE = "google.protobuf.ListValue"
_FLOATS = (_F.TYPE_DOUBLE, _F.TYPE_FLOAT)
_MAX_MALFORMED = 10  # reported per request; one is enough to fix, 10,000 would not fit a trailer
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")


@functools.cache
def _may_hold_checked(desc: descriptor.Descriptor) -> bool:
    """Whether a message of this type can contain, at any depth, a Duration, a
    Timestamp or a double/float (Struct numbers included). Most requests cannot,
    and are then not walked at all."""
    seen, todo = set(), [desc]
    while todo:
        d = todo.pop()
        if d.full_name in seen:
            continue
        seen.add(d.full_name)
        if d.full_name in (_DURATION, _TIMESTAMP):
            return True
        for f in d.fields:
            if f.type in _FLOATS:
                return True
            if f.message_type is not None:
                todo.append(f.message_type)
    return False


@functools.cache
def _checked_fields(desc: descriptor.Descriptor) -> tuple[_F, ...]:
    """The fields of a message type whose values can contain what the walk
    checks: the walk reads only these, never the rest (strings, integers, a map
    of strings), which is most of a stored instance."""
    return tuple(
        f
        for f in desc.fields
        if f.type in _FLOATS or (f.message_type is not None and _may_hold_checked(f.message_type))
    )


_WALK_ALWAYS = (_DURATION, _TIMESTAMP, _STRUCT, _VALUE, _LIST_VALUE)


def _plainly_fine(msg: message.Message) -> bool:
    """True when nothing in ``msg`` is bad, found without the walk's paths and
    bookkeeping: its set Durations and Timestamps in range, floats finite, no
    Struct, list or map to look into. False means "walk it" (most requests and
    every stored instance are plainly fine: a cold start checks a million)."""
    if msg.DESCRIPTOR.full_name in _WALK_ALWAYS:
        return False
    for field in _checked_fields(msg.DESCRIPTOR):
        if field.is_repeated:
            if getattr(msg, field.name):
                return False
        elif field.message_type is None:
            if not math.isfinite(getattr(msg, field.name)):
                return False
        elif msg.HasField(field.name):
            sub = getattr(msg, field.name)
            name = sub.DESCRIPTOR.full_name
            if name == _TIMESTAMP:
                if not timestamp_ok(sub):
                    return False
            elif name == _DURATION:
                if not duration_ok(sub):
                    return False
            elif not _plainly_fine(sub):
                return False
    return True


def can_be_malformed(message_type: type[message.Message]) -> bool:
    """Whether ``check_wellformed`` can find anything in a message of this type
    (decided per type, e.g. once per method: most requests cannot)."""
    return _may_hold_checked(message_type.DESCRIPTOR)


def check_wellformed(v: Violations, msg: message.Message, path: str = "") -> None:
    """Reports, anywhere in ``msg``, a Duration or Timestamp out of range or not
    normalised and a double, float or Struct number that is NaN or ±Infinity,
    each naming its field path. Every request passes here as it is decoded
    (hub_server/rpc/decoding.py), so no servicer stores such a value: it would
    break json_format, grpcurl and the dashboard, and turn arithmetic into NaN."""
    if _may_hold_checked(msg.DESCRIPTOR) and not _plainly_fine(msg):
        _Walk(v).walk(msg, path)


def repair_wellformed(msg: message.Message) -> list[str]:
    """Makes a stored message (written before requests were checked) readable in
    place: a Duration that is only unnormalised is normalised, any other bad
    Duration or Timestamp is cleared, a non-finite number becomes 0 (in a
    Struct, null). Returns the paths it changed."""
    if not _may_hold_checked(msg.DESCRIPTOR) or _plainly_fine(msg):
        return []
    v = Violations()
    _Walk(v, fix=True).walk(msg, "")
    return [item.field for item in v.items]


def _normalised(d: message.Message) -> bool:
    """Carries whole seconds out of ``nanos`` and aligns the signs; in range after?"""
    total = d.seconds * 10**9 + d.nanos  # type: ignore[attr-defined]
    seconds, nanos = divmod(abs(total), 10**9)
    sign = -1 if total < 0 else 1
    if seconds > _MAX_DURATION:
        return False
    d.seconds, d.nanos = sign * seconds, sign * nanos  # type: ignore[attr-defined]
    return True


class _Walk:
    """One pass over a message: reports (and, with ``fix``, repairs) bad values.
    ``walk`` answers whether the message itself must be dropped by its parent."""

    def __init__(self, v: Violations, *, fix: bool = False) -> None:
        self.v, self.fix, self.found = v, fix, 0

    def bad(self, path: str, rule: str) -> None:
        self.found += 1
        if self.found <= _MAX_MALFORMED or self.fix:
            self.v.add(path or "request", rule)

    def walk(self, msg: message.Message, path: str) -> bool:
        name = msg.DESCRIPTOR.full_name
        if name == _DURATION:
            if duration_ok(msg):
                return False
            self.bad(path, DURATION_RULE)
            return not (self.fix and _normalised(msg))
        if name == _TIMESTAMP:
            if timestamp_ok(msg):  # type: ignore[arg-type]
                return False
            self.bad(path, TIMESTAMP_RULE)
            return True
        if name == _STRUCT:
            fields = msg.fields  # type: ignore[attr-defined]
            for key in list(fields):
                sub = f"{path}.{key}" if _PLAIN_KEY.fullmatch(key) else f"{path}[{key[:40]!r}]"
                if self.walk(fields[key], sub) and self.fix:
                    fields[key].null_value = 0
            return False
        if name == _VALUE:
            kind = msg.WhichOneof("kind")
            if kind == "number_value" and not math.isfinite(msg.number_value):  # type: ignore[attr-defined]
                self.bad(path, FINITE_RULE)
                return True
            if kind in ("struct_value", "list_value"):
                self.walk(getattr(msg, kind), path)
            return False
        if name == _LIST_VALUE:
            for i, item in enumerate(msg.values):  # type: ignore[attr-defined]
                if self.walk(item, f"{path}[{i}]") and self.fix:
                    item.null_value = 0
            return False
        for field in _checked_fields(msg.DESCRIPTOR):
            if field.is_repeated:
                value = getattr(msg, field.name)
                if not value:
                    continue
            elif field.message_type is not None:
                if not msg.HasField(field.name):
                    continue
                value = getattr(msg, field.name)
            else:
                value = getattr(msg, field.name)  # a float: its default, 0, is finite
            at = f"{path}.{field.name}" if path else field.name
            self.field(msg, field, value, at)
        return False

    def field(self, msg: message.Message, field: _F, value: Any, at: str) -> None:
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            value_field = entry.fields_by_name["value"]
            for key in list(value):
                sub = f"{at}[{str(key)[:40]!r}]"
                if value_field.type == _F.TYPE_MESSAGE:
                    drop = self.walk(value[key], sub)
                elif value_field.type in _FLOATS and not math.isfinite(value[key]):
                    self.bad(sub, FINITE_RULE)
                    drop = True
                else:
                    drop = False
                if drop and self.fix:
                    del value[key]
        elif field.type == _F.TYPE_MESSAGE and field.is_repeated:
            for i in reversed(range(len(value))):
                if self.walk(value[i], f"{at}[{i}]") and self.fix:
                    del value[i]
        elif field.type == _F.TYPE_MESSAGE:
            if self.walk(value, at) and self.fix:
                msg.ClearField(field.name)
        elif field.type in _FLOATS and field.is_repeated:
            for i, item in enumerate(value):
                if not math.isfinite(item):
                    self.bad(f"{at}[{i}]", FINITE_RULE)
                    if self.fix:
                        value[i] = 0.0
        elif field.type in _FLOATS and not math.isfinite(value):
            self.bad(at, FINITE_RULE)
            if self.fix:
                msg.ClearField(field.name)


# Labels (RegisterRequest.metadata): at most 64 entries, keys up to 63 bytes, values
# up to 512 bytes, so at most 36,800 bytes; no other limit applies (the proto
# comment, the README and the messages below say the same).
MAX_METADATA_ENTRIES = 64
MAX_METADATA_KEY = 63
MAX_METADATA_VALUE = 512
METADATA_RULE = (
    f"at most {MAX_METADATA_ENTRIES} entries, keys up to {MAX_METADATA_KEY} bytes, "
    f"values up to {MAX_METADATA_VALUE} bytes"
)


def check_metadata(v: Violations, path: str, metadata: dict[str, str]) -> None:
    if len(metadata) > MAX_METADATA_ENTRIES:
        v.add(path, f"has {len(metadata)} entries; {METADATA_RULE}")
        return
    for key, value in metadata.items():
        if not _METADATA_KEY.fullmatch(key):
            v.add(
                f"{path}[{key[:40]!r}]",
                f"key must be 1-{MAX_METADATA_KEY} letters, digits, '.', '_', '/' or '-', "
                "starting and ending with a letter or digit",
            )
        size = len(value.encode())
        if size > MAX_METADATA_VALUE:
            v.add(f"{path}[{key[:40]!r}]", f"value is {size} bytes; {METADATA_RULE}")
