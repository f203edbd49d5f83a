"""GET /v1/checks/{id} answers pinned byte for byte, in every state a check's RQ
job can be in: the document built from what RQ itself reads back (``Job.fetch``,
``Result``), as compact JSON, and its headers; the same in the listing (less the
transcript) and, once the check has ended, for ``?wait``.

The read path is tuned for speed (it reads the job hash and its result entry
itself, not through RQ's ``Job`` and ``Result``); these hold what callers get
while it is.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import hypothesis
import pytest
import redis
from flask import jsonify
from flask.testing import FlaskClient
from hypothesis import strategies
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.utils import now

from service import checks
from service.jobstore import JobStore, fetch_commands, reads
from smtpcheck.redis_client import READ_RETRIES, FailoverRedis, connect
from tests.service import jobs
from tests.service.conftest import ALICE
from tests.test_redis_client import ReplyLosingServer

QUEUE = "vantage:default"
REQUEST = {"host": "mx.example.com", "port": 25, "vantage": "default"}
PINNED = {**ALICE, "X-Request-ID": "pinned-1"}
TRACEBACK = (
    'Traceback (most recent call last):\n  File "x.py", line 1\nRuntimeError: engine exploded\n'
)


def result_value(outcome: str = "ok") -> dict[str, Any]:
    value = jobs.run_check_job(dict(REQUEST), None)
    value["outcome"] = outcome
    value["summary"] = "caf\u00e9 \u2713 and a \ud83d\ude00"  # escaped in the answer
    value["timings"]["total"] = 0.1 + 0.2  # a float that prints long
    return value


def enqueued(connection: redis.Redis, **request: Any) -> Job:
    """A check as the API enqueues it (service/jobstore.py), for alice."""
    queue = Queue(QUEUE, connection=connection, serializer=JSONSerializer)
    job = queue.create_job(
        "tests.service.jobs.run_check_job",
        kwargs={"request": {**REQUEST, **request}, "sealed_password": None},
        job_id=str(uuid.uuid4()),
        result_ttl=600,
        failure_ttl=600,
        ttl=600,
        description="smtpcheck",
        meta={"owner": "alice", "vantage": "default", "request_id": "r-1"},
        status=JobStatus.QUEUED,
    )
    queue.enqueue_job(job)
    connection.zadd("smtpcheck:checks:alice", {job.id: time.time() * 1_000_000})
    return job


def started(job: Job) -> Job:
    job.started_at = now()
    job.worker_name = None
    job.set_status(JobStatus.STARTED)
    job.save()
    return job


def ended(
    job: Job,
    status: JobStatus,
    *,
    value: Any = None,
    exc_string: str | None = None,
    kind: Result.Type | None = None,
    ended_at: bool = True,
) -> Job:
    """``job`` ended as a worker leaves it: its hash, then its result entry."""
    started(job)
    job.ended_at = job.started_at + timedelta(milliseconds=41) if ended_at else None
    job._status = status
    job.save()
    if kind is not None:
        Result.create(job, kind, ttl=600, return_value=value, exc_string=exc_string)
    return job


@dataclass
class State:
    """A way a check can stand, and what its document then says."""

    build: Callable[[redis.Redis], Job]
    status: str
    error: str | None = None
    extra: Callable[[Job], dict[str, Any]] | None = None


def retrying(connection: redis.Redis) -> Job:
    job = enqueued(connection, retry_temporary=True)
    job.meta["attempts"] = [{"outcome": "temporary_failure", "summary": "greylisted"}]
    job.meta["next_attempt_at"] = "2026-12-02T07:00:05.000Z"
    job.save_meta()
    job.set_status(JobStatus.SCHEDULED)
    return job


def with_callback(connection: redis.Redis) -> Job:
    job = enqueued(connection, callback={"url": "https://hook.example/x", "secret": "****"})
    return ended(job, JobStatus.FINISHED, value=result_value(), kind=Result.Type.SUCCESSFUL)


def abandoned(connection: redis.Redis) -> Job:
    """Running, its registry entry lapsed: the read fails it through RQ's cleanup."""
    job = started(enqueued(connection))
    registry = StartedJobRegistry(QUEUE, connection=connection, serializer=JSONSerializer)
    connection.zadd(registry.key, {f"{job.id}:lapsed": time.time() - 1})
    return job


def canceled_in_queue(connection: redis.Redis) -> Job:
    job = enqueued(connection)
    job.cancel()
    return job


