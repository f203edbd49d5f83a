"""A Redis that stops answering without closing anything (a frozen primary, a
partition without RST, a paused container), behind a real TCP proxy: every
worker connection gives up within its read timeout, a check's end that timed
out is retried and written once, the heartbeat goes on, and the worker logs
one line per episode, not one per check."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from ipaddress import ip_network
from typing import Any

import pytest
import redis
from rq import Queue
from rq.job import Job
from rq.results import Result
from rq.serializers import JSONSerializer

import workers.job
import workers.pool
from service import create_app
from smtpcheck.config import Settings
from smtpcheck.contract import EVENTS_KEY_PREFIX
from smtpcheck.embedded_redis import EmbeddedRedis
from smtpcheck.redis_client import connect
from tests.freezing_proxy import FreezingProxy
from tests.service import jobs
from tests.service.conftest import API_KEYS, submit
from tests.smtp_servers import SMTPTarget
from workers import events, threaded
from workers.pool import HEARTBEAT_TTL
from workers.threaded import DEQUEUE_BLOCK, ThreadedCheckWorker

#: The read timeout the test asks for; the worker raises it to its dequeue's
#: block and a margin, made short here.
ASKED = 0.5
MARGIN = 0.25
READ_TIMEOUT = DEQUEUE_BLOCK + MARGIN
#: Every end sent into the freeze has timed out by then, also one sent after
#: the publisher's round trip in flight at the freeze timed out.
LONG_FREEZE = 2 * READ_TIMEOUT + 0.5


@pytest.fixture
def proxy(
    redis_server: EmbeddedRedis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FreezingProxy]:
    monkeypatch.setattr(workers.pool, "BLOCK_MARGIN", MARGIN)
    with FreezingProxy(("127.0.0.1", redis_server.port)) as proxy:
        yield proxy


@pytest.fixture
def checks(
    redis_url: str,
    proxy: FreezingProxy,
    smtp_target: Callable[..., SMTPTarget],
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[int], list[str]]:
    """Submit real checks of a real SMTP server; the job runs with settings
    whose Redis is behind the proxy, with a short read timeout."""
    target = smtp_target()
    common: dict[str, Any] = {
        "secret_key": "test-secret",
        "api_keys": API_KEYS,
        "allow_networks": (ip_network("127.0.0.0/8"),),
        "allowed_ports": frozenset({target.port}),
        "helo_name": "checker.test",
        "max_concurrent_per_target": 10,  # the politeness gate is not what is tested
    }
    monkeypatch.setattr(
        workers.job,
        "_worker_settings",
        Settings(redis_url=proxy.url, worker_redis_timeout=ASKED, **common),
    )

    def submit_checks(count: int) -> list[str]:
        app = create_app(Settings(redis_url=redis_url, **common))
        try:
            body = {"host": "127.0.0.1", "port": target.port, "tls": "none", "stop_after": "ehlo"}
            return [submit(app.test_client(), body) for _ in range(count)]
        finally:
            app.extensions["smtpcheck"].close()

    return submit_checks


def freezing_at_the_first_end(
    proxy: FreezingProxy, monkeypatch: pytest.MonkeyPatch, thaw_after: float | None
) -> list[str]:
    """Freeze the proxy just before the first check's end goes out, once what
    was handed to the publisher before is in Redis (so that end's bytes wait
    in the proxy and land when it thaws, after the worker has given up on
    them); thaw ``thaw_after`` seconds later. Gives that check's stream key."""
    first: list[str] = []
    commit = events.HeldEnd.commit

    def freezing(held: events.HeldEnd, commands: Any) -> None:
        assert held.events is not None
        if not first:
            first.append(held.events.key)
            assert events.written_so_far(held.events.connection)
            proxy.freeze()
            if thaw_after is not None:
                threading.Timer(thaw_after, proxy.thaw).start()
        commit(held, commands)

    monkeypatch.setattr(events.HeldEnd, "commit", freezing)
    return first


def behind(proxy: FreezingProxy, **options: Any) -> ThreadedCheckWorker:
    connection = connect(proxy.url, read_timeout=ASKED)
    queue = Queue("vantage:default", connection=connection, serializer=JSONSerializer)
    return ThreadedCheckWorker([queue], connection=connection, serializer=JSONSerializer, **options)


def stored_once(connection: redis.Redis, check_id: str) -> dict[str, Any]:
    """The check's one result, after asserting it is finished with exactly one."""
    job = Job.fetch(check_id, connection=connection, serializer=JSONSerializer)
    assert job.get_status() == "finished", check_id
    assert connection.xlen(Result.get_key(check_id)) == 1, "two results for one check"
    result = job.return_value()
    assert isinstance(result, dict) and result["outcome"] == "ok", result
    return result


