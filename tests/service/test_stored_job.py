"""The API's job read (service/jobstore.py StoredJob) restores a job hash to
what RQ's own ``Job.restore`` gives, in every status and timestamp form."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from service.jobstore import StoredJob

CHECK_ID = "5f0e2a8c-1d3b-4c6e-8a9f-0b1c2d3e4f5a"
FIELDS = ("created_at", "enqueued_at", "started_at", "ended_at", "last_heartbeat")


def job_hash(status: JobStatus, **moments: bytes) -> dict[bytes, bytes]:
    job = Job.create(
        "workers.job.run_check_job",
        kwargs={"request": {"host": "mx.example.com"}, "sealed_password": None},
        id=CHECK_ID,
        connection=redis.Redis(),  # never connected: to_dict only
        serializer=JSONSerializer,
        description="smtpcheck",
        meta={"owner": "alice", "vantage": "default"},
        status=status,
        origin="vantage:default",
    )
    raw = {
        key.encode(): value if isinstance(value, bytes) else str(value).encode()
        for key, value in job.to_dict().items()
    }
    raw[b"status"] = status.value.encode()
    raw.update({field.encode(): value for field, value in moments.items()})
    return {field: value for field, value in raw.items() if value}


def restored(cls: type[Job], raw: dict[bytes, bytes]) -> dict[str, Any]:
    job = cls(CHECK_ID, connection=redis.Redis(), serializer=JSONSerializer)
    job.restore(raw)
    return {
        **{field: getattr(job, field) for field in FIELDS},
        "tz": [getattr(job, field).tzinfo for field in FIELDS if getattr(job, field)],
        "status": job.get_status(refresh=False),
        "hash": job.to_dict(),
    }


MOMENT = b"2026-12-02T06:10:47.123456Z"


@pytest.mark.parametrize("status", list(JobStatus))
@pytest.mark.parametrize(
    "moments",
    [
        {"created_at": MOMENT, "enqueued_at": MOMENT},
        {
            "created_at": MOMENT,
            "enqueued_at": b"2026-12-02T06:10:47.200000Z",
            "started_at": b"2026-12-02T06:10:47.300001Z",
            "ended_at": b"2026-12-02T06:10:48.000000Z",
            "last_heartbeat": b"2026-12-02T06:10:48.000000Z",
        },
        {"created_at": b"2026-12-02T06:10:47Z", "started_at": b"2026-12-02T06:10:47Z"},
    ],
    ids=["queued", "ended", "without fractions"],
)
def test_a_stored_job_restores_as_rq_restores_it(
    status: JobStatus, moments: dict[str, bytes]
) -> None:
    raw = job_hash(status, **moments)
    assert restored(StoredJob, raw) == restored(Job, raw)


def test_a_moment_rq_cannot_read_fails_as_in_rq() -> None:
    raw = job_hash(JobStatus.STARTED, created_at=MOMENT, started_at=b"2026-12-02 06:10+01:00")
    with pytest.raises(ValueError):
        restored(Job, raw)
    with pytest.raises(ValueError):
        restored(StoredJob, raw)
