"""Input rules shared by every service. A name that passes them is safe to put in
an etcd key: no '/', no '..', no NUL, no look-alike unicode, bounded length."""

from __future__ import annotations

import ipaddress
import re

from hub_server.domain.errors import Violations

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# Instance ids, tenant ids and similar: ASCII letters, digits and . _ : -, starting
# with a letter or digit, never "..".
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_HOST_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_METADATA_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}$")

MAX_METADATA_ENTRIES = 64
MAX_METADATA_VALUE = 512
MAX_METADATA_TOTAL = 16 * 1024


def check_dns_label(v: Violations, path: str, value: str, *, required: bool = True) -> None:
    if not value:
        if required:
            v.add(path, "is required")
        return
    if not _DNS_LABEL.match(value):
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
    if not _SAFE_ID.match(value) or ".." in value:
        v.add(
            path,
            "must be 1-128 ASCII letters, digits, '.', '_', ':' or '-', starting with a "
            "letter or digit, without '..'",
        )


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
    if len(value) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        v.add(path, "must be an IP address or a host name (ASCII labels of 1-63, at most 253)")


def check_port(v: Violations, path: str, value: int) -> None:
    if not 1 <= value <= 65535:
        v.add(path, "must be between 1 and 65535")


def check_range(v: Violations, path: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        v.add(path, f"must be between {lo} and {hi}")


def check_version(v: Violations, path: str, value: str) -> None:
    if value and not _VERSION.match(value):
        v.add(path, "must be 1-64 characters: letters, digits, '.', '+', '_' or '-'")


def check_metadata(v: Violations, path: str, metadata: dict[str, str]) -> None:
    if len(metadata) > MAX_METADATA_ENTRIES:
        v.add(path, f"has {len(metadata)} entries, at most {MAX_METADATA_ENTRIES} are allowed")
        return
    total = 0
    for key, value in metadata.items():
        if not _METADATA_KEY.match(key):
            v.add(
                f"{path}[{key[:40]!r}]", "key must be 1-63 of letters, digits, '.', '_', '/', '-'"
            )
        size = len(value.encode())
        if size > MAX_METADATA_VALUE:
            v.add(f"{path}[{key[:40]!r}]", f"value is {size} bytes, at most {MAX_METADATA_VALUE}")
        total += len(key) + size
    if total > MAX_METADATA_TOTAL:
        v.add(path, f"is {total} bytes in all, at most {MAX_METADATA_TOTAL}")