def test_every_worker_connection_waits_its_read_timeout_at_most(proxy: FreezingProxy) -> None:
    pool = behind(proxy)
    options = pool.connection.connection_pool.connection_kwargs
    assert options["socket_timeout"] == READ_TIMEOUT  # not RQ's 15 s, nor for ever
    proxy.freeze()
    started = time.monotonic()
    with pytest.raises(redis.exceptions.TimeoutError):
        pool.connection.set("probe", "1")  # a write: never sent again, so one timeout
    assert time.monotonic() - started < READ_TIMEOUT + 1.5
    proxy.thaw()
    assert pool.connection.ping()
    pool.connection.close()


def test_checks_whose_ends_meet_a_frozen_redis_are_stored_once_after_the_thaw(
    proxy: FreezingProxy,
    checks: Callable[[int], list[str]],
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The first end's transaction is sent into the freeze and times out; the
    worker sends it again (and the other checks' ends) until Redis answers,
    while the first one still lands when the proxy thaws: each check is
    finished with one result and its transcript lines once. A slow check in
    flight across the freeze keeps being beaten for, and ends normally."""
    ids = checks(3)
    napping = {"host": "mx.example.com", "port": 25, "vantage": "default",
               "timeouts": {"connect": LONG_FREEZE + 1.5}}  # fmt: skip
    slow = Queue("vantage:default", connection=redis_client, serializer=JSONSerializer).enqueue(
        jobs.NAP, kwargs={"request": napping, "sealed_password": None}, meta={"owner": "bob"}
    )
    first = freezing_at_the_first_end(proxy, monkeypatch, thaw_after=LONG_FREEZE)
    caplog.set_level(logging.INFO, logger="smtpcheck.worker")
    started = time.monotonic()

    pool = behind(proxy, concurrency=8, job_monitoring_interval=1)
    try:
        pool.work(burst=True, logging_level="INFO")
    finally:
        pool.connection.close()

    assert first
    assert time.monotonic() - started < 20
    for check_id in ids:
        result = stored_once(redis_client, check_id)
        stream = redis_client.xrange(EVENTS_KEY_PREFIX + check_id)
        lines = [json.loads(fields[b"data"]) for _, fields in stream]
        if EVENTS_KEY_PREFIX + check_id == first[0]:  # its lines came with its end: all, once
            assert lines == result["transcript"]
        else:  # lines handed over in the freeze may be dropped (the result has them), not doubled
            assert all(lines.count(line) == 1 and line in result["transcript"] for line in lines)
    assert Job.fetch(slow.id, connection=redis_client, serializer=JSONSerializer).get_status() == (
        "finished"
    )
    assert redis_client.zcard("rq:wip:vantage:default") == 0
    for key in redis_client.keys("rq:execution:*"):
        # A heartbeat sent into the freeze that landed after its check's end:
        # a stray field, gone within a heartbeat's TTL, not a check in flight.
        assert set(redis_client.hgetall(key)) == {b"last_heartbeat"}
        assert 0 < redis_client.ttl(key) <= HEARTBEAT_TTL
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    episode = [m for level, m in said if "storing check results: Redis" in m]
    assert len(episode) == 2, said  # one when it stopped answering, one when it answered again
    assert "is not answering" in episode[0] and "answers again" in episode[1]
    assert not [m for level, m in said if level == "WARNING" and "cannot store" in m], said
    beats = [m for level, m in said if "heartbeat" in m]
    assert beats and "heartbeat failed" in beats[0] and "heartbeats resumed" in beats[-1], said


def test_an_end_given_up_in_a_long_freeze_is_reported_and_still_written_once(
    proxy: FreezingProxy,
    checks: Callable[[int], list[str]],
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A freeze longer than ``STORE_RETRY_SECONDS``: the worker gives up on the
    end with the ERROR line naming the check and its outcome; the try it had
    sent still lands when Redis answers again, once."""
    monkeypatch.setattr(threaded, "STORE_RETRY_SECONDS", 0.5)
    (check_id,) = checks(1)
    first = freezing_at_the_first_end(proxy, monkeypatch, thaw_after=None)

    def thaw_once_given_up() -> None:  # or after a bound, for the assertions to say why
        deadline = time.monotonic() + 4 * READ_TIMEOUT
        while time.monotonic() < deadline:
            if any("could not be stored" in r.getMessage() for r in caplog.records):
                break
            time.sleep(0.05)
        proxy.thaw()

    thawing = threading.Thread(target=thaw_once_given_up)
    thawing.start()
    pool = behind(proxy)
    try:
        pool.work(burst=True, logging_level="WARNING")
    finally:
        thawing.join()
        pool.connection.close()

    assert first == [EVENTS_KEY_PREFIX + check_id]
    (lost,) = [r for r in caplog.records if "could not be stored" in r.getMessage()]
    assert lost.levelname == "ERROR" and f"check {check_id}:" in lost.getMessage()
    assert "(outcome ok)" in lost.getMessage()
    deadline = time.monotonic() + 5
    while redis_client.hget(f"rq:job:{check_id}", "status") != b"finished":
        assert time.monotonic() < deadline, "the try sent before the freeze never landed"
        time.sleep(0.05)
    stored_once(redis_client, check_id)
