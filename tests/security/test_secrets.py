"""An AUTH password never rests in Redis or in a log line, in clear or base64,
at any point of a check's life: queued, running, retried, finished, failed,
or with its worker killed mid-check. The sealed copy the worker needs is
dropped from the job once no attempt can need it.

The first test drives the API and a real RQ worker in this process, so it can
look at Redis between each step of a greylisted, retried check. The second
runs the whole service as it is deployed (gunicorn and ``smtpcheck worker``
processes, at DEBUG log level) and scans Redis and every log line they wrote.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import signal
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus
from rq.registry import ScheduledJobRegistry
from rq.serializers import JSONSerializer

from smtpcheck.embedded_redis import EmbeddedRedis
from tests.dns_server import DNSServer
from tests.e2e.conftest import (
    API_KEY,
    API_KEY_NAME,
    RUN_MARKER,
    RUN_TOKEN,
    SECRET_KEY,
    SMTPCHECK,
    Proc,
    Service,
    children_of,
    processes_mentioning,
    wait_gone,
)
from tests.security.conftest import ALICE, SECRET
from tests.security.leaks import FERNET_PREFIX, Needle, find, needles, redis_values
from tests.smtp_servers import LOCAL_DOMAIN, USERS, ScriptedServer, SMTPTarget, TargetHandler

USER, PASSWORD = next(iter(USERS.items()))  # alice / s3cret-Pa55, what the targets accept


def stored_kwargs(connection: redis.Redis, check_id: str) -> dict[str, Any]:
    raw = connection.hget(f"rq:job:{check_id}", "data")
    assert raw is not None
    _func, _instance, _args, kwargs = json.loads(zlib.decompress(raw))
    return dict(kwargs)


def assert_no_secret(connection: redis.Redis, wanted: list[Needle], when: str) -> None:
    hits = find(redis_values(connection), wanted)
    assert hits == [], f"{when}: {hits}"


def test_the_scan_would_find_each_form() -> None:
    """The scanner itself: a leak in any of these shapes is caught."""
    wanted = needles(USER, PASSWORD)
    blob = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
    for planted in (
        PASSWORD.encode(),
        base64.b64encode(PASSWORD.encode()),
        zlib.compress(json.dumps({"x": PASSWORD}).encode()),
        b"AUTH PLAIN " + blob,
        base64.b64encode(f"{USER}\0{USER}\0{PASSWORD}".encode()),  # with an authzid
        base64.b64encode(b"xy" + PASSWORD.encode() + b"z"),
    ):
        assert find([("planted", planted)], wanted), planted


# ---------------------------------------------------------------------------
# in process: queued, retried, finished
# ---------------------------------------------------------------------------


def test_the_seal_is_kept_for_a_retry_and_dropped_after_the_last_use(
    smtp_target: Callable[..., SMTPTarget],
    make_app: Callable[..., Flask],
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    target = smtp_target(handler=TargetHandler(greylist=True))
    for name, value in {
        "SMTPCHECK_SECRET_KEY": SECRET,
        "SMTPCHECK_ALLOW_NETWORKS": "127.0.0.0/8",
        "SMTPCHECK_ALLOWED_PORTS": str(target.port),
        "SMTPCHECK_HELO_NAME": "checker.test",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SMTPCHECK_DNS_SERVERS", raising=False)
    app = make_app(
        allow_networks=(ipaddress.ip_network("127.0.0.0/8"),),
        allowed_ports=frozenset({target.port}),
    )
    client = app.test_client()
    wanted = needles(USER, PASSWORD)
    queue = Queue("vantage:default", connection=redis_client, serializer=JSONSerializer)

    def work() -> None:
        SimpleWorker([queue], connection=redis_client, serializer=JSONSerializer).work(
            burst=True, logging_level="WARNING"
        )

    created = client.post(
        "/v1/checks",
        json={
            "host": "127.0.0.1",
            "port": target.port,
            "tls": "none",
            "auth": {"username": USER, "password": PASSWORD, "mechanism": "LOGIN"},
            "mail_from": f"{USER}@{LOCAL_DOMAIN}",
            "rcpt_to": [f"bob@{LOCAL_DOMAIN}"],
            "retry_temporary": True,
            "retry": {"attempts": 2, "delay": 1},
        },
        headers=ALICE,
    )
    assert created.status_code == 202, created.get_json()
    check_id = created.get_json()["id"]

    # queued: the password travels sealed, nowhere in clear
    assert stored_kwargs(redis_client, check_id)["sealed_password"].startswith("gAAAAA")
    assert stored_kwargs(redis_client, check_id)["request"]["auth"]["password"] == "****"
    assert_no_secret(redis_client, wanted, "queued")

    # attempt 1 is greylisted: the check waits for its retry, the seal with it
    work()
    job = Job.fetch(check_id, connection=redis_client, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.SCHEDULED
    assert stored_kwargs(redis_client, check_id)["sealed_password"] is not None
    assert_no_secret(redis_client, wanted, "waiting for a retry")

    # attempt 2, the last: the seal is gone, and RQ's own save did not bring it back
    ScheduledJobRegistry(queue=queue).remove(job)  # what RQ's scheduler does when it is due
    queue.enqueue_job(job)
    work()
    body = client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()
    assert body["status"] == "finished", body
    assert body["result"]["outcome"] == "ok", body["result"]["summary"]
    assert len(body["result"]["attempts"]) == 2
    assert stored_kwargs(redis_client, check_id)["sealed_password"] is None
    assert_no_secret(redis_client, wanted, "finished")
    assert find(redis_values(redis_client), [Needle("Fernet token", FERNET_PREFIX)]) == []


# ---------------------------------------------------------------------------
# the whole service: gunicorn, smtpcheck worker, logs, a killed worker
# ---------------------------------------------------------------------------


class StallAfterAuth:
    """Offers AUTH, reads the client's AUTH line, then never answers."""

    def __init__(self) -> None:
        self.stalled = threading.Event()
        self.server = ScriptedServer(self.script).start()

    def script(self, sock: socket.socket) -> None:
        sock.sendall(b"220 stall.local.test ESMTP\r\n")
        buffered = b""
        while not self.server.stopping:
            try:
                sock.settimeout(0.2)
                chunk = sock.recv(4096)
            except TimeoutError:
                continue
            if not chunk:
                return
            buffered += chunk
            while b"\r\n" in buffered:
                line, buffered = buffered.split(b"\r\n", 1)
                if line.upper().startswith(b"EHLO"):
                    sock.sendall(b"250-stall.local.test\r\n250 AUTH PLAIN LOGIN\r\n")
                elif line.upper().startswith(b"AUTH"):
                    self.stalled.set()  # and no reply, ever


