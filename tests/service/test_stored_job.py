"""The API's read of a check (smtpcheck/document.py StoredCheck.read) gives what
RQ's own ``Job.restore`` and ``Result.restore`` give for the same job hash and
result entry, in every status, timestamp form and kind of result."""

from __future__ import annotations

import base64
import json
import zlib
from typing import Any

import pytest
import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.results import Result
from rq.serializers import JSONSerializer

from smtpcheck import document
from smtpcheck.document import StoredCheck, StoredResult

CHECK_ID = "5f0e2a8c-1d3b-4c6e-8a9f-0b1c2d3e4f5a"
REQUEST = {"host": "mx.example.com", "summary": "caf\u00e9 \ud83d\ude00"}
NEVER_CONNECTED = redis.Redis()  # to_dict and restore only


def job_hash(status: JobStatus, **moments: bytes) -> dict[bytes, bytes]:
    job = Job.create(
        "workers.job.run_check_job",
        kwargs={"request": REQUEST, "sealed_password": None},
        id=CHECK_ID,
        connection=NEVER_CONNECTED,
        serializer=JSONSerializer,
        description="smtpcheck",
        meta={"owner": "alice", "vantage": "default"},
        status=status,
        origin="vantage:default",
    )
    job.worker_name = "worker-1"
    raw = {
        key.encode(): value if isinstance(value, bytes) else str(value).encode()
        for key, value in job.to_dict().items()
    }
    raw[b"status"] = status.value.encode()
    raw.update({field.encode(): value for field, value in moments.items()})
    return {field: value for field, value in raw.items() if value}


def rq_read(raw: dict[bytes, bytes], entries: list[Any]) -> StoredCheck:
    """What RQ's own restore makes of the hash and the entry."""
    job = Job(CHECK_ID, connection=NEVER_CONNECTED, serializer=JSONSerializer)
    job.restore(raw)
    latest = None
    if entries:
        entry_id, fields = entries[0]
        latest = Result.restore(
            CHECK_ID,
            entry_id.decode(),
            fields,
            connection=NEVER_CONNECTED,
            serializer=JSONSerializer,
        )
    return StoredCheck.of(job, latest)


def facts(check: StoredCheck) -> dict[str, Any]:
    moments = ("created_at", "started_at", "ended_at")
    return {
        "fields": check,
        "tz": [getattr(check, name).tzinfo for name in moments if getattr(check, name)],
        "request": check.request,
    }


MOMENT = b"2026-12-02T06:10:47.123456Z"
MOMENTS = [
    {"created_at": MOMENT, "enqueued_at": MOMENT},
    {
        "created_at": MOMENT,
        "enqueued_at": b"2026-12-02T06:10:47.200000Z",
        "started_at": b"2026-12-02T06:10:47.300001Z",
        "ended_at": b"2026-12-02T06:10:48.000000Z",
        "last_heartbeat": b"2026-12-02T06:10:48.000000Z",
    },
    {"created_at": b"2026-12-02T06:10:47Z", "started_at": b"2026-12-02T06:10:47Z"},
]


@pytest.mark.parametrize("status", list(JobStatus))
@pytest.mark.parametrize("moments", MOMENTS, ids=["queued", "ended", "without fractions"])
def test_a_stored_check_reads_as_rq_restores_it(
    status: JobStatus, moments: dict[str, bytes]
) -> None:
    raw = job_hash(status, **moments)
    assert facts(StoredCheck.read(CHECK_ID, raw, [])) == facts(rq_read(raw, []))


def entry(kind: Result.Type, **fields: bytes) -> list[Any]:
    encoded = {name.encode(): value for name, value in fields.items()}
    return [(b"1764655847123-0", {b"type": str(kind.value).encode(), **encoded})]


VALUE = {"outcome": "ok", "summary": "caf\u00e9", "timings": {"total": 0.30000000000000004}}
ENTRIES = {
    "successful": entry(
        Result.Type.SUCCESSFUL,
        return_value=base64.b64encode(JSONSerializer.dumps(VALUE)),
        worker_name=b"worker-1",
        execution_id=b"e-1",
        execution_started_at=b"1764655847.1",
        execution_ended_at=b"1764655847.12",
    ),
    "compact value": entry(
        Result.Type.SUCCESSFUL,
        return_value=base64.b64encode(json.dumps(VALUE, separators=(",", ":")).encode()),
    ),
    "null value": entry(Result.Type.SUCCESSFUL, return_value=base64.b64encode(b"null")),
    "failed": entry(
        Result.Type.FAILED,
        exc_string=base64.b64encode(zlib.compress(b"Traceback\nRuntimeError: boom\n")),
    ),
    "stopped": entry(Result.Type.STOPPED),
    "retried": entry(Result.Type.RETRIED, return_value=base64.b64encode(b'{"outcome": "x"}')),
    "none": [],
}


@pytest.mark.parametrize("name", list(ENTRIES))
def test_its_latest_result_reads_as_rq_restores_it(name: str) -> None:
    raw = job_hash(JobStatus.FINISHED, created_at=MOMENT, ended_at=MOMENT)
    check = StoredCheck.read(CHECK_ID, raw, ENTRIES[name])
    assert check == rq_read(raw, ENTRIES[name])
    assert isinstance(check.latest, StoredResult) is bool(ENTRIES[name])


def test_uncompressed_data_and_unreadable_meta_read_as_in_rq() -> None:
    raw = job_hash(JobStatus.QUEUED, created_at=MOMENT)
    raw[b"data"] = zlib.decompress(raw[b"data"])
    raw[b"meta"] = b"\x80not json"
    assert facts(StoredCheck.read(CHECK_ID, raw, [])) == facts(rq_read(raw, []))


def test_a_moment_rq_cannot_read_fails_as_in_rq() -> None:
    raw = job_hash(JobStatus.STARTED, created_at=MOMENT, started_at=b"2026-12-02 06:10+01:00")
    with pytest.raises(ValueError):
        rq_read(raw, [])
    with pytest.raises(ValueError):
        StoredCheck.read(CHECK_ID, raw, [])


def test_no_hash_or_one_without_data_is_no_job_as_in_rq() -> None:
    with pytest.raises(NoSuchJobError):
        StoredCheck.read(CHECK_ID, {}, [])
    raw = job_hash(JobStatus.QUEUED, created_at=MOMENT)
    del raw[b"data"]
    with pytest.raises(NoSuchJobError):
        rq_read(raw, [])
    with pytest.raises(NoSuchJobError):
        StoredCheck.read(CHECK_ID, raw, [])


@pytest.mark.parametrize(
    "text",
    [
        '{"owner": "alice", "vantage": "default"}',
        '["f", null, [], {"request": {"summary": "caf\\u00e9 \\ud83d\\ude00"}}]',
        '"a lone string"',
        "3.0000000000000004",
        '{"a": NaN, "b": -Infinity}',
        ' {"a": 1}',  # whitespace around it: json.loads reads it as well
        '{"a": 1}\n',
        '{"a": 1} {"b": 2}',  # more after it: json.loads's error
        '{"a": 1',
        "",
        "not json",
    ],
)
def test_its_json_reads_as_json_loads_reads_it(text: str) -> None:
    """What the read parses (meta, a result's value, the request) goes through a
    shortcut of json.loads: the same value, or the same error."""
    try:
        expected: Any = ("value", json.loads(text))
    except json.JSONDecodeError as error:
        expected = ("error", str(error))
    try:
        got: Any = ("value", document._json(text))
    except json.JSONDecodeError as error:
        got = ("error", str(error))
    assert repr(got) == repr(expected)  # (repr: NaN is not equal to itself)
