"""Process-wide logging: one handler on the root logger, as text or as JSON lines.

:func:`configure_logging` owns the root logger: it replaces whatever handlers are there
(an imported library may have called :func:`logging.basicConfig` already, which would make
a later ``basicConfig`` a silent no-op) and sets the level itself. In JSON each record is one
object per line with ``time``, ``level``, ``logger`` and ``message``, plus the request fields
of :data:`FIELDS` when a record carries them (``log.info(..., extra={"method": ...})``); the
access log of :mod:`services.runtime.interceptors` does.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any, Literal

LogFormat = Literal["text", "json"]
"""The formats :func:`configure_logging` writes."""

FIELDS = ("method", "status", "tenant", "duration_ms", "request_id")
"""Record attributes (set with ``extra=``) that the JSON format copies into each line."""

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
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
