"""Many checks in flight per worker process, for real: gunicorn, ``smtpcheck
worker`` processes and a redis-server of the test's own, a tarpit on 127.0.0.1.

* SIGKILL of a worker process holding 50 checks: all 50 read ``failed``
  within seconds, and the pool starts a fresh process that runs new checks;
* SIGTERM: the checks in flight end by their own deadlines and no new one is
  taken; a second signal fails the rest at once, with a reason;
* Redis restarted empty under 50 running checks: the workers register again,
  every check comes back (``running``, then its result), none reads failed;
* one API key cannot take every slot of a worker from another key.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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
    stall_after_banner,
    worker_count,
)
from tests.smtp_servers import Certificates, ScriptedServer, SMTPTarget

pytestmark = pytest.mark.e2e

OTHER_KEY = "e2e-other-" + uuid.uuid4().hex
TARPIT_CHECKS = 50


class Bench:
    """One module's service: its own Redis and API; workers started per test."""

    def __init__(self, tmp: Path, redis_server: EmbeddedRedis, env: dict[str, str]) -> None:
        self.tmp = tmp
        self.redis = redis_server
        self.env = env
        self.api = Service(tmp, env, redis_server.url)

    def service(self, *worker_args: str) -> Service:
        """The module's API with a fresh ``smtpcheck worker`` pool."""
        flush(self.redis.url)
        service = Service(self.tmp, self.env, self.redis.url, port=self.api.port)
        service.workers = Proc(
            "workers",
            [*SMTPCHECK, "worker", *worker_args],
            self.env,
            self.tmp / f"workers-{uuid.uuid4().hex[:6]}.log",
        ).start()
        service.procs.append(service.workers)
        return service


def stop_at_once(service: Service) -> None:
    """Stop the workers cold (two signals: no waiting for tarpits), then the rest."""
    workers = service.workers
    if workers is not None and workers.alive():
        workers.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        time.sleep(0.3)
        workers.stop()
    service.stop()


@pytest.fixture(scope="module")
def bench(
    e2e_certificates: Certificates, e2e_dns: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Bench, ScriptedServer, SMTPTarget]]:
    tmp = tmp_path_factory.mktemp("concurrency")
    server = EmbeddedRedis(tmp / "redis", persist=False).start()
    connections: list[float] = []
    tarpit = ScriptedServer(stall_after_banner(connections)).start()
    plain = SMTPTarget(e2e_certificates, tls="none").start()
    env = base_env(tmp, server.url, [tarpit.port, plain.port], e2e_dns)
    env.update(
        {
            "SMTPCHECK_API_KEYS": f"{env['SMTPCHECK_API_KEYS']},other:{OTHER_KEY}",
            "SMTPCHECK_MAX_CONCURRENT_PER_KEY": "500",
            "SMTPCHECK_MAX_CONCURRENT_PER_TARGET": "1000",
        }
    )
    where = Bench(tmp, server, env)
    try:
        where.api.start_api()
        yield where, tarpit, plain
    except BaseException:
        print(where.api.logs())
        raise
    finally:
        where.api.stop()
        plain.stop()
        tarpit.stop()
        server.stop()


def flush(url: str) -> None:
    client = redis.Redis.from_url(url)
    client.flushall()
    client.close()


def tarpit_check(port: int, total: float) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": port, "timeouts": {"total": total, "command": total}}


def statuses(client: Client, ids: list[str]) -> dict[str, str]:
    found = {}
    for check_id in ids:
        reply = client.request("GET", f"/v1/checks/{check_id}")
        found[check_id] = reply.json()["status"] if reply.status == 200 else str(reply.status)
    return found


def wait_until(what: Callable[[], bool], timeout: float, why: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, why()
        time.sleep(0.2)


def running(url: str, vantage: str = "default") -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.zcard(f"rq:wip:vantage:{vantage}"))
    finally:
        client.close()


def test_sigkill_with_50_in_flight_fails_them_all_and_restarts(bench: Any) -> None:
    where, tarpit, plain = bench
    service = where.service("--processes", "1")
    try:
        wait_until(lambda: worker_count(where.redis.url) == 1, 30, service.logs)
        assert service.workers is not None
        (child,) = children_of(service.workers.pid)
        client = service.client
        ids = [client.submit(tarpit_check(tarpit.port, 60)) for _ in range(TARPIT_CHECKS)]
        wait_until(
            lambda: running(where.redis.url) == TARPIT_CHECKS,
            30,
            lambda: f"{running(where.redis.url)} running\n{service.logs()}",
        )
        # One process holds all 50 (each with its own started-registry entry).
        assert set(statuses(client, ids).values()) == {"running"}

        killed_at = time.monotonic()
        os.kill(child, signal.SIGKILL)
        wait_until(
            lambda: set(statuses(client, ids).values()) == {"failed"},
            15,
            lambda: f"{statuses(client, ids)}\n{service.logs()}",
        )
        assert time.monotonic() - killed_at < 15
        # By the pool, at once (Pool._abandon), not by the entries lapsing 12 s on.
        assert f"died during {TARPIT_CHECKS} check(s): failed" in service.logs()
        body = client.request("GET", f"/v1/checks/{ids[0]}").json()
        assert body["error"] == "the worker running this check stopped before it finished"

        # The pool started a fresh process, which takes new checks.
        wait_until(lambda: worker_count(where.redis.url) == 1, 30, service.logs)
        fresh = client.submit({"host": "127.0.0.1", "port": plain.port, "stop_after": "banner"})
        assert client.wait(fresh, timeout=30)["result"]["ok"] is True
        assert service.workers.alive()
    finally:
        stop_at_once(service)


