"""/metrics: one scrape of any API process tells the whole story."""

from __future__ import annotations

import functools
import operator
import re
import uuid

import redis
from flask.testing import FlaskClient

from service.requestlog import new_id
from tests.prometheus_text import sample, sample_or_zero
from tests.service.conftest import ALICE, submit
from workers import stats


def scrape(client: FlaskClient) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=0.0.4")
    return response.get_data(as_text=True)


def test_queue_depth_submitted_and_workers(client: FlaskClient) -> None:
    submit(client, {"host": "mx.example.com"})
    submit(client, {"host": "mx2.example.com"})
    text = scrape(client)
    assert sample(text, "smtpcheck_queue_depth", vantage="default") == 2
    assert sample(text, "smtpcheck_checks_submitted_total", vantage="default") == 2
    assert sample(text, "smtpcheck_workers", vantage="default") == 0
    assert sample(text, "smtpcheck_checks_running", vantage="default") == 0


def test_http_requests_by_route_and_status(client: FlaskClient) -> None:
    submit(client, {"host": "mx.example.com"})
    client.get("/v1/checks/00000000-0000-4000-8000-000000000000", headers=ALICE)
    text = scrape(client)
    assert (
        sample(
            text, "smtpcheck_http_requests_total", route="/v1/checks", method="POST", status="202"
        )
        >= 1
    )
    assert (
        sample(
            text,
            "smtpcheck_http_requests_total",
            route="/v1/checks/<check_id>",
            method="GET",
            status="404",
        )
        >= 1
    )
    assert "smtpcheck_http_request_duration_seconds_bucket" in text


def test_finished_checks_and_durations_written_by_workers(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    """workers/stats.py writes the Redis side of the contract; the API reads it."""
    stats.record(redis_client, "default", "ok", 0.3)
    stats.record(redis_client, "default", "ok", 0.7)
    stats.record(redis_client, "eu-west", "connect_timeout", 10.0)
    text = scrape(client)
    assert sample(text, "smtpcheck_checks_finished_total", vantage="default", outcome="ok") == 2
    assert (
        sample(
            text, "smtpcheck_checks_finished_total", vantage="eu-west", outcome="connect_timeout"
        )
        == 1
    )
    bucket = "smtpcheck_check_duration_seconds_bucket"
    assert sample(text, bucket, vantage="default", le="0.25") == 0
    assert sample(text, bucket, vantage="default", le="0.5") == 1
    assert sample(text, bucket, vantage="default", le="1") == 2
    assert sample(text, bucket, vantage="default", le="+Inf") == 2
    assert sample(text, "smtpcheck_check_duration_seconds_count", vantage="default") == 2
    assert abs(sample(text, "smtpcheck_check_duration_seconds_sum", vantage="default") - 1.0) < 1e-9


def test_request_id_is_honoured_or_made(client: FlaskClient) -> None:
    given = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert given.headers["X-Request-ID"] == "abc-123"
    made = client.get("/healthz", headers={"X-Request-ID": "bad id\twith junk"})
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-ID"])
    assert uuid.UUID(made.headers["X-Request-ID"]).version == 4


def test_a_made_request_id_is_what_uuid4_makes() -> None:
    made = [new_id() for _ in range(1000)]
    assert len(set(made)) == len(made)
    for each in made:
        parsed = uuid.UUID(hex=each)
        assert (parsed.hex, parsed.version, parsed.variant) == (each, 4, uuid.RFC_4122)
    values = [int(each, 16) for each in made]
    fixed = uuid.UUID(int=0, version=4).int  # the bits uuid4 sets
    # Every other bit is random: 1000 ids each set it and each clear it somewhere.
    assert functools.reduce(operator.or_, values) == uuid.UUID(int=2**128 - 1, version=4).int
    assert functools.reduce(operator.and_, values) == fixed


def test_accepted_checks_are_counted_without_a_key_name(client: FlaskClient) -> None:
    """An unauthenticated scrape names no API key, neither the key nor its name."""
    name = "smtpcheck_checks_accepted_total"
    before = sample_or_zero(scrape(client), name)
    submit(client, {"host": "mx.example.com"})
    text = scrape(client)
    assert sample(text, name) == before + 1
    assert "key-alice" not in text
    assert "alice" not in text
    assert "mx.example.com" not in text


def test_unknown_methods_and_paths_fold_into_one_series(client: FlaskClient) -> None:
    for i in range(50):
        client.open(f"/nowhere/{i}", method=f"X{i}LOG")
        client.open(f"/v1/checks/{i}/nothing", method="PROPFIND")
    text = scrape(client)
    assert "/nowhere" not in text
    assert "X1LOG" not in text
    assert "PROPFIND" not in text
    series = [
        line for line in text.splitlines() if line.startswith("smtpcheck_http_requests_total{")
    ]
    assert len({line.rpartition(" ")[0] for line in series}) == len(series)
    assert (
        sample(
            text,
            "smtpcheck_http_requests_total",
            route="unmatched",
            method="other",
            status="404",
        )
        >= 50
    )


def test_counted_answers_are_prometheus_clients_own_series() -> None:
    """count() keeps the children .labels() gives: the same series, the same values."""
    from prometheus_client import REGISTRY

    from service import metrics

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    route = "/test/counted/<n>"
    get, brew = {"method": "GET", "status": "200"}, {"method": "other", "status": "other"}
    requests = "smtpcheck_http_requests_total"
    latency = "smtpcheck_http_request_duration_seconds"

    def readings() -> list[float]:
        return [
            value(requests, route=route, **get),
            value(requests, route=route, **brew),
            value(f"{latency}_count", route=route),
            value(f"{latency}_sum", route=route),
            value(f"{latency}_bucket", route=route, le="0.005"),
            value(f"{latency}_bucket", route=route, le="0.0025"),
        ]

    before = readings()
    metrics.count(route, "GET", 200, 0.003)
    metrics.count(route, "GET", 200, 0.004)
    metrics.count(route, "BREW", 999, None)  # not timed: counted, no latency
    after = readings()
    deltas = [round(a - b, 9) for a, b in zip(after, before, strict=True)]
    assert deltas == [2, 1, 2, 0.007, 2, 0]
    assert metrics._requests(route, "GET", "200") is metrics.HTTP_REQUESTS.labels(
        route, "GET", "200"
    )
    assert metrics._latency(route) is metrics.HTTP_LATENCY.labels(route)
