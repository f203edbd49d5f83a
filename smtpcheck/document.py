"""The check document: what ``GET /v1/checks/{id}`` returns for one check.

Both sides need it: the API serves it, and a worker POSTs the very same
document to a check's ``callback.url`` once the check ends (workers/webhook.py).
Built here, from the RQ job and its latest result alone, so neither side
imports the other. The API reads both straight from Redis
(:meth:`StoredCheck.read`: the job's hash and its result stream entry, read to
the values RQ's ``Job.restore`` and ``Result.restore`` give); the worker hands
over RQ's own objects (:meth:`StoredCheck.of`).
"""

from __future__ import annotations

import json
import zlib
from binascii import a2b_base64
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from rq.exceptions import DeserializationError, NoSuchJobError
from rq.job import Job, JobStatus
from rq.results import Result
from rq.utils import now, str_to_date

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
#: A job hash's ``status`` and a result entry's ``type`` as stored, to what they
#: name (one dict lookup each, not an enum's call; anything else goes to the enum).
_STATUSES = {status.value.encode(): status for status in JobStatus}
_RESULT_TYPES = {str(kind.value).encode(): kind for kind in Result.Type}
#: The json module's own scanner (C), called straight by :func:`_json`.
_SCAN: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def isoformat(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    text = moment.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class StoredResult:
    """A check's latest result (an entry of RQ's result stream): what its document reads."""

    type: Result.Type
    created_at: datetime
    return_value: Any = None
    exc_string: str | None = None

    @classmethod
    def of(cls, result: Result) -> StoredResult:
        return cls(result.type, result.created_at, result.return_value, result.exc_string)

    @classmethod
    def read(cls, entry_id: bytes, fields: dict[bytes, bytes]) -> StoredResult:
        """The entry as ``Result.restore`` reads it (with RQ's JSON serializer)."""
        created_at = datetime.fromtimestamp(int(entry_id.split(b"-")[0]) / 1000, tz=UTC)
        value = fields.get(b"return_value")
        exc_string = fields.get(b"exc_string")
        kind = fields[b"type"]
        # (a2b_base64 is what b64decode calls, and all it does for bytes)
        return cls(
            _RESULT_TYPES.get(kind) or Result.Type(int(kind)),
            created_at,
            None if value is None else _json(a2b_base64(value).decode("utf-8")),
            zlib.decompress(a2b_base64(exc_string)).decode() if exc_string else None,
        )


@dataclass(slots=True)
class StoredCheck:
    """A check's RQ job as its document reads it, and its latest result (None: it has
    none yet). ``raw`` is the job hash it was read from, when it was read from Redis."""

    id: str
    status: JobStatus
    description: str | None
    origin: str
    worker_name: str | None
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    meta: dict[str, Any]
    data: bytes  # the job's function and arguments, serialized (uncompressed)
    latest: StoredResult | None
    raw: dict[bytes, bytes] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, job: Job, latest: Result | None) -> StoredCheck:
        """From RQ's own job and its latest result."""
        return cls(
            id=job.id,
            status=job.get_status(refresh=False),
            description=job.description,
            origin=job.origin,
            worker_name=job.worker_name,
            created_at=job.created_at,
            started_at=job.started_at,
            ended_at=job.ended_at,
            meta=job.meta,
            data=job.data,
            latest=None if latest is None else StoredResult.of(latest),
        )

    @classmethod
    def read(
        cls, check_id: str, raw: dict[bytes, bytes], latest: list[Any] | None = None
    ) -> StoredCheck:
        """From the job's hash and the reply to an ``XREVRANGE`` of its result stream
        (``COUNT 1``), to the values ``Job.restore`` and ``Result.restore`` give
        (tests/service/test_stored_job.py compares them). NoSuchJobError when the
        hash is empty (no such job) or is no RQ job's."""
        if not raw:
            raise NoSuchJobError(f"No such job: {check_id}")
        if b"data" not in raw:
            raise NoSuchJobError(f"Unexpected job format: {raw}")
        status = raw.get(b"status")
        meta = raw.get(b"meta")
        try:
            meta_read = _json(meta.decode("utf-8")) if meta else {}
        except Exception:  # as RQ keeps what it cannot read
            meta_read = {"unserialized": meta}
        description, origin, worker_name = (
            raw.get(b"description"),
            raw.get(b"origin"),
            raw.get(b"worker_name"),
        )
        return cls(
            id=check_id,
            status=_status(status) if status else JobStatus.CREATED,
            description=description.decode() if description else None,
            origin=origin.decode() if origin else "",
            worker_name=worker_name.decode() if worker_name else None,
            created_at=_moment(raw.get(b"created_at")) or now(),
            started_at=_moment(raw.get(b"started_at")),
            ended_at=_moment(raw.get(b"ended_at")),
            meta=meta_read,
            data=_decompressed(raw[b"data"]),
            latest=StoredResult.read(*latest[0]) if latest else None,
            raw=raw,
        )

    @property
    def key(self) -> str:
        return Job.key_for(self.id)

    @property
    def request(self) -> Any:
        """The check's request, from the job's arguments (as ``job.kwargs`` reads them)."""
        try:
            _func, _instance, _args, kwargs = _json(self.data.decode("utf-8"))
        except Exception as exc:
            raise DeserializationError() from exc
        return (kwargs or {}).get("request")


