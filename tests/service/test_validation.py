"""422s: what a caller sees for a request that does not validate."""

from __future__ import annotations

import copy
import json
from ipaddress import ip_network
from typing import Any

import hypothesis
import pytest
import trustme
from flask.testing import FlaskClient
from hypothesis import strategies
from marshmallow import Schema, ValidationError, fields, validates_schema

from service.schemas import JSONInteger, StrictSchema, build_schemas
from smtpcheck.config import Settings
from tests.service.conftest import ALICE, submit

#: The request schema of an app with the suite's allowed networks (tests/service/conftest.py).
REQUEST_SCHEMA = build_schemas(
    Settings(allow_networks=(ip_network("127.0.0.0/8"),), allowed_ports=frozenset({25, 2525}))
).check_request()

FULL: dict[str, Any] = {
    "host": "mx.example.com",
    "helo": "checker.example.org",
    "tls_name": "mail.example.com",
    "auth": {"username": "user", "password": "secret"},
    "mail_from": "a@example.org",
    "rcpt_to": ["b@example.com"],
    "message": {"subject": "hello", "body": "hi", "headers": {"X-Test": "1"}},
}


def post(client: FlaskClient, body: Any) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body, ensure_ascii=False).encode("utf-8")
    response = client.post("/v1/checks", data=data, content_type="application/json", headers=ALICE)
    return response.status_code, response.get_json()


def errors_of(client: FlaskClient, body: Any) -> dict[str, list[str]]:
    status, problem = post(client, body)
    assert status == 422, problem
    assert problem["type"] == "urn:smtpcheck:problem:validation-error"
    assert problem["title"] and problem["detail"]
    return dict(problem["errors"])


def with_value(path: str, value: Any) -> dict[str, Any]:
    """FULL with the field at dotted ``path`` replaced (``rcpt_to.0``, ``message.headers.X``)."""
    body = copy.deepcopy(FULL)
    *parents, last = path.split(".")
    node: Any = body
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return body


def test_the_full_request_is_valid(client: FlaskClient) -> None:
    submit(client, FULL)


WIRE_FIELDS = [
    ("host", "mx.example.com"),
    ("tls_name", "mail.example.com"),
    ("helo", "checker.example.org"),
    ("auth.username", "user"),
    ("auth.password", "secret"),
    ("mail_from", "a@example.org"),
    ("rcpt_to.0", "b@example.com"),
    ("message.subject", "hello"),
    ("message.headers.X-Test", "1"),
]


#: Each ends a line for SMTP, str.splitlines, the email package or a terminal.
SEPARATORS = [
    ("\r\nRSET", "CR (U+000D)"),
    ("\nQUIT", "LF (U+000A)"),
    ("\rX", "CR (U+000D)"),
    ("\x00", "NUL (U+0000)"),
    ("\x0bX", "VT (U+000B)"),
    ("\x0cX", "FF (U+000C)"),
    ("\x1cX", "FS (U+001C)"),
    ("\x1dX", "GS (U+001D)"),
    ("\x1eX", "RS (U+001E)"),
    ("\x1bX", "a control character (U+001B)"),
    ("\x7fX", "DEL (U+007F)"),
    ("\x85X", "NEL (U+0085)"),
    ("\x9bX", "a control character (U+009B)"),
    ("\u2028X", "LINE SEPARATOR (U+2028)"),
    ("\u2029X", "PARAGRAPH SEPARATOR (U+2029)"),
]


@pytest.mark.parametrize(("injection", "named"), SEPARATORS)
@pytest.mark.parametrize(("path", "value"), WIRE_FIELDS)
def test_every_line_or_control_separator_is_refused_in_every_wire_field(
    client: FlaskClient, path: str, value: str, injection: str, named: str
) -> None:
    errors = errors_of(client, with_value(path, value + injection))

    # a header's value is reported as <name>.value, its name as <name>.key
    expected = path + ".value" if path.startswith("message.headers.") else path
    assert errors == {
        expected: [
            "must not contain control characters or line separators: "
            f"{named} at position {len(value)}"
        ]
    }


