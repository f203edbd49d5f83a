"""Is a DNS answer DNSSEC-authenticated? As ``SMTPCHECK_DNSSEC`` says:

- ``off``: never (DANE is then reported as unauthenticated, with that reason);
- ``trust-ad``: the resolvers in ``SMTPCHECK_DNS_SERVERS`` validate, and
  their AD bit is believed (use it only with a validating resolver you
  reach over a path you trust, such as one on the same host);
- ``validate``: smtpcheck validates itself, with dnspython: every RRset of
  the answer (a CNAME chain included) must carry an RRSIG that verifies
  with its zone's DNSKEY set, and that set must chain, DS by DS, up to a
  trust anchor: the root's KSKs, or ``SMTPCHECK_DNSSEC_ANCHORS`` (a file of
  DS or DNSKEY records in zone-file syntax, for a private or test zone).

Only positive answers are judged: TLSA records that are there. An
authenticated denial (NSEC/NSEC3) is not needed for what smtpcheck does
with it: no TLSA record means no DANE, whether or not the absence is signed.

The DNS traffic goes through :class:`workers.resolver.Resolver`, so it has
the check's deadline; this module only says what to ask and how to judge.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import dns.dnssec
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone

MODES = ("off", "trust-ad", "validate")
#: The root zone's key-signing keys (KSK-2017 and KSK-2024), as DS records.
ROOT_ANCHORS = """
. IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D
. IN DS 38696 8 2 683D2D0ACB8C9B712A1948B27F741219298D0A450D612C483AF444A4C0FB2B16
"""
#: How many zone cuts a chain of trust may climb before it is given up.
MAX_DEPTH = 12

#: ``fetch(name, rdtype)``: the whole DNS response to a DO query (RRSIGs
#: included), or None when the name or type does not exist.
Fetch = Callable[[dns.name.Name, dns.rdatatype.RdataType], "dns.message.Message | None"]


class Bogus(Exception):
    """The answer does not validate; the message says where the chain breaks."""


@dataclass(frozen=True)
class Verdict:
    authenticated: bool
    reason: str


class Anchors:
    """Trust anchors by zone: DS and DNSKEY records."""

    def __init__(self, text: str) -> None:
        self.ds: dict[dns.name.Name, list[dns.rdata.Rdata]] = {}
        self.keys: dict[dns.name.Name, list[dns.rdata.Rdata]] = {}
        for line in text.splitlines():
            line = line.split(";", 1)[0].strip()
            if not line:
                continue
            try:
                rrset = dns.rrset.from_text(*_anchor_fields(line))
            except (dns.exception.DNSException, ValueError) as exc:
                raise ValueError(f"not a DS or DNSKEY record: {line[:80]!r} ({exc})") from None
            target = self.ds if rrset.rdtype == dns.rdatatype.DS else self.keys
            target.setdefault(rrset.name, []).extend(rrset)

    @classmethod
    def load(cls, path: str | None) -> Anchors:
        """The root anchors, or those of the file at ``path``."""
        return cls(Path(path).read_text(encoding="ascii") if path else ROOT_ANCHORS)

    def __contains__(self, zone: dns.name.Name) -> bool:
        return zone in self.ds or zone in self.keys


def _anchor_fields(line: str) -> tuple[str, int, str, str, str]:
    parts = line.split()
    name = parts.pop(0)
    ttl = 3600
    if parts and parts[0].isdigit():
        ttl = int(parts.pop(0))
    if parts and parts[0].upper() == "IN":
        parts.pop(0)
    if len(parts) < 2 or parts[0].upper() not in ("DS", "DNSKEY"):
        raise ValueError("expected DS or DNSKEY")
    return name, ttl, "IN", parts[0].upper(), " ".join(parts[1:])


class Validator:
    """Validates RRsets of DO responses up to the anchors, caching each
    zone's DNSKEY set for the length of one check."""

    def __init__(self, fetch: Fetch, anchors: Anchors, now: float | None = None) -> None:
        self.fetch = fetch
        self.anchors = anchors
        self.now = now
        self._keys: dict[dns.name.Name, dns.rrset.RRset] = {}

    def answer(self, response: dns.message.Message) -> None:
        """Every RRset in the answer section verifies, or :class:`Bogus`."""
        rrsets = [r for r in response.answer if r.rdtype != dns.rdatatype.RRSIG]
        if not rrsets:
            raise Bogus("the answer holds no records")
        for rrset in rrsets:
            self.rrset(rrset, response.answer, depth=0)

    def rrset(self, rrset: dns.rrset.RRset, section: Iterable[dns.rrset.RRset], depth: int) -> None:
        sigs = _signatures(section, rrset)
        if sigs is None:
            raise Bogus(f"{rrset.name} {dns.rdatatype.to_text(rrset.rdtype)} is not signed")
        signer = sigs[0].signer
        if not rrset.name.is_subdomain(signer):
            raise Bogus(f"{rrset.name} is signed by {signer}, which is not its zone")
        keys = self.zone_keys(signer, depth)
        try:
            dns.dnssec.validate(rrset, sigs, {signer: keys}, now=self.now)
        except dns.dnssec.ValidationFailure as exc:
            name = dns.rdatatype.to_text(rrset.rdtype)
            raise Bogus(f"the signature on {rrset.name} {name} does not verify ({exc})") from None

    def zone_keys(self, zone: dns.name.Name, depth: int) -> dns.rrset.RRset:
        """The DNSKEY set of ``zone``, proven from an anchor."""
        cached = self._keys.get(zone)
        if cached is not None:
            return cached
        if depth > MAX_DEPTH:
            raise Bogus(f"the chain of trust to {zone} is longer than {MAX_DEPTH} zones")
        response = self.fetch(zone, dns.rdatatype.DNSKEY)
        keys = _find(response, zone, dns.rdatatype.DNSKEY)
        if keys is None:
            raise Bogus(f"{zone} has no DNSKEY records")
        sigs = _signatures(response.answer if response else (), keys)
        if sigs is None:
            raise Bogus(f"the DNSKEY set of {zone} is not signed")
        if zone in self.anchors:
            trusted = self._anchored(zone, keys)
            if not trusted:
                raise Bogus(f"no DNSKEY of {zone} matches its trust anchor")
        else:
            if zone == dns.name.root:
                raise Bogus("the root zone is not among the trust anchors")
            trusted = self._delegated(zone, keys, depth)
        try:
            dns.dnssec.validate(keys, sigs, {zone: _rrset(zone, trusted)}, now=self.now)
        except dns.dnssec.ValidationFailure as exc:
            raise Bogus(
                f"the DNSKEY set of {zone} is not signed by a trusted key ({exc})"
            ) from None
        self._keys[zone] = keys
        return keys

    def _anchored(self, zone: dns.name.Name, keys: dns.rrset.RRset) -> list[dns.rdata.Rdata]:
        listed = self.anchors.keys.get(zone, [])
        trusted = [key for key in keys if key in listed]
        trusted += [key for key in keys if _matches_ds(zone, key, self.anchors.ds.get(zone, []))]
        return trusted

    def _delegated(
        self, zone: dns.name.Name, keys: dns.rrset.RRset, depth: int
    ) -> list[dns.rdata.Rdata]:
        response = self.fetch(zone, dns.rdatatype.DS)
        ds = _find(response, zone, dns.rdatatype.DS)
        if ds is None:
            raise Bogus(f"{zone} has no DS record in its parent: it is not signed from above")
        self.rrset(ds, response.answer if response else (), depth + 1)
        trusted = [key for key in keys if _matches_ds(zone, key, list(ds))]
        if not trusted:
            raise Bogus(f"no DNSKEY of {zone} matches its DS records")
        return trusted


