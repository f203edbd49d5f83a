"""Redis goes away and comes back: the API says 503 meanwhile, then recovers alone."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpcheck.embedded_redis import EmbeddedRedis
from tests.e2e.conftest import Response, Service, Targets, base_env

pytestmark = pytest.mark.e2e


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "redis", persist=False).start()
    try:
        yield server
    finally:
        server.stop()


def assert_problem_503(reply: Response) -> None:
    assert reply.status == 503, (reply.status, reply.text)
    assert reply.content_type == "application/problem+json"
    problem = reply.json()
    assert problem["status"] == 503
    assert problem["title"]
    assert "detail" in problem


def test_api_answers_503_without_redis_and_recovers(
    own_redis: EmbeddedRedis, targets: Targets, tmp_path: Path
) -> None:
    service = Service(
        tmp_path, base_env(tmp_path, own_redis.url, targets.ports, targets.dns), own_redis.url
    )
    try:
        service.start(workers=1)
        client = service.client
        check = {"host": "127.0.0.1", "port": targets.plain.port, "stop_after": "banner"}
        first = client.submit(check)
        assert client.wait(first)["result"]["ok"] is True

        own_redis.stop()
        assert_problem_503(client.request("POST", "/v1/checks", check, timeout=15))
        assert_problem_503(client.request("GET", f"/v1/checks/{first}", timeout=15))
        assert client.request("GET", "/readyz", timeout=15).status == 503
        assert client.request("GET", "/healthz", timeout=15).status == 200

        own_redis.start()  # same port, empty data
        deadline = time.monotonic() + 30
        while True:
            reply = client.request("POST", "/v1/checks", check, timeout=15)
            if reply.status == 202 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert reply.status == 202, (reply.status, reply.text, service.logs())
        # The workers reconnect too: the new check runs.
        job = client.wait(str(reply.json()["id"]), timeout=60)
        assert job["status"] == "finished", (job, service.logs())
        assert job["result"]["ok"] is True
    finally:
        service.stop()
