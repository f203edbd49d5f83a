"""Per-key admission of new checks: a rate limit and a cap on checks in flight,
both kept in Redis, both answered with 429 problem+json and Retry-After."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from threading import Thread

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from service import fanout
from smtpcheck.config import ConfigError, Settings
from tests.security.conftest import ALICE, BOB
from tests.service import jobs

CHECK = {"host": "mx.example.com"}


def assert_429(response, problem_type: str) -> int:  # type: ignore[no-untyped-def]
    assert response.status_code == 429, response.get_json()
    assert response.mimetype == "application/problem+json"
    problem = response.get_json()
    assert problem["type"] == f"urn:smtpcheck:problem:{problem_type}"
    assert problem["status"] == 429
    assert problem["title"] and problem["detail"]
    retry_after = int(response.headers["Retry-After"])
    assert retry_after >= 1
    return retry_after


def run_worker(redis_client: redis.Redis) -> None:
    queue = Queue("vantage:default", connection=redis_client, serializer=JSONSerializer)
    worker = SimpleWorker([queue], connection=redis_client, serializer=JSONSerializer)
    worker.work(burst=True, logging_level="WARNING")


# ---------------------------------------------------------------------------
# rate
# ---------------------------------------------------------------------------


def test_posts_over_the_rate_get_429_with_retry_after(make_app: Callable[..., Flask]) -> None:
    client = make_app(rate_limit="3/minute").test_client()
    for _ in range(3):
        assert client.post("/v1/checks", json=CHECK, headers=ALICE).status_code == 202

    refused = client.post("/v1/checks", json=CHECK, headers=ALICE)

    retry_after = assert_429(refused, "rate-limited")
    assert 50 <= retry_after <= 60
    assert "3 per 1 minute" in refused.get_json()["detail"]


def test_the_limit_is_per_key(make_app: Callable[..., Flask]) -> None:
    client = make_app(rate_limit="1/minute").test_client()
    assert client.post("/v1/checks", json=CHECK, headers=ALICE).status_code == 202
    assert client.post("/v1/checks", json=CHECK, headers=ALICE).status_code == 429

    assert client.post("/v1/checks", json=CHECK, headers=BOB).status_code == 202


def test_every_limit_of_the_setting_applies(make_app: Callable[..., Flask]) -> None:
    client = make_app(rate_limit="100/minute;2/hour").test_client()
    for _ in range(2):
        assert client.post("/v1/checks", json=CHECK, headers=ALICE).status_code == 202

    refused = client.post("/v1/checks", json=CHECK, headers=ALICE)

    assert assert_429(refused, "rate-limited") > 3500


def test_invalid_posts_count_too(make_app: Callable[..., Flask]) -> None:
    """Probing the validator costs the same as submitting."""
    client = make_app(rate_limit="2/minute").test_client()
    assert client.post("/v1/checks", json={"host": "10.0.0.1"}, headers=ALICE).status_code == 422
    assert client.post("/v1/checks", data="not json", headers=ALICE).status_code == 415

    assert_429(client.post("/v1/checks", json=CHECK, headers=ALICE), "rate-limited")


def test_the_limit_holds_across_api_processes(make_app: Callable[..., Flask]) -> None:
    """Two apps (as two gunicorn workers or machines) share one count in Redis."""
    first = make_app(rate_limit="2/minute").test_client()
    second = make_app(rate_limit="2/minute").test_client()
    assert first.post("/v1/checks", json=CHECK, headers=ALICE).status_code == 202
    assert second.post("/v1/checks", json=CHECK, headers=ALICE).status_code == 202

    assert_429(first.post("/v1/checks", json=CHECK, headers=ALICE), "rate-limited")
    assert_429(second.post("/v1/checks", json=CHECK, headers=ALICE), "rate-limited")


def test_reads_are_not_rate_limited(make_app: Callable[..., Flask]) -> None:
    client = make_app(rate_limit="1/minute").test_client()
    created = client.post("/v1/checks", json=CHECK, headers=ALICE)
    assert client.post("/v1/checks", json=CHECK, headers=ALICE).status_code == 429

    for _ in range(20):
        assert client.get(created.headers["Location"], headers=ALICE).status_code == 200
    assert client.get("/v1/vantages", headers=ALICE).status_code == 200


def test_a_wrong_key_is_401_not_counted(make_app: Callable[..., Flask]) -> None:
    client = make_app(rate_limit="1/minute").test_client()
    for _ in range(3):
        response = client.post("/v1/checks", json=CHECK, headers={"Authorization": "Bearer x"})
        assert response.status_code == 401

    assert client.post("/v1/checks", json=CHECK, headers=ALICE).status_code == 202


# ---------------------------------------------------------------------------
# checks in flight per key
# ---------------------------------------------------------------------------


def test_queued_and_running_checks_per_key_are_capped(
    make_app: Callable[..., Flask], redis_client: redis.Redis
) -> None:
    app = make_app(max_concurrent_per_key=2)
    app.extensions["smtpcheck"].job_function = jobs.FUNCTION
    client = app.test_client()
    for _ in range(2):
        assert client.post("/v1/checks", json=CHECK, headers=ALICE).status_code == 202

    refused = client.post("/v1/checks", json=CHECK, headers=ALICE)

    assert_429(refused, "too-many-checks")
    assert "2 checks queued or running" in refused.get_json()["detail"]
    assert client.post("/v1/checks", json=CHECK, headers=BOB).status_code == 202

    run_worker(redis_client)  # the queued checks end: their slots are free again

    for _ in range(2):
        assert client.post("/v1/checks", json=CHECK, headers=ALICE).status_code == 202
    assert_429(client.post("/v1/checks", json=CHECK, headers=ALICE), "too-many-checks")


def test_a_canceled_check_frees_its_slot(make_app: Callable[..., Flask]) -> None:
    client = make_app(max_concurrent_per_key=1).test_client()
    created = client.post("/v1/checks", json=CHECK, headers=ALICE)
    assert client.post("/v1/checks", json=CHECK, headers=ALICE).status_code == 429

    assert client.delete(created.headers["Location"], headers=ALICE).status_code == 202

    assert client.post("/v1/checks", json=CHECK, headers=ALICE).status_code == 202


def test_a_refused_submission_takes_no_slot(make_app: Callable[..., Flask]) -> None:
    client = make_app(max_concurrent_per_key=1).test_client()
    unknown_vantage = {**CHECK, "vantage": "nowhere"}  # refused inside the slot, at enqueue
    assert client.post("/v1/checks", json=unknown_vantage, headers=ALICE).status_code == 422
    assert client.post("/v1/checks", json={"host": "::1"}, headers=ALICE).status_code == 422

    assert client.post("/v1/checks", json=CHECK, headers=ALICE).status_code == 202


def test_an_id_without_a_job_is_forgotten_at_once(
    make_app: Callable[..., Flask], redis_client: redis.Redis
) -> None:
    """An id is counted by the script that writes its job, so one without a job
    (expired, deleted) is gone, however recently it was counted."""
    app = make_app(max_concurrent_per_key=1)
    just_now = time.time() + app.extensions["smtpcheck"].settings.result_ttl
    redis_client.zadd("smtpcheck:active:alice", {"no-such-job": just_now})

    assert app.test_client().post("/v1/checks", json=CHECK, headers=ALICE).status_code == 202


def test_a_check_refused_by_a_limit_writes_nothing(
    make_app: Callable[..., Flask], redis_client: redis.Redis
) -> None:
    """Admission and the write are one script: a 429 leaves no job, queue entry or listing."""
    client = make_app(max_concurrent_per_key=1, rate_limit="2/minute").test_client()
    created = client.post("/v1/checks", json=CHECK, headers=ALICE).get_json()
    jobs_before = sorted(redis_client.scan_iter("rq:job:*"))

    assert_429(client.post("/v1/checks", json=CHECK, headers=ALICE), "too-many-checks")
    assert_429(client.post("/v1/checks", json=CHECK, headers=ALICE), "rate-limited")

    assert sorted(redis_client.scan_iter("rq:job:*")) == jobs_before
    assert redis_client.lrange("rq:queue:vantage:default", 0, -1) == [created["id"].encode()]
    assert redis_client.zrange("smtpcheck:checks:alice", 0, -1) == [created["id"].encode()]


def test_an_expired_check_frees_its_slot(
    make_app: Callable[..., Flask], redis_client: redis.Redis
) -> None:
    app = make_app(max_concurrent_per_key=1)
    client = app.test_client()
    created = client.post("/v1/checks", json=CHECK, headers=ALICE).get_json()
    redis_client.delete(f"rq:job:{created['id']}")  # as when its TTL ran out, long after
    a_minute_ago = time.time() + app.extensions["smtpcheck"].settings.result_ttl - 60
    redis_client.zadd("smtpcheck:active:alice", {created["id"]: a_minute_ago})

    assert client.post("/v1/checks", json=CHECK, headers=ALICE).status_code == 202


def test_a_caller_without_redis_gets_503_not_500(make_app: Callable[..., Flask]) -> None:
    client = make_app(redis_url="redis://127.0.0.1:1/0").test_client()

    response = client.post("/v1/checks", json=CHECK, headers=ALICE)

    assert response.status_code == 503
    assert response.get_json()["type"] == "urn:smtpcheck:problem:store-unavailable"


# ---------------------------------------------------------------------------
# vantage "all": every check a request creates counts
# ---------------------------------------------------------------------------

VANTAGES = ("default", "east", "west")


def live_vantages(redis_client: redis.Redis) -> None:
    """A registered worker at each of three vantages (none of them runs anything)."""
    for vantage in VANTAGES:
        queue = Queue(f"vantage:{vantage}", connection=redis_client, serializer=JSONSerializer)
        SimpleWorker([queue], connection=redis_client, serializer=JSONSerializer).register_birth()


def test_a_fan_out_counts_each_vantage_against_the_cap(
    make_app: Callable[..., Flask], redis_client: redis.Redis
) -> None:
    live_vantages(redis_client)
    client = make_app(max_concurrent_per_key=4).test_client()
    assert (
        client.post("/v1/checks", json={**CHECK, "vantage": "all"}, headers=ALICE).status_code
        == 202
    )
    assert redis_client.zcard("smtpcheck:active:alice") == 3

    refused = client.post("/v1/checks", json={**CHECK, "vantage": "all"}, headers=ALICE)

    assert_429(refused, "too-many-checks")
    assert "3 of its 4 checks" in refused.get_json()["detail"]
    assert "would add 3" in refused.get_json()["detail"]
    assert len(redis_client.keys("rq:job:*")) == 3  # nothing of the refused one was queued
    assert client.post("/v1/checks", json=CHECK, headers=ALICE).status_code == 202  # the 4th


def test_a_fan_out_wait_is_held_and_bounded_like_a_check_wait(
    make_app: Callable[..., Flask], redis_client: redis.Redis
) -> None:
    """A fan-out's ``?wait`` takes its hold in the read of its record (its members
    have not ended): 429 for a key holding its most, none left behind after."""
    live_vantages(redis_client)
    app = make_app(max_held_per_key=1)
    client = app.test_client()
    spread = client.post("/v1/checks", json={**CHECK, "vantage": "all"}, headers=ALICE)
    location = spread.headers["Location"]

    started = time.monotonic()
    answer = client.get(f"{location}?wait=1", headers=ALICE)
    assert answer.status_code == 200
    assert answer.get_json()["status"] == "queued"
    assert 0.9 < time.monotonic() - started < 10  # held: nothing ran
    with holding(client, redis_client, 1):
        assert_429(client.get(f"{location}?wait=1", headers=ALICE), "too-many-held")
    assert redis_client.zcard("smtpcheck:held:alice") == 0
    assert app.extensions["smtpcheck.holds"].held == 0


def test_a_fan_out_counts_each_vantage_against_the_rate(
    make_app: Callable[..., Flask], redis_client: redis.Redis
) -> None:
    live_vantages(redis_client)
    client = make_app(rate_limit="4/minute").test_client()
    assert (
        client.post("/v1/checks", json={**CHECK, "vantage": "all"}, headers=ALICE).status_code
        == 202
    )

    refused = client.post("/v1/checks", json={**CHECK, "vantage": "all"}, headers=ALICE)

    assert 50 <= assert_429(refused, "rate-limited") <= 60
    assert client.post("/v1/checks", json=CHECK, headers=ALICE).status_code == 202  # the 4th
    assert_429(client.post("/v1/checks", json=CHECK, headers=ALICE), "rate-limited")


def test_a_fan_out_larger_than_the_rate_says_so(
    make_app: Callable[..., Flask], redis_client: redis.Redis
) -> None:
    live_vantages(redis_client)
    client = make_app(rate_limit="2/minute").test_client()

    refused = client.post("/v1/checks", json={**CHECK, "vantage": "all"}, headers=ALICE)

    assert assert_429(refused, "rate-limited") == 60
    assert "creates 3 checks" in refused.get_json()["detail"]


def test_fan_out_delete_removes_every_member_or_none(
    make_app: Callable[..., Flask], redis_client: redis.Redis
) -> None:
    live_vantages(redis_client)
    app = make_app()
    client = app.test_client()
    created = client.post("/v1/checks", json={**CHECK, "vantage": "all"}, headers=ALICE)
    location = created.headers["Location"]
    members = [row["id"] for row in client.get(location, headers=ALICE).get_json()["vantages"]]
    assert len(members) == 3

    # Two members end; one has just started: the fan-out cannot be deleted yet.
    store = app.extensions["smtpcheck"]
    for check_id in members[:2]:
        store.connection.hset(f"rq:job:{check_id}", "status", "finished")
    store.connection.hset(f"rq:job:{members[2]}", "status", "started")
    spread = fanout.load(store, created.get_json()["id"], "alice")
    assert spread is not None
    assert fanout.delete(store, spread) is False
    assert all(redis_client.exists(f"rq:job:{check_id}") for check_id in members)
    assert redis_client.exists(f"smtpcheck:fanout:{spread.id}")

    store.connection.hset(f"rq:job:{members[2]}", "status", "failed")
    assert client.delete(location, headers=ALICE).status_code == 204
    assert not any(redis_client.exists(f"rq:job:{check_id}") for check_id in members)
    assert client.get(location, headers=ALICE).status_code == 404


# ---------------------------------------------------------------------------
# requests held open (?wait)
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def holding(
    client: FlaskClient, redis_client: redis.Redis, count: int, seconds: int = 2
) -> Iterator[str]:
    """A check of alice's with ``count`` requests ``?wait=seconds`` held on it; yields
    its location, and joins them at the end."""
    location = client.post("/v1/checks", json=CHECK, headers=ALICE).headers["Location"]
    threads = [
        Thread(target=client.get, args=(f"{location}?wait={seconds}",), kwargs={"headers": ALICE})
        for _ in range(count)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while redis_client.zcard("smtpcheck:held:alice") < count:
        assert time.monotonic() < deadline, "the held requests never got their room"
        time.sleep(0.02)
    yield location
    for thread in threads:
        thread.join()


def test_held_waits_are_capped_per_key(
    make_app: Callable[..., Flask], redis_client: redis.Redis
) -> None:
    client = make_app(max_held_per_key=2).test_client()
    with holding(client, redis_client, 2) as location:
        refused = client.get(f"{location}?wait=3", headers=ALICE)

        assert_429(refused, "too-many-held")
        assert "2 requests waiting" in refused.get_json()["detail"]
        assert client.get(location, headers=ALICE).status_code == 200  # no ?wait: no hold
        bob = client.post("/v1/checks", json=CHECK, headers=BOB).headers["Location"]
        assert client.get(f"{bob}?wait=1", headers=BOB).status_code == 200
    assert client.get(f"{location}?wait=1", headers=ALICE).status_code == 200
    assert redis_client.zcard("smtpcheck:held:alice") == 0


def test_a_wait_on_an_ended_check_holds_nothing(
    make_app: Callable[..., Flask], redis_client: redis.Redis
) -> None:
    """An ended check's answer needs no holding: ``?wait`` takes no room (nor a
    round trip for it), so a key at its cap of held requests still reads it."""
    app = make_app(max_held_per_key=1)
    app.extensions["smtpcheck"].job_function = jobs.FUNCTION
    client = app.test_client()
    ended = client.post("/v1/checks", json=CHECK, headers=ALICE).headers["Location"]
    run_worker(redis_client)
    with holding(client, redis_client, 1) as waiting:
        answer = client.get(f"{ended}?wait=5", headers=ALICE)

        assert answer.status_code == 200
        assert answer.get_json()["status"] == "finished"
        assert redis_client.zcard("smtpcheck:held:alice") == 1  # only the other one
        assert_429(client.get(f"{waiting}?wait=1", headers=ALICE), "too-many-held")
        assert client.get(f"{ended}/transcript?wait=5", headers=ALICE).status_code == 200
        assert client.get(f"{ended}?wait=61", headers=ALICE).status_code == 422


def test_a_wait_answered_without_holding_leaves_no_hold_behind(
    make_app: Callable[..., Flask], redis_client: redis.Redis
) -> None:
    """404s (no such check, another key's check), a 429 and a 422 with ``?wait``:
    no member left in Redis, nothing counted in the process."""
    app = make_app(max_held_per_key=1)
    client = app.test_client()
    bob = client.post("/v1/checks", json=CHECK, headers=BOB).headers["Location"]
    unknown = "/v1/checks/00000000-0000-4000-8000-000000000000"

    assert client.get(f"{unknown}?wait=5", headers=ALICE).status_code == 404
    assert client.get(f"{bob}?wait=5", headers=ALICE).status_code == 404
    assert client.get(f"{unknown}?wait=61", headers=ALICE).status_code == 404  # 404 first
    assert client.get(f"{bob}?wait=x", headers=BOB).status_code == 422
    with holding(client, redis_client, 1) as location:
        assert_429(client.get(f"{location}?wait=5", headers=ALICE), "too-many-held")
        assert redis_client.zcard("smtpcheck:held:alice") == 1
    assert redis_client.zcard("smtpcheck:held:alice") == 0
    assert redis_client.zcard("smtpcheck:held:bob") == 0
    assert app.extensions["smtpcheck.holds"].held == 0


def test_held_waits_are_capped_per_process(
    make_app: Callable[..., Flask], redis_client: redis.Redis
) -> None:
    client = make_app(max_held=1).test_client()
    with holding(client, redis_client, 1) as location:
        refused = client.get(f"{location}/transcript?wait=2", headers=ALICE)

    assert refused.status_code == 503, refused.get_json()
    assert refused.get_json()["type"] == "urn:smtpcheck:problem:busy"
    assert int(refused.headers["Retry-After"]) >= 1


def test_a_hold_left_by_a_dead_api_process_lapses(
    make_app: Callable[..., Flask], redis_client: redis.Redis
) -> None:
    client = make_app(max_held_per_key=1).test_client()
    location = client.post("/v1/checks", json=CHECK, headers=ALICE).headers["Location"]
    redis_client.zadd("smtpcheck:held:alice", {"dead": time.time() - 1})  # its time is over

    assert client.get(f"{location}?wait=1", headers=ALICE).status_code == 200


# ---------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------


def test_settings_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "SMTPCHECK_RATE_LIMIT": "10/second;100/minute",
            "SMTPCHECK_MAX_CONCURRENT_PER_KEY": "3",
            "SMTPCHECK_MAX_CONCURRENT_PER_TARGET": "1",
        }
    )
    assert settings.rate_limit == "10/second;100/minute"
    assert settings.max_concurrent_per_key == 3
    assert settings.max_concurrent_per_target == 1

    defaults = Settings.from_env({})
    assert defaults.rate_limit == "60/minute;1000/hour"
    assert defaults.max_concurrent_per_key == 10
    assert defaults.max_concurrent_per_target == 2


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SMTPCHECK_RATE_LIMIT", "lots"),
        ("SMTPCHECK_RATE_LIMIT", "10 per fortnight"),
        ("SMTPCHECK_MAX_CONCURRENT_PER_KEY", "0"),
        ("SMTPCHECK_MAX_CONCURRENT_PER_TARGET", "-1"),
        ("SMTPCHECK_MAX_CONCURRENT_PER_TARGET", "two"),
    ],
)
def test_bad_settings_are_refused_at_start(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({variable: value})
    assert raised.value.variable == variable


def test_429_is_in_the_spec(client: FlaskClient) -> None:
    spec = client.get("/openapi.yaml").get_data(as_text=True)
    assert "'429':" in spec
    assert "urn:smtpcheck:problem:rate-limited" in spec
    assert "urn:smtpcheck:problem:too-many-checks" in spec