@pytest.mark.parametrize("path", ["message.subject", "message.headers.X-Test", "auth.password"])
def test_a_tab_is_white_space_in_header_text(client: FlaskClient, path: str) -> None:
    submit(client, with_value(path, "a\tb"))


@pytest.mark.parametrize("path", ["host", "helo", "auth.username", "mail_from", "rcpt_to.0"])
def test_a_tab_is_refused_in_names_and_addresses(client: FlaskClient, path: str) -> None:
    assert path in errors_of(client, with_value(path, "a\tb"))


def test_cr_lf_in_a_header_name_is_refused(client: FlaskClient) -> None:
    body = with_value("message.headers", {"X-Evil\r\nBcc": "x"})

    assert "message.headers.X-Evil\r\nBcc.key" in errors_of(client, body)


@pytest.mark.parametrize("path", ["data", "message.body"])
def test_nul_refused_in_message_text(client: FlaskClient, path: str) -> None:
    body = with_value("message.body", "ok")
    if path == "data":
        del body["message"]
        body["data"] = "Subject: x\r\n\r\nhi\x00"
    else:
        body["message"]["body"] = "hi\x00"

    assert path in errors_of(client, body)


def test_data_may_hold_line_breaks(client: FlaskClient) -> None:
    body = {**FULL, "message": None, "data": "Subject: x\r\n\r\nline 1\nline 2\r\n.\r\n"}

    submit(client, body)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"host": "mx.example.com", "extra": 1}, "extra"),
        ({"host": "mx.example.com", "auth": {"username": "u", "password": "p", "x": 1}}, "auth.x"),
        ({"host": "mx.example.com", "timeouts": {"connect": 5, "read": 5}}, "timeouts.read"),
        ({**FULL, "message": {"subject": "s", "attachments": []}}, "message.attachments"),
    ],
)
def test_unknown_fields_are_rejected(client: FlaskClient, body: dict[str, Any], field: str) -> None:
    errors = errors_of(client, body)

    assert errors[field] == ["Unknown field."]


@pytest.mark.parametrize("port", [25.0, "25", True, None, [25]])
def test_port_must_be_a_json_integer(client: FlaskClient, port: Any) -> None:
    assert "port" in errors_of(client, {"host": "mx.example.com", "port": port})


def test_port_outside_the_allowed_set_names_the_allowed_ports(client: FlaskClient) -> None:
    errors = errors_of(client, {"host": "mx.example.com", "port": 80})

    assert errors["port"] == [
        "port 80 is not allowed; allowed ports: 25, 465, 587, 2525 "
        "(the operator sets them with SMTPCHECK_ALLOWED_PORTS)"
    ]


@pytest.mark.parametrize("host", ["10.1.2.3", "::1", "192.168.1.1", "fe80::1"])
def test_a_private_or_loopback_target_names_the_variable_that_allows_it(
    client: FlaskClient, host: str
) -> None:
    (message,) = errors_of(client, {"host": host})["host"]

    assert "SMTPCHECK_ALLOW_NETWORKS" in message, message


@pytest.mark.parametrize(("field", "value"), [("mx", "yes"), ("mx", 1), ("tls_verify", "true")])
def test_booleans_must_be_json_booleans(client: FlaskClient, field: str, value: Any) -> None:
    assert field in errors_of(client, {"host": "mx.example.com", field: value})


@pytest.mark.parametrize("value", [4.0, "4", 5, True])
def test_ip_version_is_4_or_6(client: FlaskClient, value: Any) -> None:
    assert "ip_version" in errors_of(client, {"host": "mx.example.com", "ip_version": value})


@pytest.mark.parametrize(
    ("timeouts", "field"),
    [
        ({"connect": "10"}, "timeouts.connect"),
        ({"connect": 0}, "timeouts.connect"),
        ({"command": -1}, "timeouts.command"),
        ({"total": 301}, "timeouts.total"),
        ({"total": True}, "timeouts.total"),
        ({"total": None}, "timeouts.total"),
    ],
)
def test_timeouts_are_positive_capped_numbers(
    client: FlaskClient, timeouts: dict[str, Any], field: str
) -> None:
    assert field in errors_of(client, {"host": "mx.example.com", "timeouts": timeouts})


