"""DNSSEC validation of a TLSA answer from the trust anchor down (SMTPCHECK_DNSSEC=validate),
against a zone signed in the test with dnspython and served by the project's DNS server."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import dns.dnssec
import dns.message
import dns.name
import dns.rdata
import dns.rdatatype
import dns.rrset
import pytest

from smtpcheck.config import Settings
from tests.dns_server import DNSServer, ZoneKey
from workers import dnssec
from workers.resolver import Resolver

TLSA = "_25._tcp.mx.sec.test."


def _zone(parent: ZoneKey, child: ZoneKey, ds_of: ZoneKey | None = None) -> dict:
    return {
        "test.": {"DNSKEY": [parent.dnskey_text]},
        "sec.test.": {"DNSKEY": [child.dnskey_text], "DS": [(ds_of or child).ds_text]},
        "mx.sec.test.": {"A": ["127.0.0.1"]},
        TLSA: {"TLSA": ["3 1 1 " + "ab" * 32]},
    }


def _validator(
    server: DNSServer, anchors: str, tmp_path: Path
) -> tuple[dnssec.Validator, Resolver]:
    path = tmp_path / "anchors"
    path.write_text(anchors)
    settings = Settings(dns_servers=(("127.0.0.1", server.port),), dnssec="validate")
    resolver = Resolver(settings, time.monotonic() + 10)
    validator = dnssec.Validator(
        lambda name, rdtype: resolver.secure(name, dns.rdatatype.to_text(rdtype), denials=True),
        dnssec.Anchors.load(str(path)),
    )
    return validator, resolver


def test_a_signed_chain_validates_from_the_anchor(
    dns_server: Callable[..., DNSServer], tmp_path: Path
) -> None:
    parent, child = ZoneKey("test."), ZoneKey("sec.test.")
    server = dns_server(_zone(parent, child), signers=[parent, child])
    validator, resolver = _validator(server, f"test. IN DS {parent.ds_text}\n", tmp_path)
    response = resolver.secure(TLSA, "TLSA")
    assert response is not None
    validator.answer(response)  # no Bogus
    asked = {q for q in server.queries}
    assert ("sec.test.", "DS") in asked and ("test.", "DNSKEY") in asked


def test_a_sha1_ds_beside_a_sha256_one_is_skipped_not_fatal(
    dns_server: Callable[..., DNSServer], tmp_path: Path
) -> None:
    """Many parents still publish a SHA-1 DS next to the SHA-256 one;
    dnspython's policy refuses SHA-1, which must not end the validation."""
    parent, child = ZoneKey("test."), ZoneKey("sec.test.")
    zone = _zone(parent, child)
    sha1 = dns.dnssec.make_ds(child.apex, child.dnskey, 1, policy=dns.dnssec.allow_all_policy)
    zone["sec.test."]["DS"].insert(0, sha1.to_text())
    server = dns_server(zone, signers=[parent, child])
    validator, resolver = _validator(server, f"test. IN DS {parent.ds_text}\n", tmp_path)
    response = resolver.secure(TLSA, "TLSA", denials=True)
    assert response is not None
    assert validator.judge(_name(TLSA), dns.rdatatype.TLSA, response).state == "secure"
    zone["sec.test."]["DS"] = [sha1.to_text()]  # SHA-1 alone: not checkable here, so insecure
    server = dns_server(zone, signers=[parent, child])
    validator, resolver = _validator(server, f"test. IN DS {parent.ds_text}\n", tmp_path)
    response = resolver.secure(TLSA, "TLSA", denials=True)
    assert response is not None
    verdict = validator.judge(_name(TLSA), dns.rdatatype.TLSA, response)
    assert verdict.state == "insecure" and "RFC 6840 5.2" in verdict.reason, verdict


def test_an_anchor_given_as_dnskey_works_too(
    dns_server: Callable[..., DNSServer], tmp_path: Path
) -> None:
    parent, child = ZoneKey("test."), ZoneKey("sec.test.")
    server = dns_server(_zone(parent, child), signers=[parent, child])
    validator, resolver = _validator(
        server, f"test. 3600 IN DNSKEY {parent.dnskey_text}\n", tmp_path
    )
    validator.answer(resolver.secure(TLSA, "TLSA"))


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong anchor", "no DNSKEY of test. matches its trust anchor"),
        ("wrong DS", "no DNSKEY of sec.test. matches its DS records"),
        ("unsigned", "is not signed"),
    ],
)
def test_a_broken_chain_says_where(
    dns_server: Callable[..., DNSServer], tmp_path: Path, case: str, reason: str
) -> None:
    parent, child, stranger = ZoneKey("test."), ZoneKey("sec.test."), ZoneKey("sec.test.")
    anchor = f"test. IN DS {parent.ds_text}\n"
    zone, signers = _zone(parent, child), [parent, child]
    if case == "wrong anchor":
        anchor = f"test. IN DS {ZoneKey('test.').ds_text}\n"
    elif case == "wrong DS":
        zone = _zone(parent, child, ds_of=stranger)
    elif case == "unsigned":
        signers = []
    server = dns_server(zone, signers=signers)
    validator, resolver = _validator(server, anchor, tmp_path)
    with pytest.raises(dnssec.Bogus, match=reason):
        validator.answer(resolver.secure(TLSA, "TLSA"))


