"""The threaded worker in one process: many checks at once, each in RQ's
registries, and the watchdog that stands in for RQ's job timeout."""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from rq import Queue
from rq.job import Job
from rq.registry import FinishedJobRegistry
from rq.serializers import JSONSerializer

import workers.job
from service import create_app
from service.jobstore import JobStore
from smtpcheck.config import Settings
from smtpcheck.contract import EVENTS_KEY_PREFIX
from smtpcheck.embedded_redis import EmbeddedRedis
from tests.service import jobs
from tests.service.conftest import ALICE, API_KEYS, BOB, submit
from tests.smtp_servers import SMTPTarget
from workers import events, threaded
from workers.pool import HEARTBEAT_TTL, Pool
from workers.threaded import ThreadedCheckWorker

#: Not counted: the test's own CONFIG RESETSTAT, and a new connection's handshake.
UNCOUNTED = {"cmdstat_config", "cmdstat_hello", "cmdstat_client"}


def worker(connection: redis.Redis, **options: object) -> ThreadedCheckWorker:
    queue = Queue("vantage:default", connection=connection, serializer=JSONSerializer)
    return ThreadedCheckWorker([queue], connection=connection, serializer=JSONSerializer, **options)


def test_one_process_runs_many_checks_at_once(
    client: FlaskClient, store: JobStore, redis_client: redis.Redis
) -> None:
    store.job_function = jobs.NAP
    ids = [
        submit(client, {"host": "mx.example.com", "timeouts": {"connect": 1.5}}) for _ in range(10)
    ]  # fmt: skip (10: the per-key cap)
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:  # how many are 'started' at once, by RQ's own registry
        while not done.is_set():
            seen.append(int(redis_client.zcard("rq:wip:vantage:default")))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.monotonic()
    pool = worker(redis_client, concurrency=50)
    try:
        pool.work(burst=True, logging_level="WARNING")
    finally:
        done.set()
        watcher.join()
    elapsed = time.monotonic() - started

    assert max(seen) == 10  # every one in flight, each with its own entry
    assert elapsed < 10  # not 10 x 1.5 s one after another
    for check_id in ids:
        body = client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()
        assert body["status"] == "finished", body
    # Each end stored as RQ's own success path stores it (here without its
    # WATCH: nothing depends on a check without a callback).
    assert redis_client.zcard("rq:wip:vantage:default") == 0
    assert set(FinishedJobRegistry("vantage:default", connection=redis_client).get_job_ids()) == {
        *ids
    }
    assert not redis_client.keys("rq:execution:*")
    assert redis_client.scard(f"rq:worker:{pool.name}:executions") == 0
    counted = redis_client.hmget(pool.key, "successful_job_count", "total_working_time")
    assert int(counted[0] or 0) == 10 and float(counted[1] or 0) >= 10 * 1.5


def test_a_key_runs_past_its_share_only_while_nobody_else_waits(
    client: FlaskClient, store: JobStore, redis_client: redis.Redis
) -> None:
    """10 slots: alice's share is 5 while bob's check waits, then (nobody else
    waiting) all but the reserve of 1; bob's check starts at once."""
    store.job_function = jobs.NAP
    nap = {"host": "mx.example.com", "timeouts": {"connect": 1.5}}
    hog = [submit(client, nap) for _ in range(10)]  # 10: the per-key cap
    other = submit(client, {**nap, "timeouts": {"connect": 0.1}}, headers=BOB)
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(int(redis_client.zcard("rq:wip:vantage:default")))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        worker(redis_client, concurrency=10).work(burst=True, logging_level="WARNING")
    finally:
        done.set()
        watcher.join()

    assert max(seen) == 9  # alice past her share (5) once bob's check had started; one kept free
    for check_id in [*hog, other]:
        headers = BOB if check_id == other else ALICE
        body = client.get(f"/v1/checks/{check_id}", headers=headers).get_json()
        assert body["status"] == "finished", body
    jobs_of = {i: Job.fetch(i, connection=redis_client, serializer=JSONSerializer) for i in hog}
    first_end = min(job.ended_at for job in jobs_of.values() if job.ended_at)
    bob = Job.fetch(other, connection=redis_client, serializer=JSONSerializer)
    assert bob.started_at is not None and bob.started_at < first_end  # not behind alice's naps