def test_partial_timeouts_keep_the_other_defaults(client: FlaskClient) -> None:
    check_id = submit(client, {"host": "mx.example.com", "timeouts": {"total": 300}})

    response = client.get(f"/v1/checks/{check_id}", headers=ALICE)

    assert response.get_json()["request"]["timeouts"] == {
        "connect": 10.0,
        "command": 30.0,
        "total": 300.0,
    }


@pytest.mark.parametrize(
    "host",
    [
        "10.0.0.1",
        "192.168.1.1",
        "172.16.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "240.0.0.1",
        "192.0.2.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "2001:db8::1",
        "::ffff:127.0.0.1",
        "::ffff:8.8.8.8",
        "64:ff9b::a00:1",
        "2002:a00:1::1",
        "[::1]",
    ],
)
def test_forbidden_ip_literals_are_refused_early(client: FlaskClient, host: str) -> None:
    errors = errors_of(client, {"host": host})

    assert list(errors) == ["host"]
    assert "may not target" in errors["host"][0]


@pytest.mark.parametrize("host", ["8.8.8.8", "2001:4860:4860::8888", "64:ff9b::808:808"])
def test_public_ip_literals_are_accepted(client: FlaskClient, host: str) -> None:
    submit(client, {"host": host})


@pytest.mark.parametrize(
    "host",
    [
        "",
        "a_b.example",
        "-a.example",
        "a-.example",
        "a..example",
        ".example",
        "x" * 64 + ".example",
        ("a" * 62 + ".") * 4 + "com",
        "1.2.3.999",
        "exa mple.com",
        "fe80::1%eth0",
        "[192.0.2.10]",
        "[not-an-ip]",
        "mx.example.com:25",
        "xn--.example",
    ],
)
def test_bad_hostnames_are_refused(client: FlaskClient, host: str) -> None:
    assert list(errors_of(client, {"host": host})) == ["host"]


def test_missing_host(client: FlaskClient) -> None:
    assert errors_of(client, {"port": 25}) == {"host": ["Missing data for required field."]}


@pytest.mark.parametrize(
    "address",
    [
        '"john doe"@example.com',
        "用户@例子.广告",
        "user+tag@[192.0.2.1]",
        "a@[IPv6:2001:db8::1]",
        "o'reilly@example.com",
        "x@xn--bcher-kva.example",
    ],
)
def test_valid_addresses(client: FlaskClient, address: str) -> None:
    submit(client, {"host": "mx.example.com", "mail_from": address, "rcpt_to": [address]})


def test_null_sender_is_accepted_but_not_as_a_recipient(client: FlaskClient) -> None:
    submit(client, {"host": "mx.example.com", "mail_from": "", "rcpt_to": ["b@example.com"]})

    assert "rcpt_to.0" in errors_of(
        client, {"host": "mx.example.com", "mail_from": "", "rcpt_to": [""]}
    )


@pytest.mark.parametrize(
    "address",
    [
        "noatsign",
        "a@",
        "@example.com",
        "a..b@example.com",
        ".a@example.com",
        "a b@example.com",
        "a@b@example.com",
        '"unterminated@example.com',
        "a@exa_mple.com",
        "a@[300.1.1.1]",
        "x" * 65 + "@example.com",
        "a@" + ("b" * 62 + ".") * 4 + "com",
        "<a@example.com>",
    ],
)
def test_bad_addresses_are_refused(client: FlaskClient, address: str) -> None:
    errors = errors_of(client, {"host": "mx.example.com", "mail_from": address})

    assert list(errors) == ["mail_from"]


def test_recipients_are_capped(client: FlaskClient) -> None:
    rcpts = [f"r{i}@example.com" for i in range(21)]

    errors = errors_of(client, {"host": "mx.example.com", "mail_from": "", "rcpt_to": rcpts})

    assert list(errors) == ["rcpt_to"]


