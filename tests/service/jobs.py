"""Stand-ins for ``workers.job.run_check_job``, run by real RQ workers in tests.

The service enqueues by dotted path; tests point the app's JobStore at these
so the read side (statuses, results, transcripts) can be exercised before
or without the real worker.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from rq import Queue
from rq.serializers import JSONSerializer

from smtpcheck.contract import EHLO_EXTENSIONS

FUNCTION = "tests.service.jobs.run_check_job"
CRASH = "tests.service.jobs.crash"
SLOW = "tests.service.jobs.slow"


def enqueue_plain_check(
    connection: redis.Redis, queue_name: str, check_id: str, result_ttl: int = 600
) -> Queue:
    """A check with no callback (a plain one) enqueued as the API enqueues
    it, for tests of what the worker writes for it; its queue."""
    queue = Queue(queue_name, connection=connection, serializer=JSONSerializer)
    queue.enqueue(
        "workers.job.run_check_job",
        kwargs={"request": {"host": "mx.example.com", "port": 25}, "sealed_password": None},
        job_id=check_id,
        result_ttl=result_ttl,
        failure_ttl=600,
        ttl=600,
        description="smtpcheck",
        meta={"owner": "alice", "vantage": "default"},
    )
    return queue


def run_check_job(request: dict[str, Any], sealed_password: str | None) -> dict[str, Any]:
    """A result of the contract's shape (smtpcheck.contract.CheckResult) for an
    EHLO-only dialogue; its summary says whether a sealed password came along."""
    sealed = " (a sealed password came with it)" if sealed_password is not None else ""
    return {
        "check_id": "from-test",
        "ok": True,
        "outcome": "ok",
        "stage": "ehlo",
        "summary": "the server answered EHLO" + sealed,
        "target": {
            "host": request["host"],
            "port": request["port"],
            "address": "192.0.2.1",
            "addresses": ["192.0.2.1"],
            "source": "198.51.100.7",
        },
        "vantage": request["vantage"],
        "started_at": "2026-01-01T00:00:00.000Z",
        "finished_at": "2026-01-01T00:00:00.050Z",
        "reply": None,
        "banner": {"code": 220, "text": "mx.example.com ESMTP", "class": "accepted"},
        "ehlo": {
            "command": "EHLO",
            "name": "checker.example",
            "greeting": "mx.example.com",
            "keywords": {"PIPELINING": []},
            "size": None,
            "auth": [],
            "starttls": False,
            "extensions": {name: name == "PIPELINING" for name in EHLO_EXTENSIONS},
        },
        "tls": None,
        "auth": None,
        "mail": None,
        "rcpt": [],
        "data": None,
        "dns": None,
        "probes": None,
        "findings": [],
        "timings": {"connect": 1.0, "banner": 20.0, "ehlo": 1.0, "total": 22.0},
        "transcript": [
            {"t_ms": 0.0, "dir": "note", "text": "connected to 192.0.2.1:25"},
            {"t_ms": 20.1, "dir": "server", "text": "220 mx.example.com ESMTP"},
            {"t_ms": 20.3, "dir": "client", "text": "EHLO checker.example"},
            {"t_ms": 21.0, "dir": "server", "text": "250 PIPELINING"},
        ],
    }


def crash(request: dict[str, Any], sealed_password: str | None) -> dict[str, Any]:
    raise RuntimeError("engine exploded")


def slow(request: dict[str, Any], sealed_password: str | None) -> dict[str, Any]:
    """A minute-long check, run in a forked work horse that dies with its worker.

    RQ puts the horse in its own process group, so killing the worker's group
    would leave it behind; it exits (writing nothing) once it is orphaned.
    """
    parent = os.getppid()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if os.getppid() != parent:
            os._exit(1)
        time.sleep(0.05)
    return run_check_job(request, sealed_password)


NAP = "tests.service.jobs.nap"


def nap(request: dict[str, Any], sealed_password: str | None) -> dict[str, Any]:
    """A check that waits ``timeouts.connect`` seconds, as if on a slow server."""
    time.sleep(float(request["timeouts"]["connect"]))
    return run_check_job(request, sealed_password)
