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
    mx_host: str = MX
    stop_after: str = "tls"

    @property
    def tlsa_name(self) -> str:
        return f"_{self.target.port}._tcp.{self.mx_host}."

    def host_result(self) -> dict[str, Any]:
        return run_check(
            check_request(
                self.settings, host=self.mx_host, port=self.target.port, stop_after=self.stop_after
            ),
            self.settings,
            password=None,
            check_id="policy-test",
        )

    def assess(self, mx_hosts: list[str] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
        policy, findings = assess(
            DOMAIN,
            mx_hosts or [self.mx_host],
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
    """The trust anchor is ``test.``; ``local.test.`` (the mail domain) is a
    signed child zone, or with ``signed=False`` a delegation without DS.
    Beside it, ``hosting.test.`` is always signed and ``plain.test.`` never
    is: ``mx_host`` may name a host in either. The TLSA records go at the MX
    host's name, or at ``tlsa_at``."""

    def make(
        *,
        tlsa: str | None = None,
        signed: bool = True,
        sts: str | None = "v=STSv1; id=20261201",
        rpt: str | None = "v=TLSRPTv1; rua=mailto:tlsrpt@local.test",
        dnssec: str = "validate",
        tls: str = "starttls",
        ad: bool = False,
        mx_host: str = MX,
        cname: str | None = None,
        tlsa_at: str | None = None,
        servfail: tuple[str, ...] = (),
        unsigned: tuple[str, ...] = (),
        implicit: bool = False,
        anchor_ok: bool = True,
        no_ad: tuple[str, ...] = (),
        extra: dict[str, dict[str, list[str]]] | None = None,
    ) -> World:
        target = smtp_target(tls=tls)
        anchor, hosting = ZoneKey("test."), ZoneKey("hosting.test.")
        keys = [anchor, hosting]
        zone: dict[str, dict[str, list[str]]] = {
            "test.": {"DNSKEY": [anchor.dnskey_text]},
            "hosting.test.": {"DNSKEY": [hosting.dnskey_text], "DS": [hosting.ds_text]},
            "plain.test.": {"NS": ["ns.test."]},
            f"{DOMAIN}.": {"MX": [f"10 {mx_host}."]},
            f"mta-sts.{DOMAIN}.": {"A": ["127.0.0.1"]},
        }
        if signed:
            domain_key = ZoneKey(f"{DOMAIN}.")
            keys.append(domain_key)
            zone[f"{DOMAIN}."] |= {"DNSKEY": [domain_key.dnskey_text], "DS": [domain_key.ds_text]}
        else:
            zone[f"{DOMAIN}."]["NS"] = ["ns.test."]
        if cname is not None:
            zone[f"{mx_host}."] = {"CNAME": [f"{cname}."]}
            zone[f"{cname}."] = {"A": ["127.0.0.1"]}
        else:
            zone[f"{mx_host}."] = zone.get(f"{mx_host}.", {}) | {"A": ["127.0.0.1"]}
        if implicit:  # no MX record: the domain is its own mail host (RFC 5321 5.1)
            del zone[f"{DOMAIN}."]["MX"]
        if sts is not None:
            zone[f"_mta-sts.{DOMAIN}."] = {"TXT": [f'"{sts}"']}
        if rpt is not None:
            zone[f"_smtp._tls.{DOMAIN}."] = {"TXT": [f'"{rpt}"']}
        if tlsa is not None:
            zone[f"_{target.port}._tcp.{tlsa_at or mx_host}."] = {"TLSA": [tlsa]}
        port = target.port
        for name, records in (extra or {}).items():
            zone[name.format(port=port)] = records
        dns = dns_server(
            zone,
            signers=keys,
            ad=ad,
            servfail=[entry.format(port=port) for entry in servfail],
            unsigned=[entry.format(port=port) for entry in unsigned],
            no_ad=no_ad,
        )
        anchors = tmp_path / "anchors"
        trusted = anchor if anchor_ok else ZoneKey("test.")  # another key: the anchor fails
        anchors.write_text(f"test. IN DS {trusted.ds_text}\n")
        world_settings = settings.replace(
            dns_servers=(("127.0.0.1", dns.port),),
            dnssec=dnssec,
            dnssec_anchors=str(anchors),
            mta_sts_port=policy_server.port,
        )
        return World(world_settings, target, dns, mx_host)

    return make


def _dane_codes(found: dict[str, str]) -> set[str]:
    return {code for code in found if code.startswith("dane_")}


def test_a_matching_tlsa_in_a_signed_zone_is_dane_valid(
    world: Callable[..., World], certificates: Certificates
) -> None:
    policy, found = world(tlsa=f"3 1 1 {_spki_sha256(certificates)}").assess()
    assert "dane_valid" in found, found
    assert policy["dane"]["mx_security"] == "secure"
    host = policy["dane"]["hosts"][0]
    assert host["status"] == "valid" and host["authenticated"] is True and host["matched"] == 0
    assert host["address_security"] == host["tlsa_security"] == "secure"
    assert host["reason"].startswith("validated from the trust anchor")


def test_a_wrong_digest_is_dane_mismatch(world: Callable[..., World]) -> None:
    policy, found = world(tlsa="3 1 1 " + "00" * 32).assess()
    assert "dane_mismatch" in found
    assert "does not match" in found["dane_mismatch"]
    assert policy["dane"]["hosts"][0]["matched"] is None
    assert policy["dane"]["hosts"][0]["status"] == "mismatch"


def test_a_check_that_stops_before_tls_fails_neither_dane_nor_mta_sts(
    world: Callable[..., World], certificates: Certificates
) -> None:
    """With ``stop_after: ehlo`` no certificate was seen: that is the
    check's scope, not the server's fault (it offers STARTTLS)."""
    made = world(tlsa=f"3 1 1 {_spki_sha256(certificates)}")
    made.stop_after = "ehlo"
    policy, found = made.assess()
    assert _dane_codes(found) == {"dane_unverified"}, found
    assert "the check ended at stage ehlo (ok) without TLS" in found["dane_unverified"]
    assert policy["dane"]["hosts"][0]["status"] == "unverified"
    assert "mta_sts_certificate_invalid" not in found and "policy_mx_no_starttls" not in found
    assert "no certificate was judged" in found["mta_sts_valid"]
    assert policy["mta_sts"]["hosts"][0]["certificate_ok"] is None


def test_only_pkix_records_are_unusable_not_a_mismatch(
    world: Callable[..., World], certificates: Certificates
) -> None:
    """RFC 7672 3.1.3: PKIX-EE/PKIX-TA are not used for SMTP; with nothing
    else, senders require TLS but do not authenticate: no failure."""
    policy, found = world(tlsa=f"1 1 1 {_spki_sha256(certificates)}").assess()
    assert _dane_codes(found) == {"dane_unusable"}, found
    assert "require TLS but do not authenticate" in found["dane_unusable"]
    host = policy["dane"]["hosts"][0]
    assert host["status"] == "unusable" and host["matched"] is None
    assert "is not used for SMTP (RFC 7672 3.1.3)" in host["records"][0]["reason"]


def test_an_unsigned_mx_rrset_means_dane_does_not_apply_even_to_a_signed_match(
    world: Callable[..., World], certificates: Certificates
) -> None:
    """RFC 7672 2.2.1: MX hosts learnt insecurely are not used with DANE,
    even where their own TLSA records are signed and match."""
    made = world(
        tlsa=f"3 1 1 {_spki_sha256(certificates)}", signed=False, mx_host="mail.hosting.test"
    )
    policy, found = made.assess()
    assert _dane_codes(found) == {"dane_not_applicable"}, found
    message = found["dane_not_applicable"]
    assert "the MX RRset of local.test is not DNSSEC-signed" in message
    assert "local.test. is delegated from test. without a DS record" in message
    assert policy["dane"]["mx_security"] == "insecure"
    host = policy["dane"]["hosts"][0]
    assert host["status"] == "not_applicable" and host["records"] == []
    assert host["authenticated"] is True  # the records themselves are signed; senders skip them


def test_unsigned_address_records_mean_dane_does_not_apply(world: Callable[..., World]) -> None:
    policy, found = world(tlsa="3 1 1 " + "00" * 32, mx_host="mail.plain.test").assess()
    assert _dane_codes(found) == {"dane_not_applicable"}, found
    assert (
        "the address records of mail.plain.test are not DNSSEC-signed"
        in (found["dane_not_applicable"])
    )
    host = policy["dane"]["hosts"][0]
    assert (host["status"], host["address_security"]) == ("not_applicable", "insecure")
    assert policy["dane"]["mx_security"] == "secure"


def test_no_tlsa_records_give_no_dane_finding(world: Callable[..., World]) -> None:
    made = world()
    policy, found = made.assess()
    assert not _dane_codes(found), found
    host = policy["dane"]["hosts"][0]
    assert host["status"] == "not_applicable" and host["tlsa_security"] == "secure"
    assert host["reason"] == (
        f"no TLSA records at {made.tlsa_name.rstrip('.')} "
        "(the absence is proven from the trust anchor (NSEC/NSEC3))"
    )


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("servfail", "SERVFAIL"),
        ("stripped signature", "is not signed, but its zone is signed"),
        ("stripped denial", "is not proven (no NSEC/NSEC3 record), but its zone is signed"),
    ],
)
def test_a_failed_or_bogus_tlsa_answer_makes_the_host_unusable(
    world: Callable[..., World], certificates: Certificates, case: str, says: str
) -> None:
    """RFC 7672 2.2: with a secure MX and address, a TLSA lookup that fails
    or does not validate is no "no DANE": senders that use DANE defer."""
    tlsa = None if case == "stripped denial" else f"3 1 1 {_spki_sha256(certificates)}"
    name = f"_{{port}}._tcp.{MX}."
    made = world(
        tlsa=tlsa,
        servfail=(f"{name} TLSA",) if case == "servfail" else (),
        unsigned=(f"{name} TLSA",) if case != "servfail" else (),
    )
    policy, found = made.assess()
    assert _dane_codes(found) == {"dane_lookup_failed"}, found
    assert says in found["dane_lookup_failed"], found["dane_lookup_failed"]
    assert "senders that use DANE do not deliver to it" in found["dane_lookup_failed"]
    assert policy["dane"]["hosts"][0]["status"] == "lookup_failed"


