"""ErrorDNA: fingerprint, classify and count a service's errors, without I/O.

A fingerprint identifies *a bug*, not an occurrence: the message is normalised
(ids, numbers, addresses, paths, timestamps, quoted values removed) and hashed
with the exception type and, for raised exceptions, the innermost frame's
``module:function`` (never a line number or file path, so it is stable across
deployments, processes and hash seeds).

Classification order, most reliable signal first:

1. builtin exception types whose meaning is unambiguous (``TimeoutError``,
   ``ConnectionError`` family, ``PermissionError``, ``MemoryError``, ``OSError``
   errno, ``ImportError``) and ``KeyError`` raised by ``os.environ``;
2. the remote's own verdict: a gRPC status code, then an HTTP status code;
3. message patterns (database, auth, connection, timeout, exhaustion, config,
   validation, dependency), most specific first;
4. third-party exception class names (``ReadTimeout``, ``DeadlockDetected``, ...)
   and broad builtins (``ValueError``, ``KeyError``, ``TypeError``).

Steps 1-3 are tried on the exception, then on its ``__cause__``/``__context__``
chain (``RuntimeError("fetch failed") from ConnectionRefusedError`` is a
connection error); step 4 only if none of them decided; else ``UNKNOWN``.

Broad builtins come after message patterns on purpose: a ``ValueError`` saying
"environment variable X is not set" is a configuration error.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import ipaddress
import os
import re
import socket
import sysconfig
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, TypeVar
from urllib.parse import urlsplit

__all__ = [
    "ErrorAnalysis",
    "ErrorCategory",
    "ErrorDNA",
    "ErrorPattern",
    "PatternDelta",
    "Severity",
    "normalize_message",
]

_MAX_INPUT = 2048  # characters of a message that are normalised and classified
_SAMPLE_LEN = 500
_FINGERPRINT_BYTES = 8  # 16 hex digits


class ErrorCategory(StrEnum):
    """What kind of failure an error is; decides the suggested actions."""

    CONNECTION = "connection"
    TIMEOUT = "timeout"
    AUTHENTICATION = "authentication"
    AUTHORIZATION = "authorization"
    VALIDATION = "validation"
    RESOURCE_EXHAUSTION = "resource_exhaustion"
    DATABASE = "database"
    DEPENDENCY = "dependency"
    CONFIGURATION = "configuration"
    UNKNOWN = "unknown"


class Severity(StrEnum):
    """How urgent an error is."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {Severity.LOW: 0, Severity.MEDIUM: 1, Severity.HIGH: 2, Severity.CRITICAL: 3}


@dataclass(frozen=True)
class ErrorAnalysis:
    """The verdict on one occurrence.

    Attributes:
        fingerprint: 16 hex digits; equal for occurrences of the same bug.
        normalized_message: the message with the varying parts replaced by
            placeholders (``<n>``, ``<uuid>``, ``<ip>``, ``<str>``, ...).
        category: what kind of failure this is.
        severity: how urgent, from the category and the matched rule.
        suggested_actions: concrete next steps for this kind of failure.
        exception_type: ``module.QualName`` (bare for builtins); for a string,
            the type named by a leading ``SomeError:`` if any, else ``None``.
        occurrences: how many times this service has seen the fingerprint
            (local count, this occurrence included).
        first_seen, last_seen: epoch seconds, from the analyser's clock.
        sample: the first raw message seen for the fingerprint, truncated.
        service: the analysing service.
        message: this occurrence's raw message, truncated.
        location: ``module:function`` of the innermost frame, if raised.
        matched_by: which signal decided the category (``type:TimeoutError``,
            ``grpc:UNAVAILABLE``, ``http:429``, ``message:deadlock``, ...).
        context: the context passed to ``analyze``.
    """

    fingerprint: str
    normalized_message: str
    category: ErrorCategory
    severity: Severity
    suggested_actions: tuple[str, ...]
    exception_type: str | None
    occurrences: int
    first_seen: float
    last_seen: float
    sample: str
    service: str
    message: str = ""
    location: str | None = None
    matched_by: str = ""
    context: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def log_fields(self) -> dict[str, Any]:
        """Flat fields for ``logger.error(..., extra=analysis.log_fields())``."""
        return {
            "error_fingerprint": self.fingerprint,
            "error_category": self.category.value,
            "error_severity": self.severity.value,
            "error_type": self.exception_type,
            "error_occurrences": self.occurrences,
        }


@dataclass(frozen=True)
class ErrorPattern:
    """A fingerprint's running total in this process."""

    fingerprint: str
    service: str
    category: ErrorCategory
    severity: Severity
    exception_type: str | None
    normalized_message: str
    sample: str
    count: int
    first_seen: float
    last_seen: float


@dataclass(frozen=True)
class PatternDelta(ErrorPattern):
    """Like ``ErrorPattern`` but ``count`` is the number of occurrences since the
    previous drain, so a hub can add deltas from many replicas. ``first_seen`` is
    the fingerprint's first sighting in this process (take the minimum),
    ``last_seen`` the latest (take the maximum)."""


Reporter = Callable[[list[PatternDelta]], Awaitable[None]]
_P = TypeVar("_P", bound=ErrorPattern)


# --------------------------------------------------------------------------
# Normalisation


def _sub(pattern: str, flags: int = 0) -> re.Pattern[str]:
    return re.compile(pattern, flags)


# Tokens that look variable but carry meaning are stashed before the rules run
# and restored afterwards, so "429 Too Many Requests" and "503 Service
# Unavailable" do not normalise to the same text.
_HTTP_REASONS = (
    "Bad Request|Unauthorized|Payment Required|Forbidden|Not Found|Method Not Allowed|"
    "Not Acceptable|Proxy Authentication Required|Request Timeout|Conflict|Gone|"
    "Precondition Failed|Payload Too Large|Request Entity Too Large|Unsupported Media Type|"
    "Unprocessable Entity|Unprocessable Content|Too Early|Too Many Requests|"
    "Internal Server Error|Not Implemented|Bad Gateway|Service Unavailable|Gateway Timeout"
)
_PROTECT = (
    _sub(r"\[Errno -?\d+\]"),
    _sub(rf"\b[1-5]\d\d (?:{_HTTP_REASONS})\b"),
    _sub(r"(?i:\bHTTP(?:/\d(?:\.\d)?)?|\bstatus(?:[ _]?code)?)\s*[=:]?\s*[1-5]\d\d\b"),
    _sub(r"(?i:\b(?:error_?code|err_?code|code|errno|sqlstate))\s*[=:]\s*-?\w+"),
    _sub(r"(?<=\()\d{4,5}(?=, ['\"])"),  # MySQL-style "(1062, '...')" error numbers
)
_PUA = 0xE000  # private-use characters stand in for stashed tokens
_PUA_CHARS = _sub("[\ue000-\uf8ff]")