@pytest.fixture
def stall() -> Iterator[StallAfterAuth]:
    server = StallAfterAuth()
    yield server
    server.server.stop()


@pytest.fixture
def plain_target() -> Iterator[SMTPTarget]:
    target = SMTPTarget(tls="none").start()
    yield target
    target.stop()


@pytest.fixture
def deployed(
    redis_server: EmbeddedRedis,
    redis_url: str,
    plain_target: SMTPTarget,
    stall: StallAfterAuth,
    dns_server: Callable[..., DNSServer],
    tmp_path: Path,
) -> Iterator[Service]:
    """gunicorn and ``smtpcheck worker --processes 2`` at DEBUG, logs to files."""
    dns = dns_server({})  # PTR lookups of 127.0.0.1 get NXDOMAIN at once
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMTPCHECK_", "REDIS_URL"))}
    env.update(
        {
            "SMTPCHECK_E2E_RUN": RUN_TOKEN,  # the e2e suite's marker for leftover processes
            "REDIS_URL": redis_url,
            "SMTPCHECK_SECRET_KEY": SECRET_KEY,
            "SMTPCHECK_API_KEYS": f"{API_KEY_NAME}:{API_KEY}",
            "SMTPCHECK_ALLOW_NETWORKS": "127.0.0.0/8",
            "SMTPCHECK_ALLOWED_PORTS": f"{plain_target.port},{stall.server.port}",
            "SMTPCHECK_DNS_SERVERS": f"{dns.host}:{dns.port}",
            "SMTPCHECK_HELO_NAME": "checker.local.test",
            "SMTPCHECK_DATA_DIR": str(tmp_path / "data"),
            "SMTPCHECK_LOG_LEVEL": "DEBUG",
            "PYTHONUNBUFFERED": "1",
            # Every target is 127.0.0.1, and one key's stalled check would
            # hold its share of the default two slots: not what this is about.
            "SMTPCHECK_MAX_CONCURRENT_PER_TARGET": "100",
        }
    )
    service = Service(tmp_path, env, redis_url)
    try:
        service.start_api(gunicorn_workers=2).start_workers(2)
        yield service
    finally:
        service.stop()
        # A scheduler whose worker was SIGKILLed stops at its next tick (1 s).
        left = wait_gone(processes_mentioning(RUN_MARKER), 5)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert not left, f"processes left running: {left}"


