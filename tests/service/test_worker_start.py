"""A check's start as the threaded worker writes it is RQ's own start: the
execution, its entries in the job's execution registry, the started registry
and the worker's execution set, the job hash, the intermediate list and the
worker's hash come out the same as after RQ's ``Execution.create`` and
``Job.prepare_for_execution`` (the two steps of RQ's ``prepare_execution``
and ``prepare_job_execution`` that a check's start writes)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis
import rq.executions
import rq.job
import rq.queue
import rq.utils
import rq.worker.base
from rq import Queue
from rq.executions import Execution
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.utils import now
from rq.worker import WorkerStatus

import workers.threaded
from tests.service import jobs
from workers import events
from workers.pool import HEARTBEAT_TTL
from workers.threaded import ThreadedCheckWorker

QUEUE = "vantage:default"
CHECK_ID = "5d0f6c1e-2b7a-4c39-8e51-0a9f3d6b7c24"
#: Every moment of the two starts is this one.
MOMENT = now().replace(microsecond=654321)


def taken(connection: redis.Redis, pool: ThreadedCheckWorker) -> tuple[Job, Queue]:
    """The check enqueued and taken off its queue as the worker takes it."""
    connection.flushdb()
    queue = jobs.enqueue_plain_check(connection, QUEUE, CHECK_ID)
    connection.lmove(queue.key, queue.intermediate_queue_key, "LEFT", "RIGHT")
    connection.rpush(pool.taken_key, CHECK_ID)
    pool.register_birth()
    return Job.fetch(CHECK_ID, connection=connection, serializer=JSONSerializer), queue


def rq_start(pool: ThreadedCheckWorker, job: Job, queue: Queue) -> Execution:
    """The start through RQ's own calls, as the worker composed them before."""
    with pool.connection.pipeline() as pipe:
        execution = Execution.create(job, HEARTBEAT_TTL, pipeline=pipe, worker_name=pool.name)
        pool.set_state(WorkerStatus.BUSY, pipeline=pipe)
        pool.heartbeat(HEARTBEAT_TTL, pipeline=pipe)
        job.prepare_for_execution(pool.name, pipeline=pipe)
        pipe.persist(job.key)
        pipe.lrem(queue.intermediate_queue_key, 1, job.id)
        pipe.lrem(pool.taken_key, 1, job.id)
        pipe.execute()
    return execution


def ours(pool: ThreadedCheckWorker, job: Job, queue: Queue) -> Execution:
    pool.set_state(WorkerStatus.IDLE)  # so that this start writes BUSY
    pool._worker_beat_at = float("-inf")  # and the worker's heartbeat
    execution = pool._begin(job, queue)
    assert events.written_so_far(pool.connection)
    return execution


def state(connection: redis.Redis, pool: ThreadedCheckWorker) -> dict[str, Any]:
    def ttl(key: str) -> int:
        return int(connection.ttl(key))

    execution_key = connection.keys("rq:execution:*")[0].decode()
    return {
        "keys": sorted(connection.keys("*")),
        "execution": connection.hgetall(execution_key),
        "execution ttl": ttl(execution_key),
        "executions": connection.zrange(f"rq:executions:{CHECK_ID}", 0, -1, withscores=True),
        "executions ttl": ttl(f"rq:executions:{CHECK_ID}"),
        "started": connection.zrange(f"rq:wip:{QUEUE}", 0, -1, withscores=True),
        "worker executions": connection.smembers(f"rq:worker:{pool.name}:executions"),
        "worker executions ttl": ttl(f"rq:worker:{pool.name}:executions"),
        "job": connection.hgetall(Job.key_for(CHECK_ID)),
        "job ttl": ttl(Job.key_for(CHECK_ID)),
        "intermediate": connection.lrange(f"rq:queue:{QUEUE}:intermediate", 0, -1),
        "taken": connection.lrange(pool.taken_key, 0, -1),
        "worker": {
            field: value
            for field, value in connection.hgetall(pool.key).items()
            if field in (b"state", b"last_heartbeat")
        },
        "worker ttl": ttl(pool.key),
    }


def test_a_checks_start_is_written_as_rq_writes_it(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in (rq.executions, rq.job, rq.queue, rq.utils, rq.worker.base, workers.threaded):
        monkeypatch.setattr(module, "now", lambda: MOMENT, raising=False)
    for module in (rq.executions, workers.threaded):
        monkeypatch.setattr(module, "uuid4", lambda: uuid.UUID(int=11), raising=False)
    queue = Queue(QUEUE, connection=redis_client, serializer=JSONSerializer)
    pool = ThreadedCheckWorker([queue], connection=redis_client, serializer=JSONSerializer)
    starts: list[dict[str, Any]] = []
    jobs: list[Job] = []
    for start in (rq_start, ours):
        job, queue = taken(redis_client, pool)
        execution = start(pool, job, queue)
        assert (execution.id, execution.job_id, execution.worker_name) == (
            uuid.UUID(int=11).hex,
            CHECK_ID,
            pool.name,
        )
        starts.append(state(redis_client, pool))
        jobs.append(job)
    rq_state, our_state = starts
    assert rq_state["job"][b"status"] == b"started" and rq_state["started"]  # it did start
    assert our_state == rq_state
    rq_job, our_job = jobs  # and the job in hand is what RQ's calls leave it
    for name in ("worker_name", "started_at", "last_heartbeat", "_status"):
        assert getattr(our_job, name) == getattr(rq_job, name), name
