"""Results the real engine produces, against the published openapi.yaml.

Each check runs against a real server (aiosmtpd with trustme certificates,
a scripted socket server, the test DNS server), from a request normalized
by the API's own schema, as a worker receives it. Its result must validate
against openapi.yaml's CheckResult: every object there is closed, so a key
the engine adds without the contract (smtpcheck/contract.py) fails here.
"""

from __future__ import annotations

import functools
import socket
from typing import Any

import jsonschema
import pytest
import yaml

from service.schemas import build_schemas
from service.spec import SPEC_PATH
from smtpcheck.config import Settings
from tests.smtp_servers import LOCAL_DOMAIN, USERS, TargetHandler
from workers.engine import run_check

ZONE = {
    "local.test.": {"MX": ["10 dead.local.test.", "20 mail.local.test."]},
    "dead.local.test.": {"A": ["127.0.0.2"]},  # nothing listens there: refused
    "mail.local.test.": {"A": ["127.0.0.1"]},
    "1.0.0.127.in-addr.arpa.": {"PTR": ["mail.local.test."]},
}


@functools.cache
def spec_validator(component: str) -> jsonschema.Draft202012Validator:
    document = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
    schema = {"$ref": f"#/components/schemas/{component}", "components": document["components"]}
    return jsonschema.Draft202012Validator(schema)


def assert_valid(result: dict[str, Any], component: str = "CheckResult") -> None:
    """``result`` matches openapi.yaml's ``component``, or every mismatch is said."""
    errors = sorted(spec_validator(component).iter_errors(result), key=lambda e: list(e.path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.path)) or '(top)'}: {e.message[:300]}" for e in errors
    )


@pytest.fixture
def engine(settings: Settings, dns_server):
    """``engine(password=None, **request)``: normalize as the API does, run as a worker does."""
    server = dns_server(ZONE)
    settings = settings.replace(dns_servers=(("127.0.0.1", server.port),))
    schema = build_schemas(settings).check_request()

    def run(*, settings_: Settings | None = None, **request: Any) -> dict[str, Any]:
        normalized = schema.load(request)
        auth = normalized.get("auth")
        password = auth["password"] if auth else None
        result = run_check(normalized, settings_ or settings, password=password, check_id="c1")
        assert_valid(result)
        return result

    return run


def test_a_whole_dialogue_with_starttls_auth_data_and_probes(smtp_target, engine):
    target = smtp_target(tls="starttls")
    result = engine(
        host="127.0.0.1",
        port=target.port,
        tls="starttls",
        auth={"username": "alice", "password": USERS["alice"], "mechanism": "LOGIN"},
        mail_from="alice@example.org",
        rcpt_to=[f"bob@{LOCAL_DOMAIN}"],
        message={"subject": "contract", "body": "hi", "headers": {"X-Test": "1"}},
        probes=["open_relay", "starttls_required", "vrfy", "expn"],
    )
    assert result["ok"] is True, result["summary"]
    assert result["auth"]["accepted"] is True and result["data"]["accepted"] is True
    assert set(result["probes"]) == {"open_relay", "starttls_required", "vrfy", "expn"}
    assert result["tls"]["established"] is True and result["dns"] is not None


@pytest.mark.parametrize(
    ("request_", "stage", "outcome"),
    [
        (
            {"mail_from": "a@example.org", "rcpt_to": [f"nobody@{LOCAL_DOMAIN}"]},
            "rcpt",
            "recipient_rejected",
        ),
        (
            {"auth": {"username": "alice", "password": "wrong"}, "tls": "none"},
            "auth",
            "auth_failed",
        ),
        ({"tls": "starttls"}, "tls", "starttls_unavailable"),  # required, not offered
        # no TLS on offer: the credentials are not sent
        ({"auth": {"username": "alice", "password": "x"}}, "auth", "starttls_unavailable"),
        (
            {"auth": {"username": "alice", "password": "wrong", "allow_plaintext": True}},
            "auth",
            "auth_failed",
        ),
    ],
)
def test_refusals(smtp_target, engine, request_, stage, outcome):
    target = smtp_target(tls="none")
    result = engine(host="127.0.0.1", port=target.port, **request_)
    assert (result["ok"], result["stage"], result["outcome"]) == (False, stage, outcome)


def test_every_certificate_problem(smtp_target, engine, settings):
    target = smtp_target(tls="implicit")
    result = engine(
        host="127.0.0.1",
        port=target.port,
        tls="implicit",
        tls_verify=True,
        tls_name="other.local.test",
        settings_=settings.replace(ca_file=None),
    )
    assert result["outcome"] == "tls_untrusted"
    assert [p["code"] for p in result["tls"]["problems"]] == [
        "certificate_untrusted",
        "certificate_name_mismatch",
    ]


def test_connect_failure_and_dns_failure(engine):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        refused = engine(host="127.0.0.1", port=unused.getsockname()[1])
    assert refused["outcome"] == "connect_refused" and refused["dns"] is None
    unknown = engine(host="nothere.local.test")
    assert unknown["outcome"] == "dns_error"


def test_mx_domain_with_every_host(smtp_target, engine):
    target = smtp_target(tls="none", handler=TargetHandler())
    result = engine(host="local.test", mx=True, mx_hosts="all", port=target.port, tls="none")
    assert [host["target"]["host"] for host in result["hosts"]] == [
        "dead.local.test",
        "mail.local.test",
    ]
    assert result["mx"]["checked"] == 2
    missing = engine(host="nothere.local.test", mx=True)
    assert missing["outcome"] == "dns_error" and missing["mx"]["hosts"] == []