_URL = _sub(r"(?<![\w+.-])[a-zA-Z][a-zA-Z0-9+.-]{0,15}://[^\s'\"<>()\[\]{}]+")
_GRPC_DEBUG = _sub(r"\s*debug_error_string\s*=\s*\"[^\n]*")
_MON = "Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec"
_DAY = "Mon|Tue|Wed|Thu|Fri|Sat|Sun"
_TIMESTAMPS = (
    # ISO 8601 / RFC 3339, with or without time and zone
    _sub(
        r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?"
        r"(?:\s?(?:Z|[+-]\d{2}:?\d{2}|UTC|GMT)\b)?)?(?!\d)"
    ),
    # Common Log Format: 10/Oct/2000:13:55:36 -0700
    _sub(rf"\b\d{{2}}/(?:{_MON})/\d{{4}}:\d{{2}}:\d{{2}}:\d{{2}}(?:\s[+-]\d{{4}})?"),
    # RFC 2822 / HTTP date: Mon, 02 Jan 2006 15:04:05 GMT
    _sub(
        rf"\b(?:{_DAY}),\s\d{{1,2}}\s(?:{_MON})\s\d{{4}}\s\d{{2}}:\d{{2}}:\d{{2}}"
        r"(?:\s(?:GMT|UTC|[+-]\d{4}))?"
    ),
    # syslog / ctime: Jan  2 15:04:05 [2006]
    _sub(rf"\b(?:(?:{_DAY})\s)?(?:{_MON})\s+\d{{1,2}}\s\d{{2}}:\d{{2}}:\d{{2}}(?:\s\d{{4}})?"),
    # bare time of day
    _sub(r"\b\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?\b"),
)
_EMAIL = _sub(r"(?<![\w.+-])[\w+-][\w.+-]{0,63}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+\b")
_UUID = _sub(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")
_IPV4 = _sub(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?::(\d{1,5}))?(?!\d|\.\d)")
_IPV6_BRACKETED = _sub(r"\[([0-9A-Fa-f:.]+(?:%\w+)?)\](?::(\d{1,5}))?")
_IPV6_BARE = _sub(r"(?<![\w:.%])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:%\w+)?(?![\w:])")
_HOST_PORT = _sub(r"(?<![\w.:/@-])([A-Za-z][\w-]*(?:\.[\w-]+)*):(\d{1,5})(?!\d)")
_HOST_PORT_LABELS = frozenset(
    "line port code pid errno status id offset partition size count char column col "
    "timeout retry attempt version index row".split()
)
# Kubernetes pod names: <deployment>-<replicaset hash>-<5 chars>, a digit somewhere.
_POD = _sub(r"-(?=[a-z0-9]{8,10}-[a-z0-9]{5}\b)(?=[a-z0-9-]{0,16}\d)[a-z0-9]{8,10}-[a-z0-9]{5}\b")
_HEX_PREFIXED = _sub(r"\b0x[0-9a-fA-F]+\b")
_HEX_LONG = _sub(r"(?<![0-9A-Za-z])(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{8,}(?![0-9A-Za-z])")
_TOKEN = _sub(
    r"(?<![\w+/=-])(?=[\w+-]*\d)(?=[\w+-]*[a-z])(?=[\w+-]*[A-Z])[\w+-]{20,}={0,2}(?![\w+/=-])"
)
_UNIX_PATH = _sub(r"(?<![\w/.:<>-])(?:~|\.{1,2})?(?:/[\w.@+-]+){2,}/?")
_WINDOWS_PATH = _sub(r"\b[A-Za-z]:\\[^\s'\"<>|]*")
_DURATION = _sub(
    r"(?<![\w.])\d+(?:\.\d+)?\s?(?:ns|us|µs|ms|milliseconds?|s|secs?|seconds?|mins?|minutes?"
    r"|h|hrs?|hours?)\b"
)
_QUOTED = _sub(r"""(?<![\w\\])(['"])((?:(?!\1)[^\n\\]|\\.){0,300})\1(?!\w)""")
_PLACEHOLDER_ONLY = _sub(r"<\w+>(?::<\w+>)?")
_NUM_AFTER_LETTERS = _sub(r"(?<=[A-Za-z])\d{4,}")
_NUMBER = _sub(r"(?<![A-Za-z\d])\d+(?:\.\d+)*")
_REPEATS = _sub(r"(['\"]?)<(\w+)>\1(?:\s*,\s*\1<\2>\1)+")
_SPACES = _sub(r"\s+")


def _ip_or_none(text: str) -> str | None:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return None
    return "<ip>"


def _with_port(port: str | None) -> str:
    return ":<port>" if port else ""


def _ipv4(m: re.Match[str]) -> str:
    return "<ip>" + _with_port(m.group(1))


def _ipv6_bracketed(m: re.Match[str]) -> str:
    if _ip_or_none(m.group(1)) is None:
        return m.group(0)
    return "<ip>" + _with_port(m.group(2))


def _ipv6_bare(m: re.Match[str]) -> str:
    return _ip_or_none(m.group(0)) or m.group(0)


def _host_port(m: re.Match[str]) -> str:
    if m.group(1).lower() in _HOST_PORT_LABELS:
        return m.group(0)
    return "<host>:<port>"


def _scalars(text: str) -> str:
    """Ids and numbers only (used inside URL paths too)."""
    text = _UUID.sub("<uuid>", text)
    text = _HEX_PREFIXED.sub("<hex>", text)
    text = _HEX_LONG.sub("<hex>", text)
    text = _TOKEN.sub("<token>", text)
    text = _NUM_AFTER_LETTERS.sub("<n>", text)
    return _NUMBER.sub("<n>", text)


_WORD = _sub(r"[A-Za-z]{3,}")
_IDENTIFIER = _sub(r"[A-Za-z_][\w.]{0,79}")


def _quoted_values(keep_identifiers: bool) -> Callable[[re.Match[str]], str]:
    def replace(m: re.Match[str]) -> str:
        quote, content = m.group(1), m.group(2)
        if _PUA_CHARS.search(content):
            return m.group(0)
        if _PLACEHOLDER_ONLY.fullmatch(content):
            return f"'{content}'"
        if keep_identifiers and _IDENTIFIER.fullmatch(content):
            return m.group(0)
        if len(content.split()) >= 2 and _WORD.search(content):
            # A quoted sentence is part of the message, not a value: keep it but
            # normalise the values quoted inside it.
            return quote + _QUOTED.sub(replace, content) + quote
        return "'<str>'"  # one quote style: 'x' and "x" are the same value

    return replace


_QUOTED_VALUES = _quoted_values(keep_identifiers=False)
_QUOTED_VALUES_KEEP_IDENTIFIERS = _quoted_values(keep_identifiers=True)

# In these errors the quoted words name code (a key, an attribute, a module, a
# type), not data: keep them, "no attribute 'price'" and "'qty'" are two bugs.
_CODE_ERRORS = frozenset(
    "AttributeError NameError UnboundLocalError ImportError ModuleNotFoundError KeyError "
    "TypeError".split()
)
_CODE_ERROR_TYPES = (AttributeError, NameError, ImportError, KeyError, TypeError)


@functools.lru_cache(maxsize=1024)
def normalize_message(message: str, *, keep_identifiers: bool = False) -> str:
    """``message`` with what varies between occurrences of one error replaced by
    placeholders; whitespace collapsed. Pure and deterministic.

    Args:
        message: the raw message.
        keep_identifiers: keep quoted identifiers (``'price'``) instead of
            replacing them with ``'<str>'``; for errors whose quoted words are
            code names (KeyError, AttributeError, ImportError, ...).
    """
    text = message[:_MAX_INPUT]
    stash: list[str] = []

    def keep(token: str) -> str:
        stash.append(token)
        return chr(_PUA + len(stash) - 1)

    text = _PUA_CHARS.sub("", text)  # nothing in the input may pose as a stashed token
    text = _GRPC_DEBUG.sub("", text)

    def url(m: re.Match[str]) -> str:
        raw, trail = m.group(0), ""
        while raw and raw[-1] in ".,;:!?":
            raw, trail = raw[:-1], raw[-1] + trail
        try:
            parts = urlsplit(raw)
            host, port = parts.hostname or "", parts.port
        except ValueError:
            return keep("<url>") + trail
        host = _ip_or_none(host) or _NUMBER.sub("<n>", host)
        path = _scalars(parts.path)
        query = "?<query>" if parts.query else ""
        return keep(
            f"{parts.scheme}://{host}{_with_port(str(port) if port else None)}{path}{query}"
        )

    for pattern in _PROTECT:
        text = pattern.sub(lambda m: keep(m.group(0)), text)
    text = _URL.sub(url, text)
    text = _UNIX_PATH.sub("<path>", text)
    text = _WINDOWS_PATH.sub("<path>", text)
    for pattern in _TIMESTAMPS:
        text = pattern.sub("<ts>", text)
    text = _EMAIL.sub("<email>", text)
    text = _UUID.sub("<uuid>", text)
    text = _IPV4.sub(_ipv4, text)
    text = _IPV6_BRACKETED.sub(_ipv6_bracketed, text)
    text = _IPV6_BARE.sub(_ipv6_bare, text)
    text = _HOST_PORT.sub(_host_port, text)
    text = _POD.sub("-<pod>", text)
    text = _DURATION.sub("<duration>", text)
    text = _QUOTED.sub(
        _QUOTED_VALUES_KEEP_IDENTIFIERS if keep_identifiers else _QUOTED_VALUES, text
    )
    text = _scalars(text)
    text = _REPEATS.sub(r"\1<\2>\1, ...", text)
    text = _SPACES.sub(" ", text).strip()
    return _PUA_CHARS.sub(lambda m: stash[ord(m.group(0)) - _PUA], text)


# --------------------------------------------------------------------------
# Classification

_C = ErrorCategory
_S = Severity

_CATEGORY_SEVERITY = {
    _C.CONNECTION: _S.HIGH,
    _C.TIMEOUT: _S.MEDIUM,
    _C.AUTHENTICATION: _S.HIGH,
    _C.AUTHORIZATION: _S.MEDIUM,
    _C.VALIDATION: _S.LOW,
    _C.RESOURCE_EXHAUSTION: _S.HIGH,
    _C.DATABASE: _S.HIGH,
    _C.DEPENDENCY: _S.MEDIUM,
    _C.CONFIGURATION: _S.CRITICAL,
    _C.UNKNOWN: _S.MEDIUM,
}

_CATEGORY_ACTIONS: dict[ErrorCategory, tuple[str, ...]] = {
    _C.CONNECTION: (
        "Check that the target host and port in this service's configuration are right and "
        "that the dependency is up (its health check in the hub registry).",
        "Check the network path: DNS resolution, firewall/security-group rules, TLS settings.",
        "Retry with exponential backoff and jitter, behind a circuit breaker for this dependency.",
    ),
    _C.TIMEOUT: (
        "Check the dependency's latency (p95/p99) and load: slow queries, saturated workers, GC.",
        "Check that the timeout fits the call chain's budget; propagate gRPC deadlines instead "
        "of stacking fixed timeouts.",
        "Retry only idempotent operations, with backoff; shed load with a circuit breaker.",
    ),
    _C.AUTHENTICATION: (
        "Check the credentials / API key / token this service uses: present, for the right "
        "environment, not expired or rotated.",
        "For signed or time-bound tokens check clock skew (NTP) between the hosts.",
        "Refresh the token or re-issue the credentials; do not retry blindly, repeated "
        "failures can lock the account.",
    ),
    _C.AUTHORIZATION: (
        "Check the roles/scopes granted to this service account or tenant for the resource.",
        "Check that the tenant's subscription tier includes the requested feature.",
        "For file errors, check the file's owner and mode against the service's user.",
    ),
    _C.VALIDATION: (
        "Validate the input at the boundary and return a clear client error (INVALID_ARGUMENT "
        "/ 400) instead of failing deeper in the stack.",
        "Log the offending field (without secrets or personal data) and check the producer's "
        "schema version.",
        "Do not retry: the same input fails again.",
    ),
    _C.RESOURCE_EXHAUSTION: (
        "Identify the exhausted resource (memory, disk, file descriptors, connections, rate "
        "limit, quota) from the message and the host/tenant metrics.",
        "Back off (honour Retry-After), lower concurrency, batch requests.",
        "Look for a leak (unclosed connections or files, unbounded queues) before raising the "
        "limit or scaling out.",
    ),
    _C.DATABASE: (
        "Check database health and recent schema migrations; read the server log at the time "
        "of the error.",
        "Retry transient errors (deadlock, serialization failure) as a whole transaction, "
        "with backoff.",
        "Review the failing statement and its indexes with EXPLAIN.",
    ),
    _C.DEPENDENCY: (
        "Check the health and recent deployments of the dependency that returned the error.",
        "Degrade gracefully (cached data, fallback path) while its circuit breaker is open.",
        "Correlate with the dependency's logs using the correlation id.",
    ),
    _C.CONFIGURATION: (
        "Compare the service's settings and environment variables with the required ones "
        "(and the hub's configuration for this tenant).",
        "Check that mounted files and secrets exist at the configured paths and are readable.",
        "Validate configuration at startup and fail fast, before serving traffic.",
    ),
    _C.UNKNOWN: (
        "Read the full traceback and the context attached to the error.",
        "Write a test reproducing it and handle the exception type explicitly.",
        "If it recurs, add a classification rule so it gets a category and actions.",
    ),
}


@dataclass(frozen=True)
class _Verdict:
    category: ErrorCategory
    matched_by: str
    severity: Severity | None = None
    actions: tuple[str, ...] | None = None


@dataclass(frozen=True)
class _Rule:
    name: str
    category: ErrorCategory
    pattern: re.Pattern[str]
    severity: Severity | None = None
    actions: tuple[str, ...] | None = None


def _rule(
    name: str,
    category: ErrorCategory,
    pattern: str,
    severity: Severity | None = None,
    actions: tuple[str, ...] | None = None,
    *,
    case_sensitive: bool = False,
) -> _Rule:
    return _Rule(
        name, category, re.compile(pattern, 0 if case_sensitive else re.I), severity, actions
    )


_POOL_ACTIONS = (
    "Make sure every connection is returned to the pool (use `async with`/context managers; "
    "look for sessions held across awaits or long transactions).",
    "Size the pool from the database's max_connections divided by the number of replicas; "
    "consider a pooler (PgBouncer/ProxySQL).",
    "Bound concurrency in front of the pool (a semaphore or worker limit) so callers queue "
    "instead of timing out.",
)
_MAX_CONN_ACTIONS = (
    "Count connections per replica x replicas against the server's max_connections "
    "(or Redis maxclients); lower the pool size or add a pooler.",
    "Look for connection leaks: connections opened per request and never closed.",
    "Raise the server limit only if memory allows it.",
)
_DEADLOCK_ACTIONS = (
    "Retry the whole transaction with backoff; deadlocks are expected under contention.",
    "Take row locks in a consistent order (e.g. sort ids) in every code path.",
    "Keep transactions short; do not await network calls while holding locks.",
)
_LOCK_ACTIONS = (
    "Find the blocking transaction (pg_stat_activity / SHOW ENGINE INNODB STATUS) and why it "
    "holds locks so long.",
    "Keep transactions short and retry the waiter with backoff.",
)
_SQLITE_LOCK_ACTIONS = (
    "SQLite allows one writer: serialise writes, enable WAL mode and set a busy_timeout.",
    "Use a server database if several processes write concurrently.",
)
_UNIQUE_ACTIONS = (
    "Make the write idempotent: INSERT ... ON CONFLICT DO NOTHING/UPDATE (or upsert), keyed "
    "on the unique column.",
    "Check whether this is a duplicate delivery (retry, replayed message) and deduplicate by "
    "client id / idempotency key.",
    "Do not retry the same insert unchanged: it fails again.",
)
_CONSTRAINT_ACTIONS = (
    "Validate references and required columns before writing; insert parent rows first.",
    "Check the order of operations in the transaction and the data producer.",
)
_SCHEMA_ACTIONS = (
    "Run the pending schema migrations for this service's database and check it points at "
    "the right database/schema (search_path).",
    "Deploy migrations before the code that needs them.",
)
_REDIS_STATE_ACTIONS = (
    "Check the Redis server state (INFO persistence / replication): disk for RDB/AOF, "
    "failover in progress, or writes sent to a replica.",
    "Point writers at the primary (use Sentinel/Cluster-aware clients).",
)
_STATEMENT_TIMEOUT_ACTIONS = (
    "Find the slow statement (pg_stat_statements / slow query log) and add the missing index "
    "or narrow the query.",
    "Paginate or batch large reads and writes; move heavy reports off the request path.",
)
_RATE_LIMIT_ACTIONS = (
    "Honour Retry-After / the exchange's weight headers and back off with jitter.",
    "Spread requests with a client-side rate limiter shared by all replicas of this service "
    "(per API key); cache results that do not change per request.",
    "Check the tenant's quota and subscription tier limits in the hub.",
)
_MEMORY_ACTIONS = (
    "Check the process's memory growth (RSS over time) for a leak or an unbounded cache/queue.",
    "Bound batch and message sizes; stream large payloads instead of loading them whole.",
    "Raise the memory limit only after ruling out a leak.",
)
_DISK_ACTIONS = (
    "Free disk space: rotate/compress logs, remove old snapshots, expand the volume.",
    "Alert on disk usage before it is full.",
)
_FD_ACTIONS = (
    "Look for leaked sockets/files (lsof -p PID); close responses and sessions.",
    "Raise the nofile ulimit if the service legitimately needs more descriptors.",
)
_MESSAGE_SIZE_ACTIONS = (
    "Split the payload (pagination, streaming) or raise max message size on both ends.",
)
_ENV_ACTIONS = (
    "Set the missing environment variable/setting in the deployment (manifest, .env, secret) "
    "for this environment.",
    "Declare every required setting in one settings object validated at startup.",
)
_IMPORT_ACTIONS = (
    "Install the missing package in the service's image/virtualenv and pin it in the "
    "project's dependencies.",
    "Check the Python version and that the image was rebuilt after the dependency change.",
)
_TLS_ACTIONS = (
    "Install the CA bundle (certifi / system CA certificates) in the image, or configure the "
    "private CA for this client.",
    "Check the server certificate chain and expiry; never disable verification.",
)
_KAFKA_TOPIC_ACTIONS = (
    "Create the topic (or enable auto-creation in non-production) and check the topic name "
    "and cluster in the configuration.",
)
_KAFKA_REBALANCE_ACTIONS = (
    "Process batches faster than max.poll.interval.ms or raise it; commit after processing.",
    "Make processing idempotent: messages are redelivered after a rebalance.",
)
_DB_AUTH_ACTIONS = (
    "Check the database user and password in the secret for this environment, and that the "
    "user exists and may connect from this host (pg_hba.conf / MySQL host grants).",
    "Check whether the password was rotated without restarting the service.",
)
_EXCHANGE_FILTER_ACTIONS = (
    "Round price and quantity to the symbol's tick/step size and check minimum notional "
    "before submitting (use the exchange's exchangeInfo filters).",
    "Check the account balance/margin before placing the order.",
)
_CIRCUIT_ACTIONS = (
    "The circuit is open because the dependency kept failing: check the dependency, not this "
    "service.",
    "Serve a fallback or fail fast until the breaker half-opens.",
)


# Message rules, most specific first. Specific database and pool rules come
# before the generic timeout/connection ones because their messages also say
# "timed out" or "connection".
_MESSAGE_RULES: tuple[_Rule, ...] = (
    _rule(
        "connection_pool",
        _C.RESOURCE_EXHAUSTION,
        r"QueuePool limit of size|connection pool (?:is )?exhausted|pool (?:is )?exhausted"
        r"|\bPoolTimeout\b|timed out waiting for (?:a )?connection|couldn't get a connection",
        actions=_POOL_ACTIONS,
    ),
    _rule(
        "too_many_connections",
        _C.RESOURCE_EXHAUSTION,
        r"too many (?:connections|clients)|remaining connection slots are reserved"
        r"|max(?:imum)? number of clients reached",
        actions=_MAX_CONN_ACTIONS,
    ),
    _rule(
        "deadlock",
        _C.DATABASE,
        r"deadlock detected|deadlock found when trying to get lock|\bdeadlock\b",
        _S.MEDIUM,
        _DEADLOCK_ACTIONS,
    ),
    _rule(
        "lock_wait",
        _C.DATABASE,
        r"lock wait timeout exceeded|could not obtain lock|lock (?:request )?timeout",
        _S.MEDIUM,
        _LOCK_ACTIONS,
    ),
    _rule(
        "serialization",
        _C.DATABASE,
        r"could not serialize access|serialization failure",
        _S.MEDIUM,
        _DEADLOCK_ACTIONS,
    ),
    _rule(
        "sqlite_locked",
        _C.DATABASE,
        r"database (?:table )?is locked|database schema is locked",
        _S.MEDIUM,
        _SQLITE_LOCK_ACTIONS,
    ),
    _rule(
        "unique_violation",
        _C.DATABASE,
        r"duplicate key value violates unique constraint|duplicate entry .{0,200}? for key"
        r"|unique constraint failed|E11000 duplicate key|\bUniqueViolation\b",
        _S.MEDIUM,
        _UNIQUE_ACTIONS,
    ),
    _rule(
        "constraint_violation",
        _C.DATABASE,
        r"violates (?:foreign key|not-null|check|exclusion) constraint"
        r"|(?:foreign key|not null|check) constraint (?:fails|failed)"
        r"|column .{1,80} cannot be null",
        _S.MEDIUM,
        _CONSTRAINT_ACTIONS,
    ),
    _rule(
        "schema",
        _C.DATABASE,
        r"relation \S+ does not exist|no such (?:table|column)|table \S+ doesn't exist"
        r"|column \S+ (?:of relation \S+ )?does not exist|unknown column"
        r"|undefined (?:table|column)",
        actions=_SCHEMA_ACTIONS,
    ),
    _rule(
        "redis_state",
        _C.DATABASE,
        r"\bMISCONF\b|\bREADONLY\b You can't write|\bLOADING\b Redis is loading"
        r"|\bCLUSTERDOWN\b|\bMASTERDOWN\b",
        actions=_REDIS_STATE_ACTIONS,
        case_sensitive=True,
    ),
    _rule(
        "statement_timeout",
        _C.TIMEOUT,
        r"canceling statement due to statement timeout|statement timeout"
        r"|maximum statement execution time exceeded|query execution was interrupted",
        actions=_STATEMENT_TIMEOUT_ACTIONS,
    ),
    _rule(
        "db_authentication",
        _C.AUTHENTICATION,
        r"password authentication failed|access denied for user|\bNOAUTH\b|\bWRONGPASS\b"
        r"|no pg_hba\.conf entry",
        actions=_DB_AUTH_ACTIONS,
    ),
    _rule(
        "authentication",
        _C.AUTHENTICATION,
        r"authentication (?:failed|required|error|failure)|not authenticated|unauthenticated"
        r"|invalid (?:api[- ]?key|token|credentials?|signature|username or password)"
        r"|(?:token|signature|credentials?) (?:has |have )?expired|expired (?:token|signature)"
        r"|SASL authentication|login (?:was )?refused|ACCESS_REFUSED|\bunauthori[sz]ed\b"
        r"|bad credentials|api[- ]key (?:is )?(?:missing|invalid|revoked)",
    ),
    _rule(
        "authorization",
        _C.AUTHORIZATION,
        r"permission denied|access (?:is )?denied|\bforbidden\b|not authori[sz]ed"
        r"|insufficient (?:privileges?|permissions?|scope)|authori[sz]ation failed"
        r"|\bnot allowed to\b|\bNOPERM\b|\bTOPIC_AUTHORIZATION_FAILED\b",
    ),
    _rule(
        "tls_verify",
        _C.CONFIGURATION,
        r"certificate verify failed|CERTIFICATE_VERIFY_FAILED|self[- ]signed certificate"
        r"|unable to get local issuer certificate",
        actions=_TLS_ACTIONS,
    ),
    _rule(
        "dns",
        _C.CONNECTION,
        r"name or service not known|nodename nor servname|temporary failure in name resolution"
        r"|could not resolve host|getaddrinfo failed|no address associated with hostname",
    ),
    _rule(
        "connection",
        _C.CONNECTION,
        r"connection refused|connect call failed|failed to establish a new connection"
        r"|connection (?:was )?reset|connection aborted|broken pipe|no route to host"
        r"|network is unreachable|host is unreachable|(?:can ?not|can't|could not|unable to)"
        r" connect|failed to connect|lost connection|server has gone away"
        r"|closed the connection unexpectedly|connection to server at .{0,120}? failed"
        r"|remote end closed connection|server disconnected|connection (?:was )?closed"
        r"|connection is closed|EOF occurred in violation of protocol|unable to bootstrap"
        r"|no ?brokers ?available|broker may not be available|all connection attempts failed"
        r"|\bECONNREFUSED\b|\bECONNRESET\b|\b_TRANSPORT\b",
    ),
    _rule(
        "timeout",
        _C.TIMEOUT,
        r"\btimed out\b|\btime ?out\b|timeout|deadline (?:exceeded|expired)|took too long",
    ),
    _rule(
        "rate_limit",
        _C.RESOURCE_EXHAUSTION,
        r"too many requests|rate[- ]?limit|throttl|quota (?:exceeded|exhausted)"
        r"|exceeded (?:your |the )?quota|too much request weight|request weight",
        _S.MEDIUM,
        _RATE_LIMIT_ACTIONS,
    ),
    _rule(
        "memory",
        _C.RESOURCE_EXHAUSTION,
        r"out of memory|cannot allocate memory|OOM command not allowed|'maxmemory'"
        r"|memory limit exceeded",
        _S.CRITICAL,
        _MEMORY_ACTIONS,
    ),
    _rule(
        "disk",
        _C.RESOURCE_EXHAUSTION,
        r"no space left on device|disk (?:is )?full|could not extend file|table .{1,80} is full"
        r"|disk quota exceeded",
        _S.CRITICAL,
        _DISK_ACTIONS,
    ),
    _rule("file_descriptors", _C.RESOURCE_EXHAUSTION, r"too many open files", _S.HIGH, _FD_ACTIONS),
    _rule(
        "message_size",
        _C.RESOURCE_EXHAUSTION,
        r"message larger than max|MSG_SIZE_TOO_LARGE|message ?size ?too ?large",
        _S.MEDIUM,
        _MESSAGE_SIZE_ACTIONS,
    ),
    _rule(
        "exhausted",
        _C.RESOURCE_EXHAUSTION,
        r"resource temporarily unavailable|queue (?:is )?full|\bQueueFull\b|buffer (?:is )?full"
        r"|resources? exhausted",
    ),
    _rule(
        "missing_setting",
        _C.CONFIGURATION,
        r"missing required (?:setting|config(?:uration)?(?: value)?|environment variable|env var)"
        r"|(?:environment|env) variable .{0,80}?(?:is )?(?:not set|missing|undefined|required)"
        r"|not set in (?:the )?environment|setting (?:must not be empty|is (?:required|missing))"
        r"|validation errors? for \w*(?:Settings|Config)\b",
        actions=_ENV_ACTIONS,
    ),
    _rule(
        "import",
        _C.CONFIGURATION,
        r"no module named|cannot import name|DLL load failed|cannot open shared object file",
        actions=_IMPORT_ACTIONS,
    ),
    _rule(
        "kafka_topic",
        _C.CONFIGURATION,
        r"unknown topic or partition|UNKNOWN_TOPIC_OR_PART",
        actions=_KAFKA_TOPIC_ACTIONS,
    ),
    _rule(
        "configuration",
        _C.CONFIGURATION,
        r"improperly ?configured|invalid configuration|configuration error|misconfigur"
        r"|config(?:uration)? file .{0,120}?not found|unknown (?:config(?:uration)? )?option"
        r"|no such file or directory: .{0,200}?\.(?:ya?ml|json|toml|ini|env|conf|cfg|pem|crt"
        r"|key|cert)\b",
    ),
    _rule(
        "exchange_filter",
        _C.VALIDATION,
        r"filter failure|insufficient (?:balance|funds|margin)|invalid quantity|invalid price"
        r"|min(?:imum)? notional",
        actions=_EXCHANGE_FILTER_ACTIONS,
    ),
    _rule(
        "validation",
        _C.VALIDATION,
        r"validation errors?|invalid literal|could not convert|is not a valid|invalid input syntax"
        r"|invalid (?:value|argument|parameter|format|input|request|payload|json|enum)"
        r"|expecting value|expecting property name|unterminated string|field required"
        r"|missing required (?:field|parameter|argument|property)"
        r"|must be (?:a |an |positive|greater|less|between|one of|non-|at (?:least|most))"
        r"|out of range|value too long|unsupported operand|expected .{1,80}? got"
        r"|bad request|malformed|unprocessable",
    ),
    _rule(
        "circuit_open",
        _C.DEPENDENCY,
        r"circuit(?: breaker)? (?:is )?open|CircuitBreakerError|CircuitOpen",
        actions=_CIRCUIT_ACTIONS,
    ),
    _rule(
        "kafka_rebalance",
        _C.DEPENDENCY,
        r"rebalanc|commit cannot be completed",
        actions=_KAFKA_REBALANCE_ACTIONS,
    ),
    _rule(
        "dependency",
        _C.DEPENDENCY,
        r"bad gateway|service unavailable|upstream|not ?leader ?for ?partition|NOT_LEADER"
        r"|(?:coordinator|leader) not available|internal server error|server error",
    ),
)

_GRPC_STATUS = re.compile(
    r"StatusCode\.([A-Z_]+)|\bstatus\s*=\s*([A-Z_]{4,})\b"
    r"|\b(UNAVAILABLE|DEADLINE_EXCEEDED|UNAUTHENTICATED|PERMISSION_DENIED|RESOURCE_EXHAUSTED"
    r"|INVALID_ARGUMENT|FAILED_PRECONDITION|OUT_OF_RANGE)\b"
)
_GRPC_DECISIVE = {
    "UNAVAILABLE": _C.CONNECTION,
    "DEADLINE_EXCEEDED": _C.TIMEOUT,
    "UNAUTHENTICATED": _C.AUTHENTICATION,
    "PERMISSION_DENIED": _C.AUTHORIZATION,
    "RESOURCE_EXHAUSTED": _C.RESOURCE_EXHAUSTION,
    "INVALID_ARGUMENT": _C.VALIDATION,
    "FAILED_PRECONDITION": _C.VALIDATION,
    "OUT_OF_RANGE": _C.VALIDATION,
}
# Codes that only say "the remote failed": the message may say more.
_GRPC_REMOTE = frozenset(
    "CANCELLED UNKNOWN NOT_FOUND ALREADY_EXISTS ABORTED UNIMPLEMENTED INTERNAL DATA_LOSS".split()
)

_HTTP_STATUS = re.compile(
    rf"\b([1-5]\d\d) (?:{_HTTP_REASONS})\b"
    r"|(?i:\bHTTP(?:/\d(?:\.\d)?)?|\bstatus(?:[ _]?code)?)\s*[=:]?\s*([1-5]\d\d)\b"
)


def _http_category(status: int) -> ErrorCategory:
    if status == 401 or status == 407:
        return _C.AUTHENTICATION
    if status == 403:
        return _C.AUTHORIZATION
    if status in (408, 504):
        return _C.TIMEOUT
    if status == 429:
        return _C.RESOURCE_EXHAUSTION
    if status in (404, 410) or status >= 500:
        return _C.DEPENDENCY
    return _C.VALIDATION


_HTTP_ACTIONS = {
    404: (
        "Check the endpoint URL, path and API version configured for this dependency.",
        "Check that the referenced resource id exists (and belongs to this tenant).",
    ),
    429: _RATE_LIMIT_ACTIONS,
}
_HTTP_SEVERITY = {429: _S.MEDIUM}

_ERRNO_CATEGORY = {
    errno.ECONNREFUSED: _C.CONNECTION,
    errno.ECONNRESET: _C.CONNECTION,
    errno.ECONNABORTED: _C.CONNECTION,
    errno.EHOSTUNREACH: _C.CONNECTION,
    errno.ENETUNREACH: _C.CONNECTION,
    errno.ENETDOWN: _C.CONNECTION,
    errno.EPIPE: _C.CONNECTION,
    errno.ENOTCONN: _C.CONNECTION,
    errno.ETIMEDOUT: _C.TIMEOUT,
    errno.EACCES: _C.AUTHORIZATION,
    errno.EPERM: _C.AUTHORIZATION,
    errno.ENOSPC: _C.RESOURCE_EXHAUSTION,
    errno.EDQUOT: _C.RESOURCE_EXHAUSTION,
    errno.EMFILE: _C.RESOURCE_EXHAUSTION,
    errno.ENFILE: _C.RESOURCE_EXHAUSTION,
    errno.ENOMEM: _C.RESOURCE_EXHAUSTION,
    errno.ENOBUFS: _C.RESOURCE_EXHAUSTION,
}
_ERRNO_ACTIONS = {
    errno.ENOSPC: (_DISK_ACTIONS, _S.CRITICAL),
    errno.EDQUOT: (_DISK_ACTIONS, _S.CRITICAL),
    errno.EMFILE: (_FD_ACTIONS, _S.HIGH),
    errno.ENFILE: (_FD_ACTIONS, _S.HIGH),
    errno.ENOMEM: (_MEMORY_ACTIONS, _S.CRITICAL),
}

# Builtins whose type alone decides (checked with isinstance, most specific first).
_DECISIVE_TYPES: tuple[tuple[type[BaseException], ErrorCategory], ...] = (
    (TimeoutError, _C.TIMEOUT),  # asyncio.TimeoutError and socket.timeout are aliases
    (socket.gaierror, _C.CONNECTION),
    (ConnectionError, _C.CONNECTION),
    (PermissionError, _C.AUTHORIZATION),
    (MemoryError, _C.RESOURCE_EXHAUSTION),
    (ImportError, _C.CONFIGURATION),
)

# Class-name fragments (third-party types are matched by name, so no import is
# needed). Checked for each class of the MRO, most derived first.
_NAME_RULES: tuple[tuple[re.Pattern[str], ErrorCategory], ...] = tuple(
    (re.compile(p), c)
    for p, c in (
        (
            r"PoolTimeout|PoolError|PoolExhausted|RateLimit|Throttl|QuotaExceeded|ResourceExhausted"
            r"|QueueFull|MemoryError",
            _C.RESOURCE_EXHAUSTION,
        ),
        (r"Timeout|DeadlineExceeded|QueryCanceled", _C.TIMEOUT),
        (
            r"Deadlock|Integrity|UniqueViolation|ForeignKeyViolation|NotNullViolation"
            r"|OperationalError|DatabaseError|ProgrammingError|InterfaceError|PostgresError"
            r"|RedisError|ResponseError|PyMongoError|SQLAlchemyError|MySQLError|SqliteError",
            _C.DATABASE,
        ),
        (r"NoBrokersAvailable|Connect|Connection|Disconnected|Unreachable", _C.CONNECTION),
        (
            r"Authentication|Unauthenticated|Unauthorized|InvalidToken|ExpiredSignature"
            r"|InvalidSignature|NoAuth|AuthError|InvalidCredentials",
            _C.AUTHENTICATION,
        ),
        (
            r"Authorization|PermissionDenied|Forbidden|AccessDenied|InsufficientPrivilege",
            _C.AUTHORIZATION,
        ),
        (
            r"Config|ImproperlyConfigured|Settings|ImportError|ModuleNotFound|FileNotFound"
            r"|UnknownTopic",
            _C.CONFIGURATION,
        ),
        (
            r"Validation|ValueError|TypeError|KeyError|LookupError|IndexError|DecodeError"
            r"|SchemaError|InvalidArgument|UnicodeError|InvalidOperation",
            _C.VALIDATION,
        ),
        (
            r"CircuitBreaker|CircuitOpen|HTTPStatusError|HTTPError|RpcError|ClientResponseError"
            r"|ServiceUnavailable|BadGateway|Kafka|NotLeader|Rebalance|CommitFailed|APIError",
            _C.DEPENDENCY,
        ),
    )
)
_GENERIC_NAMES = frozenset({"BaseException", "Exception", "Error", "object", "RuntimeError"})

_ENV_KEY = re.compile(r"^'?[A-Z][A-Z0-9_]{2,}'?$")
_TYPE_PREFIX = re.compile(
    r"^\s*(?:<(?P<rpc>\w*RpcError) of RPC|\((?P<paren>[A-Za-z_][\w.]*)\)\s*"
    r"|(?P<plain>(?:[a-z_]\w*\.)+(?:[A-Z]\w*|gaierror|herror|timeout|error)"
    r"|[A-Z]\w*(?:Error|Exception|Exceeded|Timeout|Refused|Available|Failure|Failed|Warning"
    r"|Fault|Interrupt|Exit|Denied|Violation|Detected|Cancell?ed|Configured))\s*:\s*)",
)


def _type_name(cls: type) -> str:
    module = cls.__module__
    if module in ("builtins", "__main__"):
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"


def _safe_str(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:
        text = ""
    if not text:
        try:
            text = repr(exc) if exc.args else ""
        except Exception:
            text = ""
    return text


def _library_prefixes() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    prefixes = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    return tuple(sorted(os.path.join(p, "") for p in prefixes))


_LIBRARY_PREFIXES = _library_prefixes()


def _is_library(filename: str) -> bool:
    return filename.startswith("<") or filename.startswith(_LIBRARY_PREFIXES)


def _innermost(exc: BaseException) -> tuple[str | None, str | None]:
    """(``module:qualname``, module) of the frame that raised ``exc``: the
    innermost frame of the service's own code (not the standard library or
    site-packages), else the innermost frame; ``(None, None)`` if never raised."""
    tb = exc.__traceback__
    innermost = own = None
    while tb is not None:
        innermost = tb.tb_frame
        if not _is_library(innermost.f_code.co_filename):
            own = innermost
        tb = tb.tb_next
    frame = own or innermost
    if frame is None:
        return None, None
    module = str(frame.f_globals.get("__name__", "?"))
    # The innermost frame's module decides os.environ lookups (KeyError from os).
    inner_module = str(innermost.f_globals.get("__name__", "?")) if innermost else None
    return f"{module}:{frame.f_code.co_qualname}", inner_module


def _grpc_code_name(exc: BaseException) -> str | None:
    try:
        code = getattr(exc, "code", None)
        if callable(code):
            code = code()
        name = getattr(code, "name", None)
    except Exception:
        return None
    return name if isinstance(name, str) else None


def _http_status_of(exc: BaseException) -> int | None:
    try:
        response = getattr(exc, "response", None)
        for value in (getattr(response, "status_code", None), getattr(exc, "status", None)):
            if isinstance(value, int) and 100 <= value <= 599:
                return value
    except Exception:
        return None
    return None


@dataclass(frozen=True)
class _Subject:
    """One exception (or string) reduced to what classification needs."""

    type_name: str | None
    message: str
    exc: BaseException | None = None
    module: str | None = None


def _subject_from_string(text: str) -> _Subject:
    m = _TYPE_PREFIX.match(text)
    if m is None:
        return _Subject(None, text)
    if m.group("rpc"):
        return _Subject(m.group("rpc"), text)
    name = m.group("paren") or m.group("plain")
    return _Subject(name, text[m.end() :])


def _classify_subject(s: _Subject) -> tuple[_Verdict | None, _Verdict | None]:
    """(strong verdict, weak verdict): strong from type/status/message, weak from names."""
    exc, text = s.exc, s.message[:_MAX_INPUT]

    if exc is not None:
        if isinstance(exc, KeyError) and s.module == "os":
            return _Verdict(_C.CONFIGURATION, "type:KeyError(os.environ)", None, _ENV_ACTIONS), None
        if isinstance(exc, OSError) and exc.errno in _ERRNO_CATEGORY:
            actions, severity = _ERRNO_ACTIONS.get(exc.errno, (None, None))
            name = errno.errorcode.get(exc.errno, str(exc.errno))
            return _Verdict(_ERRNO_CATEGORY[exc.errno], f"errno:{name}", severity, actions), None
        for cls, category in _DECISIVE_TYPES:
            if isinstance(exc, cls):
                actions = _MEMORY_ACTIONS if cls is MemoryError else None
                actions = _IMPORT_ACTIONS if cls is ImportError else actions
                severity = _S.CRITICAL if cls is MemoryError else None
                return _Verdict(category, f"type:{_type_name(cls)}", severity, actions), None
    elif s.type_name == "KeyError" and _ENV_KEY.match(text.strip()):
        return _Verdict(_C.CONFIGURATION, "type:KeyError(env)", None, _ENV_ACTIONS), None

    grpc_code = _grpc_code_name(exc) if exc is not None else None
    if grpc_code is None:
        m = _GRPC_STATUS.search(text)
        if m is not None:
            grpc_code = m.group(1) or m.group(2) or m.group(3)
    if grpc_code in _GRPC_DECISIVE:
        return _Verdict(_GRPC_DECISIVE[grpc_code], f"grpc:{grpc_code}"), None

    status = _http_status_of(exc) if exc is not None else None
    if status is None:
        m = _HTTP_STATUS.search(text)
        if m is not None:
            status = int(m.group(1) or m.group(2))
    if status is not None and status >= 400:
        return _Verdict(
            _http_category(status),
            f"http:{status}",
            _HTTP_SEVERITY.get(status),
            _HTTP_ACTIONS.get(status),
        ), None

    for rule in _MESSAGE_RULES:
        if rule.pattern.search(text):
            return _Verdict(
                rule.category, f"message:{rule.name}", rule.severity, rule.actions
            ), None

    if grpc_code in _GRPC_REMOTE:
        return None, _Verdict(_C.DEPENDENCY, f"grpc:{grpc_code}")

    names: Iterable[str]
    if exc is not None:
        names = [c.__name__ for c in type(exc).__mro__]
    elif s.type_name:
        names = [s.type_name.rsplit(".", 1)[-1]]
    else:
        names = []
    for name in names:
        if name in _GENERIC_NAMES:
            continue
        for pattern, category in _NAME_RULES:
            if pattern.search(name):
                return None, _Verdict(category, f"name:{name}")
    return None, None


def _classify(subjects: list[_Subject]) -> _Verdict:
    weak: _Verdict | None = None
    for s in subjects:
        strong, maybe = _classify_subject(s)
        if strong is not None:
            return strong
        weak = weak or maybe
    return weak or _Verdict(_C.UNKNOWN, "none")


def _chain(exc: BaseException, limit: int = 5) -> list[BaseException]:
    out: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and len(out) < limit and id(current) not in seen:
        out.append(current)
        seen.add(id(current))
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    return out


def _fingerprint(*parts: str) -> str:
    digest = hashlib.blake2b(digest_size=_FINGERPRINT_BYTES, person=b"hub-errordna")
    digest.update("\x1f".join(parts).encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def _truncate(text: str, limit: int = _SAMPLE_LEN) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------
# The analyser


class _PatternState:
    __slots__ = (
        "category",
        "count",
        "exception_type",
        "fingerprint",
        "first_seen",
        "last_seen",
        "normalized",
        "sample",
        "severity",
    )

    def __init__(
        self,
        fingerprint: str,
        *,
        category: ErrorCategory,
        severity: Severity,
        exception_type: str | None,
        normalized: str,
        sample: str,
        first_seen: float,
    ) -> None:
        self.fingerprint = fingerprint
        self.category = category
        self.severity = severity
        self.exception_type = exception_type
        self.normalized = normalized
        self.sample = sample
        self.count = 0
        self.first_seen = first_seen
        self.last_seen = first_seen


class ErrorDNA:
    """Fingerprints, classifies and counts the errors of one service.

    Thread-safe: counting happens under one lock; normalising and classifying
    (the costly part) happen outside it.

    Args:
        service_name: the service reporting the errors.
        clock: epoch seconds (injectable for tests).
        reporter: awaited by ``flush`` with the drained deltas (e.g. a call to
            the hub); ``None`` means the caller drains and ships them itself.
        max_patterns: fingerprints remembered; the least recently seen is
            forgotten beyond this (its undrained delta is still reported).
        include_location: add the innermost frame's ``module:function`` to the
            fingerprint of raised exceptions.
    """

    def __init__(
        self,
        service_name: str,
        *,
        clock: Callable[[], float] = time.time,
        reporter: Reporter | None = None,
        max_patterns: int = 1000,
        include_location: bool = True,
    ) -> None:
        if max_patterns < 1:
            raise ValueError("max_patterns must be positive")
        self.service_name = service_name
        self._clock = clock
        self._reporter = reporter
        self._max_patterns = max_patterns
        self._include_location = include_location
        self._lock = threading.Lock()
        # Lock order: only self._lock; never held while calling out.
        self._patterns: OrderedDict[str, _PatternState] = OrderedDict()
        self._pending: dict[str, tuple[_PatternState, int]] = {}
        self._dropped = 0

    # -- analysis -----------------------------------------------------------

    def analyze(
        self, error: BaseException | str, context: Mapping[str, Any] | None = None
    ) -> ErrorAnalysis:
        """Fingerprints, classifies and counts one occurrence.

        Args:
            error: a caught exception (best: type, traceback and cause chain are
                used) or a message such as ``str(e)`` or a log line.
            context: free-form details kept on the result (operation, ids, ...);
                they do not affect the fingerprint.
        """
        location: str | None = None
        if isinstance(error, BaseException):
            location, module = _innermost(error)
            exception_type: str | None = _type_name(type(error))
            message = _safe_str(error)
            subjects = [
                _Subject(
                    _type_name(type(e)),
                    _safe_str(e),
                    e,
                    module if e is error else _innermost(e)[1],
                )
                for e in _chain(error)
            ]
        else:
            message = str(error)
            subjects = [_subject_from_string(message)]
            exception_type = subjects[0].type_name
        head = subjects[0].message
        code_error = (
            isinstance(error, _CODE_ERROR_TYPES)
            if isinstance(error, BaseException)
            else (exception_type or "").rsplit(".", 1)[-1] in _CODE_ERRORS
        )
        normalized = normalize_message(head[:_MAX_INPUT], keep_identifiers=code_error) or (
            exception_type or ""
        )
        verdict = _classify(subjects)
        fingerprint = _fingerprint(
            exception_type or "",
            normalized,
            (location or "") if self._include_location else "",
        )
        severity = verdict.severity or _CATEGORY_SEVERITY[verdict.category]
        actions = verdict.actions or _CATEGORY_ACTIONS[verdict.category]
        raw = _truncate(message)

        now = self._clock()
        with self._lock:
            state = self._patterns.get(fingerprint)
            if state is None:
                state = _PatternState(
                    fingerprint,
                    category=verdict.category,
                    severity=severity,
                    exception_type=exception_type,
                    normalized=normalized,
                    sample=raw,
                    first_seen=now,
                )
                self._patterns[fingerprint] = state
                if len(self._patterns) > self._max_patterns:
                    self._patterns.popitem(last=False)
            else:
                self._patterns.move_to_end(fingerprint)
            state.count += 1
            state.last_seen = max(state.last_seen, now)
            pending = self._pending.get(fingerprint)
            if pending is not None:
                self._pending[fingerprint] = (state, pending[1] + 1)
            elif len(self._pending) < self._max_patterns:
                self._pending[fingerprint] = (state, 1)
            else:
                self._dropped += 1
            count, first_seen, last_seen, sample = (
                state.count,
                state.first_seen,
                state.last_seen,
                state.sample,
            )

        return ErrorAnalysis(
            fingerprint=fingerprint,
            normalized_message=normalized,
            category=verdict.category,
            severity=severity,
            suggested_actions=actions,
            exception_type=exception_type,
            occurrences=count,
            first_seen=first_seen,
            last_seen=last_seen,
            sample=sample,
            service=self.service_name,
            message=raw,
            location=location,
            matched_by=verdict.matched_by,
            context=MappingProxyType(dict(context or {})),
        )

    def analyze_error(
        self,
        error_message: BaseException | str,
        context: Mapping[str, Any] | None = None,
    ) -> ErrorAnalysis:
        """Alias of ``analyze`` with the write-up's argument names."""
        return self.analyze(error_message, context)

    # -- counts ---------------------------------------------------------------

    def patterns(self) -> list[ErrorPattern]:
        """Running totals per fingerprint, most frequent first."""
        with self._lock:
            states = list(self._patterns.values())
            out = [self._pattern(ErrorPattern, s, s.count) for s in states]
        out.sort(key=lambda p: (-p.count, p.fingerprint))
        return out

    def drain_report(self) -> list[PatternDelta]:
        """The occurrences counted since the previous drain, one delta per
        fingerprint, and resets them. Sum deltas to get totals."""
        with self._lock:
            pending, self._pending = self._pending, {}
            return [self._pattern(PatternDelta, s, n) for s, n in pending.values()]

    @property
    def dropped(self) -> int:
        """Occurrences not reported because too many fingerprints were pending."""
        with self._lock:
            return self._dropped

    async def flush(self) -> list[PatternDelta]:
        """Drains and hands the batch to the reporter. If the reporter raises,
        the batch is put back (so the next flush retries it) and the error
        propagates."""
        batch = self.drain_report()
        if batch and self._reporter is not None:
            try:
                await self._reporter(batch)
            except BaseException:
                self._restore(batch)
                raise
        return batch

    def _restore(self, batch: list[PatternDelta]) -> None:
        with self._lock:
            for delta in batch:
                pending = self._pending.get(delta.fingerprint)
                if pending is not None:
                    self._pending[delta.fingerprint] = (pending[0], pending[1] + delta.count)
                    continue
                state = self._patterns.get(delta.fingerprint)
                if state is None:
                    state = _PatternState(
                        delta.fingerprint,
                        category=delta.category,
                        severity=delta.severity,
                        exception_type=delta.exception_type,
                        normalized=delta.normalized_message,
                        sample=delta.sample,
                        first_seen=delta.first_seen,
                    )
                    state.last_seen = delta.last_seen
                self._pending[delta.fingerprint] = (state, delta.count)

    def _pattern(self, cls: type[_P], s: _PatternState, count: int) -> _P:
        return cls(
            fingerprint=s.fingerprint,
            service=self.service_name,
            category=s.category,
            severity=s.severity,
            exception_type=s.exception_type,
            normalized_message=s.normalized,
            sample=s.sample,
            count=count,
            first_seen=s.first_seen,
            last_seen=s.last_seen,
        )