def worker_pid(connection: redis.Redis, check_id: str, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        name = connection.hget(f"rq:job:{check_id}", "worker_name")
        if name:
            pid = connection.hget(f"rq:worker:{name.decode()}", "pid")
            if pid:
                return int(pid)
        time.sleep(0.05)
    raise AssertionError(f"no worker took check {check_id}")


@pytest.mark.e2e
def test_no_password_in_redis_or_logs_after_checks_of_every_fate(
    deployed: Service, plain_target: SMTPTarget, stall: StallAfterAuth, redis_url: str
) -> None:
    client = deployed.client
    connection = redis.Redis.from_url(redis_url)
    wrong = f"wr0ng-{uuid.uuid4().hex[:12]}"
    wanted = needles(USER, PASSWORD) + needles(USER, wrong)
    base = {
        "host": "127.0.0.1",
        "port": plain_target.port,
        "tls": "none",
        "mail_from": f"{USER}@{LOCAL_DOMAIN}",
        "rcpt_to": [f"bob@{LOCAL_DOMAIN}"],
    }

    def with_auth(password: str, mechanism: str, **changes: Any) -> dict[str, Any]:
        auth = {"username": USER, "password": password, "mechanism": mechanism}
        return {**base, "auth": auth, **changes}

    try:
        ok_plain = client.submit(with_auth(PASSWORD, "PLAIN"))
        ok_login = client.submit(with_auth(PASSWORD, "LOGIN"))
        refused = client.submit(with_auth(wrong, "PLAIN"))
        killed = client.submit(
            with_auth(
                PASSWORD, "PLAIN", port=stall.server.port, stop_after="auth", timeouts={"total": 60}
            )
        )
        assert_no_secret(connection, wanted, "just submitted")

        # running, mid-AUTH: the seal is already gone from the job (its last attempt)
        assert stall.stalled.wait(20), deployed.logs()
        # A check's start goes out with its worker's next batch of writes, a
        # few milliseconds after the check began talking to the server.
        deadline = time.monotonic() + 5
        while connection.hget(f"rq:job:{killed}", "status") != b"started":
            assert time.monotonic() < deadline, connection.hget(f"rq:job:{killed}", "status")
            time.sleep(0.01)
        assert stored_kwargs(connection, killed)["sealed_password"] is None
        assert_no_secret(connection, wanted, "running")
        # A worker process runs many checks at once: let the others end before
        # killing the one that holds the stalled check.
        results = {check_id: client.wait(check_id, timeout=30) for check_id in
                   (ok_plain, ok_login, refused)}  # fmt: skip
        os.kill(worker_pid(connection, killed), signal.SIGKILL)
        results[killed] = client.wait(killed, timeout=30)
        assert results[ok_plain]["result"]["outcome"] == "ok", results[ok_plain]
        assert results[ok_login]["result"]["outcome"] == "ok", results[ok_login]
        assert results[refused]["result"]["outcome"] == "auth_failed", results[refused]
        assert results[killed]["status"] == "failed", results[killed]
        assert "stopped before it finished" in results[killed]["error"]

        for check_id in (ok_plain, ok_login, refused, killed):
            assert stored_kwargs(connection, check_id)["sealed_password"] is None
            transcript = client.request("GET", f"/v1/checks/{check_id}/transcript")
            assert find([("transcript", transcript.body)], wanted) == []
        assert_no_secret(connection, wanted, "after every check ended")
        assert find(redis_values(connection), [Needle("Fernet token", FERNET_PREFIX)]) == []
    finally:
        connection.close()
        deployed.stop()

    logs = [(p.name, p.log_path.read_bytes()) for p in (deployed.api, deployed.workers) if p]
    assert all(size > 0 for size in (len(data) for _, data in logs))
    assert b"debug" in b"".join(data for _, data in logs).lower()  # as verbose as they get
    hits = find(logs, [*wanted, Needle("Fernet token", FERNET_PREFIX)])
    assert hits == [], hits


@pytest.mark.e2e
def test_a_killed_work_horse_of_the_forking_class_leaves_no_seal(
    deployed: Service, stall: StallAfterAuth, redis_url: str
) -> None:
    """With --worker-class fork the parent fails a killed horse's check from
    its own stale copy of the job; it must not write the seal back."""
    pool = Proc(
        "workers-fork",
        [*SMTPCHECK, "worker", "--vantage", "forked", "--worker-class", "fork", "--processes", "1"],
        deployed.env,
        deployed.tmp / "workers-fork.log",
    ).start()
    deployed.procs.append(pool)
    connection = redis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 30
        while not connection.scard("rq:workers:vantage:forked"):
            assert pool.alive() and time.monotonic() < deadline, pool.log()
            time.sleep(0.1)
        check_id = deployed.client.submit(
            {
                "host": "127.0.0.1",
                "port": stall.server.port,
                "tls": "none",
                "vantage": "forked",
                "stop_after": "auth",
                "auth": {"username": USER, "password": PASSWORD, "mechanism": "PLAIN"},
                "timeouts": {"total": 10},
            }
        )
        assert stall.stalled.wait(20), pool.log()
        worker = worker_pid(connection, check_id)
        horses = children_of(worker)
        assert horses, "the forking worker has no work horse"
        for horse in horses:
            os.kill(horse, signal.SIGKILL)
        job = deployed.client.wait(check_id, timeout=30)
        assert job["status"] == "failed", job
        assert stored_kwargs(connection, check_id)["sealed_password"] is None
        assert find(redis_values(connection), [Needle("Fernet token", FERNET_PREFIX)]) == []
        assert_no_secret(connection, needles(USER, PASSWORD), "after the horse was killed")
    finally:
        connection.close()