def test_a_bogus_mx_rrset_is_said_once_for_the_domain(world: Callable[..., World]) -> None:
    policy, found = world(tlsa="3 1 1 " + "00" * 32, unsigned=(f"{DOMAIN}. MX",)).assess()
    assert _dane_codes(found) == {"dane_lookup_failed"}, found
    assert "the MX RRset of local.test does not validate" in found["dane_lookup_failed"]
    assert policy["dane"]["mx_security"] == "bogus"
    assert policy["dane"]["hosts"][0]["status"] == "lookup_failed"


def test_an_mx_host_behind_a_cname_uses_the_tlsa_of_its_target(
    world: Callable[..., World], certificates: Certificates
) -> None:
    """RFC 7672 2.2.2: with a secure CNAME, TLSA is looked up at the target first."""
    target = "real.local.test"
    made = world(tlsa=f"3 1 1 {_spki_sha256(certificates)}", cname=target, tlsa_at=target)
    policy, found = made.assess()
    assert "dane_valid" in found, found
    assert policy["dane"]["hosts"][0]["name"] == f"_{made.target.port}._tcp.{target}"


def test_a_domain_without_mx_records_is_judged_as_its_own_host(
    world: Callable[..., World], certificates: Certificates
) -> None:
    """RFC 7672 2.2.2: no MX RRset to judge; the domain's own addresses and TLSA records are."""
    made = world(tlsa=f"3 1 1 {_spki_sha256(certificates)}", mx_host=DOMAIN, implicit=True)
    policy, found = made.assess()
    assert "dane_valid" in found, found
    assert policy["dane"]["mx_security"] is None
    assert policy["dane"]["hosts"][0]["address_security"] == "secure"


