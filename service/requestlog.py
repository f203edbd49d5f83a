"""The request log: a request id on every request and one JSON line per answer.

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

log = logging.getLogger("smtpcheck.access")

HEADER = "X-Request-ID"
_SANE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id() -> str:
    """This request's id (set before any view runs)."""
    return str(g.get("request_id") or "")


def install(app: Flask) -> None:
    @app.before_request
    def _begin() -> None:
        given = request.headers.get(HEADER, "")
        g.request_id = given if _SANE.fullmatch(given) else uuid.uuid4().hex
        g.request_started = time.perf_counter()
        log_context.set({"request_id": g.request_id})

    @app.after_request
    def _end(response: Response) -> Response:
        response.headers[HEADER] = request_id()
        started = g.get("request_started")
        duration = (time.perf_counter() - started) * 1000 if started is not None else None
        route = request.url_rule.rule if request.url_rule is not None else None
        if route not in ("/healthz", "/readyz", "/metrics"):
            log.info(
                "%s %s %s",
                request.method,
                route or request.path[:200],
                response.status_code,
                extra={
                    "status": response.status_code,
                    "duration_ms": round(duration, 2) if duration is not None else None,
                    "api_key": g.get("owner"),
                },
            )
        return response
