"""Resolution and the target policy, through a real (local) DNS server."""

from __future__ import annotations

import time

import pytest

from smtpcheck.contract import check_request
from workers.engine import run_check
from workers.errors import DNSError
from workers.resolver import Resolver

ZONE = {
    "mx.local.test.": {"A": ["127.0.0.1"], "AAAA": ["::1"]},
    "v4only.local.test.": {"A": ["127.0.0.1"]},
    "private.local.test.": {"A": ["10.1.2.3"]},
    "mixed.local.test.": {"A": ["192.168.1.1", "127.0.0.1"]},
    "nodata.local.test.": {"TXT": ["hello"]},
    "half.local.test.": {"A": ["127.0.0.1"]},
}


@pytest.fixture
def dns_settings(settings, dns_server):
    server = dns_server(
        ZONE, servfail=["broken.local.test.", "half.local.test. AAAA"], silent=["slow.local.test."]
    )
    return settings.replace(dns_servers=(("127.0.0.1", server.port),))


def test_name_resolves_and_the_dialled_address_is_recorded(smtp_target, dns_settings):
    target = smtp_target(tls="none")
    result = run_check(
        check_request(dns_settings, host="v4only.local.test", port=target.port, tls="none"),
        dns_settings,
    )
    assert result["ok"] is True, result["summary"]
    assert result["target"]["address"] == "127.0.0.1"
    assert result["target"]["addresses"] == ["127.0.0.1"]
    assert result["transcript"][0]["text"] == "resolving v4only.local.test (A/AAAA)"
    assert result["transcript"][1]["text"] == "resolved v4only.local.test to 127.0.0.1"
    assert "resolve" in result["timings"]


def test_ip_version_is_honoured(smtp_target, dns_settings):
    target = smtp_target(tls="none")
    four = run_check(
        check_request(
            dns_settings, host="mx.local.test", port=target.port, tls="none", ip_version=4
        ),
        dns_settings,
    )
    assert four["target"]["addresses"] == ["127.0.0.1"] and four["ok"] is True
    six = run_check(
        check_request(
            dns_settings, host="mx.local.test", port=target.port, ip_version=6, stop_after="connect"
        ),
        dns_settings,
    )
    assert six["target"]["addresses"] == ["::1"]
    # aiosmtpd listens on 127.0.0.1 only: ::1 refuses, which proves it dialled ::1
    assert six["target"]["address"] == "::1"
    assert six["outcome"] in ("connect_refused", "network_unreachable")


@pytest.mark.parametrize(
    ("host", "words"),
    [
        ("nothere.local.test", "does not exist (NXDOMAIN)"),
        ("broken.local.test", "SERVFAIL"),
        ("nodata.local.test", "has no address"),
        ("slow.local.test", "timed out"),
    ],
)
def test_dns_failures_are_dns_error(dns_settings, host, words):
    result = run_check(
        check_request(dns_settings, host=host, timeouts={"connect": 1, "command": 1, "total": 3}),
        dns_settings,
    )
    assert result["outcome"] == "dns_error"
    assert result["stage"] == "connect"
    assert words in result["summary"]


@pytest.mark.parametrize(
    ("host", "temporary"),
    [
        ("broken.local.test", True),  # SERVFAIL
        ("slow.local.test", True),  # no answer in time
        ("nothere.local.test", False),  # NXDOMAIN is an answer
        ("nodata.local.test", False),
    ],
)
def test_servfail_and_timeouts_are_temporary(dns_settings, host, temporary):
    with pytest.raises(DNSError) as failed:
        Resolver(dns_settings.replace(dns_timeout=1.0), time.monotonic() + 5).addresses(host, None)
    assert failed.value.temporary is temporary
    assert ("temporary DNS failure, try again later" in str(failed.value)) is temporary


def test_one_address_type_failing_for_now_does_not_hide_the_other(dns_settings):
    resolver = Resolver(dns_settings, time.monotonic() + 5)
    assert [str(a) for a in resolver.addresses("half.local.test", None)] == ["127.0.0.1"]
    with pytest.raises(DNSError, match="SERVFAIL") as failed:
        resolver.addresses("half.local.test", 6)
    assert failed.value.temporary is True
    with pytest.raises(DNSError, match=r"has no IPv6 address \(no AAAA record\)"):
        resolver.addresses("v4only.local.test", 6)


def test_system_resolver_reads_etc_hosts(smtp_target, settings):
    target = smtp_target(tls="none")
    result = run_check(
        check_request(settings, host="localhost", port=target.port, tls="none", ip_version=4),
        settings,
    )
    assert result["ok"] is True
    assert result["target"]["address"] == "127.0.0.1"


def test_resolved_private_address_is_forbidden(dns_settings):
    result = run_check(check_request(dns_settings, host="private.local.test"), dns_settings)
    assert result["outcome"] == "target_forbidden"
    assert "10.1.2.3 is not a public address (private)" in result["summary"]


def test_only_permitted_addresses_are_dialled(smtp_target, dns_settings):
    target = smtp_target(tls="none")
    result = run_check(
        check_request(dns_settings, host="mixed.local.test", port=target.port, tls="none"),
        dns_settings,
    )
    assert result["ok"] is True
    assert result["target"]["address"] == "127.0.0.1"
    notes = [e["text"] for e in result["transcript"] if e["dir"] == "note"]
    assert "not dialling: 192.168.1.1 is not a public address (private)" in notes
