"""Fixtures for the API: an app on the session's real redis-server, clients, workers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from service import create_app
from service.jobstore import JobStore
from smtpcheck.config import Settings

API_KEYS = "alice:key-alice,bob:key-bob"
ALICE = {"Authorization": "Bearer key-alice"}
BOB = {"Authorization": "Bearer key-bob"}


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return Settings(
        redis_url=redis_url,
        secret_key="test-secret",
        api_keys=API_KEYS,
        allow_networks=(ip_network("127.0.0.0/8"),),
    )


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    app = create_app(settings)
    yield app
    app.extensions["smtpcheck"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def store(app: Flask) -> JobStore:
    jobstore: JobStore = app.extensions["smtpcheck"]
    return jobstore


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def run_worker(redis_client: redis.Redis) -> Callable[..., bool]:
    """Run a real RQ SimpleWorker in burst mode over a vantage queue (main thread only)."""

    def run(vantage: str = "default") -> bool:
        queue = Queue(f"vantage:{vantage}", connection=redis_client, serializer=JSONSerializer)
        worker = SimpleWorker([queue], connection=redis_client, serializer=JSONSerializer)
        return worker.work(burst=True, logging_level="WARNING")

    return run


def submit(client: FlaskClient, body: dict, headers: dict[str, str] | None = None) -> str:
    """POST a check as alice (unless told otherwise) and return its id."""
    response = client.post("/v1/checks", json=body, headers=headers or ALICE)
    assert response.status_code == 202, response.get_json()
    return str(response.get_json()["id"])


ROOT = Path(__file__).resolve().parents[2]


def rq_worker(redis_url: str, *options: str) -> subprocess.Popen[bytes]:
    """A real ``rq worker`` process on vantage:default, in its own session (so
    ``os.killpg(process.pid, ...)`` reaches it and what it forks)."""
    return subprocess.Popen(
        [
            str(Path(sys.executable).with_name("rq")),
            "worker",
            "--url",
            redis_url,
            "--serializer",
            "rq.serializers.JSONSerializer",
            "--path",
            str(ROOT),
            "--logging_level",
            "WARNING",
            *options,
            "vantage:default",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop_session(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL every process of an :func:`rq_worker`'s session and reap the worker.

    Not its process group alone: RQ's work horse moves to a group of its own
    (``os.setpgrp``), and a horse whose worker exited first (a cold shutdown
    that did not reach it) would otherwise outlive the test."""
    for pid in {process.pid, *_session_members(process.pid)}:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait(timeout=10)


def _session_members(session: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[3]) == session:  # state, ppid, pgrp, session
                members.append(int(stat.parent.name))
    return members


def commands_sent(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """From now on, every packed command (or pipeline) redis-py sends, as bytes."""
    sent: list[bytes] = []
    send = redis.connection.AbstractConnection.send_packed_command

    def counted(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(b"".join(command) if isinstance(command, list) else bytes(command))
        send(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)
    return sent