def _find(
    response: dns.message.Message | None, name: dns.name.Name, rdtype: dns.rdatatype.RdataType
) -> dns.rrset.RRset | None:
    if response is None:
        return None
    for rrset in response.answer:
        if rrset.name == name and rrset.rdtype == rdtype:
            return rrset
    return None


def _signatures(
    section: Iterable[dns.rrset.RRset], rrset: dns.rrset.RRset
) -> dns.rrset.RRset | None:
    for candidate in section:
        if (
            candidate.rdtype == dns.rdatatype.RRSIG
            and candidate.covers == rrset.rdtype
            and candidate.name == rrset.name
        ):
            return candidate
    return None


def _matches_ds(
    zone: dns.name.Name, key: dns.rdata.Rdata, ds_records: list[dns.rdata.Rdata]
) -> bool:
    for ds in ds_records:
        try:
            if dns.dnssec.make_ds(zone, key, ds.digest_type) == ds:  # type: ignore[attr-defined]
                return True
        except (dns.dnssec.UnsupportedAlgorithm, ValueError):
            continue
    return False


def _rrset(zone: dns.name.Name, keys: list[dns.rdata.Rdata]) -> dns.rrset.RRset:
    rrset = dns.rrset.RRset(zone, dns.rdataclass.IN, dns.rdatatype.DNSKEY)
    for key in keys:
        rrset.add(key)
    return rrset