def test_data_is_capped_in_octets(client: FlaskClient) -> None:
    base = {"host": "mx.example.com", "mail_from": "", "rcpt_to": ["b@example.com"]}

    assert "data" in errors_of(client, {**base, "data": "a" * (1024 * 1024 + 1)})
    assert "data" in errors_of(client, {**base, "data": "é" * (512 * 1024 + 1)})
    assert "message.body" in errors_of(client, {**base, "message": {"body": "é" * 600_000}})
    status, _ = post(client, {**base, "data": "é" * (512 * 1024)})
    assert status == 202


def test_data_and_message_are_exclusive(client: FlaskClient) -> None:
    errors = errors_of(client, {**FULL, "data": "Subject: x\r\n\r\nhi\r\n"})

    assert list(errors) == ["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"host": "mx.example.com", "stop_after": "auth"}, "stop_after"),
        ({"host": "mx.example.com", "stop_after": "mail"}, "stop_after"),
        ({"host": "mx.example.com", "mail_from": "", "stop_after": "rcpt"}, "stop_after"),
        (
            {
                "host": "mx.example.com",
                "mail_from": "",
                "rcpt_to": ["b@example.com"],
                "stop_after": "data",
            },
            "stop_after",
        ),
        ({"host": "mx.example.com", "tls": "none", "stop_after": "tls"}, "stop_after"),
        ({"host": "mx.example.com", "stop_after": "quit"}, "stop_after"),
        ({"host": "mx.example.com", "rcpt_to": ["b@example.com"]}, "mail_from"),
        ({"host": "mx.example.com", "data": "x"}, "mail_from"),
        ({"host": "mx.example.com", "mail_from": "", "data": "x"}, "rcpt_to"),
        ({"host": "192.0.2.33", "mx": True}, "host"),
        ({"host": "8.8.8.8", "mx": True}, "host"),
        ({"host": "8.8.8.8", "ip_version": 6}, "ip_version"),
    ],
)
def test_inconsistent_requests(client: FlaskClient, body: dict[str, Any], field: str) -> None:
    assert field in errors_of(client, body)


@pytest.mark.parametrize(
    "body",
    [
        {"host": "mx.example.com", "tls": "implicit", "port": 465, "stop_after": "ehlo"},
        {"host": "mx.example.com", "stop_after": "banner"},
        {
            "host": "mx.example.com",
            "auth": {"username": "u", "password": "p", "mechanism": "CRAM-MD5"},
            "stop_after": "auth",
        },
        {
            "host": "example.com",
            "mx": True,
            "mail_from": "",
            "rcpt_to": ["postmaster@example.com"],
            "stop_after": "rcpt",
            "ip_version": 6,
        },
    ],
)
def test_consistent_requests(client: FlaskClient, body: dict[str, Any]) -> None:
    submit(client, body)


@pytest.mark.parametrize("mechanism", ["plain", "XOAUTH2", ""])
def test_auth_mechanism_enum(client: FlaskClient, mechanism: str) -> None:
    body = {
        "host": "mx.example.com",
        "auth": {"username": "u", "password": "p", "mechanism": mechanism},
    }
    assert "auth.mechanism" in errors_of(client, body)


@pytest.mark.parametrize("vantage", ["", "bad name", "x" * 64, "-lead", "a\n"])
def test_vantage_names(client: FlaskClient, vantage: str) -> None:
    assert "vantage" in errors_of(client, {"host": "mx.example.com", "vantage": vantage})


@pytest.mark.parametrize("body", [[], ["host"], "mx.example.com", 25, None, True])
def test_non_object_body_is_422(client: FlaskClient, body: Any) -> None:
    assert errors_of(client, body) == {"_schema": ["the request body must be a JSON object"]}


def test_oversized_collections_are_refused_before_parsing(client: FlaskClient) -> None:
    body = {
        "host": "mx.example.com",
        "mail_from": "",
        "rcpt_to": ["x"] * 50_000,
        "message": {"headers": {f"X-{i}": "v" for i in range(5_000)}},
    }

    errors = errors_of(client, body)

    assert errors == {"rcpt_to": ["at most 20 items"], "message.headers": ["at most 50 entries"]}


