"""The /v1 API: submit a check, list them, read one (optionally waiting), its
transcript and its live events, cancel or delete it, list vantages. Views
stay short and raise; ``problems`` renders.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from marshmallow import Schema, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from smtpcheck.contract import STATUSES
from smtpcheck.document import (
    TERMINAL,
    StoredCheck,
    check_document,
    failure_reason,
    isoformat,
    links,
    public_status,
)
from smtpcheck.report import render_text, transcript_lines

from . import events, fanout, held, listing, metrics, ratelimit
from .apikeys import authenticate, current_owner
from .jobstore import JobStore
from .problems import CHECK_RUNNING, NO_TRANSCRIPT, NOT_FINISHED, Problem, validation_problem

blueprint = Blueprint("checks", __name__, url_prefix="/v1")
blueprint.before_request(authenticate)

_WAIT = re.compile(r"[0-9]{1,6}")
#: A ``\\uD800`` to ``\\uDFFF`` escape. A lone surrogate in the parsed body comes from
#: one of these or from non-ASCII bytes (json.loads passes surrogates through in
#: UTF-8, and decodes UTF-16 and -32): only such bodies are encoded again to find one.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def store() -> JobStore:
    jobstore: JobStore = current_app.extensions["smtpcheck"]
    return jobstore


def request_schema(app: Flask) -> Schema:
    schema: Schema = app.extensions["smtpcheck.request_schema"]
    return schema


@blueprint.post("/checks")
def create_check() -> Response:
    """Validate, then admit and write every check the request creates in one script:
    one Redis round trip for a check at the default vantage."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]  # once, not per use
    owner = current_owner()
    jobstore: JobStore = app.extensions["smtpcheck"]
    admission = ratelimit.admission(app)
    try:
        body = json_body()
        if not isinstance(body, dict):
            raise validation_problem({"_schema": ["the request body must be a JSON object"]})
        checked = request_schema(app).load(body)
        spread = None
        if checked["vantage"] == fanout.ALL:
            spread, prepared = fanout.prepare(jobstore, checked, owner)
            writes = fanout.writes(jobstore, spread, prepared)
        else:
            prepared = [jobstore.prepare(checked, owner)]
            writes = jobstore.writes(prepared, owner)
    except (Problem, ValidationError, RequestEntityTooLarge):
        admission.charge(owner)  # probing costs the same as submitting: 429 once over
        raise
    check_ids = [item.id for item in prepared]
    admission.admit(owner, check_ids, writes)  # 429 rate-limited or too-many-checks
    jobstore.after_written(prepared)
    created: dict[str, str | None]
    if spread is not None:
        created = {"id": spread.id, "created_at": spread.created_at}
    else:
        created = {"id": check_ids[0], "created_at": isoformat(prepared[0].created_at)}
    where = links(str(created["id"]))
    document = {
        "id": created["id"],
        "status": "queued",
        "vantage": checked["vantage"],
        "created_at": created["created_at"],
        "links": where,
    }
    metrics.CHECKS_ACCEPTED.inc(len(check_ids))
    return _accepted(app, document, where["self"])


#: jsonify's compact form as create_app configures the app's JSON (keys in their
#: order, ASCII escapes), made once (:func:`_json_answer`).
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


def _accepted(app: Flask, document: dict[str, Any], location: str) -> Response:
    """The 202 of a new check: ``jsonify(document)``'s bytes and headers, then its
    ``Location``."""
    response = _json_answer(app, document, 202)
    response.headers["Location"] = location
    return response


def _json_answer(app: Flask, document: Mapping[str, Any], status: int = 200) -> Response:
    """``jsonify(document)``'s bytes and headers with ``status``, encoded by the
    encoder made once, for a document of JSON's own values (strings, numbers,
    None, lists and objects of them: what a check's document holds, read from
    Redis); in debug mode (where jsonify indents) jsonify's own."""
    if app.debug:
        response = jsonify(document)
        response.status_code = status
        return response
    text = _COMPACT_JSON.encode(document) + "\n"
    return app.response_class(text, status, mimetype="application/json")


