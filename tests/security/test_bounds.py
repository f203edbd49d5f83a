"""Every bound on a request is visible in openapi.yaml, and each is enforced.

The visibility checks read the committed openapi.yaml (which
tests/service/test_spec.py proves is what the app serves) and compare each
bound with the configured default. Enforcement of most bounds is tested
where the feature lives; each row names that test. The bounds tested
nowhere else are enforced here.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from flask.testing import FlaskClient

from service.spec import SPEC_PATH
from smtpcheck.config import Settings
from smtpcheck.contract import PROBES
from tests.security.conftest import ALICE

LIMITS = Settings().limits
SPEC: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
SCHEMAS: dict[str, Any] = SPEC["components"]["schemas"]

#: (schema, property, keyword, value, where the bound is enforced)
BOUNDS = [
    ("CheckRequest", "rcpt_to", "maxItems", LIMITS.max_recipients,
     "tests/service/test_validation.py::test_recipients_are_capped"),
    ("CheckRequest", "data", "maxLength", LIMITS.max_message_bytes,
     "tests/service/test_validation.py::test_data_is_capped_in_octets"),
    ("Message", "body", "maxLength", LIMITS.max_message_bytes, "test_each_string_cap_is_enforced"),
    ("Message", "headers", "maxProperties", 50,
     "tests/service/test_validation.py::test_oversized_collections_are_refused_before_parsing"),
    ("Message", "subject", "maxLength", 998, "test_each_string_cap_is_enforced"),
    ("Timeouts", "connect", "maximum", LIMITS.max_timeouts.connect,
     "tests/service/test_validation.py::test_timeouts_are_positive_capped_numbers"),
    ("Timeouts", "command", "maximum", LIMITS.max_timeouts.command,
     "tests/service/test_validation.py::test_timeouts_are_positive_capped_numbers"),
    ("Timeouts", "total", "maximum", LIMITS.max_timeouts.total,
     "tests/service/test_validation.py::test_timeouts_are_positive_capped_numbers"),
    ("Retry", "attempts", "maximum", LIMITS.max_retry_attempts,
     "tests/service/test_validation.py::test_diagnosis_fields_are_validated"),
    ("Retry", "delay", "maximum", LIMITS.max_retry_delay,
     "tests/service/test_validation.py::test_diagnosis_fields_are_validated"),
    ("CheckRequest", "probes", "maxItems", len(PROBES),
     "tests/service/test_validation.py::test_diagnosis_fields_are_validated"),
    ("CheckRequest", "host", "maxLength", 253, "test_each_string_cap_is_enforced"),
    ("CheckRequest", "helo", "maxLength", 255, "test_each_string_cap_is_enforced"),
    ("CheckRequest", "mail_from", "maxLength", 254, "test_each_string_cap_is_enforced"),
    ("Auth", "username", "maxLength", 255, "test_each_string_cap_is_enforced"),
    ("Auth", "password", "maxLength", 1024, "test_each_string_cap_is_enforced"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("schema", "prop", "keyword", "value", "enforced_by"),
    BOUNDS,
    ids=[f"{row[0]}.{row[1]}.{row[2]}" for row in BOUNDS],
)
def test_each_bound_is_in_the_spec(
    schema: str, prop: str, keyword: str, value: float, enforced_by: str
) -> None:
    assert SCHEMAS[schema]["properties"][prop][keyword] == value


def test_timeouts_must_be_positive_in_the_spec() -> None:
    for name in ("connect", "command", "total"):
        assert SCHEMAS["Timeouts"]["properties"][name]["exclusiveMinimum"] == 0


def test_ports_are_an_enum_of_the_allowed_ones() -> None:
    assert SCHEMAS["CheckRequest"]["properties"]["port"]["enum"] == sorted(Settings().allowed_ports)


def test_the_body_size_limit_and_its_413_are_in_the_spec() -> None:
    """Enforced by tests/service/test_errors.py::test_oversized_body_is_413."""
    post = SPEC["paths"]["/v1/checks"]["post"]
    assert f"at most {LIMITS.max_body_bytes} bytes" in post["requestBody"]["description"]
    assert str(LIMITS.max_body_bytes) in post["responses"]["413"]["description"]


def test_the_wait_cap_is_in_the_spec() -> None:
    """Enforced by tests/service/test_checks.py (``?wait=61`` is a 422)."""
    for path in ("/v1/checks/{check_id}", "/v1/checks/{check_id}/transcript"):
        (wait,) = SPEC["paths"][path]["get"]["parameters"]
        assert wait["name"] == "wait"
        assert wait["schema"]["maximum"] == LIMITS.max_wait
        assert wait["schema"]["minimum"] == 0


def test_the_rate_limits_and_their_429_are_in_the_spec() -> None:
    """Enforced by tests/security/test_ratelimit.py."""
    refused = SPEC["paths"]["/v1/checks"]["post"]["responses"]["429"]
    settings = Settings()
    assert settings.rate_limit in refused["description"]
    assert f"{settings.max_concurrent_per_key} checks queued or running" in refused["description"]
    assert "Retry-After" in refused["headers"]
    assert "urn:smtpcheck:problem:rate-limited" in SCHEMAS["Problem"]["properties"]["type"]["enum"]


def body_with(path: str, value: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "host": "mx.example.com",
        "helo": "checker.example.org",
        "auth": {"username": "user", "password": "secret"},
        "mail_from": "a@example.org",
        "rcpt_to": ["b@example.com"],
        "message": {"subject": "hello", "body": "hi"},
    }
    node = body
    *parents, last = path.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    return body


def label_name(length: int) -> str:
    """A syntactically fine host name of ``length`` characters."""
    labels = []
    while length > 0:
        size = min(63, length)
        labels.append("a" * size)
        length -= size + 1
    name = ".".join(labels)
    return name[:-1] + "x" if name.endswith(".") else name


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("host", label_name(254)),
        ("helo", label_name(256)),
        ("mail_from", "a@" + label_name(253)),
        ("auth.username", "u" * 256),
        ("auth.password", "p" * 1025),
        ("message.subject", "s" * 999),
        ("message.body", "b" * (LIMITS.max_message_bytes + 1)),
        ("message.body", "\u00e9" * (LIMITS.max_message_bytes // 2 + 1)),  # octets, not chars
    ],
)
def test_each_string_cap_is_enforced(client: FlaskClient, path: str, value: str) -> None:
    data = json.dumps(body_with(path, value), ensure_ascii=False).encode()
    assert len(data) < LIMITS.max_body_bytes  # refused for the field, not the body size
    response = client.post("/v1/checks", data=data, content_type="application/json", headers=ALICE)

    assert response.status_code == 422, response.get_json()
    assert path in response.get_json()["errors"]


def test_the_same_strings_at_their_cap_are_accepted(client: FlaskClient) -> None:
    body = body_with("auth.password", "p" * 1024)
    body["auth"]["username"] = "u" * 255
    body["message"]["subject"] = "s" * 998
    body["host"] = label_name(253)
    response = client.post("/v1/checks", json=body, headers=ALICE)

    assert response.status_code == 202, response.get_json()
