"""ErrorDNA against a corpus of real-world error texts: categories, fingerprints
that must match (same error, different ids/addresses/times) and must differ
(different bugs), counting, drains, thread safety and the reporter."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from hub_client._private.error_dna import (
    ErrorAnalysis,
    ErrorCategory,
    ErrorDNA,
    PatternDelta,
    Severity,
    normalize_message,
)

C = ErrorCategory


def _grpc(code: str, details: str, peer: str = "ipv4:127.0.0.1:50051", created: str = "") -> str:
    """What ``str(grpc.aio.AioRpcError)`` looks like."""
    created = created or "2024-05-01T10:15:30.123456789+00:00"
    return (
        "<AioRpcError of RPC that terminated with:\n"
        f"\tstatus = StatusCode.{code}\n"
        f'\tdetails = "{details}"\n'
        f'\tdebug_error_string = "UNKNOWN:Error received from peer {peer} '
        f'{{grpc_message:"{details}", grpc_status:14, created_time:"{created}"}}"\n'
        ">"
    )


def _raised(exc: BaseException) -> BaseException:
    """``exc`` with a traceback, as a caught exception has."""
    try:
        raise exc
    except BaseException as caught:
        return caught


def _missing_env() -> BaseException:
    try:
        os.environ["HUB_TEST_SURELY_UNSET_VARIABLE"]
    except KeyError as e:
        return e
    raise AssertionError("variable unexpectedly set")


# (error, expected category). Strings are what services log (str(e) or
# "Type: message"); exceptions are what they catch.
CORPUS: list[tuple[str, BaseException | str, ErrorCategory]] = [
    # connection
    (
        "conn-refused-exc",
        ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
        C.CONNECTION,
    ),
    (
        "conn-reset-exc",
        ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
        C.CONNECTION,
    ),
    (
        "asyncpg-connect-call",
        "OSError: [Errno 111] Connect call failed ('127.0.0.1', 5432)",
        C.CONNECTION,
    ),
    (
        "grpc-unavailable",
        _grpc(
            "UNAVAILABLE",
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:50051: "
            "Failed to connect to remote host: Connection refused",
        ),
        C.CONNECTION,
    ),
    (
        "requests-max-retries",
        "requests.exceptions.ConnectionError: HTTPConnectionPool(host='localhost', port=8001): "
        "Max retries exceeded with url: /health (Caused by NewConnectionError('<urllib3.connection."
        "HTTPConnection object at 0x7f3b2c1d4e50>: Failed to establish a new connection: "
        "[Errno 111] Connection refused'))",
        C.CONNECTION,
    ),
    ("httpx-connect-dns", "httpx.ConnectError: [Errno -2] Name or service not known", C.CONNECTION),
    ("httpx-all-attempts", "ConnectError: All connection attempts failed", C.CONNECTION),
    (
        "aiohttp-connector",
        "aiohttp.client_exceptions.ClientConnectorError: Cannot connect to host "
        "api.binance.com:443 "
        "ssl:default [Connect call failed ('52.84.150.39', 443)]",
        C.CONNECTION,
    ),
    (
        "psycopg-refused",
        'psycopg.OperationalError: connection failed: connection to server at "10.0.3.17", port '
        "5432 failed: Connection refused\n\tIs the server running on that host and accepting "
        "TCP/IP connections?",
        C.CONNECTION,
    ),
    (
        "psycopg2-closed",
        "psycopg2.OperationalError: server closed the connection unexpectedly\n\tThis probably "
        "means the server terminated abnormally\n\tbefore or while processing the request.",
        C.CONNECTION,
    ),
    (
        "redis-refused",
        "redis.exceptions.ConnectionError: Error 111 connecting to localhost:6379. Connection "
        "refused.",
        C.CONNECTION,
    ),
    (
        "mysql-cant-connect",
        "(pymysql.err.OperationalError) (2003, \"Can't connect to MySQL server on '10.0.0.12' "
        '([Errno 111] Connection refused)")',
        C.CONNECTION,
    ),
    (
        "mysql-lost",
        "(pymysql.err.OperationalError) (2013, 'Lost connection to MySQL server during query')",
        C.CONNECTION,
    ),
    ("kafka-no-brokers", "kafka.errors.NoBrokersAvailable: NoBrokersAvailable", C.CONNECTION),
    (
        "confluent-transport",
        'KafkaError{code=_TRANSPORT,val=-195,str="kafka-0.kafka-headless:9092/bootstrap: Connect '
        'to ipv4#10.1.2.3:9092 failed: Connection refused (after 0ms in state CONNECT)"}',
        C.CONNECTION,
    ),
    (
        "dns-gaierror",
        "socket.gaierror: [Errno -3] Temporary failure in name resolution",
        C.CONNECTION,
    ),
    # timeout
    ("asyncio-timeout", TimeoutError(), C.TIMEOUT),
    ("grpc-deadline", _grpc("DEADLINE_EXCEEDED", "Deadline Exceeded"), C.TIMEOUT),
    ("httpx-read-timeout", "httpx.ReadTimeout: The read operation timed out", C.TIMEOUT),
    (
        "requests-read-timeout",
        "HTTPSConnectionPool(host='api.binance.com', port=443): Read timed out. (read timeout=10)",
        C.TIMEOUT,
    ),
    (
        "pg-statement-timeout",
        "psycopg2.errors.QueryCanceled: canceling statement due to statement timeout",
        C.TIMEOUT,
    ),
    ("redis-timeout", "redis.exceptions.TimeoutError: Timeout reading from socket", C.TIMEOUT),
    (
        "kafka-metadata-timeout",
        "KafkaTimeoutError: Failed to update metadata after 60.0 secs.",
        C.TIMEOUT,
    ),
    ("errno-etimedout", OSError(errno.ETIMEDOUT, "Connection timed out"), C.TIMEOUT),
    (
        "http-504",
        "Server error '504 Gateway Timeout' for url 'http://data-bridge:8001/v1/ticks'",
        C.TIMEOUT,
    ),
    # authentication
    ("grpc-unauthenticated", _grpc("UNAUTHENTICATED", "invalid token"), C.AUTHENTICATION),
    (
        "httpx-401",
        "httpx.HTTPStatusError: Client error '401 Unauthorized' for url 'https://api.example.com/"
        "v1/account?timestamp=1714550400000&signature=abc123'\nFor more information check: "
        "https://developer.mozilla.org/en-US/docs/Web/HTTP/Status/401",
        C.AUTHENTICATION,
    ),
    (
        "pg-password",
        'psycopg2.OperationalError: FATAL:  password authentication failed for user "trading_app"',
        C.AUTHENTICATION,
    ),
    (
        "mysql-access-denied",
        "(1045, \"Access denied for user 'svc_orders'@'10.0.4.21' (using password: YES)\")",
        C.AUTHENTICATION,
    ),
    (
        "redis-noauth",
        "redis.exceptions.AuthenticationError: NOAUTH Authentication required.",
        C.AUTHENTICATION,
    ),
    (
        "redis-wrongpass",
        "WRONGPASS invalid username-password pair or user is disabled.",
        C.AUTHENTICATION,
    ),
    (
        "jwt-expired",
        "jwt.exceptions.ExpiredSignatureError: Signature has expired",
        C.AUTHENTICATION,
    ),
    (
        "binance-api-key",
        "APIError(code=-2015): Invalid API-key, IP, or permissions for action.",
        C.AUTHENTICATION,
    ),
    # authorization
    (
        "permission-error",
        PermissionError(errno.EACCES, "Permission denied", "/var/log/trading/orders.log"),
        C.AUTHORIZATION,
    ),
    (
        "grpc-permission-denied",
        _grpc("PERMISSION_DENIED", "tier 'free' may not use service 'ml-signals'"),
        C.AUTHORIZATION,
    ),
    (
        "httpx-403",
        "Client error '403 Forbidden' for url 'https://api.example.com/v1/admin/tenants'",
        C.AUTHORIZATION,
    ),
    (
        "pg-insufficient-privilege",
        "psycopg2.errors.InsufficientPrivilege: permission denied for table orders",
        C.AUTHORIZATION,
    ),
    (
        "kafka-topic-authz",
        "kafka.errors.TopicAuthorizationFailedError: [Error 29] TopicAuthorizationFailedError: "
        "['market-ticks']",
        C.AUTHORIZATION,
    ),
    # validation
    ("int-literal", ValueError("invalid literal for int() with base 10: 'abc'"), C.VALIDATION),
    ("key-error", KeyError("order_id"), C.VALIDATION),
    ("type-error", TypeError("unsupported operand type(s) for +: 'int' and 'str'"), C.VALIDATION),
    (
        "grpc-invalid-argument",
        _grpc("INVALID_ARGUMENT", "port: must be between 1 and 65535"),
        C.VALIDATION,
    ),
    (
        "httpx-422",
        "Client error '422 Unprocessable Entity' for url 'http://orders:8000/v1/orders'",
        C.VALIDATION,
    ),
    (
        "pydantic",
        "pydantic_core._pydantic_core.ValidationError: 1 validation error for OrderRequest\n"
        "quantity\n  Input should be greater than 0 [type=greater_than, input_value=-5, "
        "input_type=int]",
        C.VALIDATION,
    ),
    ("json-decode", json.JSONDecodeError("Expecting value", "", 0), C.VALIDATION),
    (
        "pg-invalid-uuid",
        'psycopg2.errors.InvalidTextRepresentation: invalid input syntax for type uuid: "abc"',
        C.VALIDATION,
    ),
    ("binance-lot-size", "APIError(code=-1013): Filter failure: LOT_SIZE", C.VALIDATION),
    # resource exhaustion
    ("memory-error", MemoryError(), C.RESOURCE_EXHAUSTION),
    ("enospc", OSError(errno.ENOSPC, "No space left on device"), C.RESOURCE_EXHAUSTION),
    ("emfile", OSError(errno.EMFILE, "Too many open files"), C.RESOURCE_EXHAUSTION),
    (
        "grpc-resource-exhausted",
        _grpc("RESOURCE_EXHAUSTED", "Received message larger than max (4194305 vs. 4194304)"),
        C.RESOURCE_EXHAUSTION,
    ),
    (
        "httpx-429",
        "httpx.HTTPStatusError: Client error '429 Too Many Requests' for url 'https://api.binance."
        "com/api/v3/order?symbol=BTCUSDT&timestamp=1714550400000'",
        C.RESOURCE_EXHAUSTION,
    ),
    (
        "pg-too-many-clients",
        "psycopg2.OperationalError: FATAL:  sorry, too many clients already",
        C.RESOURCE_EXHAUSTION,
    ),
    (
        "mysql-too-many",
        "(pymysql.err.OperationalError) (1040, 'Too many connections')",
        C.RESOURCE_EXHAUSTION,
    ),
    (
        "sqlalchemy-queuepool",
        "sqlalchemy.exc.TimeoutError: QueuePool limit of size 5 overflow 10 reached, connection "
        "timed out, timeout 30.00 (Background on this error at: https://sqlalche.me/e/20/3o7r)",
        C.RESOURCE_EXHAUSTION,
    ),
    ("psycopg2-pool", "psycopg2.pool.PoolError: connection pool exhausted", C.RESOURCE_EXHAUSTION),
    (
        "redis-oom",
        "redis.exceptions.ResponseError: OOM command not allowed when used memory > 'maxmemory'.",
        C.RESOURCE_EXHAUSTION,
    ),
    (
        "redis-max-clients",
        "redis.exceptions.ConnectionError: max number of clients reached",
        C.RESOURCE_EXHAUSTION,
    ),
    (
        "binance-weight",
        "APIError(code=-1003): Too much request weight used; current limit is 1200 request "
        "weight per 1 MINUTE. Please use WebSocket Streams for live updates.",
        C.RESOURCE_EXHAUSTION,
    ),
    # database
    (
        "pg-deadlock",
        "psycopg2.errors.DeadlockDetected: deadlock detected\nDETAIL:  Process 12345 waits for "
        "ShareLock on transaction 67890; blocked by process 12346.\nProcess 12346 waits for "
        "ShareLock on transaction 67891; blocked by process 12345.\nHINT:  See server log for "
        'query details.\nCONTEXT:  while updating tuple (0,12) in relation "positions"',
        C.DATABASE,
    ),
    (
        "pg-unique",
        "psycopg2.errors.UniqueViolation: duplicate key value violates unique constraint "
        '"orders_client_order_id_key"\nDETAIL:  Key (client_order_id)=(c-8f14e45f) already exists.',
        C.DATABASE,
    ),
    (
        "mysql-duplicate",
        "(pymysql.err.IntegrityError) (1062, \"Duplicate entry 'ord-1001' for key "
        "'orders.uniq_client_order_id'\")",
        C.DATABASE,
    ),
    (
        "mysql-deadlock",
        "(pymysql.err.OperationalError) (1213, 'Deadlock found when trying to get lock; try "
        "restarting transaction')",
        C.DATABASE,
    ),
    (
        "mysql-lock-wait",
        "(1205, 'Lock wait timeout exceeded; try restarting transaction')",
        C.DATABASE,
    ),
    ("sqlite-locked", "sqlite3.OperationalError: database is locked", C.DATABASE),
    (
        "sqlite-unique",
        "sqlite3.IntegrityError: UNIQUE constraint failed: orders.client_order_id",
        C.DATABASE,
    ),
    (
        "pg-undefined-table",
        'asyncpg.exceptions.UndefinedTableError: relation "trade_fills" does not exist',
        C.DATABASE,
    ),
    (
        "pg-fk",
        'insert or update on table "fills" violates foreign key constraint "fills_order_id_fkey"',
        C.DATABASE,
    ),
    ("pg-serialization", "could not serialize access due to concurrent update", C.DATABASE),
    (
        "redis-misconf",
        "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist "
        "to disk.",
        C.DATABASE,
    ),
    ("redis-readonly", "READONLY You can't write against a read only replica.", C.DATABASE),
    # dependency
    (
        "httpx-503",
        "Server error '503 Service Unavailable' for url 'http://data-bridge:8001/v1/ticks'",
        C.DEPENDENCY,
    ),
    (
        "httpx-502",
        "Server error '502 Bad Gateway' for url 'https://api.example.com/v1/quotes'",
        C.DEPENDENCY,
    ),
    ("grpc-internal", _grpc("INTERNAL", "Exception calling application: boom"), C.DEPENDENCY),
    (
        "kafka-not-leader",
        "kafka.errors.NotLeaderForPartitionError: [Error 6] NotLeaderForPartitionError",
        C.DEPENDENCY,
    ),
    (
        "kafka-rebalanced",
        "CommitFailedError: Commit cannot be completed since the group has already rebalanced and "
        "assigned the partitions to another member.",
        C.DEPENDENCY,
    ),
    ("circuit-open", "CircuitBreakerError: Circuit 'market-data' is OPEN", C.DEPENDENCY),
    # configuration
    ("missing-setting", "Missing required setting: DATABASE_URL", C.CONFIGURATION),
    (
        "env-not-set",
        "RuntimeError: environment variable KAFKA_BOOTSTRAP_SERVERS is not set",
        C.CONFIGURATION,
    ),
    ("value-error-env", ValueError("environment variable HUB_TARGET is not set"), C.CONFIGURATION),
    (
        "django-improperly",
        "django.core.exceptions.ImproperlyConfigured: The SECRET_KEY setting must not be empty.",
        C.CONFIGURATION,
    ),
    ("os-environ-keyerror", _missing_env(), C.CONFIGURATION),
    ("module-not-found", ModuleNotFoundError("No module named 'uvloop'"), C.CONFIGURATION),
    (
        "pydantic-settings",
        "pydantic_core._pydantic_core.ValidationError: 1 validation error for Settings\n"
        "database_url\n  Field required [type=missing, input_value={}, input_type=dict]",
        C.CONFIGURATION,
    ),
    (
        "config-file-missing",
        FileNotFoundError(errno.ENOENT, "No such file or directory", "/etc/trading/config.yaml"),
        C.CONFIGURATION,
    ),
    (
        "tls-verify",
        "ssl.SSLCertVerificationError: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify "
        "failed: unable to get local issuer certificate (_ssl.c:1006)",
        C.CONFIGURATION,
    ),
    (
        "kafka-unknown-topic",
        'KafkaError{code=UNKNOWN_TOPIC_OR_PART,val=3,str="Broker: Unknown topic or partition"}',
        C.CONFIGURATION,
    ),
    # unknown
    ("attribute-error", AttributeError("'NoneType' object has no attribute 'price'"), C.UNKNOWN),
    ("runtime-error", RuntimeError("strategy returned an inconsistent state"), C.UNKNOWN),
]


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 40
    assert {category for _, _, category in CORPUS} == set(ErrorCategory)


@pytest.mark.parametrize(("error", "category"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_category(error: BaseException | str, category: ErrorCategory) -> None:
    analysis = ErrorDNA("svc").analyze(error)
    assert analysis.category is category, (analysis.matched_by, analysis.normalized_message)
    assert analysis.suggested_actions, "every category has concrete actions"
    assert all(isinstance(a, str) and len(a) > 20 for a in analysis.suggested_actions)
    assert len(analysis.fingerprint) == 16
    int(analysis.fingerprint, 16)


# Pairs that are the same bug: must fingerprint identically.
SAME: list[tuple[str, BaseException | str, BaseException | str]] = [
    (
        "grpc-peer-and-time",
        _grpc(
            "UNAVAILABLE",
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:50051: "
            "Connection refused",
        ),
        _grpc(
            "UNAVAILABLE",
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:10.0.7.21:50052: "
            "Connection refused",
            peer="ipv4:10.0.7.21:50052",
            created="2024-06-11T08:00:00.5+00:00",
        ),
    ),
    (
        "requests-port-and-address",
        "HTTPConnectionPool(host='localhost', port=8001): Max retries exceeded with url: /health "
        "(Caused by NewConnectionError('<urllib3.connection.HTTPConnection object at "
        "0x7f3b2c1d4e50>: Failed to establish a new connection: [Errno 111] Connection refused'))",
        "HTTPConnectionPool(host='localhost', port=8002): Max retries exceeded with url: /health "
        "(Caused by NewConnectionError('<urllib3.connection.HTTPConnection object at "
        "0x7f00aa12bc40>: Failed to establish a new connection: [Errno 111] Connection refused'))",
    ),
    (
        "asyncpg-ipv4-ipv6",
        "OSError: [Errno 111] Connect call failed ('127.0.0.1', 5432)",
        "OSError: [Errno 111] Connect call failed ('10.20.30.40', 6432)",
    ),
    (
        "redis-host-port",
        "Error 111 connecting to localhost:6379. Connection refused.",
        "Error 111 connecting to redis-master-0.redis.svc.cluster.local:6380. Connection refused.",
    ),
    (
        "ipv6",
        "dial tcp [2001:db8::8a2e:370:7334]:443: connect: connection refused",
        "dial tcp [::1]:8443: connect: connection refused",
    ),
    (
        "pg-deadlock-pids",
        "deadlock detected\nDETAIL:  Process 12345 waits for ShareLock on transaction 67890; "
        "blocked by process 12346.",
        "deadlock detected\nDETAIL:  Process 977 waits for ShareLock on transaction 1200455; "
        "blocked by process 31002.",
    ),
    (
        "pg-unique-values",
        'duplicate key value violates unique constraint "orders_client_order_id_key"\n'
        "DETAIL:  Key (client_order_id)=(c-8f14e45f) already exists.",
        'duplicate key value violates unique constraint "orders_client_order_id_key"\n'
        "DETAIL:  Key (client_order_id)=(c-0a1b2c3d4e) already exists.",
    ),
    (
        "mysql-duplicate-values",
        "(1062, \"Duplicate entry 'ord-1001' for key 'orders.uniq_client_order_id'\")",
        "(1062, \"Duplicate entry 'ord-99817' for key 'orders.uniq_client_order_id'\")",
    ),
    (
        "timeout-durations",
        "HTTPSConnectionPool(host='api.binance.com', port=443): Read timed out. (read timeout=10)",
        "HTTPSConnectionPool(host='api.binance.com', port=443): Read timed out. (read timeout=2.5)",
    ),
    (
        "kafka-durations",
        "KafkaTimeoutError: Failed to update metadata after 60.0 secs.",
        "KafkaTimeoutError: Failed to update metadata after 5 secs.",
    ),
    (
        "duration-units",
        "operation on market-data timed out after 30s",
        "operation on market-data timed out after 1500 ms",
    ),
    (
        "uuids",
        "order 3f2b8c1e-8a4d-4c7b-9f1e-2d3c4b5a6e7f not found for tenant company_abc",
        "order 9a0e1d55-0b8e-4bb8-8a5b-57f3cbf2c3a1 not found for tenant company_abc",
    ),
    (
        "hex-request-ids",
        "request 5f1d7a9c2b3e4f60 rejected by risk engine",
        "request 00c0ffee12ab34cd rejected by risk engine",
    ),
    (
        "paths-and-lines",
        "Task was destroyed but it is pending! task: <Task pending name='Task-12' "
        "coro=<Consumer.run() "
        "running at /srv/app/consumer.py:42>>",
        "Task was destroyed but it is pending! task: <Task pending name='Task-873' "
        "coro=<Consumer.run() "
        "running at /opt/releases/2024-05-01/app/consumer.py:57>>",
    ),
    (
        "windows-path",
        r"could not open C:\data\ticks\2024\05.parquet for reading",
        r"could not open D:\cache\x.parquet for reading",
    ),
    (
        "iso-timestamps",
        "token for session expired at 2024-05-01T10:15:30Z",
        "token for session expired at 2024-06-11 08:00:00.123+02:00",
    ),
    (
        "log-timestamps",
        "[01/May/2024:10:15:30 +0000] upstream returned garbage (Mon, 02 Jan 2006 15:04:05 GMT)",
        "[17/Jun/2025:23:59:59 -0700] upstream returned garbage (Tue, 17 Jun 2025 06:59:59 GMT)",
    ),
    (
        "emails",
        "user alice@example.com is not allowed to trade futures",
        "user bob.smith+test@corp.example.io is not allowed to trade futures",
    ),
    (
        "url-query-strings",
        "GET https://api.example.com/v1/orders?page=2&token=abc failed with garbage body",
        "GET https://api.example.com/v1/orders?page=71&token=zz9 failed with garbage body",
    ),
    (
        "url-path-ids",
        "Client error '404 Not Found' for url 'http://orders:8000/v1/orders/48213'",
        "Client error '404 Not Found' for url 'http://orders:8000/v1/orders/7'",
    ),
    (
        "tokens",
        "rejected credential eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9 for feed",
        "rejected credential QmFzZTY0RW5jb2RlZFRva2VuMTIzNDU2Nzg5 for feed",
    ),
    (
        "quoted-values",
        "unknown symbol 'BTCUSDT' in order book update",
        'unknown symbol "ETH-PERP" in order book update',
    ),
    (
        "pod-names",
        "lease of instance orders-7d9f8b6c4-x2k9p expired",
        "lease of instance orders-5c6b7a8d9f-q8w7e expired",
    ),
    (
        "exception-vs-string-form",
        ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
        "ConnectionRefusedError: [Errno 111] Connection refused",
    ),
]


@pytest.mark.parametrize(("a", "b"), [s[1:] for s in SAME], ids=[s[0] for s in SAME])
def test_same_fingerprint(a: BaseException | str, b: BaseException | str) -> None:
    dna = ErrorDNA("svc")
    first, second = dna.analyze(a), dna.analyze(b)
    assert first.normalized_message == second.normalized_message
    assert first.fingerprint == second.fingerprint
    assert second.occurrences == 2


# Pairs that are different bugs: must differ.
DIFFERENT: list[tuple[str, BaseException | str, BaseException | str]] = [
    ("exception-type", ValueError("bad order"), TypeError("bad order")),
    (
        "http-status",
        "Client error '429 Too Many Requests' for url 'https://api.example.com/v1/orders'",
        "Client error '404 Not Found' for url 'https://api.example.com/v1/orders'",
    ),
    (
        "http-5xx",
        "Server error '502 Bad Gateway' for url 'http://data-bridge:8001/v1/ticks'",
        "Server error '503 Service Unavailable' for url 'http://data-bridge:8001/v1/ticks'",
    ),
    (
        "grpc-status",
        _grpc("UNAVAILABLE", "upstream failure"),
        _grpc("DEADLINE_EXCEEDED", "upstream failure"),
    ),
    (
        "errno",
        "OSError: [Errno 111] Connect call failed ('127.0.0.1', 5432)",
        "OSError: [Errno 113] Connect call failed ('127.0.0.1', 5432)",
    ),
    (
        "exchange-api-code",
        "APIError(code=-1013): Filter failure",
        "APIError(code=-1111): Filter failure",
    ),
    (
        "url-endpoint",
        "Client error '404 Not Found' for url 'http://orders:8000/v1/orders/1'",
        "Client error '404 Not Found' for url 'http://orders:8000/v1/fills/1'",
    ),
    (
        "env-variable-name",
        "environment variable KAFKA_BOOTSTRAP_SERVERS is not set",
        "environment variable DATABASE_URL is not set",
    ),
    ("pg-schema", 'relation "fills" does not exist', 'column "fills" does not exist'),
    (
        "deadlock-vs-unique",
        "deadlock detected",
        'duplicate key value violates unique constraint "k"',
    ),
    (
        "attribute-name",
        AttributeError("'NoneType' object has no attribute 'price'"),
        AttributeError("'NoneType' object has no attribute 'quantity'"),
    ),
    ("key-name", KeyError("price"), KeyError("quantity")),
    (
        "module-name",
        ModuleNotFoundError("No module named 'uvloop'"),
        ModuleNotFoundError("No module named 'orjson'"),
    ),
    (
        "url-host",
        "GET https://api.binance.com/api/v3/time failed",
        "GET https://api.kraken.com/api/v3/time failed",
    ),
    (
        "mysql-short-messages",
        "(pymysql.err.OperationalError) (1040, 'Too many connections')",
        "(pymysql.err.OperationalError) (2006, 'Server has gone')",
    ),
]


@pytest.mark.parametrize(("a", "b"), [d[1:] for d in DIFFERENT], ids=[d[0] for d in DIFFERENT])
def test_different_fingerprint(a: BaseException | str, b: BaseException | str) -> None:
    dna = ErrorDNA("svc")
    assert dna.analyze(a).fingerprint != dna.analyze(b).fingerprint


def _place_order(qty: int) -> None:
    raise ValueError(f"quantity {qty} is below the minimum of 10 for tenant t-{qty * 7}")


def _cancel_order(qty: int) -> None:
    raise ValueError(f"quantity {qty} is below the minimum of 10 for tenant t-{qty * 7}")


def _caught(fn: object, *args: object) -> BaseException:
    try:
        fn(*args)  # type: ignore[operator]
    except BaseException as e:
        return e
    raise AssertionError("did not raise")


def test_same_place_same_fingerprint_other_place_differs() -> None:
    dna = ErrorDNA("svc")
    a = dna.analyze(_caught(_place_order, 3))
    b = dna.analyze(_caught(_place_order, 8))
    c = dna.analyze(_caught(_cancel_order, 3))
    assert a.fingerprint == b.fingerprint
    assert a.location == f"{__name__}:_place_order"
    assert c.fingerprint != a.fingerprint
    assert c.normalized_message == a.normalized_message
    # Without locations the two places are one pattern.
    flat = ErrorDNA("svc", include_location=False)
    assert flat.analyze(_caught(_place_order, 3)).fingerprint == (
        flat.analyze(_caught(_cancel_order, 3)).fingerprint
    )


def test_location_is_the_services_own_frame_not_the_library() -> None:
    def read_config() -> None:
        json.loads("{not json")

    analysis = ErrorDNA("svc").analyze(_caught(read_config))
    assert analysis.location is not None
    assert analysis.location.endswith("read_config")
    assert analysis.category is C.VALIDATION


def test_fingerprint_stable_across_processes(tmp_path: Path) -> None:
    module = tmp_path / "svc_code.py"
    module.write_text(
        textwrap.dedent(
            """
            import sys
            from hub_client._private.error_dna import ErrorDNA

            def fetch(order_id):
                raise ConnectionRefusedError(111, f"Connection refused to 10.0.0.{order_id}:5432")

            dna = ErrorDNA("svc")
            try:
                fetch(int(sys.argv[1]))
            except ConnectionRefusedError as e:
                print(dna.analyze(e).fingerprint)
            print(dna.analyze(f"deadlock detected in process {sys.argv[1]}").fingerprint)
            """
        )
    )
    outputs = []
    for seed, arg in (("1", "7"), ("12345", "42")):
        env = {
            **os.environ,
            "PYTHONHASHSEED": seed,
            "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()]),
        }
        run = subprocess.run(
            [sys.executable, str(module), arg],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            timeout=60,
        )
        outputs.append(run.stdout.split())
    assert outputs[0] == outputs[1]
    assert len(set(outputs[0])) == 2


def test_chained_cause_decides_category() -> None:
    def fetch_prices() -> None:
        try:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        except OSError as e:
            raise RuntimeError("could not fetch prices") from e

    analysis = ErrorDNA("svc").analyze(_caught(fetch_prices))
    assert analysis.category is C.CONNECTION
    assert analysis.exception_type == "RuntimeError"
    assert analysis.matched_by == "errno:ECONNREFUSED"


def test_grpc_code_attribute_is_used() -> None:
    class FakeRpcError(Exception):
        def code(self) -> object:
            class Code:
                name = "UNAUTHENTICATED"

            return Code()

    analysis = ErrorDNA("svc").analyze(FakeRpcError("no details"))
    assert analysis.category is C.AUTHENTICATION
    assert analysis.matched_by == "grpc:UNAUTHENTICATED"


def test_analysis_fields() -> None:
    now = [1000.0]
    dna = ErrorDNA("orders", clock=lambda: now[0])
    long_message = "deadlock detected while updating order 12345 " + "x" * 2000
    first = dna.analyze(long_message, {"operation": "submit_order"})
    now[0] = 1005.0
    second = dna.analyze_error(
        error_message="deadlock detected while updating order 777 " + "x" * 2000
    )

    assert isinstance(first, ErrorAnalysis)
    assert first.service == "orders"
    assert first.category is C.DATABASE
    assert first.severity is Severity.MEDIUM
    assert any("lock" in action for action in first.suggested_actions)
    assert first.context == {"operation": "submit_order"}
    assert first.occurrences == 1 and second.occurrences == 2
    assert second.first_seen == 1000.0 and second.last_seen == 1005.0
    assert second.sample == first.sample
    assert "12345" in second.sample and len(second.sample) <= 500
    assert first.exception_type is None
    assert first.log_fields()["error_category"] == "database"
    with pytest.raises(AttributeError):
        first.category = C.UNKNOWN  # type: ignore[misc]


def test_normalize_message_examples() -> None:
    assert (
        normalize_message("ids 42, 43 at 10.0.0.1:8080 by x@y.io")
        == "ids <n>, ... at <ip>:<port> by <email>"
    )
    assert normalize_message("obj at 0x7f3b2c1d4e50 in /usr/lib/python3.11/socket.py") == (
        "obj at <hex> in <path>"
    )
    assert normalize_message("  many\n\tspaces  ") == "many spaces"
    assert normalize_message("Can't connect to '10.0.0.5' (111)") == "Can't connect to '<ip>' (<n>)"
    # A quoted sentence is kept, values quoted inside it are not.
    assert normalize_message("""(1, "Access denied for user 'bob'@'h' now")""") == (
        """(<n>, "Access denied for user '<str>'@'<str>' now")"""
    )


def test_string_type_prefix() -> None:
    dna = ErrorDNA("svc")
    assert dna.analyze("psycopg2.errors.DeadlockDetected: deadlock detected").exception_type == (
        "psycopg2.errors.DeadlockDetected"
    )
    assert dna.analyze(
        "(pymysql.err.OperationalError) (1040, 'Too many connections')"
    ).exception_type == ("pymysql.err.OperationalError")
    assert dna.analyze(_grpc("UNAVAILABLE", "x")).exception_type == "AioRpcError"
    assert dna.analyze("something odd").exception_type is None
    assert dna.analyze(TimeoutError()).normalized_message == "TimeoutError"


def test_counting_and_drain_deltas() -> None:
    now = [100.0]
    dna = ErrorDNA("orders", clock=lambda: now[0])
    for port in (5432, 5433, 5434):
        dna.analyze(f'connection to server at "10.0.0.1", port {port} failed: Connection refused')
        now[0] += 1
    dna.analyze("deadlock detected")

    batch = dna.drain_report()
    assert all(isinstance(d, PatternDelta) for d in batch)
    by_category = {d.category: d for d in batch}
    assert by_category[C.CONNECTION].count == 3
    assert by_category[C.CONNECTION].first_seen == 100.0
    assert by_category[C.CONNECTION].last_seen == 102.0
    assert by_category[C.CONNECTION].service == "orders"
    assert by_category[C.DATABASE].count == 1
    assert dna.drain_report() == []

    dna.analyze("deadlock detected")
    dna.analyze("deadlock detected")
    (delta,) = dna.drain_report()
    assert delta.category is C.DATABASE and delta.count == 2

    totals = {p.category: p.count for p in dna.patterns()}
    assert totals == {C.CONNECTION: 3, C.DATABASE: 3}
    assert dna.patterns()[0].count == 3


def test_bounded_patterns_keep_undrained_deltas() -> None:
    dna = ErrorDNA("svc", max_patterns=3)
    for i in range(5):
        dna.analyze(f"failure kind {'abcde'[i]}")
    assert len(dna.patterns()) == 3
    batch = dna.drain_report()
    assert sum(d.count for d in batch) == 3
    assert dna.dropped == 2


def test_thread_safety_counts_are_exact() -> None:
    dna = ErrorDNA("svc")
    messages = [
        "Error 111 connecting to localhost:6379. Connection refused.",
        "deadlock detected",
        "Client error '429 Too Many Requests' for url 'https://x.example/v1'",
    ]
    per_thread, threads = 300, 8
    drained: list[PatternDelta] = []
    stop = threading.Event()

    def work(n: int) -> None:
        for i in range(per_thread):
            dna.analyze(messages[(n + i) % len(messages)].replace("6379", str(6000 + i)))

    def drain() -> None:
        while not stop.is_set():
            drained.extend(dna.drain_report())

    drainer = threading.Thread(target=drain)
    drainer.start()
    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    drainer.join()
    drained.extend(dna.drain_report())

    assert sum(d.count for d in drained) == per_thread * threads
    assert sum(p.count for p in dna.patterns()) == per_thread * threads
    assert len(dna.patterns()) == len(messages)


async def test_flush_reports_and_restores_on_failure() -> None:
    received: list[list[PatternDelta]] = []
    fail = [True]

    async def reporter(batch: list[PatternDelta]) -> None:
        if fail[0]:
            raise ConnectionError("hub unreachable")
        received.append(batch)

    dna = ErrorDNA("svc", reporter=reporter)
    dna.analyze("deadlock detected")
    dna.analyze("deadlock detected")
    with pytest.raises(ConnectionError):
        await dna.flush()
    dna.analyze("deadlock detected")
    fail[0] = False
    batch = await dna.flush()
    assert [d.count for d in batch] == [3]
    assert received == [batch]
    assert await dna.flush() == []
    assert received == [batch]


async def test_flush_without_reporter_returns_the_batch() -> None:
    dna = ErrorDNA("svc")
    dna.analyze(KeyError("x"))
    (delta,) = await dna.flush()
    assert delta.count == 1 and delta.exception_type == "KeyError"


def test_hostile_inputs_do_not_break() -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    dna = ErrorDNA("svc")
    assert dna.analyze(Unprintable()).category is C.UNKNOWN
    assert dna.analyze("").normalized_message == ""
    huge = "x" * 1_000_000 + " connection refused"
    assert dna.analyze(huge).category is C.UNKNOWN  # beyond the analysed prefix
    assert dna.analyze("\ue000\ue001 private use 42").normalized_message == "private use <n>"
    with pytest.raises(ValueError):
        ErrorDNA("svc", max_patterns=0)