STATES = {
    "queued": State(enqueued, "queued"),
    "deferred": State(lambda c: _status(enqueued(c), JobStatus.DEFERRED), "queued"),
    "scheduled": State(lambda c: _status(enqueued(c), JobStatus.SCHEDULED), "queued"),
    "retrying": State(
        retrying,
        "retrying",
        extra=lambda job: {
            "attempts": job.meta["attempts"],
            "next_attempt_at": job.meta["next_attempt_at"],
        },
    ),
    "running": State(lambda c: started(enqueued(c)), "running"),
    "finished": State(
        lambda c: ended(
            enqueued(c), JobStatus.FINISHED, value=result_value(), kind=Result.Type.SUCCESSFUL
        ),
        "finished",
    ),
    "finished, no ended_at": State(
        lambda c: ended(
            enqueued(c),
            JobStatus.FINISHED,
            value=result_value(),
            kind=Result.Type.SUCCESSFUL,
            ended_at=False,
        ),
        "finished",
    ),
    "canceled while running": State(
        lambda c: ended(
            enqueued(c),
            JobStatus.FINISHED,
            value=result_value("canceled"),
            kind=Result.Type.SUCCESSFUL,
        ),
        "canceled",
    ),
    "failed": State(
        lambda c: ended(
            enqueued(c), JobStatus.FAILED, exc_string=TRACEBACK, kind=Result.Type.FAILED
        ),
        "failed",
        "the worker failed: RuntimeError: engine exploded",
    ),
    "failed, no result": State(
        lambda c: ended(enqueued(c), JobStatus.FAILED, ended_at=False),
        "failed",
        "the check failed without a reason",
    ),
    "stopped": State(
        lambda c: ended(enqueued(c), JobStatus.STOPPED, kind=Result.Type.STOPPED),
        "failed",
        "the check was stopped before it finished",
    ),
    "canceled in the queue": State(
        canceled_in_queue, "canceled", "the check was canceled before it ran"
    ),
    "abandoned": State(
        abandoned, "failed", "the worker running this check stopped before it finished"
    ),
    "with a callback": State(
        with_callback,
        "finished",
        extra=lambda job: {"callback": {"status": "pending", "attempts": []}},
    ),
}


def _status(job: Job, status: JobStatus) -> Job:
    job.set_status(status)
    return job


def moment(value: Any) -> str | None:
    """A job's time as documents give it: UTC, to the millisecond."""
    if value is None:
        return None
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def expected(connection: redis.Redis, check_id: str, state: State) -> dict[str, Any]:
    """The document, from what RQ's own Job and Result read back from Redis."""
    job = Job.fetch(check_id, connection=connection, serializer=JSONSerializer)
    latest = job.latest_result()
    value = (
        latest.return_value
        if latest is not None and state.status in ("finished", "canceled")
        else None
    )
    ended_at = job.ended_at or (latest.created_at if latest is not None else None)
    return {
        "id": check_id,
        "status": state.status,
        "vantage": "default",
        "created_at": moment(job.created_at),
        "started_at": moment(job.started_at),
        "ended_at": moment(ended_at)
        if state.status in ("finished", "failed", "canceled")
        else None,
        "request": job.kwargs["request"],
        "result": value,
        "error": state.error,
        **(state.extra(job) if state.extra else {}),
        "links": {
            "self": f"/v1/checks/{check_id}",
            "transcript": f"/v1/checks/{check_id}/transcript",
        },
    }


