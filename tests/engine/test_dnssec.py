"""DNSSEC validation of a TLSA answer from the trust anchor down (SMTPCHECK_DNSSEC=validate),
against a zone signed in the test with dnspython and served by the project's DNS server."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import dns.name
import dns.rdatatype
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
        lambda name, rdtype: resolver.secure(name, dns.rdatatype.to_text(rdtype)),
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
        ("not anchored", "test. has no DS record in its parent"),
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
    elif case == "not anchored":
        anchor = f"other. IN DS {ZoneKey('other.').ds_text}\n"
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
