"""Redis Sentinel failover under load, with real processes.

A primary, its replica and three sentinels (tests/sentinel_group.py), the
API under gunicorn and a pool of workers on ``redis+sentinel://``; checks
are submitted without pause against a local aiosmtpd while the primary is
killed with SIGKILL. What a user sees:

- while no primary is known, POST /v1/checks is a quick 503 problem+json;
- the API and the workers find the promoted replica by themselves;
- no check stays ``running``: each one accepted ends finished or failed, or
  was lost in the replication window (accepted with 202 by the old primary,
  never copied to the replica) and reads as 404. The test prints how many
  and how close to the kill they were accepted (docs/operations.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
from rq import Queue
from rq.utils import as_text

from smtpcheck.redis_client import connect
from tests.e2e.conftest import Client, Response, Service, Targets, base_env, worker_count
from tests.sentinel_group import SentinelGroup

pytestmark = pytest.mark.e2e

WORKERS = 2
#: How long submissions go on before the kill, and at most after it.
BEFORE_KILL = 1.0
#: A failover takes about 2.5 s here; a sentinel starved of CPU on a loaded
#: machine can go into TILT mode and hold it back for 30 s.
RECOVERY_LIMIT = 45.0


@pytest.fixture
def group(tmp_path: Path) -> Iterator[SentinelGroup]:
    sentinels = SentinelGroup(
        tmp_path / "redis", down_after_ms=1000, failover_timeout_ms=2000, password="e2e-redis"
    )
    sentinels.start()
    try:
        yield sentinels
    finally:
        sentinels.stop()


@dataclass
class Submission:
    at: float  # monotonic
    took: float
    status: int
    check_id: str | None
    reply: Response


@dataclass
class Submitter:
    """Posts checks one after the other from a thread, keeping every answer."""

    client: Client
    body: dict[str, object]
    sent: list[Submission] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                reply = self.client.request("POST", "/v1/checks", self.body, timeout=10)
            except OSError as exc:  # the API itself must not go away
                raise AssertionError(f"API unreachable during failover: {exc}") from exc
            check_id = str(reply.json()["id"]) if reply.status == 202 else None
            took = time.monotonic() - started
            self.sent.append(Submission(started, took, reply.status, check_id, reply))
            time.sleep(0.02)

    def accepted_since(self, moment: float) -> list[Submission]:
        return [s for s in self.sent if s.status == 202 and s.at > moment]


def test_failover_is_a_short_503_then_everything_goes_on(
    group: SentinelGroup, targets: Targets, tmp_path: Path
) -> None:
    env = base_env(tmp_path, group.url, targets.ports, targets.dns)
    env["SMTPCHECK_MAX_CONCURRENT_PER_KEY"] = "100000"  # checks pile up while failing over
    service = Service(tmp_path, env, group.url)
    try:
        service.start(workers=WORKERS)
        client = service.client
        body: dict[str, object] = {
            "host": "127.0.0.1",
            "port": targets.plain.port,
            "stop_after": "banner",
        }
        assert client.wait(client.submit(body), timeout=30)["status"] == "finished"

        submitter = Submitter(client, body)
        thread = threading.Thread(target=submitter.run, daemon=True)
        thread.start()
        time.sleep(BEFORE_KILL)
        lag = group.replication_lag()  # bytes the replica had not yet applied
        killed_wall = time.time()
        old, killed_at = group.kill_primary()

        # Until a POST is accepted again after the first refusal.
        deadline = killed_at + RECOVERY_LIMIT
        while time.monotonic() < deadline:
            refused = [s for s in submitter.sent if s.at > killed_at and s.status != 202]
            if refused and submitter.accepted_since(refused[-1].at):
                break
            time.sleep(0.1)
        time.sleep(0.5)  # a few more checks on the new primary
        submitter.stop.set()
        thread.join(15)

        after = [s for s in submitter.sent if s.at > killed_at]
        refused = [s for s in after if s.status != 202]
        assert refused, "no POST was refused while the primary was gone"
        for s in refused:
            assert s.status == 503, (s.status, s.reply.text)
            assert s.reply.content_type == "application/problem+json"
            assert s.reply.json()["status"] == 503
            assert s.reply.headers.get("retry-after")
        slowest = max(s.took for s in after)
        assert slowest < 8, f"a POST took {slowest:.1f}s while failing over"
        recovered = submitter.accepted_since(refused[-1].at)
        assert recovered, f"no POST accepted {RECOVERY_LIMIT}s after the kill:\n{group.logs()}"
        # The other sentinels learn of the switch from the leader within a second or two.
        wait_until(lambda: group.primary_port() not in (None, old.port), 10, "sentinels agreeing")
        outage = recovered[0].at - killed_at

        # Workers are back on the new primary and run the new checks.
        wait_until(lambda: worker_count(group.url) >= WORKERS, 20, "workers re-registered")
        for s in recovered[:5]:
            job = client.wait(str(s.check_id), timeout=30)
            assert job["status"] == "finished", (job, service.logs())

        # Every check accepted before the kill ends, or was lost with the old
        # primary: never copied (404), or copied as taken off the queue but not
        # yet started. RQ keeps those in the queue's intermediate list and fails
        # them a minute later (its IntermediateQueue.cleanup); they are counted.
        accepted = [s for s in submitter.sent if s.status == 202]
        assert any(s.at < killed_at for s in accepted)
        lost: list[Submission] = []
        stranded: list[Submission] = []
        ended: dict[str, int] = {}
        reasons: list[str] = []
        redis_client = connect(group.url)
        queue = Queue("vantage:default", connection=redis_client)
        for s in accepted:
            reply = client.request("GET", f"/v1/checks/{s.check_id}")
            if reply.status == 404:
                lost.append(s)
                continue
            job = client.wait(str(s.check_id), timeout=10)
            if job["status"] == "queued" and s.check_id in intermediate(queue):
                stranded.append(s)
                continue
            assert job["status"] in ("finished", "failed"), (job, service.logs())
            ended[job["status"]] = ended.get(job["status"], 0) + 1
            if job["status"] == "failed":
                ended_at = datetime.fromisoformat(str(job["ended_at"]).replace("Z", "+00:00"))
                after_kill = ended_at.timestamp() - killed_wall
                reasons.append(f"{job.get('error')} ({after_kill:.1f}s after the kill)")
        redis_client.close()

        window = max((killed_at - s.at for s in lost + stranded), default=0.0)
        print(
            f"\nfailover: {len(accepted)} checks accepted: {ended}, "
            f"{len(lost)} gone (404), {len(stranded)} stranded between dequeue and start; "
            f"the oldest of these accepted {window * 1000:.0f} ms before the kill. "
            f"{len(refused)} POSTs refused with 503 for {outage:.1f}s after the kill; "
            f"slowest POST {slowest:.2f}s; replica {lag} bytes behind just before the kill; "
            f"failed: {reasons}"
        )
        assert not [s for s in lost + stranded if s.at > killed_at], "lost after the failover"
    except BaseException:
        print(service.logs())
        print(group.logs())
        raise
    finally:
        service.stop()


def intermediate(queue: Queue) -> list[str]:
    """Ids RQ moved off ``queue`` for a worker that has not marked them started."""
    return [as_text(i) for i in queue.connection.lrange(queue.intermediate_queue_key, 0, -1)]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {timeout:.0f}s")
        time.sleep(0.2)
