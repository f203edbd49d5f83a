"""POST /v1/checks answers pinned byte for byte: the 202 and every refusal a
caller can provoke (401, 415, 400, 413, 422, 429), body and headers in order.

The POST path is tuned for speed (fewer calls per request); these hold what
callers get while it is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from ipaddress import ip_network
from typing import Any

import hypothesis
import pytest
from flask import jsonify
from flask.testing import FlaskClient
from hypothesis import strategies

from service import create_app
from service.checks import _accepted
from smtpcheck.config import Limits, Settings
from smtpcheck.contract import PROBLEM_TYPES
from tests.service.conftest import commands_sent

KEY = {"Authorization": "Bearer key-alice", "X-Request-ID": "pinned-1"}
PROBLEM = "application/problem+json"


@pytest.fixture
def client(redis_url: str) -> Iterator[FlaskClient]:
    settings = Settings(
        redis_url=redis_url,
        secret_key="test-secret",
        api_keys="alice:key-alice",
        allow_networks=(ip_network("127.0.0.0/8"),),
        rate_limit="10/minute",
        max_concurrent_per_key=2,
        limits=Limits(max_body_bytes=1000),
    )
    app = create_app(settings)
    yield app.test_client()
    app.extensions["smtpcheck"].close()


def answer(client: FlaskClient, **request: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    response = client.post("/v1/checks", **request)
    return response.status_code, list(response.headers.items()), response.get_data()


def problem_headers(body: bytes, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [
        ("Content-Type", PROBLEM),
        ("Content-Length", str(len(body))),
        *extra,
        ("X-Request-ID", "pinned-1"),
    ]


REFUSALS: list[tuple[dict[str, Any], int, bytes]] = [
    (
        {"data": '{"host": "mx.example.com"}', "content_type": "text/plain"},
        415,
        b'{"type": "about:blank", "title": "Unsupported Media Type", "status": 415, '
        b'"detail": "send the check as a JSON object with \'Content-Type: application/json\'"}\n',
    ),
    (
        {"data": b'{"host": NaN}', "content_type": "application/json"},
        400,
        b'{"type": "about:blank", "title": "Bad Request", "status": 400, '
        b'"detail": "the body is not valid JSON: NaN is not a JSON number"}\n',
    ),
    (
        {"data": b'{"host": "\xe9"}', "content_type": "application/json"},
        400,
        b'{"type": "about:blank", "title": "Bad Request", "status": 400, '
        b"\"detail\": \"the body is not valid JSON: 'utf-8' codec can't decode byte 0xe9 in "
        b'position 10: invalid continuation byte"}\n',
    ),
    (
        {"data": b'{"data": "' + b"a" * 2000 + b'"}', "content_type": "application/json"},
        413,
        b'{"type": "about:blank", "title": "Request Entity Too Large", "status": 413, '
        b'"detail": "the request body is larger than this service accepts"}\n',
    ),
    (
        {"json": ["x"]},
        422,
        b'{"type": "urn:smtpcheck:problem:validation-error", "title": "Unprocessable Content", '
        b'"status": 422, "detail": "the request is not valid: _schema", '
        b'"errors": {"_schema": ["the request body must be a JSON object"]}}\n',
    ),
    (
        {"json": {"host": "10.0.0.1", "port": "25", "bogus": 1, "tls": "x\u00e9"}},
        422,
        b'{"type": "urn:smtpcheck:problem:validation-error", "title": "Unprocessable Content", '
        b'"status": 422, "detail": "the request is not valid: host, port, tls, bogus", '
        b'"errors": {"host": ["10.0.0.1 is a private address; checks may not target it; the '
        b"operator of this service can allow a network with SMTPCHECK_ALLOW_NETWORKS (CIDRs, "
        b'e.g. SMTPCHECK_ALLOW_NETWORKS=10.0.0.1/32)"], "port": ["must be a JSON integer such '
        b'as 25 (not 25.0 or \\"25\\")"], "tls": ["Must be one of: none, starttls, implicit, '
        b'auto."], "bogus": ["Unknown field."]}}\n',
    ),
    (
        {"json": {"host": "mx.example.com", "stop_after": "rcpt"}},
        422,
        b'{"type": "urn:smtpcheck:problem:validation-error", "title": "Unprocessable Content", '
        b'"status": 422, "detail": "the request is not valid: stop_after", '
        b'"errors": {"stop_after": ["rcpt_to is required to stop after rcpt"]}}\n',
    ),
]

ACCEPTED = re.compile(
    rb'\{"id":"(?P<id>[0-9a-f-]{36})","status":"queued","vantage":"default",'
    rb'"created_at":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z",'
    rb'"links":\{"self":"/v1/checks/(?P=id)","transcript":"/v1/checks/(?P=id)/transcript"\}\}\n'
)


def test_every_answer_of_a_post_is_pinned_to_the_byte(client: FlaskClient) -> None:
    status, headers, body = answer(
        client, json={"host": "mx.example.com"}, headers={"X-Request-ID": "pinned-1"}
    )
    assert (status, body) == (
        401,
        b'{"type": "urn:smtpcheck:problem:unauthorized", "title": "Unauthorized", '
        b'"status": 401, "detail": "send an API key as \'Authorization: Bearer <key>\'"}\n',
    )
    assert headers == problem_headers(body, ("WWW-Authenticate", 'Bearer realm="smtpcheck"'))

    for request, expected_status, expected_body in REFUSALS:  # each one counts once
        assert answer(client, headers=KEY, **request) == (
            expected_status,
            problem_headers(expected_body),
            expected_body,
        )

    for request in (
        {"host": "mx.example.com"},
        {"host": "mx.example.com", "auth": {"username": "u", "password": "p"}},
    ):
        status, headers, body = answer(client, json=request, headers=KEY)
        accepted = ACCEPTED.fullmatch(body)
        assert status == 202 and accepted is not None, body
        assert headers == [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Location", f"/v1/checks/{accepted['id'].decode()}"),
            ("X-Request-ID", "pinned-1"),
        ]

    busy = (
        b'{"type": "urn:smtpcheck:problem:too-many-checks", "title": "Too Many Requests", '
        b'"status": 429, "detail": "too-many-checks: this API key already has 2 of its 2 checks '
        b'queued or running, the most it may have at once; submit more when one has ended"}\n'
    )
    assert answer(client, json={"host": "mx.example.com"}, headers=KEY) == (
        429,
        problem_headers(busy, ("Retry-After", "5")),
        busy,
    )
    status, headers, body = answer(client, json={"host": "mx.example.com"}, headers=KEY)
    wait = dict(headers).get("Retry-After", "")
    assert wait in ("59", "60")  # the window's oldest entry lapses within the minute
    limited = (
        b'{"type": "urn:smtpcheck:problem:rate-limited", "title": "Too Many Requests", '
        b'"status": 429, "detail": "rate-limited: this API key may submit 10 per 1 minute '
        b"checks; try again in " + wait.encode() + b' s"}\n'
    )
    assert (status, headers, body) == (
        429,
        problem_headers(limited, ("Retry-After", wait)),
        limited,
    )


def test_a_post_is_one_round_trip_of_one_command(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The admission script, with the check's writes as its arguments, is all a POST
    at the default vantage sends: one EVALSHA, packed once (service/ratelimit.py)."""
    assert answer(client, json={"host": "mx.example.com"}, headers=KEY)[0] == 202  # warm
    sent = commands_sent(monkeypatch)
    assert answer(client, json={"host": "mx.example.com"}, headers=KEY)[0] == 202
    assert len(sent) == 1
    assert sent[0].split(b"\r\n")[2] == b"EVALSHA"  # *<n>, $7, EVALSHA, ...: one command