def test_anchors_that_are_not_records_are_refused() -> None:
    with pytest.raises(ValueError, match="not a DS or DNSKEY record"):
        dnssec.Anchors("example. IN A 192.0.2.1\n")


def test_the_root_anchors_are_built_in() -> None:
    anchors = dnssec.Anchors.load(None)
    assert dns.name.root in anchors


# -- denial of existence: NSEC (RFC 4035 5.4) and NSEC3 (RFC 5155 8) ------------


def _name(text: str) -> dns.name.Name:
    return dns.name.from_text(text)


def _nsec(owner: str, following: str, types: str) -> tuple[dns.name.Name, dns.rdata.Rdata]:
    return _name(owner), dns.rdata.from_text("IN", "NSEC", f"{following} {types}")


def test_nsec_proves_nodata_an_empty_non_terminal_and_nxdomain() -> None:
    tlsa = dns.rdatatype.TLSA
    chain = [
        _nsec("example.", "_25._tcp.mx.example.", "SOA NS DNSKEY NSEC RRSIG"),
        _nsec("_25._tcp.mx.example.", "mx.example.", "TLSA NSEC RRSIG"),
        _nsec("mx.example.", "example.", "A NSEC RRSIG"),
    ]
    assert dnssec.nsec_denial(_name("mx.example."), tlsa, chain).kind == "nodata"
    # _tcp.mx.example. lies between example. and _25._tcp.mx.example.: an empty non-terminal
    assert dnssec.nsec_denial(_name("_tcp.mx.example."), tlsa, chain).kind == "nodata"
    # _26._tcp.mx.example.: covered, and so is the wildcard *._tcp.mx.example.
    assert dnssec.nsec_denial(_name("_26._tcp.mx.example."), tlsa, chain).kind == "nxdomain"


def test_nsec_that_lists_the_type_or_misses_the_wildcard_proves_nothing() -> None:
    tlsa = dns.rdatatype.TLSA
    with pytest.raises(dnssec.Bogus, match="lists TLSA"):
        dnssec.nsec_denial(
            _name("_25._tcp.mx.example."), tlsa, [_nsec("_25._tcp.mx.example.", "x.", "TLSA")]
        )
    only_the_name = [_nsec("a.example.", "c.example.", "A NSEC RRSIG")]
    with pytest.raises(dnssec.Bogus, match=r"no wildcard \*\.example\. answers"):
        dnssec.nsec_denial(_name("b.example."), tlsa, only_the_name)
    with pytest.raises(dnssec.Bogus, match="no NSEC record proves the absence"):
        dnssec.nsec_denial(_name("d.example."), tlsa, only_the_name)


def _nsec3_chain(
    names: list[str], types: dict[str, str], opt_out: bool = False, zone: str = "example."
) -> list[tuple[dns.name.Name, dns.rdata.Rdata]]:
    """An NSEC3 chain (SHA-1, no salt, no extra iteration) over ``names`` of ``zone``."""
    hashed = sorted((dns.dnssec.nsec3_hash(n, None, 0, 1), n) for n in names)
    chain = []
    for index, (digest, name) in enumerate(hashed):
        following = hashed[(index + 1) % len(hashed)][0]
        flags = 1 if opt_out else 0
        text = f"1 {flags} 0 - {following} {types.get(name, 'A RRSIG')}"
        chain.append((_name(f"{digest}.{zone}"), dns.rdata.from_text("IN", "NSEC3", text)))
    return chain


