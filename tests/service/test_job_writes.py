"""A check's job as the POST writes it (service/jobstore.py ``prepare`` and
``writes``) is the job RQ's own ``Queue.create_job`` and ``enqueue_job`` write:
every ``rq:`` key, its type, its contents (a job hash field by field)
and its time to live."""

from __future__ import annotations

import json
import math
import zlib
from datetime import datetime
from typing import Any

import pytest
import redis
import rq.queue
from flask import Flask
from rq import Queue, Retry
from rq.job import JobStatus
from rq.serializers import JSONSerializer

from service.jobstore import JobStore, mask_secrets
from smtpcheck.contract import JOB_FUNCTION, queue_name
from smtpcheck.logs import log_context
from smtpcheck.sealing import unseal

PASSWORD = "pw-ünique"

REQUESTS: list[dict[str, Any]] = [
    {"host": "127.0.0.1", "port": 2525, "tls": "none", "stop_after": "ehlo"},
    {
        "host": "mx.example.com",
        "auth": {"username": "user@example.com", "password": PASSWORD},
        "mail_from": "",
        "rcpt_to": ["jörg@example.com"],
        "timeouts": {"total": 100.5},
        "retry_temporary": True,
        "retry": {"attempts": 3, "delay": 1.5},
        "vantage": "eu-west",
    },
]


def state(connection: redis.Redis) -> dict[bytes, tuple[bytes, Any, int]]:
    """Every ``rq:`` key: its type, its contents, its time to live in seconds."""
    read = {
        b"hash": lambda key: sorted(connection.hgetall(key).items()),  # Redis keeps no order
        b"list": lambda key: connection.lrange(key, 0, -1),
        b"set": lambda key: sorted(connection.smembers(key)),
    }
    found = {}
    for key in sorted(connection.keys("rq:*")):
        kind = connection.type(key)
        found[key] = (kind, read[kind](key), connection.ttl(key))
    return found


def rq_writes(
    connection: redis.Redis, store: JobStore, request: dict[str, Any], written: dict[str, Any]
) -> None:
    """The check of ``request`` enqueued by RQ itself, as docs/architecture.md
    describes its job, with the id, moments and seal the API chose."""
    masked = mask_secrets(request)[0]
    ttl = store.settings.result_ttl
    retry = None
    if request["retry_temporary"] and request["retry"]["attempts"] > 1:
        retry = Retry(
            max=request["retry"]["attempts"] - 1, interval=math.ceil(request["retry"]["delay"])
        )
    queue = Queue(queue_name(request["vantage"]), connection=connection, serializer=JSONSerializer)
    job = queue.create_job(
        JOB_FUNCTION,
        kwargs={"request": masked, "sealed_password": written["sealed_password"]},
        retry=retry,
        timeout=math.ceil(request["timeouts"]["total"]) + 30,
        result_ttl=ttl,
        failure_ttl=ttl,
        ttl=ttl,
        description="smtpcheck",
        job_id=written["id"],
        meta=written["meta"],
        status=JobStatus.QUEUED,
    )
    job.created_at = written["created_at"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rq.queue, "now", lambda: written["enqueued_at"])
        with connection.pipeline() as pipe:
            queue.enqueue_job(job, pipeline=pipe)
            pipe.execute()


@pytest.mark.parametrize("body", REQUESTS, ids=["bench", "auth-retry-vantage"])
def test_a_checks_job_is_written_as_rq_writes_it(
    app: Flask, store: JobStore, redis_client: redis.Redis, body: dict[str, Any]
) -> None:
    redis_client.sadd("rq:queues", "rq:queue:vantage:eu-west")  # a known vantage
    request = app.extensions["smtpcheck.request_schema"].load(body)
    token = log_context.set({"request_id": "req-1"})
    try:
        prepared = store.prepare(request, "alice")
    finally:
        log_context.reset(token)
    for command in store.writes([prepared], "alice", listed=False):
        redis_client.execute_command(*command)
    ours = state(redis_client)

    raw = redis_client.hgetall(f"rq:job:{prepared.id}")
    _, _, _, kwargs = json.loads(zlib.decompress(raw[b"data"]))
    sealed = kwargs["sealed_password"]
    assert (sealed is None) == ("auth" not in body)
    if sealed is not None:
        assert unseal(sealed, "test-secret") == PASSWORD
    written = {
        "id": prepared.id,
        "sealed_password": sealed,
        "meta": json.loads(raw[b"meta"]),
        "created_at": datetime.fromisoformat(raw[b"created_at"].decode()),
        "enqueued_at": datetime.fromisoformat(raw[b"enqueued_at"].decode()),
    }
    assert written["meta"] == {
        "owner": "alice",
        "vantage": request["vantage"],
        "request_id": "req-1",
    }
    redis_client.flushall()
    redis_client.sadd("rq:queues", "rq:queue:vantage:eu-west")
    rq_writes(redis_client, store, request, written)
    theirs = state(redis_client)

    assert list(ours) == list(theirs)
    for key, (kind, contents, ttl) in ours.items():
        their_kind, their_contents, their_ttl = theirs[key]
        assert (kind, contents) == (their_kind, their_contents), key
        assert abs(ttl - their_ttl) <= 1, key  # the same EXPIRE, a second boundary apart at most
