"""Diagnosis depth: MX domains, DNS facts, findings and probes."""

from __future__ import annotations

import time

import pytest

from smtpcheck.contract import check_request
from tests.smtp_servers import TargetHandler, read_line
from workers.engine import run_check
from workers.findings import findings

ZONE = {
    "local.test.": {"MX": ["10 mx1.local.test.", "20 mail.local.test."]},
    "tie.test.": {"MX": ["10 b.tie.test.", "10 a.tie.test."]},
    "a.tie.test.": {"A": ["127.0.0.1"]},
    "b.tie.test.": {"A": ["127.0.0.1"]},
    "mx1.local.test.": {"A": ["127.0.0.2"]},  # nothing listens there: refused
    "mail.local.test.": {"A": ["127.0.0.1"]},
    "nomx.test.": {"A": ["127.0.0.1"]},
    "nullmx.test.": {"MX": ["0 ."]},
    "alias.test.": {"MX": ["10 mx.alias.test."]},
    "mx.alias.test.": {"CNAME": ["mail.local.test."]},
    "literal.test.": {"MX": ["10 127.0.0.1."]},
    "1.0.0.127.in-addr.arpa.": {"PTR": ["mail.local.test."]},
    "2.0.0.127.in-addr.arpa.": {"PTR": ["elsewhere.test."]},
}


@pytest.fixture
def dns_settings(settings, dns_server):
    server = dns_server(ZONE, servfail=["broken.test."])
    return settings.replace(dns_servers=(("127.0.0.1", server.port),))


def codes(result, severity=None):
    return [f["code"] for f in result["findings"] if severity in (None, f["severity"])]


def test_mx_first_moves_on_to_the_host_that_answers(smtp_target, dns_settings):
    target = smtp_target(tls="none")
    result = run_check(
        check_request(dns_settings, host="local.test", mx=True, port=target.port), dns_settings
    )
    assert result["ok"] is True, result["summary"]
    assert result["mx"]["hosts"] == [
        {"preference": 10, "host": "mx1.local.test", "implicit": False},
        {"preference": 20, "host": "mail.local.test", "implicit": False},
    ]
    assert [h["target"]["host"] for h in result["hosts"]] == ["mx1.local.test", "mail.local.test"]
    assert [h["outcome"] for h in result["hosts"]] == ["connect_refused", "ok"]
    assert result["target"]["address"] == "127.0.0.1"
    assert "mail.local.test (after 1 that did not answer)" in result["summary"]
    notes = [e["text"] for e in result["transcript"] if e["dir"] == "note"]
    assert "checking MX host mx1.local.test" in notes
    assert "checking MX host mail.local.test" in notes
    assert all("transcript" not in host for host in result["hosts"])


def test_mx_all_checks_every_host(smtp_target, dns_settings):
    target = smtp_target(tls="none")
    result = run_check(
        check_request(dns_settings, host="local.test", mx=True, mx_hosts="all", port=target.port),
        dns_settings,
    )
    assert result["ok"] is False
    assert result["outcome"] == "connect_refused"
    assert result["summary"].startswith("1 of 2 MX hosts of local.test passed")
    assert result["mx"]["checked"] == 2


def test_mx_ties_are_kept(smtp_target, dns_settings):
    target = smtp_target(tls="none")
    result = run_check(
        check_request(dns_settings, host="tie.test", mx=True, mx_hosts="all", port=target.port),
        dns_settings,
    )
    assert sorted(h["host"] for h in result["mx"]["hosts"]) == ["a.tie.test", "b.tie.test"]
    assert {h["preference"] for h in result["mx"]["hosts"]} == {10}
    assert result["ok"] is True


def test_no_mx_falls_back_to_the_domain_itself(smtp_target, dns_settings):
    target = smtp_target(tls="none")
    result = run_check(
        check_request(dns_settings, host="nomx.test", mx=True, port=target.port), dns_settings
    )
    assert result["mx"]["hosts"] == [{"preference": 0, "host": "nomx.test", "implicit": True}]
    assert result["ok"] is True


@pytest.mark.parametrize(
    ("domain", "words"),
    [
        ("nullmx.test", "null MX (RFC 7505)"),
        ("nothere.test", "NXDOMAIN"),
        ("broken.test", "SERVFAIL"),
    ],
)
def test_mx_dns_failures(dns_settings, domain, words):
    result = run_check(check_request(dns_settings, host=domain, mx=True), dns_settings)
    assert result["outcome"] == "dns_error"
    assert result["ok"] is False
    assert words in result["summary"]
    assert result["findings"][0]["severity"] == "fail"


