"""Input rules shared by every service. A name that passes them is safe to put in
an etcd key: no '/', no '..', no NUL or other control character, no space, no
look-alike unicode (ASCII only), bounded length.

Every pattern is applied with ``fullmatch``: ``re.match`` with a ``$`` anchor
lets a trailing newline through."""

from __future__ import annotations

import functools
import ipaddress
import re

from google.protobuf import timestamp_pb2

from hub_server.domain.errors import InvalidArgument, Violations

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


def check_range(v: Violations, path: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        v.add(path, f"must be between {lo} and {hi}")


def check_version(v: Violations, path: str, value: str) -> None:
    if value and not _VERSION.fullmatch(value):
        v.add(path, "must be 1-64 characters: letters, digits, '.', '+', '_' or '-'")


def check_timestamp(v: Violations, path: str, value: timestamp_pb2.Timestamp) -> None:
    """A set timestamp must be one google.protobuf.Timestamp can hold."""
    if not (_MIN_TIMESTAMP <= value.seconds <= _MAX_TIMESTAMP and 0 <= value.nanos < 10**9):
        v.add(path, "must be a valid timestamp (years 1-9999, nanos 0-999999999)")


# Labels (RegisterRequest.metadata): bounded in number, key and value size.
MAX_METADATA_ENTRIES = 64
MAX_METADATA_VALUE = 512
MAX_METADATA_TOTAL = 16 * 1024


def check_metadata(v: Violations, path: str, metadata: dict[str, str]) -> None:
    if len(metadata) > MAX_METADATA_ENTRIES:
        v.add(path, f"has {len(metadata)} entries, at most {MAX_METADATA_ENTRIES} are allowed")
        return
    total = 0
    for key, value in metadata.items():
        if not _METADATA_KEY.fullmatch(key):
            v.add(
                f"{path}[{key[:40]!r}]", "key must be 1-63 of letters, digits, '.', '_', '/', '-'"
            )
        size = len(value.encode())
        if size > MAX_METADATA_VALUE:
            v.add(f"{path}[{key[:40]!r}]", f"value is {size} bytes, at most {MAX_METADATA_VALUE}")
        total += len(key) + size
    if total > MAX_METADATA_TOTAL:
        v.add(path, f"is {total} bytes in all, at most {MAX_METADATA_TOTAL}")
