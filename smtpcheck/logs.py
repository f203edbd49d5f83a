"""Logs as one JSON object per line, for the API and the workers alike.

Every record carries its time, level, logger and message; context such as
the request id, the check id, the vantage, the target host and the outcome
travels in ``extra={...}`` and lands as top-level keys. Nothing here ever
formats a request body or job arguments, so no secret can reach a log line
by way of this module.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
from typing import Any

# Context that follows the work: the API sets the request id per request;
# a worker sets the check id and vantage per job.
log_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "smtpcheck_log_context", default=None
)

#: The only ``extra`` keys a line may carry. An allowlist, not a blocklist:
#: libraries pass their own extras (RQ logs a failing job's arguments as
#: ``kwargs``, which hold a sealed password), and none of that may reach a log.
LOGGED_EXTRAS = frozenset(
    {
        "request_id",
        "check_id",
        "job_id",
        "vantage",
        "queue",
        "worker",
        "host",
        "address",
        "outcome",
        "stage",
        "status",
        "duration_ms",
        "api_key",
    }
)


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(log_context.get() or {})
        for key in LOGGED_EXTRAS.intersection(vars(record)):
            entry[key] = getattr(record, key)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def gather_only_what_is_written() -> None:
    """Stop :mod:`logging` gathering, for every record, what :class:`JSONFormatter`
    never writes: the caller's file, line and function (a walk up the stack),
    the thread and the multiprocessing process name. These are the switches of
    the logging HOWTO's "Optimization" section; process-wide, so a process
    calls this only when every line it writes goes through JSONFormatter (the
    API's gunicorn, cli/gunicorn_config.py)."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False


def gunicorn_logconfig(level: str = "INFO") -> dict[str, Any]:
    """A ``logconfig_dict`` for gunicorn that writes the same JSON lines."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JSONFormatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": level.upper(), "handlers": [], "propagate": True},
            # Our own request log replaces gunicorn's access log.
            "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": True},
        },
    }