def test_a_trust_anchor_that_does_not_verify_is_the_checkers_fault(
    world: Callable[..., World], certificates: Certificates
) -> None:
    """A wrong anchor (or resolvers that strip RRSIGs) would make every
    answer bogus; that is said once as this worker's problem, not blamed on
    the domain as a DANE failure."""
    policy, found = world(tlsa=f"3 1 1 {_spki_sha256(certificates)}", anchor_ok=False).assess()
    assert _dane_codes(found) == {"dane_unauthenticated"}, found
    assert "this worker cannot validate DNSSEC" in found["dane_unauthenticated"]
    assert "no DNSKEY of test. matches its trust anchor" in policy["dane"]["error"]
    assert policy["dane"]["hosts"] == []


def test_a_tlsa_name_that_is_a_cname_is_followed_and_validated(
    world: Callable[..., World], certificates: Certificates
) -> None:
    """RFC 7671 7: TLSA records shared through a CNAME, here into another
    signed zone; every link of the chain must validate."""
    shared = "_dane.hosting.test."
    made = world(
        extra={
            f"_{{port}}._tcp.{MX}.": {"CNAME": [shared]},
            shared: {"TLSA": [f"3 1 1 {_spki_sha256(certificates)}"]},
        }
    )
    policy, found = made.assess()
    assert "dane_valid" in found, found
    assert policy["dane"]["hosts"][0]["tlsa_security"] == "secure"