def test_a_servfail_on_the_mx_lookup_is_temporary(dns_settings):
    result = run_check(check_request(dns_settings, host="broken.test", mx=True), dns_settings)
    assert "for now" in result["summary"] and "delayed, not lost" in result["summary"]
    assert "No mail can be delivered" not in result["summary"]


@pytest.mark.parametrize(
    ("domain", "code", "severity"),
    [("alias.test", "mx_cname", "warning"), ("literal.test", "mx_ip_literal", "fail")],
)
def test_mx_targets_that_break_rfc_5321(smtp_target, dns_settings, domain, code, severity):
    target = smtp_target(tls="none")
    result = run_check(
        check_request(dns_settings, host=domain, mx=True, port=target.port, tls="none"),
        dns_settings,
    )
    assert code in codes(result, severity)
    assert result["outcome"] == "ok"  # the host itself answers; the record is what is wrong


def test_dns_facts_forward_confirmed_ptr(smtp_target, dns_settings):
    target = smtp_target(tls="none")  # greets as mail.local.test
    result = run_check(
        check_request(dns_settings, host="127.0.0.1", port=target.port), dns_settings
    )
    assert result["dns"] == {
        "address": "127.0.0.1",
        "ptr": ["mail.local.test"],
        "ptr_error": None,
        "forward_confirmed": True,
        "banner_host": "mail.local.test",
        "banner_matches_ptr": True,
        "ehlo_host": "mail.local.test",
        "ehlo_matches_ptr": True,
    }
    assert "ptr_ok" in codes(result, "pass")
    assert "banner_host_mismatch" not in codes(result)


def greets_as_mail_local_test(sock):
    sock.sendall(b"220 mail.local.test ESMTP\r\n")
    while line := read_line(sock):
        sock.sendall(b"221 bye\r\n" if line.startswith(b"QUIT") else b"250 ok\r\n")


def test_ptr_not_confirmed_and_banner_mismatch(scripted_server, dns_settings):
    # 127.0.0.2's PTR is elsewhere.test, which does not resolve back to it
    server = scripted_server(greets_as_mail_local_test, host="127.0.0.2")
    result = run_check(
        check_request(dns_settings, host=server.host, port=server.port, tls="none"), dns_settings
    )
    assert result["dns"]["ptr"] == ["elsewhere.test"]
    assert result["dns"]["forward_confirmed"] is False
    assert result["dns"]["banner_matches_ptr"] is False
    assert {"ptr_not_confirmed", "banner_host_mismatch"} <= set(codes(result))


def test_ptr_missing(smtp_target, settings, dns_server):
    server = dns_server({})
    target = smtp_target(tls="none")
    settings = settings.replace(dns_servers=(("127.0.0.1", server.port),))
    result = run_check(check_request(settings, host="127.0.0.1", port=target.port), settings)
    assert result["dns"]["ptr"] == [] and result["dns"]["ptr_error"] is None
    assert "ptr_missing" in codes(result, "warning")


def test_plain_server_findings(smtp_target, dns_settings):
    target = smtp_target(tls="none")
    result = run_check(
        check_request(dns_settings, host="127.0.0.1", port=target.port), dns_settings
    )
    assert {"starttls_missing", "auth_before_tls"} <= set(codes(result, "warning"))
    severities = [f["severity"] for f in result["findings"]]
    order = ["fail", "warning", "info", "pass"]
    assert severities == sorted(severities, key=order.index)  # failures first


def test_starttls_server_findings(smtp_target, dns_settings):
    target = smtp_target(tls="starttls")
    result = run_check(
        check_request(dns_settings, host="127.0.0.1", port=target.port), dns_settings
    )
    assert {"starttls_offered", "tls_version_ok", "certificate_trusted"} <= set(
        codes(result, "pass")
    )


def test_slow_banner(scripted_server, dns_settings):
    def slow(sock):
        time.sleep(0.3)
        greets_as_mail_local_test(sock)

    server = scripted_server(slow)
    settings = dns_settings.replace(slow_banner=0.1)
    result = run_check(
        check_request(settings, host=server.host, port=server.port, stop_after="banner"), settings
    )
    assert result["ok"] is True
    assert "banner_slow" in codes(result, "warning")