def test_nsec3_proves_nodata_and_nxdomain_with_a_closest_encloser() -> None:
    tlsa = dns.rdatatype.TLSA
    chain = _nsec3_chain(
        ["example.", "mx.example.", "_tcp.mx.example."],
        {"example.": "SOA NS DNSKEY NSEC3PARAM RRSIG", "_tcp.mx.example.": ""},
    )
    assert dnssec.nsec3_denial(_name("mx.example."), tlsa, chain).kind == "nodata"
    denial = dnssec.nsec3_denial(_name("_25._tcp.mx.example."), tlsa, chain)
    assert denial.kind == "nxdomain"  # closest encloser _tcp.mx.example., no wildcard under it


def test_nsec3_opt_out_is_insecure_and_a_missing_encloser_is_bogus() -> None:
    ds = dns.rdatatype.DS
    chain = _nsec3_chain(["example.", "signed.example."], {}, opt_out=True)
    assert dnssec.nsec3_denial(_name("unsigned.example."), ds, chain).kind == "optout"
    lone = _nsec3_chain(["signed.example."], {})
    with pytest.raises(dnssec.Bogus, match="closest encloser"):
        dnssec.nsec3_denial(_name("a.b.example."), ds, lone)


def test_nsec3_with_a_malformed_owner_or_an_unknown_hash_is_judged_not_raised() -> None:
    chain = _nsec3_chain(["example.", "mx.example."], {})
    broken = [(_name("not-a-hash!.example."), chain[0][1])]
    with pytest.raises(dnssec.Bogus, match="is not a hash"):
        dnssec.nsec3_denial(_name("mx.example."), dns.rdatatype.TLSA, broken)
    owner, rdata = chain[0]
    unknown = dns.rdata.from_text("IN", "NSEC3", rdata.to_text().replace("1 ", "7 ", 1))
    with pytest.raises(dnssec.Insecure, match="hash algorithm 7"):
        dnssec.nsec3_denial(_name("mx.example."), dns.rdatatype.TLSA, [(owner, unknown)])


def test_nsec3_of_another_zone_proves_nothing() -> None:
    """An attacker's zone can hash any name with its own parameters."""
    theirs = _nsec3_chain(["example.", "mx.victim.test."], {})
    with pytest.raises(dnssec.Bogus, match="not all of its zone"):
        dnssec.nsec3_denial(_name("mx.victim.test."), dns.rdatatype.TLSA, theirs)


def test_a_denial_and_an_insecure_delegation_are_judged_from_the_anchor(
    dns_server: Callable[..., DNSServer], tmp_path: Path
) -> None:
    """Through the DNS server: a signed NODATA is secure, an answer below a
    delegation without DS insecure, and a stripped signature bogus."""
    parent, child = ZoneKey("test."), ZoneKey("sec.test.")
    zone = _zone(parent, child) | {
        "plain.test.": {"NS": ["ns.test."]},
        "mx.plain.test.": {"A": ["127.0.0.1"]},
    }
    server = dns_server(zone, signers=[parent, child], unsigned=["mx.sec.test. A"])
    validator, resolver = _validator(server, f"test. IN DS {parent.ds_text}\n", tmp_path)

    def judge(name: str, rdtype: str) -> dnssec.Verdict:
        response = resolver.secure(name, rdtype, denials=True)
        assert response is not None
        return validator.judge(_name(name), dns.rdatatype.from_text(rdtype), response)

    assert judge(TLSA, "TLSA").state == "secure"
    assert judge("mx.sec.test.", "TLSA").state == "secure"  # NODATA, proven by NSEC
    assert judge("nothing.sec.test.", "TLSA").state == "secure"  # NXDOMAIN, proven
    insecure = judge("mx.plain.test.", "A")
    assert insecure.state == "insecure", insecure
    assert "plain.test. is delegated from test. without a DS record" in insecure.reason
    bogus = judge("mx.sec.test.", "A")
    assert bogus.state == "bogus" and "its zone is signed" in bogus.reason


