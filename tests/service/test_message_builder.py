"""The message builder takes everything the API accepts (hypothesis), and
the API refuses what it could not build, naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from service.schemas import HEADER_NAME_PATTERN, MAX_LINE, build_schemas, unbuildable
from smtpcheck.config import Settings
from smtpcheck.message import build_message
from tests.service.test_validation import errors_of

SCHEMA = build_schemas(Settings()).check_request()

#: Text as a subject or header value may hold it: anything but controls and
#: line separators, TAB allowed, non-ASCII of every plane included.
header_text = st.text(
    st.characters(
        blacklist_categories=("Cs",),
        blacklist_characters="".join(map(chr, [*range(0x09), *range(0x0A, 0x20), 0x7F]))
        + "".join(map(chr, range(0x80, 0xA0)))
        + "\u2028\u2029",
    ),
    max_size=MAX_LINE,
)
header_name = st.from_regex(HEADER_NAME_PATTERN, fullmatch=True)
addresses = st.sampled_from(
    [
        "a@example.org",
        "postmaster@xn--bcher-kva.example",
        "δοκιμή@παράδειγμα.δοκιμή",
        '"quoted local"@example.com',
        "x+tag@sub.example.net",
    ]
)
helos = st.sampled_from([None, "checker.example.org", "[192.0.2.1]", "[IPv6:2001:db8::1]"])
bodies = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    subject=header_text,
    headers=st.dictionaries(header_name, header_text, max_size=8),
    body=bodies,
    mail_from=st.one_of(st.just(""), addresses),
    rcpt_to=st.lists(addresses, min_size=1, max_size=3),
    helo=helos,
)
def test_the_builder_builds_everything_the_schema_accepts(
    subject: str,
    headers: dict[str, str],
    body: str,
    mail_from: str,
    rcpt_to: list[str],
    helo: str | None,
) -> None:
    request: dict[str, Any] = {
        "host": "mx.example.com",
        "helo": helo,
        "mail_from": mail_from,
        "rcpt_to": rcpt_to,
        "message": {"subject": subject, "headers": headers, "body": body},
    }
    try:
        normalized = SCHEMA.load(request)
    except ValidationError:
        return  # refused with a 422: the worker never sees it
    message = build_message(
        normalized["message"],
        mail_from=normalized["mail_from"],
        rcpt_to=normalized["rcpt_to"],
        helo=normalized["helo"] or "worker.example",
        check_id="0b4e7a52-0000-4000-8000-000000000000",
    )
    assert message.endswith(b"\n") and b"\r\n\r\n" in message


@pytest.mark.parametrize(
    "name", ["Content-Type", "content-transfer-encoding", "Content-Disposition", "MIME-Version"]
)
def test_a_header_the_builder_writes_itself_is_refused(client: FlaskClient, name: str) -> None:
    body = {
        "host": "mx.example.com",
        "mail_from": "a@example.org",
        "rcpt_to": ["b@example.com"],
        "message": {"subject": "s", "headers": {name: "multipart/mixed"}},
    }
    errors = errors_of(client, body)

    assert list(errors) == [f"message.headers.{name}.key"]
    assert "written by the message builder" in errors[f"message.headers.{name}.key"][0]


def test_whatever_the_builder_refuses_is_said_at_the_api() -> None:
    """The last net under the field rules: the schema builds the message once."""
    data = {
        "message": {"subject": "s", "body": "b", "headers": {"Content-Type": "multipart/mixed"}},
        "mail_from": "a@example.org",
        "rcpt_to": ["b@example.com"],
        "helo": None,
    }
    problem = unbuildable(data, "checker.example")

    assert problem is not None and problem.startswith("the message cannot be built: ")
    assert unbuildable({**data, "message": {**data["message"], "headers": {}}}, "c.example") is None