@blueprint.get("/checks")
def list_checks() -> Response:
    owner = current_owner()
    unknown = sorted(set(request.args) - {"limit", "cursor", "status"})
    if unknown:
        raise validation_problem({key: ["unknown query parameter"] for key in unknown})
    limit = _list_limit()
    cursor = None
    if request.args.get("cursor"):
        cursor = listing.decode_cursor(request.args["cursor"])
        if cursor is None:
            raise validation_problem({"cursor": ["not a cursor this service handed out"]})
    status = request.args.get("status")
    if status is not None and status not in STATUSES:
        raise validation_problem({"status": [f"must be one of: {', '.join(STATUSES)}"]})
    items, next_cursor = listing.page(
        store().connection,
        owner,
        limit=limit,
        cursor=cursor,
        status=status,
        describe=lambda check_ids: _list_items(check_ids, owner),
    )
    return jsonify(items=items, next=next_cursor)


def _list_limit() -> int:
    raw = request.args.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise validation_problem({"limit": ["must be a whole number from 1 to 100"]})
    return int(raw)


def _list_items(check_ids: list[str], owner: str) -> list[dict[str, Any] | None]:
    """The list items of ``check_ids`` (None for one expired or deleted meanwhile)."""
    return [
        None
        if found is None
        else fanout.describe(store(), found)
        if isinstance(found, fanout.FanOut)
        else dict(store().list_item(found))
        for found in fanout.find_many(store(), check_ids, owner)
    ]


