"""A plain check's end as the threaded worker writes it is RQ's own end: the job
hash, its result stream entry, the registries, the execution and the worker's
counters come out the same as after RQ's ``Worker.handle_job_success``."""

from __future__ import annotations

import math
import uuid
from datetime import timedelta
from typing import Any

import pytest
import redis
import rq.executions
from rq import Queue
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.utils import now
from rq.worker import Worker

from smtpcheck import wire
from tests.service import jobs
from workers import threaded
from workers.threaded import ThreadedCheckWorker

QUEUE = "vantage:default"
CHECK_ID = "0b7c2f3e-6a0d-4f7e-9c41-5d2a8e6f1a20"
#: Every moment of the two ends is this one or a fixed step from it.
MOMENT = now().replace(microsecond=123456)


def ended(
    connection: redis.Redis, pool: ThreadedCheckWorker, result_ttl: int
) -> tuple[Job, Queue, Execution]:
    """The check enqueued, taken and run up to its end, as the worker leaves it."""
    connection.flushdb()
    queue = jobs.enqueue_plain_check(connection, QUEUE, CHECK_ID, result_ttl)
    job = Job.fetch(CHECK_ID, connection=connection, serializer=JSONSerializer)
    job.created_at = job.enqueued_at = MOMENT
    with connection.pipeline() as pipe:
        execution = Execution.create(job, 60, pipeline=pipe, worker_name=pool.name)
        job.started_job_registry.add_execution(execution, pipeline=pipe, ttl=60)
        pipe.execute()
    started = MOMENT + timedelta(milliseconds=2)
    job.set_status(JobStatus.STARTED)
    job.worker_name = pool.name
    job.started_at = started
    job.ended_at = job.last_heartbeat = started + timedelta(milliseconds=41)
    job._result = {"outcome": "ok", "transcript": [{"t": 0.01, "line": "220 ready"}]}
    return job, queue, execution


def written(connection: redis.Redis, pool: ThreadedCheckWorker) -> dict[str, Any]:
    entries = connection.xrange(Result.get_key(CHECK_ID))
    finished: Any = connection.zrange(f"rq:finished:{QUEUE}", 0, -1, withscores=True)
    return {
        "keys": sorted(connection.keys("*")),
        "job": connection.hgetall(Job.key_for(CHECK_ID)),
        "job ttl": connection.ttl(Job.key_for(CHECK_ID)) // 10,
        "result": [fields for _id, fields in entries],
        "result ttl": connection.ttl(Result.get_key(CHECK_ID)) // 10,
        "finished": [
            (member, score if score == math.inf else score // 10) for member, score in finished
        ],
        "started": connection.zrange(f"rq:wip:{QUEUE}", 0, -1),
        "executions": connection.zrange(f"rq:executions:{CHECK_ID}", 0, -1),
        "worker executions": connection.smembers(f"rq:worker:{pool.name}:executions"),
        "worker": connection.hmget(pool.key, "successful_job_count", "total_working_time"),
    }


@pytest.mark.parametrize("result_ttl", [600, -1, 0], ids=["kept", "for-ever", "not-kept"])
def test_a_plain_checks_end_is_written_as_rq_writes_it(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, result_ttl: int
) -> None:
    monkeypatch.setattr(rq.executions, "uuid4", lambda: uuid.UUID(int=7))
    monkeypatch.setattr(rq.executions, "now", lambda: MOMENT)
    queue = Queue(QUEUE, connection=redis_client, serializer=JSONSerializer)
    pool = ThreadedCheckWorker([queue], connection=redis_client, serializer=JSONSerializer)
    ends: list[dict[str, Any]] = []
    for handle in (Worker.handle_job_success, ThreadedCheckWorker.handle_job_success):
        job, queue, execution = ended(redis_client, pool, result_ttl)
        handle(pool, job, queue, job.started_job_registry, execution)
        ends.append(written(redis_client, pool))
    rq_end, ours = ends
    if result_ttl:
        assert rq_end["job"][b"status"] == b"finished" and rq_end["result"]  # it did end
    else:
        assert rq_end["job"] == {} and rq_end["worker"][0] == b"1"  # ended, and not kept
    assert ours == rq_end


@pytest.mark.parametrize("ttl", [600, -1])
def test_the_result_goes_to_its_stream_as_rq_sends_it(redis_client: redis.Redis, ttl: int) -> None:
    """Byte for byte the commands of RQ's ``Result.save`` (its stream trimmed
    the way redis-py's ``xadd(maxlen=10)`` trims it)."""
    result = Result(
        CHECK_ID,
        Result.Type.SUCCESSFUL,
        redis_client,
        return_value={"outcome": "ok"},
        worker_name="default.host.1234",
        serializer=JSONSerializer,
        execution_id="e" * 32,
        execution_started_at=MOMENT,
        execution_ended_at=MOMENT + timedelta(milliseconds=41),
    )
    encoder = redis_client.get_encoder()

    def packed(commands: list[tuple[Any, ...]]) -> list[list[bytes]]:
        return [[encoder.encode(arg) for arg in command] for command in commands]

    with redis_client.pipeline() as pipe:
        result.save(ttl, pipeline=pipe)
        assert packed(threaded._result_commands(result, ttl)) == packed(wire.staged(pipe))
