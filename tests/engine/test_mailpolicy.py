"""MTA-STS, TLS-RPT and DANE judged for a domain against real things on
loopback: the project's DNS server (a zone signed in the test), an HTTPS
server with a trustme certificate for mta-sts.<domain>, and a STARTTLS
mail server whose certificate the TLSA records do or do not match."""

from __future__ import annotations

import hashlib
import http.server
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from smtpcheck.config import Settings
from smtpcheck.contract import check_request
from smtpcheck.report import render_text
from tests.dns_server import DNSServer, ZoneKey
from tests.engine.test_contract import assert_valid
from tests.smtp_servers import Certificates, SMTPTarget
from workers.engine import run_check
from workers.mailpolicy import assess

DOMAIN = "local.test"
MX = "mail.local.test"
POLICY = b"version: STSv1\nmode: enforce\nmx: mail.local.test\nmax_age: 86400\n"


@dataclass
class PolicyServer:
    """HTTPS on 127.0.0.1 that answers every GET with ``status``, ``body`` and headers."""

    certificates: Certificates
    status: int = 200
    body: bytes = POLICY
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "text/plain"})
    paths: list[str] = field(default_factory=list)

    def start(self) -> PolicyServer:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.paths.append(self.path)
                self.send_response(owner.status)
                for name, value in owner.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(owner.body)))
                self.end_headers()
                self.wfile.write(owner.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.certificates.ca.issue_cert(f"mta-sts.{DOMAIN}").configure_cert(context)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        return self

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def policy_server(certificates: Certificates) -> Iterator[PolicyServer]:
    server = PolicyServer(certificates).start()
    yield server
    server.stop()


def _spki_sha256(certificates: Certificates) -> str:
    leaf = x509.load_pem_x509_certificate(certificates.server_cert.cert_chain_pems[0].bytes())
    spki = leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


@dataclass
class World:
    settings: Settings
    target: SMTPTarget
    dns: DNSServer

    def host_result(self) -> dict[str, Any]:
        return run_check(
            check_request(self.settings, host=MX, port=self.target.port, stop_after="tls"),
            self.settings,
            password=None,
            check_id="policy-test",
        )

    def assess(self, mx_hosts: list[str] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
        policy, findings = assess(
            DOMAIN,
            mx_hosts or [MX],
            [self.host_result()],
            self.settings,
            time.monotonic() + 20,
            port=self.target.port,
        )
        assert_valid(policy, "PolicyFacts")  # the contract's shape, as openapi.yaml publishes it
        by_code = {f["code"]: f["message"] for f in findings}
        return policy, by_code


@pytest.fixture
def world(
    settings: Settings,
    certificates: Certificates,
    smtp_target: Callable[..., SMTPTarget],
    dns_server: Callable[..., DNSServer],
    policy_server: PolicyServer,
    tmp_path: Path,
) -> Callable[..., World]:
    def make(
        *,
        tlsa: str | None = None,
        signed: bool = True,
        sts: str | None = "v=STSv1; id=20261201",
        rpt: str | None = "v=TLSRPTv1; rua=mailto:tlsrpt@local.test",
        dnssec: str = "validate",
        tls: str = "starttls",
        ad: bool = False,
    ) -> World:
        target = smtp_target(tls=tls)
        key = ZoneKey(f"{DOMAIN}.")
        zone: dict[str, dict[str, list[str]]] = {
            f"{DOMAIN}.": {"MX": [f"10 {MX}."], "DNSKEY": [key.dnskey_text]},
            f"{MX}.": {"A": ["127.0.0.1"]},
            f"mta-sts.{DOMAIN}.": {"A": ["127.0.0.1"]},
        }
        if sts is not None:
            zone[f"_mta-sts.{DOMAIN}."] = {"TXT": [f'"{sts}"']}
        if rpt is not None:
            zone[f"_smtp._tls.{DOMAIN}."] = {"TXT": [f'"{rpt}"']}
        if tlsa is not None:
            zone[f"_{target.port}._tcp.{MX}."] = {"TLSA": [tlsa]}
        dns = dns_server(zone, signers=[key] if signed else [], ad=ad)
        anchors = tmp_path / "anchors"
        anchors.write_text(f"{DOMAIN}. IN DS {key.ds_text}\n")
        world_settings = settings.replace(
            dns_servers=(("127.0.0.1", dns.port),),
            dnssec=dnssec,
            dnssec_anchors=str(anchors),
            mta_sts_port=policy_server.port,
        )
        return World(world_settings, target, dns)

    return make


def test_a_matching_tlsa_in_a_signed_zone_is_dane_valid(
    world: Callable[..., World], certificates: Certificates
) -> None:
    policy, found = world(tlsa=f"3 1 1 {_spki_sha256(certificates)}").assess()
    assert "dane_valid" in found, found
    host = policy["dane"]["hosts"][0]
    assert host["authenticated"] is True and host["matched"] == 0
    assert host["reason"] == "validated from the trust anchor"


def test_a_wrong_digest_is_dane_mismatch(world: Callable[..., World]) -> None:
    policy, found = world(tlsa="3 1 1 " + "00" * 32).assess()
    assert "dane_mismatch" in found
    assert "does not match" in found["dane_mismatch"]
    assert policy["dane"]["hosts"][0]["matched"] is None


def test_an_unsigned_zone_is_dane_unauthenticated(
    world: Callable[..., World], certificates: Certificates
) -> None:
    policy, found = world(tlsa=f"3 1 1 {_spki_sha256(certificates)}", signed=False).assess()
    assert policy["dane"]["hosts"][0]["authenticated"] is False
    assert "dane_unauthenticated" in found
    assert "not signed" in found["dane_unauthenticated"]
    assert "dane_valid" not in found


def test_with_dnssec_off_dane_is_unauthenticated_and_says_why(
    world: Callable[..., World], certificates: Certificates
) -> None:
    _, found = world(tlsa=f"3 1 1 {_spki_sha256(certificates)}", dnssec="off").assess()
    assert "SMTPCHECK_DNSSEC=off" in found["dane_unauthenticated"]


def test_no_tlsa_records_give_no_dane_finding(world: Callable[..., World]) -> None:
    policy, found = world().assess()
    assert not [code for code in found if code.startswith("dane_")]
    assert policy["dane"]["hosts"] == []


def test_an_enforced_policy_that_covers_the_mx_is_valid(
    world: Callable[..., World], policy_server: PolicyServer
) -> None:
    policy, found = world().assess()
    assert "mta_sts_valid" in found, found
    assert policy["mta_sts"]["record"] == {"id": "20261201"}
    assert policy["mta_sts"]["policy"]["mode"] == "enforce"
    assert policy["mta_sts"]["hosts"][0]["certificate_ok"] is True
    assert policy_server.paths == ["/.well-known/mta-sts.txt"]
    assert "tls_rpt_valid" in found and "mailto:tlsrpt@local.test" in found["tls_rpt_valid"]


def test_an_mx_host_the_patterns_miss_gets_its_own_finding(world: Callable[..., World]) -> None:
    policy, found = world().assess(mx_hosts=[MX, "backup.other.test"])
    assert "backup.other.test" in found["mta_sts_mx_not_covered"]
    assert "mta_sts_valid" not in found
    covered = {h["host"]: h["covered"] for h in policy["mta_sts"]["hosts"]}
    assert covered == {MX: True, "backup.other.test": False}


def test_testing_mode_is_a_warning(
    world: Callable[..., World], policy_server: PolicyServer
) -> None:
    policy_server.body = POLICY.replace(b"enforce", b"testing")
    _, found = world().assess()
    assert "mta_sts_mode_testing" in found


def test_an_unreachable_policy_host_says_why(
    world: Callable[..., World], policy_server: PolicyServer
) -> None:
    made = world()
    policy_server.stop()
    policy, found = made.assess()
    assert policy["mta_sts"]["policy"] is None
    assert "mta_sts_policy_unreachable" in found
    assert "refused" in found["mta_sts_policy_unreachable"].lower()
    policy_server.start()  # the fixture stops it again


def test_a_redirecting_policy_is_refused(
    world: Callable[..., World], policy_server: PolicyServer
) -> None:
    policy_server.status = 302
    policy_server.headers["Location"] = "https://elsewhere.test/policy"
    _, found = world().assess()
    assert "redirect to https://elsewhere.test/policy" in found["mta_sts_policy_invalid"]
    assert policy_server.paths == ["/.well-known/mta-sts.txt"]  # not followed


def test_a_policy_over_the_size_bound_is_refused(
    world: Callable[..., World], policy_server: PolicyServer
) -> None:
    policy_server.body = POLICY + b"x" * (64 * 1024)
    _, found = world().assess()
    assert "larger than 64 KiB" in found["mta_sts_policy_invalid"]


def test_a_missing_record_is_an_info(world: Callable[..., World]) -> None:
    _, found = world(sts=None, rpt=None).assess()
    assert "mta_sts_record_missing" in found and "tls_rpt_missing" in found


def test_the_policy_fetch_refuses_loopback_unless_allowed(world: Callable[..., World]) -> None:
    made = world()
    result = made.host_result()  # the mail server is on loopback too, allowed for the dialogue
    strict = made.settings.replace(allow_networks=())
    _, findings = assess(DOMAIN, [MX], [result], strict, time.monotonic() + 10)
    message = {f["code"]: f["message"] for f in findings}["mta_sts_policy_unreachable"]
    assert "loopback" in message and "SMTPCHECK_ALLOW_NETWORKS" in message


def test_a_domain_check_reports_the_policy_and_says_when_it_breaks_delivery(
    world: Callable[..., World], policy_server: PolicyServer, certificates: Certificates
) -> None:
    """Through the whole engine, from a request the API normalized: the
    dialogue alone passes, but the enforced policy names another MX."""
    from service.schemas import build_schemas
    from tests.engine.test_contract import assert_valid

    policy_server.body = POLICY.replace(b"mail.local.test", b"mx.elsewhere.test")
    made = world(tlsa=f"3 1 1 {_spki_sha256(certificates)}")
    request = (
        build_schemas(made.settings)
        .check_request()
        .load({"host": DOMAIN, "mx": True, "port": made.target.port, "stop_after": "tls"})
    )
    result = run_check(request, made.settings, password=None, check_id="domain-policy")
    assert_valid(result)
    assert result["ok"] is True  # the dialogue passed: the outcome says so
    assert "but MTA-STS: MX mail.local.test is not covered" in result["summary"]
    codes = {f["code"] for f in result["findings"]}
    assert {"mta_sts_mx_not_covered", "dane_valid", "tls_rpt_valid"} <= codes
    notes = [e["text"] for e in result["transcript"] if e["dir"] == "note"]
    assert any(n.startswith("GET https://mta-sts.local.test:") for n in notes)
    assert any("TLSA: 1 record(s), authenticated" in n for n in notes)
    text = render_text(result)  # what /transcript and `smtpcheck check` print
    assert "MTA-STS  mode enforce, mx mx.elsewhere.test, max_age 86400" in text
    assert "TLS-RPT  mailto:tlsrpt@local.test" in text
    assert f"DANE     {MX}: valid: TLSA 3 1 1 " in text


def test_an_enforced_policy_whose_mx_offers_no_starttls_fails_it(
    world: Callable[..., World],
) -> None:
    _, found = world(tls="none").assess()
    assert "does not offer STARTTLS" in found["policy_mx_no_starttls"]
    assert "no TLS session" in found["mta_sts_certificate_invalid"]
    assert "mta_sts_valid" not in found


def test_an_mx_under_an_enforced_policy_without_requiretls_is_noted(
    world: Callable[..., World],
) -> None:
    _, found = world().assess()
    assert "REQUIRETLS" in found["requiretls_not_offered"]


def test_trust_ad_believes_the_resolvers_ad_bit(
    world: Callable[..., World], certificates: Certificates
) -> None:
    """With trust-ad, no signature is checked here: an unsigned answer with
    the AD bit counts, and one without it does not."""
    tlsa = f"3 1 1 {_spki_sha256(certificates)}"
    policy, found = world(tlsa=tlsa, signed=False, dnssec="trust-ad", ad=True).assess()
    assert "dane_valid" in found
    assert policy["dane"]["hosts"][0]["reason"] == "the validating resolver set the AD bit"
    _, found = world(tlsa=tlsa, dnssec="trust-ad").assess()
    assert "did not set the AD bit" in found["dane_unauthenticated"]