def test_sigterm_finishes_in_flight_then_a_second_signal_fails_the_rest(bench: Any) -> None:
    where, tarpit, plain = bench
    service = where.service("--processes", "2")
    try:
        wait_until(lambda: worker_count(where.redis.url) == 2, 30, service.logs)
        client = service.client
        # 50 in flight, as the kill -9 and Redis restart have.
        short = [client.submit(tarpit_check(tarpit.port, 3)) for _ in range(TARPIT_CHECKS // 2)]
        long = [client.submit(tarpit_check(tarpit.port, 120)) for _ in range(TARPIT_CHECKS // 2)]
        wait_until(lambda: running(where.redis.url) == TARPIT_CHECKS, 30, service.logs)
        assert service.workers is not None
        service.workers.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        time.sleep(0.5)
        late = client.submit({"host": "127.0.0.1", "port": plain.port, "stop_after": "banner"})

        # Warm: the short checks end by their own deadline, as results.
        for check_id in short:
            job = client.wait(check_id, timeout=20)
            assert job["status"] == "finished", job
            assert job["result"]["outcome"] == "timeout", job["result"]
        assert service.workers.alive()
        assert set(statuses(client, long).values()) == {"running"}
        assert statuses(client, [late]) == {late: "queued"}  # taken by nobody

        # A second signal: the rest fail at once, saying why.
        service.workers.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        assert service.workers.process.wait(15) == 0  # type: ignore[union-attr]
        bodies = [client.request("GET", f"/v1/checks/{i}").json() for i in long]
        assert {body["status"] for body in bodies} == {"failed"}, bodies
        assert all("stopped at once" in body["error"] for body in bodies), bodies
        assert statuses(client, [late]) == {late: "queued"}
    finally:
        stop_at_once(service)


def test_one_key_cannot_take_every_slot(bench: Any) -> None:
    where, tarpit, plain = bench
    service = where.service("--processes", "1", "--concurrency", "4")
    try:
        wait_until(lambda: worker_count(where.redis.url) == 1, 30, service.logs)
        hog = service.client
        hogged = [hog.submit(tarpit_check(tarpit.port, 10)) for _ in range(6)]
        wait_until(lambda: running(where.redis.url) == 3, 20, service.logs)
        time.sleep(0.5)
        # Its share (half of the 4 slots), and past it while nobody else waits,
        # but never the last slot: that one is kept for the next caller.
        assert running(where.redis.url) == 3

        other = Client(service.url, api_key=OTHER_KEY)
        started = time.monotonic()
        check = other.submit({"host": "127.0.0.1", "port": plain.port, "stop_after": "banner"})
        job = other.wait(check, timeout=30)
        assert job["result"]["ok"] is True
        assert time.monotonic() - started < 7  # not behind the hog's 10 s tarpits
        assert list(statuses(hog, hogged).values()).count("running") == 3

        # Every log line about a check names that check.
        assert service.workers is not None
        log_text = service.workers.log_path.read_text()
        for line in log_text.splitlines():
            if f"check {check}" in line:
                assert f'"check_id": "{check}"' in line, line
    finally:
        stop_at_once(service)


def test_redis_restart_with_50_in_flight_loses_no_check(bench: Any) -> None:
    where, tarpit, _ = bench
    service = where.service("--processes", "2")
    try:
        wait_until(lambda: worker_count(where.redis.url) == 2, 30, service.logs)
        client = service.client
        ids = [client.submit(tarpit_check(tarpit.port, 8)) for _ in range(TARPIT_CHECKS)]
        wait_until(lambda: running(where.redis.url) == TARPIT_CHECKS, 30, service.logs)

        where.redis.stop()
        where.redis.start()  # same port, no data: every key is gone

        # Every worker process registers again; every running check is written
        # back, then ends with its result: never read as failed meanwhile.
        def vantage_workers() -> int:
            reply = client.request("GET", "/v1/vantages")
            if reply.status != 200:
                return -1
            return {v["name"]: v["workers"] for v in reply.json()}.get("default", 0)

        wait_until(lambda: vantage_workers() == 2, 20, service.logs)
        seen: set[str] = set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            now = statuses(client, ids)
            seen.update(now.values())
            if set(now.values()) == {"finished"}:
                break
            time.sleep(0.3)
        assert "running" in seen  # written back while still running
        assert seen <= {"404", "running", "finished"}, (seen, service.logs())
        results = [client.request("GET", f"/v1/checks/{i}").json() for i in ids]
        assert {r["status"] for r in results} == {"finished"}
        assert {r["result"]["outcome"] for r in results} == {"timeout"}
    finally:
        stop_at_once(service)