def test_a_422_lists_at_most_100_fields(client: FlaskClient) -> None:
    status, problem = post(client, {"host": "mx.example.com", **{f"k{i}": 1 for i in range(500)}})

    assert status == 422
    assert len(problem["errors"]) == 100
    assert "and 490 more" in problem["detail"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"host": "example.com", "mx_hosts": "all"}, "mx_hosts"),
        ({"host": "example.com", "mx": True, "mx_hosts": "some"}, "mx_hosts"),
        ({"host": "mx.example.com", "probes": ["open_relay", "open_relay"]}, "probes"),
        ({"host": "mx.example.com", "probes": ["portscan"]}, "probes.0"),
        ({"host": "mx.example.com", "probes": "vrfy"}, "probes"),
        ({"host": "mx.example.com", "retry_temporary": "yes"}, "retry_temporary"),
        ({"host": "mx.example.com", "retry": {"attempts": 6}}, "retry.attempts"),
        ({"host": "mx.example.com", "retry": {"attempts": 0}}, "retry.attempts"),
        ({"host": "mx.example.com", "retry": {"delay": 3601}}, "retry.delay"),
        ({"host": "mx.example.com", "retry": {"delay": 0.5}}, "retry.delay"),
        ({"host": "mx.example.com", "retry": {"every": 5}}, "retry.every"),
    ],
)
def test_diagnosis_fields_are_validated(
    client: FlaskClient, body: dict[str, Any], field: str
) -> None:
    assert field in errors_of(client, body)


def test_diagnosis_fields_are_kept(client: FlaskClient) -> None:
    body = {
        "host": "example.com",
        "mx": True,
        "mx_hosts": "all",
        "probes": ["open_relay", "vrfy"],
        "retry_temporary": True,
        "retry": {"attempts": 2, "delay": 60},
    }
    check_id = submit(client, body)
    request = client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()["request"]
    assert request["mx_hosts"] == "all"
    assert request["probes"] == ["open_relay", "vrfy"]
    assert request["retry"] == {"attempts": 2, "delay": 60.0}


def test_tls_name_is_a_name_or_an_address_in_its_normal_form(client: FlaskClient) -> None:
    for given, normal in [
        ("Bücher.Example", "xn--bcher-kva.example"),
        ("[2001:DB8::1]", "2001:db8::1"),
    ]:
        check_id = submit(client, {"host": "93.184.215.14", "tls_name": given})
        shown = client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()
        assert shown["request"]["tls_name"] == normal
    assert "tls_name" in errors_of(client, {"host": "93.184.215.14", "tls_name": "bad_name!"})
    assert errors_of(
        client, {"host": "mx.example.com", "tls": "none", "tls_name": "a.example"}
    ) == {"tls_name": ["tls 'none' sees no certificate"]}


def test_tls_ca_must_be_parseable_pem_certificates(client: FlaskClient) -> None:
    ca = trustme.CA()
    pem = ca.cert_pem.bytes().decode("ascii")
    check_id = submit(client, {"host": "mx.example.com", "tls_ca": "\n" + pem + pem})
    stored = client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()["request"]["tls_ca"]
    assert stored == pem + pem  # canonical PEM of exactly the certificates given

    key = ca.private_key_pem.bytes().decode("ascii")
    broken = pem.replace(pem.splitlines()[3], "A" * 64)
    refused = {
        "not pem": "no PEM block (-----BEGIN CERTIFICATE-----) found",
        key: "only CERTIFICATE blocks are accepted (never a private key)",
        pem + key: "only CERTIFICATE blocks are accepted (never a private key)",
        broken: "a PEM block is not a parseable certificate",
        pem * 17: "at most 16 certificates",
        "x" * (64 * 1024 + 1): "longer than 65536 characters",
    }
    for text, message in refused.items():
        assert errors_of(client, {"host": "mx.example.com", "tls_ca": text}) == {
            "tls_ca": [message]
        }


@pytest.mark.parametrize("injection", [injection for injection, _ in SEPARATORS])
def test_a_callback_url_holds_no_control_or_line_separator(
    client: FlaskClient, injection: str
) -> None:
    url = "https://hooks.example.com/x" + injection
    body = {"host": "mx.example.com", "callback": {"url": url, "secret": "s" * 32}}

    assert errors_of(client, body) == {
        "callback.url": ["must not contain spaces or control characters"]
    }


