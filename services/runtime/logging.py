"""Process-wide logging: one handler on the root logger, as text or as JSON lines.

:func:`configure_logging` owns the root logger: it replaces whatever handlers are there
(an imported library may have called :func:`logging.basicConfig` already, which would make
a later ``basicConfig`` a silent no-op) and sets the level itself. In JSON each record is one
object per line with ``time``, ``level``, ``logger`` and ``message``, plus the request fields
of :data:`FIELDS` when a record carries them (``log.info(..., extra={"method": ...})``); the
access log of :mod:`services.runtime.interceptors` does.

Every line written while an RPC is served — by any logger, on the event loop or on a worker
thread (which runs with the caller's context variables) — carries that RPC's ``request_id``
(and its ``trace_id`` when tracing is on): the request interceptor binds a
:class:`RequestContext` and the handler's :class:`RequestFields` filter stamps it on records
that do not set their own.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any, Literal

LogFormat = Literal["text", "json"]
"""The formats :func:`configure_logging` writes."""

FIELDS = ("method", "status", "tenant", "via", "duration_ms", "request_id", "trace_id")
"""Record attributes (set with ``extra=``) that the JSON format copies into each line."""


@dataclass
class RequestContext:
    """The RPC being served, as its log lines and its delegated calls see it. The auth
    interceptor fills in ``tenant`` once the token is known; a delegate token's request
    that names a tenant (:func:`services.runtime.auth.require_tenant`) sets ``tenant`` to it
    and ``via`` to the delegate's own tenant. No person's id (subject, dataset) is kept."""

    request_id: str
    tenant: str | None = None
    via: str | None = None
    trace_id: str | None = None


_request: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "veil_request", default=None
)


def bind_request(context: RequestContext) -> contextvars.Token[RequestContext | None]:
    """Bind ``context`` for the current RPC (the request interceptor does)."""
    return _request.set(context)


def reset_request(token: contextvars.Token[RequestContext | None]) -> None:
    """Undo :func:`bind_request`."""
    _request.reset(token)


def current_request() -> RequestContext | None:
    """The RPC being served, or None outside one (start hooks, readiness checks)."""
    return _request.get()


class RequestFields(logging.Filter):
    """Stamps the current RPC's ``request_id`` and ``trace_id`` on a record that has none."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _request.get()
        if context is not None:
            if getattr(record, "request_id", None) is None:
                record.request_id = context.request_id
            if context.trace_id is not None and getattr(record, "trace_id", None) is None:
                record.trace_id = context.trace_id
        return True


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record; the traceback, if any, under ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def configure_logging(
    level: str | int = "INFO", fmt: LogFormat = "text", stream: IO[str] | None = None
) -> None:
    """Log records at ``level`` and above to ``stream`` (stderr) in ``fmt``; replaces any
    root handlers installed before."""
    if isinstance(level, str):
        level = level.upper()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RequestFields())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
