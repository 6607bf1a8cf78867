"""Structured JSON logging with the request's tenant context.

The context (tenant, user, subscription tier, correlation id) lives in one
``ContextVar``: it follows ``await`` and is copied into tasks created while it
is bound, so a request's logs carry its ids without passing them around. The
hub's gRPC interceptor binds it per request; services bind it the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import enum
import json
import logging
import math
import sys
import threading
import traceback
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass
from decimal import Decimal
from pathlib import PurePath
from typing import IO, Any

__all__ = [
    "JsonFormatter",
    "RequestContext",
    "bind_context",
    "configure_logging",
    "current_context",
    "reset_context",
    "set_context",
]


@dataclass(frozen=True)
class RequestContext:
    """Who a piece of work is for. Empty strings mean "not set"."""

    tenant_id: str = ""
    user_id: str = ""
    subscription_tier: str = ""
    correlation_id: str = ""

    def as_dict(self) -> dict[str, str]:
        """The fields that are set."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v}

    @classmethod
    def from_metadata(
        cls, metadata: Mapping[str, str | bytes] | Iterable[tuple[str, str | bytes]]
    ) -> RequestContext:
        """From gRPC metadata / HTTP headers: ``x-tenant-id`` (or its alias
        ``x-company-id``), ``x-user-id``, ``x-subscription-tier``,
        ``x-correlation-id``. Keys are case-insensitive; others are ignored."""
        pairs = metadata.items() if isinstance(metadata, Mapping) else metadata
        found: dict[str, str] = {}
        for key, value in pairs:
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            found.setdefault(key.lower(), text)
        return cls(
            tenant_id=found.get("x-tenant-id") or found.get("x-company-id", ""),
            user_id=found.get("x-user-id", ""),
            subscription_tier=found.get("x-subscription-tier", ""),
            correlation_id=found.get("x-correlation-id", ""),
        )


_EMPTY = RequestContext()
_CONTEXT: ContextVar[RequestContext] = ContextVar("hub_request_context", default=_EMPTY)


def current_context() -> RequestContext:
    """The context bound in this task/thread (empty if none)."""
    return _CONTEXT.get()


def set_context(
    context: RequestContext | None = None, /, **fields: str | None
) -> Token[RequestContext]:
    """Binds a context until ``reset_context(token)``.

    Args:
        context: replaces the current context; when omitted, the current one
            is the base.
        **fields: fields to change (``tenant_id=...``); ``None`` leaves a field
            as it is.
    """
    base = context if context is not None else _CONTEXT.get()
    changes = {k: v for k, v in fields.items() if v is not None}
    return _CONTEXT.set(dataclasses.replace(base, **changes) if changes else base)


def reset_context(token: Token[RequestContext]) -> None:
    """Restores the context that was current before ``set_context``."""
    _CONTEXT.reset(token)


@contextlib.contextmanager
def bind_context(
    context: RequestContext | None = None, /, **fields: str | None
) -> Iterator[RequestContext]:
    """``with bind_context(tenant_id="company_abc", correlation_id=cid):`` binds
    for the block (same arguments as ``set_context``) and yields the bound
    context. Works in sync and async code; nested blocks add to the outer."""
    token = set_context(context, **fields)
    try:
        yield _CONTEXT.get()
    finally:
        _CONTEXT.reset(token)


# --------------------------------------------------------------------------
# Formatting

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}
_CONTEXT_KEYS = ("tenant_id", "user_id", "subscription_tier", "correlation_id")
# Keys the formatter owns; an extra with one of these names is written as
# ``extra_<name>`` rather than overwrite it.
_RESERVED = frozenset({"ts", "level", "logger", "message", "service", "exc", "stack"})
_MAX_DEPTH = 6
_MAX_REPR = 2000


def _safe_repr(value: object) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<unrepresentable {type(value).__qualname__}>"
    return text if len(text) <= _MAX_REPR else text[: _MAX_REPR - 1] + "…"


