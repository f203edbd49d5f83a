"""A webhook secret never rests in Redis or in a log line, in clear or base64,
while the service runs as deployed (gunicorn and ``smtpcheck worker``, at
DEBUG), through a delivery that is refused once (500) and retried by the
workers' own RQ scheduler."""

from __future__ import annotations

import base64
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.dns_server import DNSServer
from tests.e2e.conftest import (
    API_KEY,
    API_KEY_NAME,
    RUN_MARKER,
    RUN_TOKEN,
    SECRET_KEY,
    Service,
    processes_mentioning,
    wait_gone,
)
from tests.security.leaks import FERNET_PREFIX, Needle, base64_forms, find, redis_values
from tests.smtp_servers import SMTPTarget
from tests.webhook_receiver import Receiver, verify

KEY = os.urandom(32)
SECRET = "whsec_" + base64.b64encode(KEY).decode()


def needles() -> list[Needle]:
    wanted = [
        Needle("secret", SECRET.encode()),
        Needle("key", KEY),
        Needle("key, hex", KEY.hex().encode()),
        Needle("key, base64", SECRET.removeprefix("whsec_").encode()),
    ]
    for data in (SECRET.encode(), KEY):
        wanted += [Needle("secret inside base64", form) for form in sorted(base64_forms(data))]
    return wanted


@pytest.fixture
def hook(receiver: Callable[..., Receiver]) -> Receiver:
    return receiver([(500, {}), (200, {})])


@pytest.fixture
def deployed(
    redis_url: str,
    hook: Receiver,
    dns_server: Callable[..., DNSServer],
    tmp_path: Path,
) -> Iterator[tuple[Service, SMTPTarget]]:
    target = SMTPTarget(tls="none").start()
    dns = dns_server({})  # PTR lookups of 127.0.0.1 get NXDOMAIN at once
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMTPCHECK_", "REDIS_URL"))}
    env.update(
        {
            "SMTPCHECK_E2E_RUN": RUN_TOKEN,
            "REDIS_URL": redis_url,
            "SMTPCHECK_SECRET_KEY": SECRET_KEY,
            "SMTPCHECK_API_KEYS": f"{API_KEY_NAME}:{API_KEY}",
            "SMTPCHECK_ALLOW_NETWORKS": "127.0.0.0/8",
            "SMTPCHECK_ALLOWED_PORTS": str(target.port),
            "SMTPCHECK_CALLBACK_HTTP": "on",
            "SMTPCHECK_CALLBACK_PORTS": str(hook.port),
            "SMTPCHECK_DNS_SERVERS": f"{dns.host}:{dns.port}",
            "SMTPCHECK_HELO_NAME": "checker.local.test",
            "SMTPCHECK_DATA_DIR": str(tmp_path / "data"),
            "SMTPCHECK_LOG_LEVEL": "DEBUG",
            "PYTHONUNBUFFERED": "1",
        }
    )
    service = Service(tmp_path, env, redis_url)
    try:
        service.start_api(gunicorn_workers=1).start_workers(1)
        yield service, target
    finally:
        service.stop()
        target.stop()
        left = wait_gone(processes_mentioning(RUN_MARKER), 5)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert not left, f"processes left running: {left}"


@pytest.mark.e2e
def test_no_webhook_secret_in_redis_or_logs_through_a_retried_delivery(
    deployed: tuple[Service, SMTPTarget], hook: Receiver, redis_url: str
) -> None:
    service, target = deployed
    connection = redis.Redis.from_url(redis_url)
    wanted = needles()
    try:
        check_id = service.client.submit(
            {
                "host": "127.0.0.1",
                "port": target.port,
                "tls": "none",
                "stop_after": "ehlo",
                "callback": {"url": hook.url("/smtpcheck"), "secret": SECRET},
            }
        )
        assert find(redis_values(connection), wanted) == [], "queued"
        assert service.client.wait(check_id, timeout=30)["status"] == "finished"

        deadline = time.monotonic() + 30
        while len(hook.received) < 2 and time.monotonic() < deadline:
            assert find(redis_values(connection), wanted) == [], "delivering"
            time.sleep(0.2)
        assert len(hook.received) == 2, service.logs()
        body = service.client.request("GET", f"/v1/checks/{check_id}").json()
        deadline = time.monotonic() + 10
        while body["callback"]["status"] != "delivered" and time.monotonic() < deadline:
            time.sleep(0.1)  # the second attempt is recorded just after the receiver answers
            body = service.client.request("GET", f"/v1/checks/{check_id}").json()
    finally:
        service.stop()

    try:
        assert [a["status_code"] for a in body["callback"]["attempts"]] == [500, 200], body
        assert body["callback"]["status"] == "delivered"
        assert body["request"]["callback"]["secret"] == "****"
        assert all(verify(SECRET, got) for got in hook.received)
        assert find([(f"POST {n}", got.body) for n, got in enumerate(hook.received)], wanted) == []
        assert find(redis_values(connection), wanted) == [], "after the delivery"
        assert find(redis_values(connection), [Needle("Fernet token", FERNET_PREFIX)]) == []
    finally:
        connection.close()

    logs = [(p.name, p.log_path.read_bytes()) for p in (service.api, service.workers) if p]
    assert b"debug" in b"".join(data for _, data in logs).lower()  # as verbose as they get
    assert b"webhook attempt 2" in b"".join(data for _, data in logs)
    hits = find(logs, [*wanted, Needle("Fernet token", FERNET_PREFIX)])
    assert hits == [], hits
