"""Structured JSON logging: one object per line, tenant context from
contextvars (also across asyncio tasks), extras, exceptions, setup."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any

import pytest

from hub_client._private.logging import (
    JsonFormatter,
    RequestContext,
    bind_context,
    configure_logging,
    current_context,
    reset_context,
    set_context,
)


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger of its own writing JSON lines into a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter("orders"))
    logger = logging.getLogger(f"test.structured.{uuid.uuid4().hex}")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, buffer
    logger.removeHandler(handler)


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    text = buffer.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_one_json_object_per_line(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = capture
    logger.info("registered %s on port %d", "data-bridge", 8001)
    logger.warning("multi\nline\nmessage")
    first, second = lines(buffer)
    assert list(first)[:5] == ["ts", "level", "logger", "message", "service"]
    assert first["message"] == "registered data-bridge on port 8001"
    assert first["level"] == "INFO"
    assert first["logger"] == logger.name
    assert first["service"] == "orders"
    assert second["message"] == "multi\nline\nmessage"
    ts = dt.datetime.fromisoformat(first["ts"].replace("Z", "+00:00"))
    assert first["ts"].endswith("Z") and ts.utcoffset() == dt.timedelta(0)
    assert abs((dt.datetime.now(dt.UTC) - ts).total_seconds()) < 60
    for key in ("tenant_id", "user_id", "subscription_tier", "correlation_id"):
        assert key not in first


def test_context_is_added_and_reset(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = capture
    with bind_context(tenant_id="company_abc", user_id="user123", subscription_tier="pro") as ctx:
        assert ctx == current_context()
        with bind_context(correlation_id="req_456"):
            logger.info("inner")
        logger.info("outer")
    logger.info("after")
    inner, outer, after = lines(buffer)
    assert inner["tenant_id"] == "company_abc"
    assert inner["user_id"] == "user123"
    assert inner["subscription_tier"] == "pro"
    assert inner["correlation_id"] == "req_456"
    assert "correlation_id" not in outer and outer["tenant_id"] == "company_abc"
    assert "tenant_id" not in after
    assert current_context() == RequestContext()


def test_token_based_set_and_reset() -> None:
    token = set_context(RequestContext(tenant_id="t1", user_id="u1"))
    try:
        inner = set_context(user_id="u2", correlation_id=None)
        assert current_context() == RequestContext(tenant_id="t1", user_id="u2")
        reset_context(inner)
        assert current_context().user_id == "u1"
    finally:
        reset_context(token)
    assert current_context() == RequestContext()
    with pytest.raises(TypeError):
        set_context(tenant="typo")


async def test_context_follows_asyncio_tasks(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = capture

    async def handle(tenant: str, correlation: str) -> None:
        with bind_context(tenant_id=tenant, correlation_id=correlation):
            await asyncio.sleep(0)

            async def child() -> None:
                await asyncio.sleep(0)
                logger.info("child of %s", tenant)

            await asyncio.create_task(child())
            await asyncio.sleep(0)
            logger.info("request of %s", tenant)

    await asyncio.gather(*(handle(f"tenant-{i}", f"req-{i}") for i in range(20)))
    records = lines(buffer)
    assert len(records) == 40
    for record in records:
        tenant = record["message"].rsplit(" ", 1)[1]
        assert record["tenant_id"] == tenant
        assert record["correlation_id"] == "req-" + tenant.split("-")[1]
    assert current_context() == RequestContext()


def test_context_is_per_thread(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = capture
    with bind_context(tenant_id="main"):
        worker = threading.Thread(target=lambda: logger.info("from thread"))
        worker.start()
        worker.join()
    (record,) = lines(buffer)
    assert "tenant_id" not in record  # threads start with an empty context


def test_extras(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = capture

    class Tier(Enum):
        PRO = "pro"

    class Opaque:
        def __repr__(self) -> str:
            return "<Opaque thing>"

    class Hostile:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    loop: list[Any] = []
    loop.append(loop)
    with bind_context(tenant_id="from_context"):
        logger.info(
            "Service discovery request",
            extra={
                "services_returned": 5,
                "response_time_ms": 12.5,
                "tenant_id": "company_abc",  # an explicit extra beats the bound context
                "tier": Tier.PRO,
                "when": dt.datetime(2024, 5, 1, 10, 15, 30, tzinfo=dt.UTC),
                "amount": Decimal("0.001"),
                "path": Path("/etc/hub.yaml"),
                "ids": {1, 2} and (1, 2),
                "nested": {"a": [1, {"b": None}], 3: "int key"},
                "opaque": Opaque(),
                "hostile": Hostile(),
                "nan": float("nan"),
                "raw": b"\xff\x00ok",
                "loop": loop,
                "level": "shadowed",  # would clash with the formatter's own key
            },
        )
    (record,) = lines(buffer)
    assert record["services_returned"] == 5
    assert record["response_time_ms"] == 12.5
    assert record["tenant_id"] == "company_abc"
    assert record["tier"] == "pro"
    assert record["when"] == "2024-05-01T10:15:30+00:00"
    assert record["amount"] == "0.001"
    assert record["path"] == "/etc/hub.yaml"
    assert record["ids"] == [1, 2]
    assert record["nested"] == {"a": [1, {"b": None}], "3": "int key"}
    assert record["opaque"] == "<Opaque thing>"
    assert record["hostile"] == "<unrepresentable test_extras.<locals>.Hostile>"
    assert record["nan"] == "nan"
    assert record["raw"] == "\\xff\x00ok"
    assert isinstance(record["loop"], list)
    assert record["level"] == "INFO" and record["extra_level"] == "shadowed"


def test_exception_info(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = capture

    def fetch() -> None:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as e:
            raise RuntimeError("price feed down") from e

    try:
        fetch()
    except RuntimeError:
        logger.exception("fetch failed", extra={"attempt": 3})
    logger.error("no exception here", exc_info=False)
    record, plain = lines(buffer)
    assert record["level"] == "ERROR"
    assert record["attempt"] == 3
    assert record["exc"]["type"] == "RuntimeError"
    assert record["exc"]["message"] == "price feed down"
    traceback = record["exc"]["traceback"]
    assert traceback.startswith("Traceback (most recent call last):")
    assert "ConnectionRefusedError: [Errno 111] Connection refused" in traceback
    assert "in fetch" in traceback
    assert "exc" not in plain


def test_stack_info_and_bad_format_args(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = capture
    logger.info("stack here", stack_info=True)
    (stacked,) = lines(buffer)
    assert stacked["stack"].startswith("Stack (most recent call last):")
    # Formatted directly: other handlers (pytest's capture) would raise on it.
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "needs two %s %s", ("only-one",), None
    )
    broken = json.loads(JsonFormatter().format(record))
    assert "needs two %s %s" in broken["message"]
    assert "only-one" in broken["message"]
    assert "format_error" in broken


def test_static_fields() -> None:
    formatter = JsonFormatter("hub", static_fields={"version": "1.2.3", "service": "ignored"})
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    payload = json.loads(formatter.format(record))
    assert payload["version"] == "1.2.3"
    assert payload["service"] == "hub"


def test_context_from_metadata() -> None:
    ctx = RequestContext.from_metadata(
        [
            ("X-Company-Id", "company_abc"),
            ("x-user-id", b"user123"),
            ("x-subscription-tier", "pro"),
            ("x-correlation-id", "req_456"),
            ("authorization", "secret"),
        ]
    )
    assert ctx == RequestContext("company_abc", "user123", "pro", "req_456")
    assert RequestContext.from_metadata({"x-tenant-id": "t", "x-company-id": "c"}).tenant_id == "t"
    assert ctx.as_dict() == {
        "tenant_id": "company_abc",
        "user_id": "user123",
        "subscription_tier": "pro",
        "correlation_id": "req_456",
    }
    assert RequestContext().as_dict() == {}


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


def test_configure_logging_is_idempotent(root_logger: logging.Logger) -> None:
    first, second = io.StringIO(), io.StringIO()
    h1 = configure_logging("central-hub", stream=first)
    h2 = configure_logging("central-hub", level="debug", stream=second)
    assert h1 is h2
    assert sum(1 for h in root_logger.handlers if h is h1) == 1
    assert root_logger.level == logging.DEBUG

    logging.getLogger("hub_server.registry").debug("instance registered", extra={"instance": "i-1"})
    assert first.getvalue() == ""
    (record,) = [json.loads(line) for line in second.getvalue().splitlines()]
    assert record["service"] == "central-hub"
    assert record["logger"] == "hub_server.registry"
    assert record["instance"] == "i-1"

    configure_logging("central-hub", level=logging.WARNING, stream=second)
    logging.getLogger("hub_server.registry").info("dropped")
    assert len(second.getvalue().splitlines()) == 1
    with pytest.raises(ValueError):
        configure_logging("central-hub", level="LOUD")


def test_configure_logging_force_replaces_other_handlers(root_logger: logging.Logger) -> None:
    other = logging.StreamHandler(io.StringIO())
    root_logger.addHandler(other)
    handler = configure_logging("svc", stream=io.StringIO(), force=True)
    assert other not in root_logger.handlers
    assert handler in root_logger.handlers