def compact(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode() + b"\n"  # as Flask ends it


@pytest.mark.parametrize("name", list(STATES))
def test_a_get_answers_the_document_rq_reads_back_to_the_byte(
    client: FlaskClient, store: JobStore, redis_client: redis.Redis, name: str
) -> None:
    state = STATES[name]
    check_id = state.build(redis_client).id

    response = client.get(f"/v1/checks/{check_id}", headers=PINNED)

    document = expected(redis_client, check_id, state)  # after the read: a reap writes
    body = compact(document)
    assert response.status_code == 200
    assert response.get_data() == body
    assert list(response.headers.items()) == [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("X-Request-ID", "pinned-1"),
    ]
    if state.status in ("finished", "failed", "canceled"):
        assert client.get(f"/v1/checks/{check_id}?wait=5", headers=ALICE).get_data() == body
    listed = client.get("/v1/checks", headers=ALICE).get_json()
    if isinstance(document["result"], dict):
        del document["result"]["transcript"]
    assert listed == {"items": [document], "next": None}


@pytest.fixture
def losing() -> Iterator[ReplyLosingServer]:
    with ReplyLosingServer() as server:
        yield server


def test_a_gets_reads_are_retried_whole_over_a_lost_connection(
    losing: ReplyLosingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GET's batch of reads (sent through smtpcheck/wire.py, not a redis-py
    pipeline) is retried whole like any read across a failover."""
    fast = Retry(ExponentialBackoff(cap=0.01, base=0.001), READ_RETRIES, (redis.ConnectionError,))
    monkeypatch.setattr(FailoverRedis, "read_retry", fast)
    client = connect(f"redis://127.0.0.1:{losing.port}/0")

    with pytest.raises(redis.ConnectionError):
        reads(client, fetch_commands("5f0e2a8c-1d3b-4c6e-8a9f-0b1c2d3e4f5a"))
    assert losing.commands == ["HGETALL"] * (1 + READ_RETRIES)


class ClientGone(BaseException):
    """What cuts a held GET off mid-XREAD: its greenlet killed as its client went
    (GreenletExit), or a timeout's abort (SystemExit); neither is a Redis error."""


def test_a_held_read_cut_off_mid_xread_hands_its_late_reply_to_no_later_read(
    store: JobStore, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A held GET's XREAD goes out on a connection the store keeps (wire.shared), with
    the reads behind it. A GET cut off while it waits leaves that connection to be
    connected anew: the replies the XREAD batch would have had once the check ended
    never reach the next held read, which gets its own check's."""
    cut = enqueued(redis_client)
    waiting = store.fetch(cut.id)
    connection_reads = redis.connection.AbstractConnection.read_response

    def gone(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise ClientGone

    monkeypatch.setattr(redis.connection.AbstractConnection, "read_response", gone)
    with pytest.raises(ClientGone):
        store.wait(waiting, 5)
    monkeypatch.setattr(redis.connection.AbstractConnection, "read_response", connection_reads)
    ended(cut, JobStatus.FINISHED, value=result_value(), kind=Result.Type.SUCCESSFUL)

    other = enqueued(redis_client)
    before = store.fetch(other.id)  # read while queued; its result comes before the wait
    ended(other, JobStatus.FINISHED, value=result_value("blocked"), kind=Result.Type.SUCCESSFUL)
    after = store.wait(before, 5)

    assert after.id == other.id and after.status == JobStatus.FINISHED
    assert (store.result(after) or {})["outcome"] == "blocked"
    assert store.describe(after) == store.describe(store.fetch(other.id))


JSON_VALUES = strategies.recursive(
    strategies.none()
    | strategies.booleans()
    | strategies.integers()
    | strategies.floats()  # NaN and the infinities too, as json.dumps writes them
    | strategies.text(),  # any code point: escaped, astral ones as surrogate pairs
    lambda inner: (
        strategies.lists(inner, max_size=4)
        | strategies.dictionaries(strategies.text(), inner, max_size=4)
    ),
    max_leaves=12,
)


@hypothesis.settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],  # one app for all
)
@hypothesis.given(
    request_value=JSON_VALUES,
    result=JSON_VALUES,
    lines=strategies.lists(strategies.text(), max_size=5),
    debug=strategies.booleans(),
)
def test_a_documents_answer_is_jsonifys_to_the_byte(
    client: FlaskClient, request_value: Any, result: Any, lines: list[str], debug: bool
) -> None:
    """A check's answer, encoded without jsonify, has jsonify's body and headers for
    any JSON a document can hold (a transcript's lines in any script among them); in
    debug mode, where jsonify indents, too."""
    app = client.application
    document = {
        "id": "5f0e2a8c-1d3b-4c6e-8a9f-0b1c2d3e4f5a",
        "status": "finished",
        "request": request_value,
        "result": {
            "summary": "caf\u00e9 \u2713 \U0001f600",
            "value": result,
            "transcript": [
                {"t_ms": index * 0.1, "dir": "server", "text": text}
                for index, text in enumerate(lines)
            ],
        },
        "error": None,
        "links": {"self": "/v1/checks/x", "transcript": "/v1/checks/x/transcript"},
    }
    app.debug = debug
    try:
        with app.test_request_context("/v1/checks/x"):
            got = checks._json_answer(app, document)
            expected = jsonify(document)
    finally:
        app.debug = False
    assert (got.status_code, list(got.headers.items()), got.get_data()) == (
        expected.status_code,
        list(expected.headers.items()),
        expected.get_data(),
    )
