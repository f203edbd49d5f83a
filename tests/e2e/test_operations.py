"""Running it for real: metrics across gunicorn processes, JSON logs that
follow a request into the worker, greylisting retries through RQ's
scheduler, a check fanned out to every vantage, and graceful shutdown."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from smtpcheck.embedded_redis import EmbeddedRedis
from tests.e2e.conftest import (
    SMTPCHECK,
    Client,
    Proc,
    Service,
    base_env,
    children_of,
    worker_count,
)
from tests.prometheus_text import sample
from tests.smtp_servers import LOCAL_DOMAIN, USERS, Certificates, SMTPTarget, TargetHandler

pytestmark = pytest.mark.e2e

BOB = f"bob@{LOCAL_DOMAIN}"


class Ops:
    def __init__(self, service: Service, plain: SMTPTarget, greylist: SMTPTarget, eu: Proc):
        self.service = service
        self.plain = plain
        self.greylist = greylist
        self.eu = eu

    @property
    def client(self) -> Client:
        return self.service.client


@pytest.fixture(scope="module")
def ops(
    redis_server: EmbeddedRedis,
    e2e_certificates: Certificates,
    e2e_dns,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Ops]:
    """gunicorn (2 processes), a default worker and an 'eu' worker, two targets."""
    flush = redis.Redis.from_url(redis_server.url)
    flush.flushall()
    flush.close()
    plain = SMTPTarget(e2e_certificates, tls="none").start()
    greylist = SMTPTarget(e2e_certificates, tls="none", handler=TargetHandler(greylist=True))
    greylist.start()
    tmp = tmp_path_factory.mktemp("ops")
    env = base_env(tmp, redis_server.url, [plain.port, greylist.port], e2e_dns)
    service = Service(tmp, env, redis_server.url)
    eu = Proc(
        "workers-eu",
        [*SMTPCHECK, "worker", "--vantage", "eu", "--processes", "1"],
        env,
        tmp / "workers-eu.log",
    )
    try:
        service.start(gunicorn_workers=2, workers=1)
        eu.start()
        service.procs.append(eu)
        deadline = time.monotonic() + 30
        while worker_count(redis_server.url, "eu") < 1:
            assert eu.alive() and time.monotonic() < deadline, eu.log()
            time.sleep(0.1)
        yield Ops(service, plain, greylist, eu)
    except BaseException:
        print(service.logs())
        raise
    finally:
        service.stop()
        greylist.stop()
        plain.stop()


def json_lines(path: Path) -> list[dict]:
    entries = []
    for line in path.read_text().splitlines():
        if line.strip():
            entries.append(json.loads(line))  # every line is one JSON object
    return entries


def test_metrics_add_up_across_gunicorn_processes(ops: Ops) -> None:
    client = ops.client
    # Three rounds of four, each waited for: never more in flight than the
    # per-key cap (10) allows, however slowly the one worker gets through them.
    for _ in range(3):
        ids = [client.submit({"host": "127.0.0.1", "port": ops.plain.port, "stop_after": "banner"})
               for _ in range(4)]  # fmt: skip
        for check_id in ids:
            assert client.wait(check_id)["status"] == "finished"
    # Each scrape lands on either gunicorn process; each must tell the same story.
    for _ in range(4):
        text = client.request("GET", "/metrics").text
        posts = sample(
            text, "smtpcheck_http_requests_total", route="/v1/checks", method="POST", status="202"
        )
        assert posts == 12, text
        assert (
            sample(text, "smtpcheck_checks_finished_total", vantage="default", outcome="ok") >= 12
        )
        assert sample(text, "smtpcheck_check_duration_seconds_count", vantage="default") >= 12
        assert sample(text, "smtpcheck_workers", vantage="eu") == 1


def test_logs_are_json_and_follow_the_request_into_the_worker(ops: Ops) -> None:
    client = ops.client
    reply = client.request(
        "POST",
        "/v1/checks",
        {"host": "127.0.0.1", "port": ops.plain.port, "stop_after": "ehlo"},
        headers={"X-Request-ID": "support-ticket-4711"},
    )
    assert reply.status == 202
    assert reply.headers["x-request-id"] == "support-ticket-4711"
    check_id = reply.json()["id"]
    assert client.wait(check_id)["status"] == "finished"
    time.sleep(0.3)  # let the worker flush its line
    api = json_lines(ops.service.tmp / "api.log")
    access = [e for e in api if e.get("request_id") == "support-ticket-4711"]
    assert access and access[0]["status"] == 202 and access[0]["api_key"] == "e2e"
    worker = json_lines(ops.service.tmp / "workers.log")
    done = [e for e in worker if e.get("check_id") == check_id and e.get("outcome")]
    assert done, worker[-5:]
    assert done[-1]["request_id"] == "support-ticket-4711"
    assert done[-1]["vantage"] == "default"
    assert done[-1]["host"] == "127.0.0.1"
    assert done[-1]["outcome"] == "ok"


def test_greylisted_check_is_retried_by_the_scheduler(ops: Ops) -> None:
    client = ops.client
    check_id = client.submit(
        {
            "host": "127.0.0.1",
            "port": ops.greylist.port,
            "tls": "none",
            "mail_from": "a@example.org",
            "rcpt_to": [BOB],
            "retry_temporary": True,
            "retry": {"attempts": 3, "delay": 2},
            # AUTH too: the sealed password must survive the retry, and no log may show it
            "auth": {"username": "alice", "password": USERS["alice"], "mechanism": "PLAIN"},
        }
    )
    seen = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = client.request("GET", f"/v1/checks/{check_id}").json()
        seen.add(job["status"])
        if job["status"] == "retrying":
            assert job["attempts"][0]["outcome"] == "temporary_failure"
            assert job["next_attempt_at"].endswith("Z")
        if job["status"] in ("finished", "failed"):
            break
        time.sleep(0.1)
    assert job["status"] == "finished", job
    assert "retrying" in seen
    result = job["result"]
    assert result["ok"] is True, result["summary"]
    assert [a["outcome"] for a in result["attempts"]] == ["temporary_failure", "ok"]
    assert result["auth"]["accepted"] is True  # the second attempt could still unseal it
    # RQ logs a job that raises (the retry request) with its arguments as extras:
    # the sealed password must not reach a log line, nor the password itself.
    logs = "".join(path.read_text() for path in ops.service.tmp.glob("*.log"))
    assert "gAAAAA" not in logs
    assert USERS["alice"] not in logs
    # asking for the next attempt is routine: an info line, not an error with a traceback
    worker = json_lines(ops.service.tmp / "workers.log")
    asked = [e for e in worker if "ended in temporary_failure" in e["message"]]
    assert asked and asked[0]["level"] == "info", asked
    assert not [e for e in worker if e["level"] == "error"], worker


def test_vantage_all_puts_every_vantage_side_by_side(ops: Ops) -> None:
    client = ops.client
    reply = client.request(
        "POST",
        "/v1/checks",
        {"host": "127.0.0.1", "port": ops.plain.port, "stop_after": "banner", "vantage": "all"},
    )
    assert reply.status == 202, reply.text
    assert reply.json()["vantage"] == "all"
    job = client.wait(reply.json()["id"])
    assert job["status"] == "finished", job
    rows = {row["vantage"]: row for row in job["result"]["vantages"]}
    assert set(rows) == {"default", "eu"}
    assert all(row["outcome"] == "ok" for row in rows.values())
    assert rows["eu"]["worker"].startswith("eu.")
    assert job["result"]["summary"].startswith("Every vantage")
    text = client.request("GET", f"/v1/checks/{job['id']}/transcript").text
    assert "=== vantage default" in text and "=== vantage eu" in text
    assert client.request("DELETE", f"/v1/checks/{job['id']}").status == 204
    assert client.request("GET", f"/v1/checks/{job['id']}").status == 404


def test_a_worker_started_with_vantage_says_so(ops: Ops) -> None:
    """``smtpcheck worker --vantage eu`` (no SMTPCHECK_VANTAGE): result, logs and metrics say eu."""
    client = ops.client
    check = {"host": "127.0.0.1", "port": ops.plain.port, "stop_after": "banner", "vantage": "eu"}
    job = client.wait(client.submit(check))
    assert job["status"] == "finished", job
    assert job["result"]["vantage"] == "eu"
    time.sleep(0.3)  # let the worker flush its line
    lines = [e for e in json_lines(ops.eu.log_path) if e.get("check_id") == job["id"]]
    assert lines and {e.get("vantage") for e in lines} == {"eu"}, lines
    text = client.request("GET", "/metrics").text
    assert sample(text, "smtpcheck_checks_finished_total", vantage="eu", outcome="ok") >= 1


def test_unknown_vantage_is_422(ops: Ops) -> None:
    reply = ops.client.request("POST", "/v1/checks", {"host": "mx.example.com", "vantage": "mars"})
    assert reply.status == 422
    assert "vantage" in reply.json()["errors"]


def test_api_finishes_requests_in_flight_on_sigterm(
    redis_server: EmbeddedRedis, e2e_dns, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A long poll that is waiting when SIGTERM arrives still gets its answer."""
    tmp = tmp_path_factory.mktemp("graceful-api")
    service = Service(tmp, base_env(tmp, redis_server.url, [25], e2e_dns), redis_server.url)
    try:
        service.start_api(gunicorn_workers=1)
        client = service.client
        check_id = client.submit({"host": "mx.example.com"})  # no worker: stays queued
        answers: list[int] = []

        def long_poll() -> None:
            answers.append(client.request("GET", f"/v1/checks/{check_id}?wait=3").status)

        poller = threading.Thread(target=long_poll)
        poller.start()
        time.sleep(0.5)
        assert service.api is not None
        service.api.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        poller.join(15)
        assert answers == [200]
        assert service.api.process.wait(15) == 0  # type: ignore[union-attr]
    finally:
        service.stop()


def test_a_killed_worker_takes_its_scheduler_along(ops: Ops, redis_server: EmbeddedRedis) -> None:
    """RQ's scheduler runs in a child of one worker; a SIGKILLed worker must
    not leave it running unsupervised (the pool starts a fresh worker)."""
    connection = redis.Redis.from_url(redis_server.url)
    try:
        names = [m.decode().removeprefix("rq:worker:") for m in
                 connection.smembers("rq:workers:vantage:eu")]  # fmt: skip
        pid = int(connection.hget(f"rq:worker:{names[0]}", "pid") or 0)
        deadline = time.monotonic() + 10
        while not (schedulers := children_of(pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert schedulers, "the eu worker runs no scheduler"
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while any(Path(f"/proc/{s}").exists() for s in schedulers):
            assert time.monotonic() < deadline, f"scheduler {schedulers} outlived its worker"
            time.sleep(0.1)
        deadline = time.monotonic() + 15
        while worker_count(redis_server.url, "eu") < 1:  # the pool replaced it
            assert time.monotonic() < deadline, ops.eu.log()
            time.sleep(0.1)
    finally:
        connection.close()