@pytest.mark.parametrize("missing", ["mail_from", "rcpt_to"])
def test_the_smuggling_probe_needs_an_envelope(client: FlaskClient, missing: str) -> None:
    body = copy.deepcopy(FULL)
    del body["message"]
    del body[missing]
    body["probes"] = ["smuggling"]
    assert any("needs mail_from and rcpt_to" in m for m in errors_of(client, body)["probes"])


# ---------------------------------------------------------------------------
# the request schema's load is marshmallow's own, to the byte
# ---------------------------------------------------------------------------

#: Per field, values a body may carry: valid ones, wrong ones, wrong types.
FIELD_VALUES: dict[str, list[Any]] = {
    "host": ["mx.example.com", "127.0.0.1", "10.0.0.1", "[::1]", "bad host", "", 25, None],
    "mx": [True, False, "yes"],
    "mx_hosts": ["first", "all", "some"],
    "port": [25, 2525, 26, "25", 25.0, None],
    "tls": ["none", "starttls", "auto", "x"],
    "tls_verify": [True, "true"],
    "tls_name": [None, "mail.example.com", "192.0.2.1", "a\nb"],
    "tls_ca": [None, "not pem"],
    "helo": [None, "checker.example.org", "[192.0.2.1]", "bad helo"],
    "auth": [
        None,
        {"username": "u", "password": "p"},
        {"username": "u"},
        {"username": "u", "password": "p", "mechanism": "PLAIN", "allow_plaintext": True},
        {"username": "u", "password": "p", "bogus": 1},
        "u:p",
    ],
    "mail_from": [None, "", "a@example.org", "bad"],
    "rcpt_to": [
        [],
        ["b@example.com"],
        ["jörg@example.com", "c@example.com"],
        [""],
        "b@example.com",
    ],
    "data": [None, "Subject: x\r\n\r\nhi\r\n", "a\x00b"],
    "message": [None, {}, {"subject": "hi", "body": "x", "headers": {"X-A": "1"}}, {"bogus": 1}],
    "stop_after": [None, "connect", "ehlo", "tls", "auth", "mail", "rcpt", "data", "quit"],
    "timeouts": [{}, {"total": 100}, {"connect": 0}, {"command": "5"}, {"total": 10**6}],
    "vantage": ["default", "eu-west", "bad name"],
    "ip_version": [None, 4, 6, 5, "4"],
    "probes": [[], ["open_relay"], ["vrfy", "vrfy"], ["smuggling"], ["nope"]],
    "retry_temporary": [True, False, 1],
    "retry": [{}, {"attempts": 3, "delay": 2}, {"attempts": 0}],
    "callback": [
        None,
        {"url": "https://hooks.example.com/x", "secret": "s" * 32},
        {"url": "http://10.0.0.1/"},
    ],
    "bogus": [1],
}

#: Values that mostly make a valid request together (the rules across fields
#: still refuse some mixes).
VALID_VALUES: dict[str, list[Any]] = {
    "host": ["mx.example.com", "127.0.0.1"],
    "port": [25, 2525],
    "tls": ["none", "auto"],
    "tls_verify": [True, False],
    "helo": [None, "checker.example.org"],
    "auth": [None, {"username": "u", "password": "p", "mechanism": "LOGIN"}],
    "mail_from": [None, "a@example.org"],
    "rcpt_to": [[], ["b@example.com"]],
    "stop_after": [None, "connect", "ehlo"],
    "timeouts": [{}, {"total": 100}],
    "vantage": ["default", "eu-west"],
    "ip_version": [None, 4],
    "probes": [[], ["vrfy"]],
    "retry_temporary": [True, False],
    "retry": [{"attempts": 3, "delay": 2}],
}


def loaded(load: Any, body: dict[str, Any]) -> str:
    """What ``load`` makes of ``body`` (or its errors), as JSON: key order included."""
    try:
        return json.dumps(["loaded", load(body)])
    except ValidationError as exc:
        return json.dumps(["refused", exc.messages])