def test_with_dnssec_off_dane_is_unauthenticated_and_says_why(
    world: Callable[..., World], certificates: Certificates
) -> None:
    policy, found = world(tlsa=f"3 1 1 {_spki_sha256(certificates)}", dnssec="off").assess()
    assert "SMTPCHECK_DNSSEC=off" in found["dane_unauthenticated"]
    assert policy["dane"]["mx_security"] is None
    assert policy["dane"]["hosts"][0]["status"] == "unauthenticated"


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
    assert any(n.startswith(f"_{made.target.port}._tcp.{MX} TLSA: DANE valid") for n in notes)
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
    the AD bit counts, one without it is insecure (DANE does not apply), and
    a SERVFAIL, what a validating resolver answers for a bogus one, fails."""
    tlsa = f"3 1 1 {_spki_sha256(certificates)}"
    policy, found = world(tlsa=tlsa, signed=False, dnssec="trust-ad", ad=True).assess()
    assert "dane_valid" in found
    assert policy["dane"]["hosts"][0]["reason"].startswith("the validating resolver set the AD bit")
    _, found = world(tlsa=tlsa, dnssec="trust-ad", ad=True, no_ad=(f"{DOMAIN}. MX",)).assess()
    assert "did not set the AD bit" in found["dane_not_applicable"]
    assert "MX RRset of local.test is not DNSSEC-signed" in found["dane_not_applicable"]
    policy, found = world(tlsa=tlsa, dnssec="trust-ad").assess()  # a resolver that never sets AD
    assert _dane_codes(found) == {"dane_unauthenticated"}, found
    assert "SMTPCHECK_DNS_SERVERS do not validate" in policy["dane"]["error"]
    servfail = (f"_{{port}}._tcp.{MX}. TLSA",)
    _, found = world(tlsa=tlsa, dnssec="trust-ad", ad=True, servfail=servfail).assess()
    assert _dane_codes(found) == {"dane_lookup_failed"}, found