def _jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` as something ``json.dumps`` always accepts (strict JSON: no NaN)."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if depth >= _MAX_DEPTH:
        return _safe_repr(value)
    try:
        if isinstance(value, enum.Enum):
            return _jsonable(value.value, depth + 1)
        if isinstance(value, Mapping):
            return {
                k if isinstance(k, str) else _safe_repr(k): _jsonable(v, depth + 1)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple | set | frozenset):
            return [_jsonable(v, depth + 1) for v in value]
        if isinstance(value, dt.datetime | dt.date | dt.time):
            return value.isoformat()
        if isinstance(value, dt.timedelta):
            return value.total_seconds()
        if isinstance(value, uuid.UUID | Decimal | PurePath):
            return str(value)
        if isinstance(value, bytes):
            return value.decode("utf-8", "backslashreplace")
        if isinstance(value, BaseException):
            return f"{_exception_type(type(value))}: {value}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {
                f.name: _jsonable(getattr(value, f.name), depth + 1)
                for f in dataclasses.fields(value)
            }
    except Exception:
        pass
    return _safe_repr(value)


def _exception_type(cls: type) -> str:
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def _timestamp(created: float) -> str:
    moment = dt.datetime.fromtimestamp(created, tz=dt.UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line.

    Keys, in order: ``ts`` (RFC 3339, UTC), ``level``, ``logger``, ``message``,
    ``service`` (when configured), the bound context's ``tenant_id``,
    ``user_id``, ``subscription_tier``, ``correlation_id`` (when set), the
    record's ``extra=`` fields, then ``exc`` (``type``, ``message``,
    ``traceback``) and ``stack`` when present. An ``extra`` named like a
    context field overrides it; one named like another key above is written as
    ``extra_<name>``. Values that JSON cannot hold are written as their repr;
    formatting never raises.

    Args:
        service_name: the ``service`` of every line.
        static_fields: fields added to every line (e.g. ``version``, ``instance_id``).
    """

    def __init__(
        self, service_name: str | None = None, *, static_fields: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__()
        self.service_name = service_name
        self.static_fields = dict(static_fields or {})

    def format(self, record: logging.LogRecord) -> str:
        try:
            return json.dumps(self._payload(record), ensure_ascii=False, allow_nan=False)
        except Exception as e:  # the last resort: still one valid JSON line
            return json.dumps(
                {
                    "ts": _timestamp(record.created),
                    "level": record.levelname,
                    "logger": record.name,
                    "message": _safe_repr(record.msg),
                    "format_error": _safe_repr(e),
                }
            )

    def _payload(self, record: logging.LogRecord) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
        }
        try:
            payload["message"] = record.getMessage()
        except Exception as e:  # bad %-args: keep the template and the args
            payload["message"] = f"{_safe_repr(record.msg)} % {_safe_repr(record.args)}"
            payload["format_error"] = _safe_repr(e)
        if self.service_name:
            payload["service"] = self.service_name
        payload.update(_CONTEXT.get().as_dict())
        for key, value in self.static_fields.items():
            payload.setdefault(key, _jsonable(value))

        for key, value in record.__dict__.items():
            if key in _RECORD_ATTRS or key.startswith("_"):
                continue
            payload["extra_" + key if key in _RESERVED else key] = _jsonable(value)

        if record.exc_info and record.exc_info[0] is not None:
            exc_type, exc, tb = record.exc_info
            payload["exc"] = {
                "type": _exception_type(exc_type),
                "message": _safe_str(exc),
                "traceback": "".join(traceback.format_exception(exc_type, exc, tb)).rstrip(),
            }
        elif record.exc_text:
            payload["exc"] = {"traceback": record.exc_text}
        if record.stack_info:
            payload["stack"] = record.stack_info
        return payload


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return _safe_repr(value)


# --------------------------------------------------------------------------
# Setup

_SETUP_LOCK = threading.Lock()
_HANDLER_FLAG = "_hub_json_handler"


def configure_logging(
    service_name: str,
    level: int | str = "INFO",
    stream: IO[str] | None = None,
    *,
    static_fields: Mapping[str, Any] | None = None,
    force: bool = False,
) -> logging.Handler:
    """Makes the root logger write JSON lines. Idempotent: calling it again
    updates the one handler it installed instead of adding another.

    Args:
        service_name: the ``service`` of every line.
        level: the root logger's level (``"DEBUG"``, ``logging.INFO``, ...).
        stream: where to write; ``sys.stderr`` when ``None``.
        static_fields: fields added to every line.
        force: also remove (and close) the root's other handlers, e.g. one
            installed by ``logging.basicConfig``.

    Returns:
        The JSON handler.
    """
    if isinstance(level, str):
        levels = logging.getLevelNamesMapping()
        if level.upper() not in levels:
            raise ValueError(f"unknown log level {level!r}")
        level = levels[level.upper()]
    root = logging.getLogger()
    with _SETUP_LOCK:
        ours = [h for h in root.handlers if getattr(h, _HANDLER_FLAG, False)]
        for extra in ours[1:]:
            root.removeHandler(extra)
        if force:
            for other in [h for h in root.handlers if not getattr(h, _HANDLER_FLAG, False)]:
                root.removeHandler(other)
                other.close()
        target = stream if stream is not None else sys.stderr
        handler: logging.StreamHandler[IO[str]]
        if ours and isinstance(ours[0], logging.StreamHandler):
            handler = ours[0]
            if handler.stream is not target:
                handler.setStream(target)
        else:
            if ours:
                root.removeHandler(ours[0])
            handler = logging.StreamHandler(target)
            setattr(handler, _HANDLER_FLAG, True)
            root.addHandler(handler)
        handler.setFormatter(JsonFormatter(service_name, static_fields=static_fields))
        handler.setLevel(logging.NOTSET)
        root.setLevel(level)
    return handler