@blueprint.get("/checks/<check_id>/events")
def get_events(check_id: str) -> Response:
    """Server-Sent Events of a check, or of every vantage of a fan-out, merged."""
    owner = current_owner()
    jobstore = store()
    state: Callable[[], events.State | None]
    spread = fanout.load(jobstore, check_id, owner)
    if spread is not None:
        members = [events.Member(m["id"], m["vantage"]) for m in spread.members]

        def state() -> events.State | None:
            found = fanout.load(jobstore, check_id, owner)
            if found is None:
                return None
            document = fanout.describe(jobstore, found)
            return document, [str(row["status"]) for row in document["vantages"]]

    else:
        jobstore.load(check_id, owner)  # 404 before the stream starts
        members = [events.Member(check_id)]

        def state() -> events.State | None:
            try:
                document = jobstore.describe(jobstore.load(check_id, owner))
            except Problem:
                return None
            return dict(document), [document["status"]]

    max_seconds = jobstore.settings.limits.max_wait
    lease = held.acquire(owner, max_seconds)  # 429/503 before the stream starts
    body = events.stream(
        jobstore.blocking,
        members,
        events.start_ids(request.headers.get("Last-Event-ID"), len(members)),
        own_id=check_id,
        state=state,
        max_seconds=max_seconds,
    )
    response = Response(lease.around(body), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response


@blueprint.get("/checks/<check_id>")
def get_check(check_id: str) -> Response:
    found = found_after_wait(check_id)
    if isinstance(found, fanout.FanOut):
        return jsonify(fanout.describe(store(), found))
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    return _json_answer(app, check_document(found))  # (what JobStore.describe gives)


@blueprint.get("/checks/<check_id>/transcript")
def get_transcript(check_id: str) -> Response:
    found = found_after_wait(check_id)
    if isinstance(found, fanout.FanOut):
        text = fanout.transcript(store(), found)
        if text is None:
            raise Problem(
                409,
                "Conflict",
                "the check is still running at some vantage; its transcript comes when all end",
                type=NOT_FINISHED,
            )
        return Response(text, mimetype="text/plain")
    job = found
    status = public_status(job)
    if status == "failed":
        reason = failure_reason(job)
        raise Problem(
            409,
            "Conflict",
            f"the check failed, so it has no transcript: {reason}",
            type=NO_TRANSCRIPT,
        )
    result = store().result(job)
    if result is None and status in ("queued", "running", "retrying", "canceled"):
        lines = transcript_lines(list(store().lines_so_far(job)))
        return Response("".join(f"{line}\n" for line in lines), mimetype="text/plain")
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
    found = fanout.find(store(), check_id, current_owner())
    if isinstance(found, fanout.FanOut):
        spread = found
        members = [job for _, job in fanout.jobs(store(), spread) if job is not None]
        if [job for job in members if store().cancel(job)]:
            response = jsonify(fanout.describe(store(), spread))
            response.status_code = 202
            return response
        if not fanout.delete(store(), spread):  # a member turned back meanwhile
            raise Problem(
                409,
                "Conflict",
                "a vantage's check started again while the fan-out was being deleted; "
                "nothing was deleted: DELETE again to cancel it",
                type=CHECK_RUNNING,
            )
        return Response(status=204)
    job = found
    if store().cancel(job):  # a queued or running check: canceled, still readable
        response = jsonify(store().describe(store().refetch(job)))
        response.status_code = 202
        return response
    store().delete(job)  # an ended one
    return Response(status=204)


@blueprint.get("/vantages")
def list_vantages() -> Response:
    return jsonify(store().vantages())


def json_body() -> Any:
    """The request body as JSON: 415 for another media type, 400 if it does not parse."""
    # The request itself, not the proxy: each use of ``request`` costs three calls.
    asked = request._get_current_object()  # type: ignore[attr-defined]
    # The usual header decides at once what werkzeug's is_json parses it to say.
    if asked.environ.get("CONTENT_TYPE") != "application/json" and not asked.is_json:
        raise Problem(
            415,
            "Unsupported Media Type",
            "send the check as a JSON object with 'Content-Type: application/json'",
        )
    raw = asked.get_data(cache=True)  # over MAX_CONTENT_LENGTH: 413
    try:
        # json.loads of bytes, with a decoder made once (loads makes one per call
        # when given parse_constant)
        body = _JSON.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
        if not raw.isascii() or _SURROGATE_ESCAPE.search(raw):  # a lone surrogate: 400 too
            json.dumps(body, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeError, RecursionError) as exc:
        raise Problem(
            400, "Bad Request", f"the body is not valid JSON: {_first_line(exc)}"
        ) from None
    return body


def found_after_wait(check_id: str) -> fanout.FanOut | StoredCheck:
    """The fan-out or check behind ``check_id`` (404 unless the caller's), once
    ``?wait=N`` has held the response until it ended or the wait ran out.

    The hold (429/503 past the bounds of ``held``) is taken in the round trip that
    reads the check, and only for a check that has not ended: an ended one is
    answered at once, holding nothing."""
    owner = current_owner()
    jobstore = store()
    try:
        seconds = wait_seconds(jobstore)
    except Problem:  # a check not there (or not the caller's) is 404 before a bad ?wait is 422
        fanout.find(jobstore, check_id, owner)
        raise
    if seconds <= 0:
        return fanout.find(jobstore, check_id, owner)
    with held.asking(owner, seconds) as ask:
        found = fanout.find(jobstore, check_id, owner, ask)
        if isinstance(found, fanout.FanOut):
            ask.lease()
            fanout.wait(jobstore, found, seconds)
            return found
        job = found
        if public_status(job) in TERMINAL:
            return job
        lease = ask.lease()
        if lease is None:  # it ended between the reads (the take saw it): read it again
            return jobstore.refetch(job)
        return jobstore.wait(job, seconds, lease)


def wait_seconds(jobstore: JobStore) -> int:
    """``?wait=N``: whole seconds from 0 to ``jobstore``'s configured maximum."""
    raw = request.args.get("wait")
    if raw is None:
        return 0
    limit = jobstore.settings.limits.max_wait
    if not _WAIT.fullmatch(raw) or int(raw) > limit:
        raise validation_problem({"wait": [f"must be a whole number of seconds from 0 to {limit}"]})
    return int(raw)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


_JSON = json.JSONDecoder(parse_constant=_refuse_constant)


def _first_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]
