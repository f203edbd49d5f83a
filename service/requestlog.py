"""The request log: a request id on every request, and one JSON line per answer
and its count in the HTTP metrics (service/metrics.py), both from one hook.

An incoming ``X-Request-ID`` is honoured when it is a sane token (so a
caller's id follows its request through our logs and the worker's), else
one is made; either way it is returned in the response header. The line
names the route, status, duration and API key *name*, never a body.

The id and the start travel in context variables (the id in the log
context every line of the request carries), not in ``flask.g``: each of
``g``'s reads and writes is three Python calls through its proxy, and the
request is read through its proxy once a hook.
"""

from __future__ import annotations

import logging
import os
import re
import time
from contextvars import ContextVar

from flask import Flask, Response, g, request

from smtpcheck.logs import log_context

from . import metrics

log = logging.getLogger("smtpcheck.access")

HEADER = "X-Request-ID"
ENVIRON_KEY = "HTTP_X_REQUEST_ID"  # the header, as WSGI names it
_SANE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
#: Routes answered without a log line (probes and scrapes); they are still counted.
UNLOGGED = frozenset({"/healthz", "/readyz", "/metrics"})


#: This request's id and start (time.perf_counter), from before any view runs to its answer.
_began: ContextVar[tuple[str, float] | None] = ContextVar("smtpcheck_request_began", default=None)
#: uuid.UUID's version 4 and RFC 4122 variant bits: what uuid4 clears, and what it sets.
_UUID4_CLEAR = 0xF000 << 64 | 0xC000 << 48
_UUID4_SET = 4 << 76 | 0x8000 << 48


def request_id() -> str:
    """This request's id (set before any view runs)."""
    began = _began.get()
    return began[0] if began is not None else ""


def new_id() -> str:
    """``uuid.uuid4().hex``, made as uuid makes it (16 random bytes, its version and
    variant bits) without the UUID object."""
    return "%032x" % (int.from_bytes(os.urandom(16), "big") & ~_UUID4_CLEAR | _UUID4_SET)


def install(app: Flask) -> None:
    @app.before_request
    def _begin() -> None:
        given = request._get_current_object().environ.get(ENVIRON_KEY, "")  # type: ignore[attr-defined]
        made = given if _SANE.fullmatch(given) else new_id()
        log_context.set({"request_id": made})
        _began.set((made, time.perf_counter()))

    @app.after_request
    def _end(response: Response) -> Response:
        began = _began.get()
        _began.set(None)  # an answer whose request never began (a failed push) is not timed
        made, started = began if began is not None else ("", None)
        response.headers.set(HEADER, made)
        seconds = time.perf_counter() - started if started is not None else None
        current = request._get_current_object()  # type: ignore[attr-defined]
        rule, method = current.url_rule, current.method
        route = rule.rule if rule is not None else None
        status = response.status_code
        metrics.count(route, method, status, seconds)
        if route not in UNLOGGED and log.isEnabledFor(logging.INFO):
            log.info(
                "%s %s %s",
                method,
                route or current.path[:200],
                status,
                extra={
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2) if seconds is not None else None,
                    "api_key": g.get("owner"),
                },
            )
        return response
