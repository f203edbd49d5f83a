"""DANE for SMTP (RFC 7672, with RFC 7671's rules), the pure part: does
the certificate chain a server presented match one of its TLSA records?

The chain is given as the digests :func:`workers.tls.chain_facts` recorded
at the handshake (SHA-256 and SHA-512 of each certificate and of its
SubjectPublicKeyInfo, and whether each certificate is signed by the next),
so the match can be judged after the dialogue, from the result alone.
Matching type 0 (the full data) is compared by its SHA-256, which is as
exact as comparing the bytes.

- DANE-EE (usage 3): the leaf matches; its names and dates do not matter
  (RFC 7672 3.1.1).
- DANE-TA (usage 2): a certificate of the chain other than the leaf
  matches, every certificate below it is signed by the next, and the leaf
  carries the MX host's name and is within its dates (RFC 7672 3.1.2, 3.2).
- PKIX-TA and PKIX-EE (usages 0 and 1) are unusable for SMTP (RFC 7672
  3.1.3): listed, never matched. When no record is :func:`usable`, a
  sender that uses DANE still requires TLS but does not authenticate
  (RFC 7672 2.2, 3.1).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from workers.tls import name_matches

USAGES = {0: "PKIX-TA", 1: "PKIX-EE", 2: "DANE-TA", 3: "DANE-EE"}
SELECTORS = {0: "Cert", 1: "SPKI"}
MATCHING = {0: "Full", 1: "SHA2-256", 2: "SHA2-512"}


@dataclass(frozen=True)
class TLSARecord:
    usage: int
    selector: int
    matching_type: int
    data: bytes

    def text(self) -> str:
        data = self.data.hex()
        if len(data) > 64:
            data = data[:64] + "..."
        return f"{self.usage} {self.selector} {self.matching_type} {data}"


def _digest_key(selector: int, matching_type: int, data: bytes) -> tuple[str, str] | None:
    """Which recorded digest a record's data is compared with, and its value."""
    part = {0: "cert", 1: "spki"}.get(selector)
    if part is None:
        return None
    if matching_type == 0:
        return f"{part}_sha256", hashlib.sha256(data).hexdigest()
    if matching_type == 1:
        return f"{part}_sha256", data.hex()
    if matching_type == 2:
        return f"{part}_sha512", data.hex()
    return None


def usable(record: TLSARecord) -> bool:
    """Whether an SMTP client can use ``record`` at all (RFC 7672 3.1): a
    DANE usage with a known selector and matching type."""
    return (
        record.usage in (2, 3) and record.selector in SELECTORS and record.matching_type in MATCHING
    )


def _matches(record: TLSARecord, cert: Mapping[str, Any]) -> bool:
    key = _digest_key(record.selector, record.matching_type, record.data)
    return key is not None and cert.get(key[0]) == key[1]


def _leaf_problem(leaf: Mapping[str, Any], names: Sequence[str], now: dt.datetime) -> str | None:
    dns_names = [san[4:] for san in leaf.get("sans") or [] if san.startswith("DNS:")]
    if not any(name_matches(pattern, name) for pattern in dns_names for name in names):
        listed = ", ".join(dns_names) or "none"
        return f"the certificate is not valid for {' or '.join(names)} (it names {listed})"
    if "not_before" not in leaf or "not_after" not in leaf:
        return "the certificate's dates are unknown"
    not_before = dt.datetime.fromisoformat(leaf["not_before"].replace("Z", "+00:00"))
    not_after = dt.datetime.fromisoformat(leaf["not_after"].replace("Z", "+00:00"))
    if now < not_before:
        return f"the certificate is not valid before {leaf['not_before']}"
    if now > not_after:
        return f"the certificate expired on {leaf['not_after']}"
    return None


def match(
    records: Sequence[TLSARecord],
    chain: Sequence[Mapping[str, Any]],
    leaf: Mapping[str, Any] | None,
    names: Sequence[str],
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """Judge ``chain`` (leaf first, :func:`workers.tls.chain_facts`) against
    ``records``. ``leaf`` is the leaf's facts (its ``sans`` and dates, as
    :func:`workers.tls.certificate_facts` has them); ``names`` are the
    reference identifiers of DANE-TA: the MX host name (and the TLSA base
    name, when a CNAME led elsewhere).

    Returns ``{"matched": <index or None>, "records": [{"record", "usage",
    "matched", "reason"}]}``; the first usable record that matches wins.
    """
    now = now or dt.datetime.now(dt.UTC)
    judged: list[dict[str, Any]] = []
    matched: int | None = None
    for index, record in enumerate(records):
        ok, reason = _judge(record, chain, leaf, names, now)
        judged.append(
            {
                "record": record.text(),
                "usage": USAGES.get(record.usage, str(record.usage)),
                "matched": ok,
                "reason": reason,
            }
        )
        if ok and matched is None:
            matched = index
    return {"matched": matched, "records": judged}


def _judge(
    record: TLSARecord,
    chain: Sequence[Mapping[str, Any]],
    leaf: Mapping[str, Any] | None,
    names: Sequence[str],
    now: dt.datetime,
) -> tuple[bool, str]:
    if record.usage in (0, 1):
        return False, f"usage {USAGES[record.usage]} is not used for SMTP (RFC 7672 3.1.3)"
    if record.usage not in (2, 3):
        return False, f"unknown usage {record.usage}"
    if record.selector not in SELECTORS:
        return False, f"unknown selector {record.selector}"
    if record.matching_type not in MATCHING:
        return False, f"unknown matching type {record.matching_type}"
    if not chain:
        return False, "the server presented no certificate"
    if record.usage == 3:
        if _matches(record, chain[0]):
            return True, "the server's certificate matches (DANE-EE)"
        return False, "the server's certificate does not match"
    for depth in range(1, len(chain)):
        if not _matches(record, chain[depth]):
            continue
        if not all(link.get("issued_by_next") for link in chain[:depth]):
            return False, "a certificate in the chain matches, but the chain below it is broken"
        problem = _leaf_problem(leaf or {}, names, now)
        if problem:
            return False, f"the trust anchor matches, but {problem}"
        return True, f"certificate {depth} of the chain matches as trust anchor (DANE-TA)"
    if _matches(record, chain[0]):
        return False, "the leaf matches a DANE-TA record, which must name an issuer"
    return False, "no certificate of the presented chain matches"