def test_the_watchdog_fails_a_check_past_its_deadline(
    client: FlaskClient, store: JobStore, redis_client: redis.Redis
) -> None:
    store.job_function = jobs.NAP
    check_id = submit(client, {"host": "mx.example.com", "timeouts": {"connect": 2.5}})
    job = Job.fetch(check_id, connection=redis_client, serializer=JSONSerializer)
    job.timeout = 1  # the engine's deadline plus the margin, shortened for the test
    job.save()
    started = time.monotonic()

    worker(redis_client, job_monitoring_interval=1).work(burst=True, logging_level="WARNING")

    assert time.monotonic() - started < 3.5  # the watchdog, not the nap, ended it
    body = client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()
    assert body["status"] == "failed", body
    assert body["error"] == "the check ran past its time limit and was stopped"
    time.sleep(1.5)  # the check's thread ends by itself and stores nothing
    body = client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()
    assert body["status"] == "failed", body


def test_a_check_failed_before_its_thread_starts_it_stays_failed(
    client: FlaskClient, store: JobStore, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watchdog fails a check whose thread has not sent its start yet (a
    loaded machine): the start is never sent after the failure, so the check
    does not read 'started' again and then 'abandoned'."""
    store.job_function = jobs.NAP
    check_id = submit(client, {"host": "mx.example.com", "timeouts": {"connect": 0.2}})
    job = Job.fetch(check_id, connection=redis_client, serializer=JSONSerializer)
    job.timeout = 1
    job.save()
    run_flight = ThreadedCheckWorker._run_flight

    def late_start(self: ThreadedCheckWorker, flight: threaded.Flight) -> None:
        deadline = time.monotonic() + 5
        while not flight.settled and time.monotonic() < deadline:
            time.sleep(0.02)  # the thread is slow to start; the watchdog gets there first
        run_flight(self, flight)

    monkeypatch.setattr(ThreadedCheckWorker, "_run_flight", late_start)
    pool = worker(redis_client, job_monitoring_interval=1)
    pool.work(burst=True, logging_level="WARNING")

    body = client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()
    assert body["status"] == "failed", body
    assert body["error"] == "the check ran past its time limit and was stopped"
    assert redis_client.zcard("rq:wip:vantage:default") == 0  # never in the started registry
    queue = Queue("vantage:default", connection=redis_client)
    assert redis_client.llen(queue.intermediate_queue_key) == 0  # not failed again by RQ's cleanup
    assert not redis_client.keys("rq:execution:*")


def _napping_check(connection: redis.Redis) -> Job:
    """A check of alice's queued as the API queues one, that naps 1.5 s."""
    queue = Queue("vantage:default", connection=connection, serializer=JSONSerializer)
    request = {"host": "mx.example.com", "port": 25, "vantage": "default",
               "timeouts": {"connect": 1.5}}  # fmt: skip
    return queue.enqueue(
        jobs.NAP,
        kwargs={"request": request, "sealed_password": None},
        description="smtpcheck",
        meta={"owner": "alice"},
    )


def test_a_result_that_ends_while_redis_is_away_is_stored_once_it_is_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis goes away mid-check and comes back empty: the check's end is
    stored anyway (the job written again first), not lost."""
    server = EmbeddedRedis(tmp_path / "redis", persist=False).start()
    connection = redis.Redis.from_url(server.url)
    try:
        job = _napping_check(connection)

        def outage() -> None:  # from mid-check until after the check has ended
            time.sleep(0.5)
            server.stop()
            time.sleep(1.5)
            server.start()

        away = threading.Thread(target=outage)
        away.start()
        worker(connection).work(burst=True, logging_level="WARNING")
        away.join()

        stored = Job.fetch(job.id, connection=connection, serializer=JSONSerializer)
        assert stored.get_status() == "finished"
        result = stored.return_value()
        assert isinstance(result, dict) and result["outcome"] == "ok"
        assert stored.meta["owner"] == "alice"
        said = [record.getMessage() for record in caplog.records]
        assert any("storing check results: Redis is not answering" in line for line in said), said
        assert any("Redis lost this running check" in line for line in said), said
    finally:
        connection.close()
        server.stop()


def test_a_result_that_cannot_be_stored_in_time_is_reported_not_dropped_silently(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis goes away mid-check and stays away past ``STORE_RETRY_SECONDS``: the
    worker gives up on that end with one ERROR line naming the check and its
    outcome (the check is not silently lost), and its burst ends instead of hanging."""
    monkeypatch.setattr(threaded, "STORE_RETRY_SECONDS", 1.0)
    server = EmbeddedRedis(tmp_path / "redis", persist=False).start()
    connection = redis.Redis.from_url(server.url)
    try:
        job = _napping_check(connection)

        def outage() -> None:  # from mid-check on, for good
            time.sleep(0.5)
            server.stop()

        away = threading.Thread(target=outage)
        away.start()
        started = time.monotonic()
        # The burst ends with RQ's teardown (its death registered), which
        # raises while Redis is still away; the check's end was given up before.
        with pytest.raises(redis.exceptions.ConnectionError):
            worker(connection).work(burst=True, logging_level="WARNING")
        away.join()

        assert time.monotonic() - started < 20
        errors = [r for r in caplog.records if r.levelname == "ERROR"]
        lost = [r for r in errors if "could not be stored" in r.getMessage()]
        assert len(lost) == 1, [r.getMessage() for r in errors]
        assert f"check {job.id}:" in lost[0].getMessage()
        assert "(outcome ok)" in lost[0].getMessage()
        assert getattr(lost[0], "outcome", None) == "ok"
    finally:
        connection.close()
        server.stop()


def test_a_check_thread_takes_the_next_check_in_a_fresh_context(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst reuses its threads (one started per check cost CPU), but each
    check starts as in a thread of its own: nothing of the last one's context."""
    monkeypatch.setattr(threaded, "SPARE_IDLE", 0.3)
    pool = worker(redis_client, concurrency=4)
    leftover: contextvars.ContextVar[str | None] = contextvars.ContextVar("leftover", default=None)
    ran: list[tuple[int, str | None]] = []
    ended = threading.Semaphore(0)

    def run(flight: threaded.Flight) -> None:
        ran.append((threading.get_ident(), leftover.get()))
        leftover.set(flight.job.id)
        ended.release()

    monkeypatch.setattr(pool, "_run_flight", run)
    queue = Queue("vantage:default", connection=redis_client, serializer=JSONSerializer)
    for _ in range(2):
        job = Job.create("builtins.print", connection=redis_client, serializer=JSONSerializer)
        pool._launch(job, queue)
        assert ended.acquire(timeout=10)
        for _ in range(200):  # the thread is back among the spares
            if pool._spares:
                break
            time.sleep(0.01)
    assert len(ran) == 2 and ran[0][0] == ran[1][0]  # one thread ran both
    assert ran[1][1] is None  # the first check's context did not reach the second
    for _ in range(300):  # idle past SPARE_IDLE, the thread ends
        if not pool._spares:
            break
        time.sleep(0.01)
    assert not pool._spares


def test_a_plain_success_goes_out_with_its_last_lines_and_writes_the_job_whole(
    redis_url: str,
    redis_client: redis.Redis,
    smtp_target: Callable[..., SMTPTarget],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real job against a real server: RQ's end of a check without a
    callback is written in the publisher's transaction with the check's last
    lines, and writes the whole job hash, so a job Redis lost while it ran
    comes back whole without a lost-job HEXISTS before the end."""
    target = smtp_target()
    settings = Settings(
        redis_url=redis_url,
        secret_key="test-secret",
        api_keys=API_KEYS,
        allow_networks=(ip_network("127.0.0.0/8"),),
        allowed_ports=frozenset({target.port}),
        helo_name="checker.test",
    )
    monkeypatch.setattr(workers.job, "_worker_settings", settings)
    app = create_app(settings)
    try:
        body = {"host": "127.0.0.1", "port": target.port, "tls": "none", "stop_after": "ehlo"}
        lost, kept = submit(app.test_client(), body), submit(app.test_client(), body)
    finally:
        app.extensions["smtpcheck"].close()
    commit = events.HeldEnd.commit
    batches: list[list[str]] = []

    def losing(held: events.HeldEnd, commands: Any) -> None:
        assert held.events is not None
        batches.append([str(args[0]) for args in commands])
        if held.events.key.endswith(lost):  # Redis lost this one's job hash mid-check
            redis_client.delete(f"rq:job:{lost}")
        commit(held, commands)

    monkeypatch.setattr(events.HeldEnd, "commit", losing)
    redis_client.config_resetstat()
    worker(redis_client, job_monitoring_interval=60).work(burst=True, logging_level="WARNING")

    assert len(batches) == 2  # each check's end went out with its lines
    assert redis_client.info("commandstats").get("cmdstat_hexists", {}).get("calls", 0) == 0
    for check_id in (lost, kept):
        job = Job.fetch(check_id, connection=redis_client, serializer=JSONSerializer)
        assert job.get_status() == "finished"
        result = job.return_value()
        assert isinstance(result, dict) and result["outcome"] == "ok", result
        assert job.meta["owner"] and job.kwargs["request"]["port"] == target.port  # whole
        assert 0 < redis_client.ttl(job.key) <= settings.result_ttl
        lines = redis_client.xrange(EVENTS_KEY_PREFIX + check_id)
        assert len(lines) == len(result["transcript"]) > 0
        assert 0 < redis_client.ttl(EVENTS_KEY_PREFIX + check_id) <= settings.result_ttl
    assert redis_client.zcard("rq:wip:vantage:default") == 0
    assert not redis_client.keys("rq:execution:*")
    finished = FinishedJobRegistry("vantage:default", connection=redis_client).get_job_ids()
    assert set(finished) == {lost, kept}


def test_free_slots_take_several_checks_in_one_round_trip_and_a_stop_gives_them_back(
    redis_client: redis.Redis,
) -> None:
    """While slots are free the main thread takes up to TAKE_AT_ONCE checks
    with their job hashes in one round trip (each moved to RQ's intermediate
    list, as RQ's dequeue moves it); those not started go back in order."""
    queue = Queue("vantage:default", connection=redis_client, serializer=JSONSerializer)
    ids = [queue.enqueue(jobs.NAP, kwargs={"request": {}}).id for _ in range(5)]
    redis_client.delete(f"rq:job:{ids[1]}")  # gone meanwhile: passed over, as RQ does
    pool = worker(redis_client, concurrency=3)
    pool._ordered_queues = pool.queues
    redis_client.script_flush()  # as on a fresh Redis: the first EVALSHA loads it (EVAL)
    redis_client.config_resetstat()

    first = pool._dequeue(None)

    assert first is not None and first[0].id == ids[0]
    assert first[0].kwargs == {"request": {}} and first[0].func_name == jobs.NAP
    assert [job.id for job, _ in pool._taken] == [ids[2]]  # three slots free: three taken
    stats = redis_client.info("commandstats")
    sent = {name: entry["calls"] for name, entry in stats.items() if name not in UNCOUNTED}
    # The script's own commands are counted too (with the taken list's RPUSH and EXPIRE).
    assert sent == {"cmdstat_evalsha": 1, "cmdstat_eval": 1, "cmdstat_lmove": 3,
                    "cmdstat_hgetall": 3, "cmdstat_rpush": 1,
                    "cmdstat_expire": 1}, sent  # fmt: skip
    assert redis_client.lrange(queue.intermediate_queue_key, 0, -1) == [i.encode() for i in ids[:3]]
    pool._taken.appendleft(first)
    pool._give_back_taken()
    assert redis_client.lrange(queue.key, 0, -1) == [ids[i].encode() for i in (0, 2, 3, 4)]
    assert redis_client.lrange(queue.intermediate_queue_key, 0, -1) == [ids[1].encode()]
    # Each listed as taken until it went back; the one whose hash was gone never was.
    assert not redis_client.exists(pool.taken_key)


def test_checks_a_dead_process_took_but_never_started_go_back_to_the_head_of_the_queue(
    settings: Settings, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The take lists every check it takes in the process's taken list (a start
    or a put-back removes it): when the process dies, its pool puts those not
    started back at the head of the queue, in order, still 'queued', and fails
    the one that had started, as RQ's abandoned-job path does."""
    queue = Queue("vantage:default", connection=redis_client, serializer=JSONSerializer)
    ids = [queue.enqueue(jobs.NAP, kwargs={"request": {}}).id for _ in range(5)]
    doomed = worker(redis_client, concurrency=4)
    doomed._ordered_queues = doomed.queues
    first = doomed._dequeue(None)
    assert first is not None and [job.id for job, _ in doomed._taken] == ids[1:4]
    doomed._begin(*first)  # the first one starts (its start is in Redis below) ...
    assert events.written_so_far(redis_client)
    over, over_queue = doomed._taken.pop()  # ... the last goes back (over its key's share)
    doomed._put_back(over, over_queue, front=False)
    assert redis_client.lrange(doomed.taken_key, 0, -1) == [i.encode() for i in ids[1:3]]

    # ... and the process dies there: its pool sees it.
    Pool(settings, vantage="default", processes=1)._abandon(doomed.name, checks=True)

    assert redis_client.lrange(queue.key, 0, -1) == [ids[i].encode() for i in (1, 2, 4, 3)]
    assert redis_client.lrange(queue.intermediate_queue_key, 0, -1) == []
    assert not redis_client.exists(doomed.taken_key)
    statuses = [
        Job.fetch(i, connection=redis_client, serializer=JSONSerializer).get_status() for i in ids
    ]
    assert statuses == ["failed", "queued", "queued", "queued", "queued"]
    said = [record.getMessage() for record in caplog.records]
    assert any("2 check(s) taken but not started: put back" in line for line in said), said
    assert any("died during 1 check(s): failed" in line for line in said), said


def test_a_wait_on_the_queue_brings_the_check_and_its_job_hash_in_one_round_trip(
    redis_client: redis.Redis,
) -> None:
    """The blocking dequeue is RQ's BLMOVE into the intermediate list with the
    take script right behind it: the check comes with its job hash, and with
    up to the free slots' worth of more checks, in one round trip; a wait
    that times out takes nothing."""
    queue = Queue("vantage:default", connection=redis_client, serializer=JSONSerializer)
    pool = worker(redis_client, concurrency=3)
    pool._ordered_queues = pool.queues

    def sent() -> dict[str, int]:
        stats = redis_client.info("commandstats")
        redis_client.config_resetstat()
        return {name: entry["calls"] for name, entry in stats.items() if name not in UNCOUNTED}

    redis_client.config_resetstat()
    assert pool._dequeue(1) is None  # an empty queue: the wait times out, nothing taken
    assert sent() == {"cmdstat_blmove": 1, "cmdstat_eval": 1, "cmdstat_lindex": 1,
                      "cmdstat_lmove": 1}  # fmt: skip
    ids = [queue.enqueue(jobs.NAP, kwargs={"request": {}}).id for _ in range(4)]
    redis_client.config_resetstat()
    first = pool._dequeue(1)

    assert first is not None and first[0].id == ids[0]
    assert first[0].kwargs == {"request": {}} and first[0].func_name == jobs.NAP
    assert [job.id for job, _ in pool._taken] == ids[1:3]  # three slots free: three taken
    # One BLMOVE and one script (its own commands are counted too), nothing else.
    assert sent() == {"cmdstat_blmove": 1, "cmdstat_eval": 1, "cmdstat_lindex": 1,
                      "cmdstat_lmove": 2, "cmdstat_hgetall": 3, "cmdstat_rpush": 1,
                      "cmdstat_expire": 1}  # fmt: skip
    assert redis_client.lrange(queue.intermediate_queue_key, 0, -1) == [i.encode() for i in ids[:3]]
    assert redis_client.lrange(queue.key, 0, -1) == [ids[3].encode()]


def test_a_move_between_the_wait_and_its_script_still_brings_the_waited_for_check(
    redis_client: redis.Redis,
) -> None:
    """Another worker's move into the intermediate list can land between the
    BLMOVE and the script behind it; the worker then fetches its check's hash
    apart (as RQ's dequeue does) and leaves the other worker's check alone."""
    queue = Queue("vantage:default", connection=redis_client, serializer=JSONSerializer)
    pool = worker(redis_client, concurrency=1)
    pool._ordered_queues = pool.queues
    job = queue.enqueue(jobs.NAP, kwargs={"request": {}})
    redis_client.lrem(queue.key, 1, job.id)  # pushed again below, while the worker waits
    got: list[tuple[Job, Queue] | None] = []
    waiting = threading.Thread(target=lambda: got.append(pool._dequeue(5)))
    waiting.start()
    deadline = time.monotonic() + 5
    while int(redis_client.info("clients")["blocked_clients"]) < 1:
        assert time.monotonic() < deadline, "the worker never waited on the queue"
        time.sleep(0.005)
    with redis_client.pipeline(transaction=False) as pipe:
        # Redis serves the waiting BLMOVE right after the push and runs the
        # script behind it later: this client's next command comes between.
        pipe.rpush(queue.key, job.id)
        pipe.rpush(queue.intermediate_queue_key, "another-workers-check")
        pipe.execute()
    waiting.join(10)

    assert got and got[0] is not None
    assert got[0][0].id == job.id and got[0][0].kwargs == {"request": {}}
    assert not pool._taken
    assert redis_client.lrange(queue.intermediate_queue_key, 0, -1) == [
        job.id.encode(),
        b"another-workers-check",
    ]
    # Listed as taken: its own check, not the other worker's.
    assert redis_client.lrange(pool.taken_key, 0, -1) == [job.id.encode()]


def test_a_check_failing_at_once_is_stored_after_its_start_not_before(
    redis_client: redis.Redis,
) -> None:
    """A check's start goes out with the publisher's next round trip; an end
    written straight to Redis (a failure) waits for it, so the start never
    lands after the end and leaves the check 'started'."""
    queue = Queue("vantage:default", connection=redis_client, serializer=JSONSerializer)
    ids = [queue.enqueue(jobs.CRASH, kwargs={"request": {}}).id for _ in range(5)]
    worker(redis_client, concurrency=5).work(burst=True, logging_level="WARNING")
    for check_id in ids:
        job = Job.fetch(check_id, connection=redis_client, serializer=JSONSerializer)
        assert job.get_status() == "failed"
    assert redis_client.zcard("rq:wip:vantage:default") == 0
    assert not redis_client.keys("rq:execution:*")


def test_a_check_started_lives_a_heartbeat_ttl_not_its_job_timeout(
    client: FlaskClient, store: JobStore, redis_client: redis.Redis
) -> None:
    """A check's first started-registry entry expires ``HEARTBEAT_TTL`` after
    its start (the heartbeat thread renews it every few seconds), so a check
    whose whole pool is lost before its first beat reads abandoned within
    seconds, not after its job timeout plus a minute."""
    store.job_function = jobs.NAP
    check_id = submit(client, {"host": "mx.example.com", "timeouts": {"connect": 1.5}})
    job = Job.fetch(check_id, connection=redis_client, serializer=JSONSerializer)
    assert job.timeout is not None and job.timeout + 60 > 2 * HEARTBEAT_TTL
    pool = worker(redis_client, concurrency=2)
    seen: list[tuple[float, int]] = []  # (seconds the entry has left, the worker's TTL)
    done = threading.Event()

    def watch() -> None:
        while not done.is_set() and not seen:
            entries = redis_client.zrange("rq:wip:vantage:default", 0, -1, withscores=True)
            if entries:
                seen.append((entries[0][1] - time.time(), int(redis_client.ttl(pool.key))))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        pool.work(burst=True, logging_level="WARNING")
    finally:
        done.set()
        watcher.join()

    ((left, worker_ttl),) = seen
    assert 0 < left <= HEARTBEAT_TTL + 1
    assert 0 < worker_ttl <= HEARTBEAT_TTL + 1
    assert client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()["status"] == "finished"
