"""DANE (RFC 7672) matching of a presented chain against TLSA records."""

from __future__ import annotations

import hashlib

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from workers import dane
from workers.tls import certificate_facts, chain_facts


@pytest.fixture(scope="module")
def chain() -> list[x509.Certificate]:
    """leaf (mx.sec.test) <- intermediate <- root, as a server would send it."""
    root = trustme.CA()
    intermediate = root.create_child_ca()
    leaf = intermediate.issue_cert("mx.sec.test")
    pems = [blob.bytes() for blob in leaf.cert_chain_pems]
    return [x509.load_pem_x509_certificate(pem) for pem in pems] + [
        x509.load_pem_x509_certificate(root.cert_pem.bytes())
    ]


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _judge(records, certs, names=("mx.sec.test",)):
    return dane.match(records, chain_facts(certs), certificate_facts(certs[0]), list(names))


def test_chain_facts_know_who_signed_whom(chain: list[x509.Certificate]) -> None:
    facts = chain_facts(chain)
    assert [f["issued_by_next"] for f in facts] == [True, True, False]
    assert facts[0]["cert_sha256"] == hashlib.sha256(_der(chain[0])).hexdigest()


@pytest.mark.parametrize(
    ("selector", "matching", "data"),
    [
        (1, 1, lambda c: hashlib.sha256(_spki(c)).digest()),  # 3 1 1, the usual one
        (0, 1, lambda c: hashlib.sha256(_der(c)).digest()),
        (1, 2, lambda c: hashlib.sha512(_spki(c)).digest()),
        (0, 2, lambda c: hashlib.sha512(_der(c)).digest()),
        (1, 0, _spki),
        (0, 0, _der),
    ],
)
def test_dane_ee_matches_the_leaf_by_every_selector_and_type(
    chain: list[x509.Certificate], selector: int, matching: int, data
) -> None:
    record = dane.TLSARecord(3, selector, matching, data(chain[0]))
    judged = _judge([record], chain)
    assert judged["matched"] == 0
    assert "DANE-EE" in judged["records"][0]["reason"]


def test_dane_ee_ignores_the_name(chain: list[x509.Certificate]) -> None:
    record = dane.TLSARecord(3, 1, 1, hashlib.sha256(_spki(chain[0])).digest())
    assert _judge([record], chain, names=["other.test"])["matched"] == 0


def test_a_wrong_digest_does_not_match(chain: list[x509.Certificate]) -> None:
    record = dane.TLSARecord(3, 1, 1, b"\x00" * 32)
    judged = _judge([record], chain)
    assert judged["matched"] is None
    assert judged["records"][0]["reason"] == "the server's certificate does not match"


def test_dane_ta_matches_an_issuer_and_checks_the_name(chain: list[x509.Certificate]) -> None:
    record = dane.TLSARecord(2, 1, 1, hashlib.sha256(_spki(chain[2])).digest())
    judged = _judge([record], chain)
    assert judged["matched"] == 0
    assert "certificate 2 of the chain matches as trust anchor" in judged["records"][0]["reason"]
    wrong_name = _judge([record], chain, names=["mx.other.test"])
    assert wrong_name["matched"] is None
    assert "not valid for mx.other.test" in wrong_name["records"][0]["reason"]


def test_dane_ta_needs_an_unbroken_chain(chain: list[x509.Certificate]) -> None:
    stranger = trustme.CA()
    broken = [chain[0], x509.load_pem_x509_certificate(stranger.cert_pem.bytes())]
    record = dane.TLSARecord(2, 0, 1, hashlib.sha256(_der(broken[1])).digest())
    judged = _judge([record], broken)
    assert judged["matched"] is None
    assert "chain below it is broken" in judged["records"][0]["reason"]


def test_pkix_usages_are_listed_but_never_used(chain: list[x509.Certificate]) -> None:
    record = dane.TLSARecord(1, 1, 1, hashlib.sha256(_spki(chain[0])).digest())
    judged = _judge([record], chain)
    assert judged["matched"] is None
    assert "not used for SMTP" in judged["records"][0]["reason"]


def test_the_first_usable_match_wins(chain: list[x509.Certificate]) -> None:
    records = [
        dane.TLSARecord(3, 1, 1, b"\x01" * 32),
        dane.TLSARecord(3, 1, 1, hashlib.sha256(_spki(chain[0])).digest()),
    ]
    judged = _judge(records, chain)
    assert judged["matched"] == 1
    assert [r["matched"] for r in judged["records"]] == [False, True]