def test_an_nsec3_opt_out_delegation_is_insecure_through_the_validator() -> None:
    """What most unsigned domains look like under a signed TLD: the parent
    proves the DS away with a signed NSEC3 opt-out span. An in-process
    fetch answers like a validating path would (the anchor is the TLD's key)."""
    tld = ZoneKey("test.")
    dnskey = dns.rrset.from_text("test.", 60, "IN", "DNSKEY", tld.dnskey_text)
    chain = _nsec3_chain(["test.", "signed.test."], {}, opt_out=True, zone="test.")

    def fetch(name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> dns.message.Message:
        response = dns.message.make_response(dns.message.make_query(name, rdtype))
        if rdtype == dns.rdatatype.DNSKEY and name == tld.apex:
            response.answer += [dnskey, tld.sign(dnskey)]
        else:  # NODATA / NXDOMAIN: the NSEC3 span, signed
            for owner, rdata in chain:
                rrset = dns.rrset.from_rdata(owner, 60, rdata)
                response.authority += [rrset, tld.sign(rrset)]
        return response

    anchors = dnssec.Anchors(f"test. IN DNSKEY {tld.dnskey_text}\n")
    validator = dnssec.Validator(fetch, anchors)
    unsigned = dns.message.make_response(dns.message.make_query("mx.plain.test.", "MX"))
    unsigned.answer.append(dns.rrset.from_text("mx.plain.test.", 60, "IN", "MX", "10 mx.test."))
    verdict = validator.judge(_name("mx.plain.test."), dns.rdatatype.MX, unsigned)
    assert verdict.state == "insecure", verdict
    assert verdict.reason == "plain.test. is unsigned (an NSEC3 opt-out span of test. covers it)"


def test_a_wildcard_answer_needs_proof_that_the_name_itself_does_not_exist() -> None:
    """RFC 4035 5.3.4: a TLSA RRset made from ``*._tcp.mx.test.`` is secure
    only beside an NSEC that covers the name asked for; without it, the
    signed wildcard could stand in for the name's own records."""
    zone = ZoneKey("test.")
    dnskey = dns.rrset.from_text("test.", 60, "IN", "DNSKEY", zone.dnskey_text)

    def fetch(name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> dns.message.Message:
        response = dns.message.make_response(dns.message.make_query(name, rdtype))
        response.answer += [dnskey, zone.sign(dnskey)]
        return response

    validator = dnssec.Validator(fetch, dnssec.Anchors(f"test. IN DNSKEY {zone.dnskey_text}\n"))
    qname = _name("_25._tcp.mx.test.")
    wildcard = dns.rrset.from_text("*._tcp.mx.test.", 60, "IN", "TLSA", "3 1 1 " + "ab" * 32)
    signature = zone.sign(wildcard)
    expanded = dns.rrset.from_rdata_list(qname, 60, list(wildcard))
    sigs = dns.rrset.from_rdata_list(qname, 60, list(signature))

    def answer(*authority: dns.rrset.RRset) -> dns.message.Message:
        response = dns.message.make_response(dns.message.make_query(qname, "TLSA"))
        response.answer += [expanded, sigs]
        response.authority += list(authority)
        return response

    bare = validator.judge(qname, dns.rdatatype.TLSA, answer())
    assert bare.state == "bogus" and "answered by the wildcard *._tcp.mx.test." in bare.reason
    covering = dns.rrset.from_text("*._tcp.mx.test.", 60, "IN", "NSEC", "a._tcp.mx.test. TLSA")
    proven = validator.judge(qname, dns.rdatatype.TLSA, answer(covering, zone.sign(covering)))
    assert proven.state == "secure", proven


@pytest.mark.parametrize(
    ("case", "state", "reason"),
    [
        ("island", "insecure", "sec.test. is delegated from test. without a DS record"),
        ("not anchored", "insecure", "no trust anchor covers sec.test."),
        ("DS stripped", "bogus", "test. is signed, but the absence of a DS record at sec.test."),
        ("unknown algorithm", "insecure", "sec.test. use only algorithms or digests"),
    ],
)
def test_a_signed_zone_not_signed_from_above_is_an_island(
    dns_server: Callable[..., DNSServer], tmp_path: Path, case: str, state: str, reason: str
) -> None:
    """Signed, but its parent proves it has no DS (a DS not yet published):
    validating resolvers take it as insecure, not bogus."""
    parent, child = ZoneKey("test."), ZoneKey("sec.test.")
    zone = _zone(parent, child)
    del zone["sec.test."]["DS"]
    zone["sec.test."]["NS"] = ["ns.test."]
    if case == "unknown algorithm":  # a DS there, of an algorithm nobody implements
        zone["sec.test."]["DS"] = ["12345 253 2 " + "ab" * 32]
    unsigned = ["sec.test. DS"] if case == "DS stripped" else []
    server = dns_server(zone, signers=[parent, child], unsigned=unsigned)
    anchor = f"test. IN DS {parent.ds_text}\n"
    if case == "not anchored":
        anchor = f"other. IN DS {ZoneKey('other.').ds_text}\n"
    validator, resolver = _validator(server, anchor, tmp_path)
    response = resolver.secure(TLSA, "TLSA", denials=True)
    assert response is not None
    verdict = validator.judge(_name(TLSA), dns.rdatatype.TLSA, response)
    assert (verdict.state, reason in verdict.reason) == (state, True), verdict
