"""The one place that turns every error into ``application/problem+json``.

RFC 9457 bodies: ``type``, ``title``, ``status``, ``detail``; a validation
error (422) adds ``errors``, a map from a dotted field path (``auth.password``,
``rcpt_to.0``, ``message.headers.X-Foo.value``) to a list of messages; errors
about the body as a whole sit under ``_schema``. Views raise; nothing else
builds an error body.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import redis.exceptions
from flask import Flask, Response
from marshmallow import ValidationError
from redis.sentinel import MasterNotFoundError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

# The problem types are the contract's (smtpcheck.contract), so that the
# request schema loads without Flask; they are re-exported here.
from smtpcheck.contract import (  # noqa: F401
    CHECK_RUNNING,
    INTERNAL_ERROR,
    MISCONFIGURED,
    NO_TRANSCRIPT,
    NOT_FINISHED,
    NOT_FOUND,
    PROBLEM_JSON,
    RATE_LIMITED,
    SERVER_BUSY,
    STORE_UNAVAILABLE,
    TOO_MANY_CHECKS,
    TOO_MANY_HELD,
    TYPE_PREFIX,
    UNAUTHORIZED,
    VALIDATION_ERROR,
)

log = logging.getLogger("smtpcheck.service")


class Problem(Exception):
    """An error a view raises; the handler renders it as problem+json."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        type: str = "about:blank",
        errors: Mapping[str, list[str]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type
        self.errors = dict(errors) if errors is not None else None
        self.headers = dict(headers or {})

    def response(self) -> Response:
        body: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors is not None:
            body["errors"] = self.errors
        response = Response(
            json.dumps(body, ensure_ascii=False, sort_keys=False) + "\n",
            status=self.status,
            mimetype=PROBLEM_JSON,
        )
        response.headers.update(self.headers)
        return response


#: A 422 lists at most this many fields (a body of 100,000 unknown keys gets 100).
MAX_ERROR_FIELDS = 100


def validation_problem(errors: Mapping[str, list[str]]) -> Problem:
    names = list(errors)
    shown = dict(list(errors.items())[:MAX_ERROR_FIELDS])
    detail = "the request is not valid: " + ", ".join(names[:10])
    if len(names) > 10:
        detail += f" and {len(names) - 10} more"
    if len(names) > MAX_ERROR_FIELDS:
        detail += f" (errors lists the first {MAX_ERROR_FIELDS})"
    return Problem(422, "Unprocessable Content", detail, type=VALIDATION_ERROR, errors=shown)


def flatten_errors(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """marshmallow's nested error dicts as ``{"auth.password": [...]}``."""
    flat: dict[str, list[str]] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path else str(key))
        elif isinstance(node, list | tuple):
            for item in node:
                walk(item, path)
        else:
            flat.setdefault(path or "_schema", []).append(str(node))

    walk(messages, prefix)
    return flat


def register(app: Flask) -> None:
    """Install the handlers that make every error a problem+json response."""
    app.register_error_handler(Problem, _problem)
    app.register_error_handler(ValidationError, _validation_error)
    app.register_error_handler(HTTPException, _http_exception)
    app.register_error_handler(redis.exceptions.ConnectionError, _store_unavailable)
    app.register_error_handler(redis.exceptions.TimeoutError, _store_unavailable)
    app.register_error_handler(redis.exceptions.ReadOnlyError, _store_unavailable)
    app.register_error_handler(Exception, _internal_error)


def _problem(error: Problem) -> Response:
    return error.response()


def _validation_error(error: ValidationError) -> Response:
    return validation_problem(flatten_errors(error.messages)).response()


def _http_exception(error: HTTPException) -> Response:
    status = error.code or 500
    if isinstance(error, RequestEntityTooLarge):
        detail = "the request body is larger than this service accepts"
    else:
        detail = error.description or error.name
    headers = {name: value for name, value in error.get_headers() if name.lower() != "content-type"}
    return Problem(status, error.name, detail, headers=headers).response()


def _store_unavailable(error: Exception) -> Response:
    log.warning("Redis unavailable: %s", error)
    detail = "the job store (Redis) cannot be reached; try again shortly"
    if isinstance(error, MasterNotFoundError | redis.exceptions.ReadOnlyError):
        detail = "the job store (Redis) has no primary right now (failing over); try again shortly"
    return Problem(
        503,
        "Service Unavailable",
        detail,
        type=STORE_UNAVAILABLE,
        headers={"Retry-After": "5"},
    ).response()


def _internal_error(error: Exception) -> Response:
    if isinstance(error, HTTPException):  # pragma: no cover - routed above
        return _http_exception(error)
    log.exception("unhandled error", exc_info=error)
    return Problem(
        500,
        "Internal Server Error",
        "the service failed to handle this request; it has been logged",
        type=INTERNAL_ERROR,
    ).response()
