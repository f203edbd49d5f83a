"""A check whose worker died reads as failed with a reason; it never hangs 'running'."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis
from flask.testing import FlaskClient
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from service.jobstore import JobStore
from tests.service import jobs
from tests.service.conftest import ALICE, rq_worker, stop_session, submit


@pytest.fixture
def worker_process(redis_url: str) -> Iterator[subprocess.Popen[bytes]]:
    """A real forking RQ worker (``rq worker``) on vantage:default, stopped at the end."""
    process = rq_worker(redis_url, "--name", f"test-worker-{os.getpid()}")
    try:
        yield process
    finally:
        stop_session(process)  # its work horse too, if a cold shutdown left it


def wait_for_status(client: FlaskClient, check_id: str, status: str, timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()
        if body["status"] == status or time.monotonic() > deadline:
            return dict(body)
        time.sleep(0.1)


def test_worker_shut_down_cold_mid_check(
    client: FlaskClient, store: JobStore, worker_process: subprocess.Popen[bytes]
) -> None:
    store.job_function = jobs.SLOW
    check_id = submit(client, {"host": "mx.example.com"})
    assert wait_for_status(client, check_id, "running")["status"] == "running"

    # Two signals a second apart: RQ's cold shutdown kills the work horse,
    # unregisters the worker and exits, leaving the job 'started' in Redis.
    worker_process.send_signal(signal.SIGINT)
    time.sleep(1.2)
    worker_process.send_signal(signal.SIGINT)
    worker_process.wait(timeout=10)

    started = time.monotonic()
    body = client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()

    assert time.monotonic() - started < 2
    assert body["status"] == "failed"
    assert body["error"] == "the worker running this check stopped before it finished"
    assert body["ended_at"] is not None


def test_check_whose_heartbeat_lapsed_is_failed(
    client: FlaskClient,
    store: JobStore,
    worker_process: subprocess.Popen[bytes],
    redis_client: redis.Redis,
) -> None:
    store.job_function = jobs.SLOW
    check_id = submit(client, {"host": "mx.example.com"})
    assert wait_for_status(client, check_id, "running")["status"] == "running"
    # The whole worker vanishes without a word (SIGKILL: still registered) ...
    os.killpg(worker_process.pid, signal.SIGKILL)
    worker_process.wait(timeout=10)
    assert wait_for_status(client, check_id, "failed", timeout=0.5)["status"] == "running"
    # ... and its last heartbeat lapses: stand in for the clock by ageing the entry.
    registry = StartedJobRegistry(
        "vantage:default", connection=redis_client, serializer=JSONSerializer
    )
    members = redis_client.zrange(registry.key, 0, -1)
    assert members
    redis_client.zadd(registry.key, dict.fromkeys(members, time.time() - 1), xx=True)

    body = client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()

    assert body["status"] == "failed"
    assert body["error"] == "the worker running this check stopped before it finished"


def test_delete_of_a_running_check_asks_its_worker_to_cancel_it(
    client: FlaskClient,
    store: JobStore,
    worker_process: subprocess.Popen[bytes],
    redis_client: redis.Redis,
) -> None:
    store.job_function = jobs.SLOW
    check_id = submit(client, {"host": "mx.example.com"})
    assert wait_for_status(client, check_id, "running")["status"] == "running"

    response = client.delete(f"/v1/checks/{check_id}", headers=ALICE)

    # The flag the engine polls (tests/e2e/test_live.py runs the real engine on it).
    assert response.status_code == 202
    assert response.get_json()["status"] == "running"
    assert redis_client.exists(f"smtpcheck:cancel:{check_id}")
    assert 0 < redis_client.ttl(f"smtpcheck:cancel:{check_id}") <= store.settings.result_ttl