def _json(text: str) -> Any:
    """``json.loads(text)``: the same value, or the same error. A text that is one
    JSON value with nothing around it (as json.dumps writes them) is scanned in one
    call of the json module's scanner, not three of json.loads and its decoder;
    anything else (whitespace, more after it, an error) goes to json.loads."""
    try:
        value, end = _SCAN(text, 0)
    except StopIteration:
        return json.loads(text)
    return value if end == len(text) else json.loads(text)


def _status(raw: bytes) -> JobStatus:
    """A job hash's ``status`` as ``JobStatus(raw.decode())`` reads it."""
    return _STATUSES.get(raw) or JobStatus(raw.decode())


def _decompressed(data: bytes) -> bytes:
    try:
        return zlib.decompress(data)
    except zlib.error:  # RQ's fallback: stored uncompressed
        return data


def _moment(raw: bytes | None) -> datetime | None:
    """A job hash's timestamp as ``rq.utils.str_to_date`` reads it: RQ writes
    ``%Y-%m-%dT%H:%M:%S.%fZ`` (once without the fraction), which ``fromisoformat``
    reads to the same aware UTC datetime in one C call; anything else goes to RQ's
    own parse. Absent or empty: None."""
    if not raw:
        return None
    if raw.endswith(b"Z"):
        try:
            return datetime.fromisoformat(raw.decode())
        except ValueError:
            pass
    return str_to_date(raw)


def public_status(check: StoredCheck) -> str:
    status = check.status
    if status == JobStatus.SCHEDULED and (check.meta or {}).get("attempts"):
        return "retrying"  # a greylisted check waiting for its next attempt
    return PUBLIC_STATUS.get(status, "queued")


def failure_reason(check: StoredCheck) -> str:
    """One line saying why a check did not produce a result."""
    status = check.status
    if status == JobStatus.CANCELED:
        return "the check was canceled before it ran"
    if status == JobStatus.STOPPED:
        return "the check was stopped before it finished"
    result = check.latest
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


def check_document(check: StoredCheck) -> CheckDocument:
    """The GET /v1/checks/{id} body for one check (not a fan-out): typed in
    the contract, and so in openapi.yaml."""
    status = public_status(check)
    result = check.latest if status in TERMINAL else None
    value = None
    error = None
    if status == "finished" and result is not None and result.type == Result.Type.SUCCESSFUL:
        value = result.return_value
        if isinstance(value, dict) and value.get("outcome") == "canceled":
            status = "canceled"  # stopped by DELETE while it ran: the transcript so far
    elif status in ("failed", "canceled"):
        error = failure_reason(check)
    ended = check.ended_at
    if ended is None and result is not None and status in TERMINAL:
        ended = result.created_at
    meta = check.meta or {}
    request = check.request
    document = {
        "id": check.id,
        "status": status,
        "vantage": meta.get("vantage", DEFAULT_VANTAGE),
        "created_at": isoformat(check.created_at),
        "started_at": isoformat(check.started_at),
        "ended_at": isoformat(ended) if status in TERMINAL else None,
        "request": request,
        "result": value,
        "error": error,
        **_retrying(meta, status),
        **_callback(request, meta),
        "links": links(check.id),
    }
    return cast(CheckDocument, document)  # the optional keys come from the spreads above


def _callback(request: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """With a ``callback``: how its delivery stands (workers/webhook.py writes it)."""
    if not (request or {}).get("callback"):
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
