"""Certificate facts against real TLS servers (aiosmtpd with trustme
certificates): every problem at once, the name checked, SNI, tls_ca."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from smtpcheck.config import Settings
from tests.smtp_servers import Certificates, SMTPTarget
from workers.tls import name_matches

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., SMTPTarget]]:
    """``tls_server(names, **validity)``: an implicit-TLS aiosmtpd whose
    certificate comes from its own trustme CA (trusted only when asked)."""
    started: list[SMTPTarget] = []

    def start(names: tuple[str, ...] = ("mail.local.test",), **validity: Any) -> SMTPTarget:
        certificates = Certificates(tmp_path_factory.mktemp("ca"), names, **validity)
        target = SMTPTarget(certificates, tls="implicit").start()
        target.certificates = certificates  # type: ignore[attr-defined]
        started.append(target)
        return target

    yield start
    for target in started:
        target.stop()


def trusting(settings: Settings, target: SMTPTarget) -> Settings:
    return settings.replace(ca_file=target.certificates.ca_file)  # type: ignore[attr-defined]


def codes(result: dict[str, Any]) -> list[str]:
    return [problem["code"] for problem in result["tls"]["problems"]]


def test_an_ip_literal_is_verified_by_its_chain_unless_tls_name_names_it(
    tls_server, check, settings
):
    target = tls_server(("mail.local.test",))  # no IP in the certificate
    settings_ = trusting(settings, target)
    sni = target.certificates.sni_seen

    by_ip = check(host=target.host, port=target.port, tls="implicit", settings_=settings_)
    assert by_ip["ok"] is True, by_ip["summary"]
    assert by_ip["tls"]["verified"] is True and by_ip["tls"]["problems"] == []
    assert by_ip["tls"]["verify_name"] is None and by_ip["tls"]["sni"] is None

    named = check(
        host=target.host,
        port=target.port,
        tls="implicit",
        tls_name="mail.local.test",
        tls_verify=True,
        settings_=settings_,
    )
    assert named["ok"] is True, named["summary"]
    assert named["tls"]["verified"] is True
    assert named["tls"]["sni"] == named["tls"]["verify_name"] == "mail.local.test"

    asked_ip = check(
        host=target.host,
        port=target.port,
        tls="implicit",
        tls_name="127.0.0.1",
        tls_verify=True,
        settings_=settings_,
    )
    assert asked_ip["outcome"] == "tls_untrusted"
    assert codes(asked_ip) == ["certificate_name_mismatch"]
    assert "not valid for 127.0.0.1 (it names DNS:mail.local.test)" in asked_ip["summary"]
    assert asked_ip["tls"]["sni"] is None  # an IP address is verified, never sent as SNI
    # what the server saw (aiosmtpd's own start-up probe came first)
    assert sni[-3:] == [None, "mail.local.test", None]


def test_every_certificate_problem_is_reported_at_once(tls_server, check, settings):
    """An untrusted chain does not hide behind a name mismatch, nor both behind the date."""
    target = tls_server(
        ("mail.local.test",),
        not_before=NOW - dt.timedelta(days=90),
        not_after=NOW - dt.timedelta(days=1),
    )
    relaxed = check(
        host=target.host,
        port=target.port,
        tls="implicit",
        tls_name="other.local.test",
        settings_=settings.replace(ca_file=None),
    )
    assert relaxed["ok"] is True  # without tls_verify the facts are only reported
    assert codes(relaxed) == [
        "certificate_untrusted",
        "certificate_name_mismatch",
        "certificate_expired",
    ]
    assert relaxed["tls"]["verified"] is False
    error = relaxed["tls"]["verify_error"]
    assert "not trusted" in error and "not valid for other.local.test" in error
    assert "expired on" in error
    found = {f["code"]: f["severity"] for f in relaxed["findings"]}
    assert found["certificate_untrusted"] == "warning"
    assert found["certificate_name_mismatch"] == "warning"
    assert found["certificate_expired"] == "fail"
    assert "certificate_trusted" not in found

    strict = check(
        host=target.host,
        port=target.port,
        tls="implicit",
        tls_name="other.local.test",
        tls_verify=True,
        settings_=settings.replace(ca_file=None),
    )
    assert strict["outcome"] == "tls_untrusted"


def test_not_yet_valid_fails_and_expiring_soon_only_warns(tls_server, check, settings):
    def strict_check(**validity: Any) -> dict[str, Any]:
        target = tls_server(("mail.local.test",), **validity)
        return check(
            host="127.0.0.1",
            port=target.port,
            tls="implicit",
            tls_name="mail.local.test",
            tls_verify=True,
            settings_=trusting(settings, target),
        )

    result = strict_check(not_before=NOW + dt.timedelta(days=2))
    assert result["outcome"] == "tls_untrusted"
    assert codes(result) == ["certificate_not_yet_valid"]

    result = strict_check(not_after=NOW + dt.timedelta(days=10))
    assert result["ok"] is True, result["summary"]
    assert result["tls"]["verified"] is True
    assert codes(result) == ["certificate_expiring"]
    assert result["tls"]["problems"][0]["message"].startswith("certificate expires in 9 days")
    assert "certificate_expiring" in [f["code"] for f in result["findings"]]


def test_tls_ca_is_trusted_for_one_check_on_top_of_the_store(tls_server, check, settings):
    target = tls_server(("mail.local.test",))
    ca_pem = target.certificates.ca.cert_pem.bytes().decode("ascii")
    alone = settings.replace(ca_file=None)

    without = check(
        host=target.host, port=target.port, tls="implicit", tls_verify=True, settings_=alone
    )
    assert without["outcome"] == "tls_untrusted"
    assert codes(without) == ["certificate_untrusted"]

    with_ca = check(
        host=target.host,
        port=target.port,
        tls="implicit",
        tls_verify=True,
        tls_ca=ca_pem,
        settings_=alone,
    )
    assert with_ca["ok"] is True, with_ca["summary"]
    assert with_ca["tls"]["verified"] is True


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("mail.example.com", "MAIL.example.com.", True),
        ("*.example.com", "mail.example.com", True),
        ("*.example.com", "a.b.example.com", False),  # one label only
        ("*.example.com", "example.com", False),
        ("*.com", "example.com", False),  # not a whole registrable domain
        ("m*.example.com", "mail.example.com", False),  # partial wildcards are not honoured
    ],
)
def test_name_matching_follows_rfc_6125(pattern: str, name: str, matches: bool) -> None:
    assert name_matches(pattern, name) is matches
