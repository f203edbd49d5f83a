"""Errors a caller can provoke: all problem+json, never a 500 for bad input."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import hypothesis
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import strategies
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from service import create_app
from service.checks import json_body
from service.problems import Problem
from smtpcheck.config import ConfigError, Limits, Settings
from smtpcheck.embedded_redis import EmbeddedRedis, free_port
from smtpcheck.redis_client import READ_RETRIES, FailoverRedis
from tests.service.conftest import ALICE, submit

PROBLEM = "application/problem+json"


def assert_problem(response, status: int) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    body = response.get_json()
    assert body["status"] == status
    assert {"type", "title", "status", "detail"} <= set(body)
    return dict(body)


# -- content ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        ('{"host": "mx.example.com"}', "text/plain"),
        ("host=mx.example.com", "application/x-www-form-urlencoded"),
        ('{"host": "mx.example.com"}', None),
    ],
)
def test_wrong_content_type_is_415(
    client: FlaskClient, data: str, content_type: str | None
) -> None:
    response = client.post("/v1/checks", data=data, content_type=content_type, headers=ALICE)

    assert_problem(response, 415)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{",
        b'{"host": "mx.example.com",}',
        b'{"host": NaN}',
        b'{"timeouts": {"total": Infinity}}',
        b'{"host": "\\ud800.example"}',
        b'{"host": "mx.example.com", "\\uDFFF": 1}',
        b'{"host": "\xed\xa0\x80.example"}',  # a surrogate in UTF-8 bytes
        '{"host": "\ud800.example"}'.encode("utf-16-le", "surrogatepass"),
        b"\xff\xfe\x00",
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_body_that_is_not_json_is_400(client: FlaskClient, data: bytes) -> None:
    response = client.post("/v1/checks", data=data, content_type="application/json", headers=ALICE)

    assert_problem(response, 400)


def json_loads_reads(data: bytes) -> object:
    """What json_body made of a body when it called json.loads with parse_constant:
    the outcome its decoder made once must keep (a Problem's detail, or the value)."""

    def refuse(name: str) -> object:
        raise ValueError(f"{name} is not a JSON number")

    try:
        return ["parsed", json.loads(data, parse_constant=refuse)]
    except (ValueError, UnicodeError, RecursionError) as exc:
        return ["400", (str(exc) or type(exc).__name__).splitlines()[0][:200]]


def json_body_reads(app: Flask, data: bytes, content_type: str = "application/json") -> object:
    with app.test_request_context(
        "/v1/checks", method="POST", data=data, content_type=content_type
    ):
        try:
            return ["parsed", json_body()]
        except Problem as problem:
            return [
                str(problem.status),
                problem.detail.removeprefix("the body is not valid JSON: "),
            ]


#: JSON texts and near misses, in the encodings json.loads detects (a BOM included).
JSON_BODIES = strategies.one_of(
    strategies.recursive(
        strategies.none() | strategies.booleans() | strategies.floats() | strategies.text(),
        lambda inner: strategies.lists(inner) | strategies.dictionaries(strategies.text(), inner),
        max_leaves=8,
    ).map(lambda value: json.dumps(value, ensure_ascii=False)),
    strategies.text(alphabet='{}[]":,.0123456789eE+-NaIfinity\\ud800 \u00e9', max_size=30),
).flatmap(
    lambda text: strategies.sampled_from(
        ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32"]
    ).map(lambda encoding: text.encode(encoding, "surrogatepass"))
) | strategies.binary(max_size=30)


@hypothesis.settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],  # one app for all
)
@hypothesis.given(data=JSON_BODIES)
def test_a_body_parses_as_json_loads_parses_it(app: Flask, data: bytes) -> None:
    expected = json_loads_reads(data)
    if expected[0] == "parsed" and not data.isascii():  # a lone surrogate is refused later
        try:
            json.dumps(expected[1], ensure_ascii=False).encode("utf-8")
        except UnicodeError:
            return
    assert json_body_reads(app, data) == expected


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/problem+json",
        "application/jsonx",
        "text/json",
        "text/plain",
        "",
    ],
)
def test_json_is_told_by_its_media_type_as_werkzeug_tells_it(app: Flask, content_type: str) -> None:
    with app.test_request_context("/", method="POST", data=b"1", content_type=content_type) as ctx:
        expected = ["parsed", 1] if ctx.request.is_json else ["415"]
    got = json_body_reads(app, b"1", content_type)
    assert got[:1] == ["415"] if expected == ["415"] else got == expected


def test_json_with_charset_parameter_is_accepted(client: FlaskClient) -> None:
    response = client.post(
        "/v1/checks",
        data=b'{"host": "mx.example.com"}',
        content_type="application/json; charset=utf-8",
        headers=ALICE,
    )

    assert response.status_code == 202


def test_oversized_body_is_413(redis_url: str) -> None:
    settings = Settings(
        redis_url=redis_url, api_keys="alice:key-alice", limits=Limits(max_body_bytes=1000)
    )
    app = create_app(settings)
    client = app.test_client()
    body = b'{"host": "mx.example.com", "data": "' + b"a" * 2000 + b'"}'

    response = client.post("/v1/checks", data=body, content_type="application/json", headers=ALICE)

    assert_problem(response, 413)
    app.extensions["smtpcheck"].close()


def test_default_limit_admits_the_largest_message(client: FlaskClient) -> None:
    body = {
        "host": "mx.example.com",
        "mail_from": "",
        "rcpt_to": ["b@example.com"],
        "data": "a" * (1024 * 1024),
    }
    submit(client, body)


# -- routes ---------------------------------------------------------------------


def test_unknown_route_is_404_problem(client: FlaskClient) -> None:
    assert_problem(client.get("/v2/checks", headers=ALICE), 404)
    assert_problem(client.get("/no-such-page"), 404)  # "/" is the web page