def test_open_relay_probe_finds_an_open_relay(smtp_target, dns_settings):
    target = smtp_target(tls="none", handler=TargetHandler(open_relay=True))
    result = run_check(
        check_request(dns_settings, host="127.0.0.1", port=target.port, probes=["open_relay"]),
        dns_settings,
    )
    probe = result["probes"]["open_relay"]
    assert probe["result"] == "open"
    assert result["findings"][0]["code"] == "open_relay"
    assert result["findings"][0]["severity"] == "fail"
    assert target.received == []  # never sends DATA
    clients = [e["text"] for e in result["transcript"] if e["dir"] == "client"]
    assert "RCPT TO:<smtpcheck-relay-probe@example.net>" in clients
    assert "DATA" not in clients
    assert clients[-2:] == ["RSET", "QUIT"]


def test_probes_on_a_well_run_server(smtp_target, dns_settings):
    target = smtp_target(tls="starttls_required")
    result = run_check(
        check_request(
            dns_settings,
            host="127.0.0.1",
            port=target.port,
            probes=["open_relay", "starttls_required", "vrfy", "expn"],
        ),
        dns_settings,
    )
    probes = result["probes"]
    assert probes["starttls_required"]["result"] == "required"
    assert probes["vrfy"]["result"] == "disabled"
    assert probes["expn"]["result"] == "disabled"
    assert probes["open_relay"]["result"] == "closed"  # tried inside TLS, as a sender would
    assert {"starttls_required", "vrfy_disabled", "expn_disabled", "relay_closed"} <= set(
        codes(result, "pass")
    )
    notes = [e["text"] for e in result["transcript"] if e["dir"] == "note"]
    assert "probe vrfy: new connection" in notes


def test_vrfy_enabled(scripted_server, dns_settings):
    def chatty(sock):
        sock.sendall(b"220 mail.local.test ESMTP\r\n")
        while line := read_line(sock):
            if line.startswith(b"VRFY postmaster"):
                sock.sendall(b"250 Postmaster <postmaster@local.test>\r\n")
            elif line.startswith(b"VRFY"):
                sock.sendall(b"550 5.1.1 User unknown\r\n")
            elif line.startswith(b"QUIT"):
                sock.sendall(b"221 bye\r\n")
                return
            else:
                sock.sendall(b"250 ok\r\n")

    server = scripted_server(chatty)
    result = run_check(
        check_request(
            dns_settings, host=server.host, port=server.port, tls="none", probes=["vrfy"]
        ),
        dns_settings,
    )
    assert result["probes"]["vrfy"]["result"] == "enabled"
    assert "vrfy_enabled" in codes(result, "warning")


def _tls_result(version: str, *problems: tuple[str, str]):
    return {
        "outcome": "ok",
        "tls": {
            "mode": "starttls",
            "established": True,
            "version": version,
            "verified": not [code for code, _ in problems if code != "certificate_expiring"],
            "problems": [{"code": code, "message": message} for code, message in problems],
        },
    }


def test_certificate_and_version_findings():
    old = findings(_tls_result("TLSv1"), slow_banner_ms=5000)
    assert "tls_version_old" in [f["code"] for f in old]
    assert "certificate_trusted" in [f["code"] for f in old]
    soon = findings(
        _tls_result("TLSv1.3", ("certificate_expiring", "certificate expires in 10 days")),
        slow_banner_ms=5000,
    )
    expiring = next(f for f in soon if f["code"] == "certificate_expiring")
    assert expiring == {
        "severity": "warning",
        "code": "certificate_expiring",
        "message": "The certificate expires in 10 days",
    }
    every = findings(
        _tls_result(
            "TLSv1.2",
            ("certificate_untrusted", "certificate not trusted: no chain leads to a trusted root"),
            ("certificate_name_mismatch", "certificate is not valid for mx.example.com"),
            ("certificate_expired", "certificate expired on 2026-11-27T00:00:00Z"),
        ),
        slow_banner_ms=5000,
    )
    by_code = {f["code"]: f["severity"] for f in every}
    # an untrusted chain does not hide behind a name mismatch, nor either behind the date
    assert by_code["certificate_untrusted"] == "warning"
    assert by_code["certificate_name_mismatch"] == "warning"
    assert by_code["certificate_expired"] == "fail"
    assert every[0]["code"] == "certificate_expired"  # failures first
    assert "certificate_trusted" not in by_code


def test_no_public_dns_lookup_for_an_allowed_private_address(smtp_target, settings):
    """Without SMTPCHECK_DNS_SERVERS, a loopback/private target is not looked up
    in public DNS (it could only time out), and no PTR finding is made up."""
    target = smtp_target(tls="none")
    result = run_check(check_request(settings, host="127.0.0.1", port=target.port), settings)
    assert result["dns"]["ptr_skipped"].startswith("not a public address")
    assert not [code for code in codes(result) if code.startswith("ptr_")]