def test_vantage_all_with_no_live_worker_is_a_503_of_a_type_the_spec_names(
    client: FlaskClient,
) -> None:
    """Nowhere to run a ``vantage: "all"`` check: 503, with a problem type that
    openapi.yaml's enum lists (it did not before the type joined the contract's)."""
    status, headers, body = answer(
        client, json={"host": "mx.example.com", "vantage": "all"}, headers=KEY
    )
    assert (status, body) == (
        503,
        b'{"type": "urn:smtpcheck:problem:no-live-vantage", "title": "Service Unavailable", '
        b'"status": 503, "detail": "no vantage has a live worker, so vantage \'all\' has '
        b'nowhere to run"}\n',
    )
    assert headers == problem_headers(body)
    assert json.loads(body)["type"] in PROBLEM_TYPES


@hypothesis.settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],  # one app for all
)
@hypothesis.given(
    values=strategies.lists(strategies.text() | strategies.none(), min_size=4, max_size=4),
    debug=strategies.booleans(),
)
def test_the_202_is_jsonifys_to_the_byte(
    client: FlaskClient, values: list[str | None], debug: bool
) -> None:
    """The 202's body and headers, built without jsonify, are jsonify's (then the
    Location), for any strings in it; in debug mode, where jsonify indents, too."""
    app = client.application
    check_id, vantage, created_at, link = values
    location = "/v1/checks/pinned"
    document = {
        "id": check_id,
        "status": "queued",
        "vantage": vantage,
        "created_at": created_at,
        "links": {"self": link, "transcript": check_id},
    }
    app.debug = debug
    try:
        with app.test_request_context("/v1/checks", method="POST"):
            got = _accepted(app, document, location)
            expected = jsonify(document)
    finally:
        app.debug = False
    expected.headers["Location"] = location
    assert (got.status_code, list(got.headers.items()), got.get_data()) == (
        202,
        list(expected.headers.items()),
        expected.get_data(),
    )