def bodies(values: dict[str, list[Any]]) -> strategies.SearchStrategy[dict[str, Any]]:
    """Bodies holding any of the fields of ``values``, each with one of its values."""
    optional = {name: strategies.sampled_from(choices) for name, choices in values.items()}
    return strategies.fixed_dictionaries({}, optional=optional)


@pytest.mark.parametrize("values", [FIELD_VALUES, VALID_VALUES], ids=["any", "valid"])
@hypothesis.settings(max_examples=120, deadline=None, derandomize=True)
@hypothesis.given(data=strategies.data())
def test_the_request_schema_loads_as_marshmallow_loads(
    values: dict[str, list[Any]], data: strategies.DataObject
) -> None:
    """Its lean load (the fields a body leaves out take their defaults directly) makes
    what marshmallow's own ``Schema.load`` makes of every body: the same request,
    fields in the same order, or the same errors."""
    body = data.draw(bodies(values))
    assert loaded(REQUEST_SCHEMA.load, body) == loaded(MARSHMALLOWS.load, body)


class MarshmallowsLoad(StrictSchema.from_dict(dict(REQUEST_SCHEMA.declared_fields))):  # type: ignore[misc]
    """The request schema's fields loaded by marshmallow's own machinery, the rules
    across fields applied as a schema validator."""

    @validates_schema
    def whole(self, data: dict[str, Any], **kwargs: Any) -> None:
        errors = REQUEST_SCHEMA.whole_errors(data)
        if errors:
            raise ValidationError(errors)


MARSHMALLOWS = MarshmallowsLoad()


def test_a_valid_body_is_loaded_without_marshmallows_schema_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lean load takes a valid body field by field (a nested object still loads
    through its own schema); an invalid one goes to marshmallow's load, whole."""
    loads: list[str] = []
    do_load = Schema._do_load

    def counted(self: Schema, *args: Any, **kwargs: Any) -> Any:
        loads.append(type(self).__name__)
        return do_load(self, *args, **kwargs)

    monkeypatch.setattr(Schema, "_do_load", counted)
    body = {"host": "mx.example.com", "auth": {"username": "u", "password": "p"}}
    assert REQUEST_SCHEMA.load(body)["auth"]["mechanism"] == "auto"
    assert loads == ["AuthSchema"]
    with pytest.raises(ValidationError):
        REQUEST_SCHEMA.load({**body, "port": "25"})
    assert loads[1:] == ["CheckRequestSchema", "AuthSchema"]


def test_the_defaults_of_one_request_are_its_own() -> None:
    """A default list or object is a fresh copy per request: changing one loaded
    request (the API masks secrets, the CLI edits) changes no other."""
    body = {"host": "mx.example.com"}
    first, second = REQUEST_SCHEMA.load(body), REQUEST_SCHEMA.load(body)
    assert first == second
    for name in ("rcpt_to", "probes", "timeouts", "retry"):
        assert first[name] is not second[name], name
    first["rcpt_to"].append("x@example.com")
    first["timeouts"]["total"] = 1
    assert REQUEST_SCHEMA.load(body) == second
    body = {**FULL, "message": {}}
    first, second = REQUEST_SCHEMA.load(body), REQUEST_SCHEMA.load(body)
    assert (
        first["message"]["headers"] == {}
        and first["message"]["headers"] is not (second["message"]["headers"])
    )


@hypothesis.settings(max_examples=300, deadline=None, derandomize=True)
@hypothesis.given(
    value=strategies.integers()
    | strategies.booleans()
    | strategies.floats()
    | strategies.text(max_size=5)
    | strategies.none()
    | strategies.lists(strategies.integers(), max_size=2)
)
def test_a_json_integer_loads_as_a_strict_integer(value: Any) -> None:
    """JSONInteger takes a plain int as it is; the outcome is marshmallow's strict Integer's."""

    def outcome(field: fields.Field) -> Any:
        try:
            loaded = field.deserialize(value)
        except ValidationError as exc:
            return ["refused", exc.messages]
        return ["loaded", type(loaded).__name__, loaded]

    assert outcome(JSONInteger()) == outcome(fields.Integer(strict=True))
