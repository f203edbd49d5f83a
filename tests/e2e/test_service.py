"""A user's view of the whole service: HTTP in, SMTP out, transcript back."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import redis
from rq import Queue, Worker
from rq.serializers import JSONSerializer

from tests.e2e.conftest import API_KEY, Service, Targets, worker_count
from tests.smtp_servers import LOCAL_DOMAIN, USERS

pytestmark = pytest.mark.e2e

PASSWORD = USERS["alice"]


def test_full_dialogue_over_http(service: Service, targets: Targets) -> None:
    """STARTTLS, AUTH, a message: what a support engineer would run with swaks."""
    client = service.client
    check_id = client.submit(
        {
            "host": "127.0.0.1",
            "port": targets.starttls.port,
            "tls": "starttls",
            "auth": {"username": "alice", "password": PASSWORD},
            "mail_from": "alice@example.org",
            "rcpt_to": [f"bob@{LOCAL_DOMAIN}"],
            "message": {"subject": "smtpcheck e2e", "body": "hello from the e2e test"},
        }
    )
    job = client.wait(check_id, timeout=60)
    assert job["status"] == "finished", (job, service.logs())
    result = job["result"]
    assert result["ok"] is True, result
    assert result["outcome"] == "ok"
    assert result["banner"]["code"] == 220
    assert "STARTTLS" in result["ehlo"]["before_tls"]["keywords"]
    assert result["tls"]["established"] is True
    assert result["auth"]["accepted"] is True
    assert result["data"]["accepted"] is True

    transcript = client.request("GET", f"/v1/checks/{check_id}/transcript")
    assert transcript.status == 200
    assert transcript.content_type == "text/plain"
    text = transcript.text
    assert "<- 220 " in text
    assert "-> STARTTLS" in text
    assert "~> AUTH" in text
    assert "****" in text
    assert PASSWORD not in text
    assert "PASS" in text

    assert PASSWORD not in transcript.text
    assert len(targets.starttls.received) == 1
    received = targets.starttls.received[0]
    assert received.rcpt_tos == [f"bob@{LOCAL_DOMAIN}"]
    assert b"Subject: smtpcheck e2e" in received.data


def test_port_open_banner_only(service: Service, targets: Targets) -> None:
    client = service.client
    check_id = client.submit(
        {"host": "127.0.0.1", "port": targets.plain.port, "stop_after": "banner"}
    )
    job = client.wait(check_id)
    assert job["status"] == "finished"
    result = job["result"]
    assert result["ok"] is True
    assert result["stage"] == "banner"
    assert result["banner"]["code"] == 220
    text = client.request("GET", f"/v1/checks/{check_id}/transcript").text
    assert "=== " in text and "<- 220" in text
    assert "-> EHLO" not in text


def test_rejected_recipient_is_a_result_not_an_error(service: Service, targets: Targets) -> None:
    client = service.client
    check_id = client.submit(
        {
            "host": "127.0.0.1",
            "port": targets.plain.port,
            "tls": "none",
            "mail_from": "a@example.org",
            "rcpt_to": [f"nobody@{LOCAL_DOMAIN}"],
        }
    )
    job = client.wait(check_id)
    assert job["status"] == "finished"
    assert job["result"]["ok"] is False
    assert job["result"]["outcome"] == "recipient_rejected"


def test_worker_killed_mid_check_leaves_job_failed(service: Service, targets: Targets) -> None:
    """SIGKILL the worker process running a check: the job ends failed, quickly."""
    client = service.client
    before = len(targets.stall_connections)
    check_id = client.submit(
        {
            "host": "127.0.0.1",
            "port": targets.stall.port,
            "tls": "none",
            "timeouts": {"connect": 5, "command": 120, "total": 240},
        }
    )
    # Wait until a worker is inside the dialogue (the server has greeted it).
    deadline = time.monotonic() + 20
    while len(targets.stall_connections) == before:
        assert time.monotonic() < deadline, service.logs()
        time.sleep(0.05)
    connection = redis.Redis.from_url(service.redis_url)
    try:
        queue = Queue("vantage:default", connection=connection, serializer=JSONSerializer)
        busy = []
        while not busy:
            assert time.monotonic() < deadline, service.logs()
            busy = [w for w in Worker.all(queue=queue) if w.get_current_executions(refresh=True)]
            time.sleep(0.05)
        assert client.request("GET", f"/v1/checks/{check_id}").json()["status"] == "running"

        killed_at = time.monotonic()
        assert busy[0].pid is not None
        os.kill(busy[0].pid, signal.SIGKILL)
        status = "running"
        while status == "running" and time.monotonic() - killed_at < 30:
            status = client.request("GET", f"/v1/checks/{check_id}").json()["status"]
            time.sleep(0.1)
        elapsed = time.monotonic() - killed_at
        assert status == "failed", (status, elapsed, service.logs())
        assert elapsed < 30

        # The pool replaces the dead worker, and the service keeps working.
        deadline = time.monotonic() + 20
        while worker_count(service.redis_url) != 2:
            assert time.monotonic() < deadline, service.logs()
            time.sleep(0.1)
    finally:
        connection.close()
    assert service.workers is not None and service.workers.alive()
    check_id = client.submit(
        {"host": "127.0.0.1", "port": targets.plain.port, "stop_after": "banner"}
    )
    assert client.wait(check_id)["result"]["ok"] is True


def test_workers_stop_gracefully_on_sigterm(service: Service, targets: Targets) -> None:
    """SIGTERM to a worker pool: it finishes, unregisters its workers, and exits 0."""
    extra = service.start_workers(1).workers
    assert extra is not None
    deadline = time.monotonic() + 20
    while worker_count(service.redis_url) < 3:
        assert time.monotonic() < deadline, extra.log()
        time.sleep(0.1)
    assert extra.stop(signal.SIGTERM, timeout=20) == 0, extra.log()
    deadline = time.monotonic() + 10
    while worker_count(service.redis_url) != 2:
        assert time.monotonic() < deadline, extra.log()
        time.sleep(0.1)


def test_check_command_against_the_service(
    service: Service, targets: Targets, capsys: pytest.CaptureFixture[str]
) -> None:
    """``smtpcheck check --url``: JSON out, exit status, a wrong key explained."""
    from cli.main import main

    base = ["check", "127.0.0.1", "--port", str(targets.plain.port), "--url", service.url]
    assert main([*base, "--api-key", API_KEY, "--stop-after", "ehlo", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is True and result["stage"] == "ehlo"

    code = main([*base, "--api-key", API_KEY, "--from", "a@example.org",
                 "--to", f"nobody@{LOCAL_DOMAIN}", "--tls", "none"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1
    assert "<- 550" in captured.out and "FAIL" in captured.out

    assert main([*base, "--api-key", "not-the-key"]) == 2
    err = capsys.readouterr().err
    assert "401" in err and "--api-key" in err
