"""GET /v1/checks: one key's checks, newest first, paged by opaque cursors."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.utils import now

from service import create_app
from service.jobstore import JobStore
from smtpcheck.config import Settings
from tests.service import jobs
from tests.service.conftest import ALICE, BOB, commands_sent, submit

QUEUE = "vantage:default"


@pytest.fixture
def app(settings: Settings, redis_client: redis.Redis) -> Iterator[Flask]:
    redis_client.flushall()  # this key's index holds only this test's checks
    app = create_app(settings.replace(max_concurrent_per_key=1000, rate_limit="10000/minute"))
    yield app
    app.extensions["smtpcheck"].close()


def pages(client: FlaskClient, limit: int, between: Callable[[], None] = lambda: None) -> list[str]:
    seen: list[str] = []
    cursor = None
    while True:
        query = f"?limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        response = client.get(f"/v1/checks{query}", headers=ALICE)
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert len(body["items"]) <= limit
        seen += [item["id"] for item in body["items"]]
        cursor = body["next"]
        if cursor is None:
            return seen
        between()


def test_150_checks_page_with_no_duplicate_and_no_gap_while_more_arrive(
    client: FlaskClient,
) -> None:
    created = [submit(client, {"host": "mx.example.com"}) for _ in range(150)]
    submit(client, {"host": "mx.example.com"}, headers=BOB)  # never in alice's list
    arrived: list[str] = []

    def more() -> None:  # new checks between two pages land before the first page
        arrived.append(submit(client, {"host": "mx.example.com"}))

    seen = pages(client, 20, more)

    assert seen == list(reversed(created))  # newest first, every one once
    assert len(arrived) == 7
    assert pages(client, 100)[: len(arrived)] == list(reversed(arrived))


def test_items_are_checks_without_their_transcript(
    client: FlaskClient, store: JobStore, run_worker: Callable[..., bool]
) -> None:
    store.job_function = jobs.FUNCTION
    done = submit(client, {"host": "mx.example.com"})
    run_worker()
    queued = submit(client, {"host": "mx.example.com"})

    items = client.get("/v1/checks", headers=ALICE).get_json()["items"]

    assert [item["id"] for item in items] == [queued, done]
    assert items[1]["status"] == "finished"
    assert items[1]["result"]["outcome"] == "ok"
    assert "transcript" not in items[1]["result"]
    assert items[0] == client.get(f"/v1/checks/{queued}", headers=ALICE).get_json()


def test_a_page_reads_its_checks_in_one_round_trip(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [submit(client, {"host": "mx.example.com"}) for _ in range(6)]
    client.get("/v1/checks?limit=5", headers=ALICE)  # connections made
    sent = commands_sent(monkeypatch)
    body = client.get("/v1/checks?limit=5", headers=ALICE).get_json()

    assert [item["id"] for item in body["items"]] == ids[:0:-1]
    assert body["next"] is not None
    assert len(sent) == 3  # the page's ids, their checks, whether a next page exists


def test_a_page_of_running_checks_tests_their_workers_in_one_more_round_trip(
    client: FlaskClient, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each running check is tested for a gone worker, all in one round trip; the
    one whose started-registry entry lapsed reads failed, the others running."""
    ids = [submit(client, {"host": "mx.example.com"}) for _ in range(4)]
    for check_id in ids:
        job = Job.fetch(check_id, connection=redis_client, serializer=JSONSerializer)
        job.started_at = now()
        job.set_status(JobStatus.STARTED)
        job.save()
    redis_client.zadd(f"rq:wip:{QUEUE}", {f"{ids[0]}:lapsed": time.time() - 1})
    # Connections made; the lapsed entry had RQ's cleanup fail its check.
    client.get("/v1/checks?limit=3", headers=ALICE)
    sent = commands_sent(monkeypatch)
    body = client.get("/v1/checks?limit=4", headers=ALICE).get_json()

    assert [item["status"] for item in body["items"]] == ["running"] * 3 + ["failed"]
    # the page's ids, their checks, the three running ones' workers, whether a next page exists
    assert len(sent) == 4


def test_status_filter_and_deleted_checks(client: FlaskClient) -> None:
    kept = [submit(client, {"host": "mx.example.com"}) for _ in range(5)]
    canceled = kept.pop(2)
    assert client.delete(f"/v1/checks/{canceled}", headers=ALICE).status_code == 202
    gone = kept.pop(0)
    client.delete(f"/v1/checks/{gone}", headers=ALICE)
    assert client.delete(f"/v1/checks/{gone}", headers=ALICE).status_code == 204

    queued = client.get("/v1/checks?status=queued&limit=2", headers=ALICE).get_json()
    rest = client.get(f"/v1/checks?status=queued&cursor={queued['next']}", headers=ALICE)
    only = client.get("/v1/checks?status=canceled", headers=ALICE).get_json()

    ids = [item["id"] for item in queued["items"] + rest.get_json()["items"]]
    assert ids == list(reversed(kept))
    assert rest.get_json()["next"] is None
    assert [item["id"] for item in only["items"]] == [canceled]
    assert only["items"][0]["status"] == "canceled"


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=101", "limit=x", "cursor=nope!", "status=done", "cursor=MTI"]
)
def test_bad_list_parameters_are_422(client: FlaskClient, query: str) -> None:
    response = client.get(f"/v1/checks?{query}", headers=ALICE)

    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    assert query.partition("=")[0] in response.get_json()["errors"]
