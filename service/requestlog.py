"""The request log: a request id on every request, and one JSON line per answer
and its count in the HTTP metrics (service/metrics.py), both from one hook.

An incoming ``X-Request-ID`` is honoured when it is a sane token (so a
caller's id follows its request through our logs and the worker's), else
one is made; either way it is returned in the response header. The line
names the route, status, duration and API key *name*, never a body.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, Response, g, request

from smtpcheck.logs import log_context

from . import metrics

log = logging.getLogger("smtpcheck.access")

HEADER = "X-Request-ID"
_SANE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
#: Routes answered without a log line (probes and scrapes); they are still counted.
UNLOGGED = frozenset({"/healthz", "/readyz", "/metrics"})


def request_id() -> str:
    """This request's id (set before any view runs)."""
    return str(g.get("request_id") or "")


def install(app: Flask) -> None:
    @app.before_request
    def _begin() -> None:
        given = request.headers.get(HEADER, "")
        made = given if _SANE.fullmatch(given) else uuid.uuid4().hex
        g.request_id = made
        g.request_started = time.perf_counter()
        log_context.set({"request_id": made})

    @app.after_request
    def _end(response: Response) -> Response:
        response.headers[HEADER] = request_id()
        started = g.get("request_started")
        seconds = time.perf_counter() - started if started is not None else None
        rule, method = request.url_rule, request.method
        route = rule.rule if rule is not None else None
        status = response.status_code
        metrics.count(route, method, status, seconds)
        if route not in UNLOGGED and log.isEnabledFor(logging.INFO):
            log.info(
                "%s %s %s",
                method,
                route or request.path[:200],
                status,
                extra={
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2) if seconds is not None else None,
                    "api_key": g.get("owner"),
                },
            )
        return response
