"""The check document: what ``GET /v1/checks/{id}`` returns for one check.

Both sides need it: the API serves it, and a worker POSTs the very same
document to a check's ``callback.url`` once the check ends (workers/webhook.py).
Built here, from the RQ job alone, so neither side imports the other.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import Enum
from typing import Any, cast

from rq.job import Job, JobStatus
from rq.results import Result

from smtpcheck.contract import DEFAULT_VANTAGE, CheckDocument, Links

#: RQ status -> the statuses callers see.
PUBLIC_STATUS: dict[JobStatus, str] = {
    JobStatus.CREATED: "queued",
    JobStatus.QUEUED: "queued",
    JobStatus.DEFERRED: "queued",
    JobStatus.SCHEDULED: "queued",
    JobStatus.RATE_LIMITED: "queued",
    JobStatus.READY_TO_ENQUEUE: "queued",
    JobStatus.STARTED: "running",
    JobStatus.FINISHED: "finished",
    JobStatus.FAILED: "failed",
    JobStatus.STOPPED: "failed",
    JobStatus.CANCELED: "canceled",  # DELETE while queued
}
#: A running check canceled by DELETE finishes with outcome ``canceled``:
#: its document says ``canceled`` too (see check_document).
TERMINAL = frozenset({"finished", "failed", "canceled"})
#: The RQ statuses of a check that has ended (its public status is in TERMINAL).
ENDED_STATUSES = tuple(
    status.value for status, public in PUBLIC_STATUS.items() if public in TERMINAL
)


def isoformat(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    text = moment.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def public_status(job: Job) -> str:
    status = job.get_status(refresh=False)
    if status == JobStatus.SCHEDULED and (job.meta or {}).get("attempts"):
        return "retrying"  # a greylisted check waiting for its next attempt
    return PUBLIC_STATUS.get(status, "queued")


def failure_reason(job: Job, result: Result | None) -> str:
    """One line saying why a check did not produce a result."""
    status = job.get_status(refresh=False)
    if status == JobStatus.CANCELED:
        return "the check was canceled before it ran"
    if status == JobStatus.STOPPED:
        return "the check was stopped before it finished"
    text = (result.exc_string if result is not None else None) or ""
    if "AbandonedJobError" in text:
        return "the worker running this check stopped before it finished"
    if "StoppedMidCheck" in text:  # workers/threaded.py, on a second stop signal
        return "the worker running this check was stopped at once before it finished"
    if "JobTimeoutException" in text:
        return "the check ran past its time limit and was stopped"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines:
        return f"the worker failed: {lines[-1][:300]}"
    return "the check failed without a reason"


def links(check_id: str) -> Links:
    return {
        "self": f"/v1/checks/{check_id}",
        "transcript": f"/v1/checks/{check_id}/transcript",
    }


class _Unread(Enum):
    UNREAD = "unread"


#: ``check_document``'s ``latest`` when the caller has not read the job's latest result.
UNREAD = _Unread.UNREAD


def check_document(job: Job, latest: Result | _Unread | None = UNREAD) -> CheckDocument:
    """The GET /v1/checks/{id} body for one check (not a fan-out): typed in
    the contract, and so in openapi.yaml. ``latest``: the job's latest result
    (None: it has none) when the caller read it with the job; else it is read
    here, when the check has ended."""
    status = public_status(job)
    result: Result | None = None
    if status in TERMINAL:
        result = job.latest_result() if latest is UNREAD else latest
    value = None
    error = None
    if status == "finished" and result is not None and result.type == Result.Type.SUCCESSFUL:
        value = result.return_value
        if isinstance(value, dict) and value.get("outcome") == "canceled":
            status = "canceled"  # stopped by DELETE while it ran: the transcript so far
    elif status in ("failed", "canceled"):
        error = failure_reason(job, result)
    ended = job.ended_at
    if ended is None and result is not None and status in TERMINAL:
        ended = result.created_at
    meta = job.meta or {}
    document = {
        "id": job.id,
        "status": status,
        "vantage": meta.get("vantage", DEFAULT_VANTAGE),
        "created_at": isoformat(job.created_at),
        "started_at": isoformat(job.started_at),
        "ended_at": isoformat(ended) if status in TERMINAL else None,
        "request": (job.kwargs or {}).get("request"),
        "result": value,
        "error": error,
        **_retrying(meta, status),
        **_callback(job, meta),
        "links": links(job.id),
    }
    return cast(CheckDocument, document)  # the optional keys come from the spreads above


def _callback(job: Job, meta: dict[str, Any]) -> dict[str, Any]:
    """With a ``callback``: how its delivery stands (workers/webhook.py writes it)."""
    if not ((job.kwargs or {}).get("request") or {}).get("callback"):
        return {}
    return {"callback": meta.get("callback") or {"status": "pending", "attempts": []}}


def _retrying(meta: dict[str, Any], status: str) -> dict[str, Any]:
    """What a greylisted check's attempts so far said, and when it runs again."""
    if status != "retrying":
        return {}
    return {
        "attempts": meta.get("attempts", []),
        "next_attempt_at": meta.get("next_attempt_at"),
    }
