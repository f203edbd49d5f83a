"""The /v1 API: submit a check, read it (optionally waiting), its transcript,
delete it, list vantages. Views stay short and raise; ``problems`` renders.
"""

from __future__ import annotations

import json
import re
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request, url_for
from marshmallow import Schema

from smtpcheck.document import failure_reason, isoformat, links, public_status
from smtpcheck.report import render_text

from . import fanout, metrics, ratelimit
from .apikeys import authenticate, current_owner
from .jobstore import JobStore
from .problems import NO_TRANSCRIPT, NOT_FINISHED, Problem, validation_problem

blueprint = Blueprint("checks", __name__, url_prefix="/v1")
blueprint.before_request(authenticate)

_WAIT = re.compile(r"[0-9]{1,6}")


def store() -> JobStore:
    jobstore: JobStore = current_app.extensions["smtpcheck"]
    return jobstore


def request_schema() -> Schema:
    schema: Schema = current_app.extensions["smtpcheck.request_schema"]
    return schema


@blueprint.post("/checks")
def create_check() -> Response:
    admission = ratelimit.admission()
    admission.check_rate(current_owner())  # 429 before any parsing
    body = json_body()
    if not isinstance(body, dict):
        raise validation_problem({"_schema": ["the request body must be a JSON object"]})
    checked = request_schema().load(body)
    with admission.slot(current_owner()) as slot:  # 429 with too many checks in flight
        if checked["vantage"] == fanout.ALL:
            spread = fanout.submit(store(), checked, current_owner())
            slot.hold(spread.members[0]["id"])
            created: dict[str, str | None] = {"id": spread.id, "created_at": spread.created_at}
        else:
            job = store().submit(checked, current_owner())
            slot.hold(job.id)
            created = {"id": job.id, "created_at": isoformat(job.created_at)}
    response = jsonify(
        id=created["id"],
        status="queued",
        vantage=checked["vantage"],
        created_at=created["created_at"],
        links=links(str(created["id"])),
    )
    metrics.CHECKS_BY_KEY.labels(current_owner()).inc()
    response.status_code = 202
    response.headers["Location"] = url_for("checks.get_check", check_id=created["id"])
    return response


@blueprint.get("/checks/<check_id>")
def get_check(check_id: str) -> Response:
    spread = fanout.load(store(), check_id, current_owner())
    if spread is not None:
        fanout.wait(store(), spread, wait_seconds())
        return jsonify(fanout.describe(store(), spread))
    job = store().wait(store().load(check_id, current_owner()), wait_seconds())
    return jsonify(store().describe(job))


@blueprint.get("/checks/<check_id>/transcript")
def get_transcript(check_id: str) -> Response:
    spread = fanout.load(store(), check_id, current_owner())
    if spread is not None:
        fanout.wait(store(), spread, wait_seconds())
        text = fanout.transcript(store(), spread)
        if text is None:
            raise Problem(
                409,
                "Conflict",
                "the check is still running at some vantage; its transcript comes when all end",
                type=NOT_FINISHED,
            )
        return Response(text, mimetype="text/plain")
    job = store().wait(store().load(check_id, current_owner()), wait_seconds())
    status = public_status(job)
    if status == "failed":
        reason = failure_reason(job, job.latest_result())
        raise Problem(
            409,
            "Conflict",
            f"the check failed, so it has no transcript: {reason}",
            type=NO_TRANSCRIPT,
        )
    result = store().result(job)
    if result is None:
        raise Problem(
            409,
            "Conflict",
            f"the check is {status}; its transcript comes when it ends",
            type=NOT_FINISHED,
        )
    return Response(render_text(result), mimetype="text/plain")


@blueprint.delete("/checks/<check_id>")
def delete_check(check_id: str) -> Response:
    spread = fanout.load(store(), check_id, current_owner())
    if spread is not None:
        fanout.delete(store(), spread)
        return Response(status=204)
    store().delete(store().load(check_id, current_owner()))
    return Response(status=204)


@blueprint.get("/vantages")
def list_vantages() -> Response:
    return jsonify(store().vantages())


def json_body() -> Any:
    """The request body as JSON: 415 for another media type, 400 if it does not parse."""
    if not request.is_json:
        raise Problem(
            415,
            "Unsupported Media Type",
            "send the check as a JSON object with 'Content-Type: application/json'",
        )
    raw = request.get_data(cache=True)  # over MAX_CONTENT_LENGTH: 413
    try:
        body = json.loads(raw, parse_constant=_refuse_constant)
        json.dumps(body, ensure_ascii=False).encode("utf-8")  # lone surrogates
    except (ValueError, UnicodeError, RecursionError) as exc:
        raise Problem(
            400, "Bad Request", f"the body is not valid JSON: {_first_line(exc)}"
        ) from None
    return body


def wait_seconds() -> int:
    """``?wait=N``: whole seconds from 0 to the configured maximum."""
    raw = request.args.get("wait")
    if raw is None:
        return 0
    limit = store().settings.limits.max_wait
    if not _WAIT.fullmatch(raw) or int(raw) > limit:
        raise validation_problem({"wait": [f"must be a whole number of seconds from 0 to {limit}"]})
    return int(raw)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _first_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]