def test_wrong_method_is_405_problem_with_allow(client: FlaskClient) -> None:
    response = client.put("/v1/checks", headers=ALICE)

    assert_problem(response, 405)
    assert "POST" in response.headers["Allow"]


def test_unexpected_error_is_a_logged_500_problem(
    app: Flask, client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    def explode() -> str:
        raise RuntimeError("kaboom")

    app.add_url_rule("/explode", view_func=explode)

    with caplog.at_level(logging.ERROR, logger="smtpcheck.service"):
        body = assert_problem(client.get("/explode"), 500)

    assert "kaboom" not in body["detail"]
    assert any("kaboom" in str(record.exc_info) for record in caplog.records)


# -- API keys -------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic a2V5LWFsaWNlOg=="},
        {"Authorization": "Bearer"},
        {"Authorization": "key-alice"},
    ],
)
def test_missing_or_wrong_key_is_401(client: FlaskClient, headers: dict[str, str]) -> None:
    for response in (
        client.post("/v1/checks", json={"host": "mx.example.com"}, headers=headers),
        client.get("/v1/checks/00000000-0000-4000-8000-000000000000", headers=headers),
        client.get("/v1/vantages", headers=headers),
    ):
        assert_problem(response, 401)
        assert response.headers["WWW-Authenticate"].startswith('Bearer realm="smtpcheck"')


def test_probes_and_spec_need_no_key(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").get_json() == {"status": "ok"}
    assert client.get("/openapi.yaml").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_hashed_keys_are_accepted(redis_url: str) -> None:
    digest = hashlib.sha256(b"carol-key").hexdigest()
    app = create_app(Settings(redis_url=redis_url, api_keys=f"carol:sha256:{digest}"))

    response = app.test_client().get("/v1/vantages", headers={"Authorization": "Bearer carol-key"})

    assert response.status_code == 200
    app.extensions["smtpcheck"].close()


def test_no_keys_with_auth_on_refuses_to_start(redis_url: str) -> None:
    with pytest.raises(ConfigError) as raised:
        create_app(Settings(redis_url=redis_url, api_keys=" , "))

    assert raised.value.variable == "SMTPCHECK_API_KEYS"
    assert "SMTPCHECK_AUTH=off" in raised.value.reason


def test_auth_off_accepts_anyone_and_warns(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="smtpcheck.service"):
        app = create_app({"REDIS_URL": redis_url, "SMTPCHECK_AUTH": "off"})

    assert any("WITHOUT an API key" in record.getMessage() for record in caplog.records)
    client = app.test_client()
    check_id = submit(client, {"host": "mx.example.com"}, headers={})
    assert client.get(f"/v1/checks/{check_id}").status_code == 200
    app.extensions["smtpcheck"].close()


def test_auth_without_secret_key_is_503_not_plaintext(redis_url: str) -> None:
    app = create_app(Settings(redis_url=redis_url, api_keys="alice:key-alice"))
    client = app.test_client()

    response = client.post(
        "/v1/checks",
        json={"host": "mx.example.com", "auth": {"username": "u", "password": "p"}},
        headers=ALICE,
    )

    body = assert_problem(response, 503)
    assert body["type"] == "urn:smtpcheck:problem:misconfigured"
    assert "SMTPCHECK_SECRET_KEY" in body["detail"]
    assert (
        client.post("/v1/checks", json={"host": "mx.example.com"}, headers=ALICE).status_code == 202
    )
    app.extensions["smtpcheck"].close()


# -- Redis away -----------------------------------------------------------------


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every read is still retried READ_RETRIES times before the 503, only
    without the ~1.5 s of backoff a failover needs (test_redis_client.py
    covers that)."""
    fast = ExponentialBackoff(cap=0.01, base=0.001)
    retry = Retry(fast, READ_RETRIES, supported_errors=(redis.ConnectionError,))
    monkeypatch.setattr(FailoverRedis, "read_retry", retry)


@pytest.fixture
def app_without_redis(quick_retries: None) -> Iterator[Flask]:
    app = create_app(
        Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", api_keys="alice:key-alice")
    )
    yield app
    app.extensions["smtpcheck"].close()


def test_redis_down_is_503_for_every_store_call(app_without_redis: Flask) -> None:
    client = app_without_redis.test_client()
    check_path = "/v1/checks/00000000-0000-4000-8000-000000000000"

    for response in (
        client.get("/readyz"),
        client.post("/v1/checks", json={"host": "mx.example.com"}, headers=ALICE),
        client.get(check_path, headers=ALICE),
        client.delete(check_path, headers=ALICE),
        client.get("/v1/vantages", headers=ALICE),
        client.get("/metrics"),
    ):
        body = assert_problem(response, 503)
        assert body["type"] == "urn:smtpcheck:problem:store-unavailable"
        assert response.headers["Retry-After"] == "5"
    assert client.get("/healthz").status_code == 200


def test_recovers_by_itself_when_redis_returns(tmp_path: Path, quick_retries: None) -> None:
    server = EmbeddedRedis(tmp_path, persist=False).start()
    app = create_app(Settings(redis_url=server.url, api_keys="alice:key-alice"))
    client = app.test_client()
    try:
        assert client.get("/readyz").status_code == 200
        check_id = submit(client, {"host": "mx.example.com"})
        server.stop()
        assert_problem(client.get(f"/v1/checks/{check_id}", headers=ALICE), 503)
        assert_problem(client.get("/readyz"), 503)
        server.start()
        assert client.get("/readyz").status_code == 200
        submit(client, {"host": "mx.example.com"})
    finally:
        app.extensions["smtpcheck"].close()
        server.stop()
