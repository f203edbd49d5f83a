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

:meth:`Validator.judge` puts an answer in one of RFC 4035's states, as RFC
7672 2.1.1 uses them: ``secure`` (it validates from an anchor: a positive
answer by its RRSIGs, a denial by NSEC or NSEC3 records that prove it,
RFC 4035 5.4 and RFC 5155 8), ``insecure`` (it sits below a delegation
proven to have no DS record, an NSEC3 opt-out span, or no anchor covers
it) or ``bogus`` (it should validate and does not; the reason says where).

The DNS traffic goes through :class:`workers.resolver.Resolver`, so it has
the check's deadline; this module only says what to ask and how to judge.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
#: included), a NODATA or NXDOMAIN one too (its NSEC/NSEC3 records prove
#: the absence; None there leaves the absence unproven).
Fetch = Callable[[dns.name.Name, dns.rdatatype.RdataType], "dns.message.Message | None"]


class Bogus(Exception):
    """The answer does not validate; the message says where the chain breaks."""


SECURE, INSECURE, BOGUS = "secure", "insecure", "bogus"
#: The DNSKEY algorithms and DS digest types validated here (dnspython's,
#: less those its default policy refuses); a zone whose DS records use none
#: of them is insecure (RFC 6840 5.2, RFC 4035 5.2).
ALGORITHMS = frozenset({5, 7, 8, 10, 13, 14, 15, 16})
DIGEST_TYPES = frozenset({2, 4})  # SHA-256, SHA-384 (SHA-1: refused by the policy)
#: What dnspython raises for a signature it cannot accept.
_FAILURES = (
    dns.dnssec.ValidationFailure,
    dns.dnssec.UnsupportedAlgorithm,
    dns.exception.DeniedByPolicy,
)
#: RFC 9276 3.2: NSEC3 with more iterations than this may be taken as insecure.
MAX_NSEC3_ITERATIONS = 150


@dataclass(frozen=True)
class Verdict:
    state: str  # SECURE, INSECURE or BOGUS
    reason: str

    @property
    def authenticated(self) -> bool:
        return self.state == SECURE


@dataclass(frozen=True)
class Denial:
    """What NSEC/NSEC3 records prove of a name: ``nodata`` (it exists, or a
    wildcard does, without the type; ``types`` are those it has),
    ``nxdomain`` (no such name, no wildcard), or ``optout`` (an NSEC3
    opt-out span covers it: it may be an unsigned delegation)."""

    kind: str
    types: frozenset[int] = frozenset()


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
        self._ds: dict[dns.name.Name, dns.message.Message | None] = {}  # DS answers asked

    def judge(
        self,
        qname: dns.name.Name,
        rdtype: dns.rdatatype.RdataType,
        response: dns.message.Message,
    ) -> Verdict:
        """The state of ``response`` to ``qname``/``rdtype``: a positive
        answer (through CNAMEs) or a denial (NXDOMAIN or NODATA)."""
        try:
            chain = [r for r in response.answer if r.rdtype != dns.rdatatype.RRSIG]
            for rrset in chain:
                if _signatures(response.answer, rrset) is None:
                    what = f"{rrset.name} {dns.rdatatype.to_text(rrset.rdtype)}"
                    return self._unsigned(rrset.name, f"{what} is not signed")
                self.rrset(rrset, response.answer, depth=0)
                self._expansion(rrset, response)
            if any(r.rdtype == rdtype for r in chain):
                return Verdict(SECURE, "validated from the trust anchor")
            target = qname
            for rrset in chain:  # a denial at the end of a CNAME chain
                if rrset.rdtype == dns.rdatatype.CNAME and rrset.name == target:
                    target = rrset[0].target
            denial = self.denial(response, target, rdtype)
            if denial is None:
                what = f"the absence of {target} {dns.rdatatype.to_text(rdtype)}"
                return self._unsigned(target, f"{what} is not proven (no NSEC/NSEC3 record)")
            if denial.kind == "optout":
                return Verdict(INSECURE, f"an NSEC3 opt-out span covers {target}: it is unsigned")
            return Verdict(SECURE, "the absence is proven from the trust anchor (NSEC/NSEC3)")
        except Insecure as exc:
            return Verdict(INSECURE, str(exc))
        except Bogus as exc:
            return Verdict(BOGUS, str(exc))

    def _unsigned(self, name: dns.name.Name, why: str) -> Verdict:
        """An unsigned answer: insecure if its zone is proven unsigned, else bogus."""
        reason = self.insecure_cut(name)
        if reason is None:
            raise Bogus(f"{why}, but its zone is signed")
        return Verdict(INSECURE, reason)

    def anchor_for(self, name: dns.name.Name) -> dns.name.Name | None:
        """The closest zone above ``name`` that has a trust anchor."""
        return max(
            (zone for zone in {*self.anchors.ds, *self.anchors.keys} if name.is_subdomain(zone)),
            key=len,
            default=None,
        )

    def insecure_cut(self, name: dns.name.Name) -> str | None:
        """Why ``name`` is not signed (a delegation above it proven to have no
        DS record, or no trust anchor over it); None when its zone is signed
        all the way down. Asks for DS label by label below the anchor."""
        anchor = self.anchor_for(name)
        if anchor is None:
            return f"no trust anchor covers {name}"
        zone = anchor
        for labels in range(len(anchor) + 1, min(len(name), len(anchor) + MAX_DEPTH) + 1):
            child = name.split(labels)[1]
            response = self._ds.get(child)
            if child not in self._ds:
                response = self._ds[child] = self.fetch(child, dns.rdatatype.DS)
            ds = _find(response, child, dns.rdatatype.DS)
            if ds is not None and response is not None:
                self.rrset(ds, response.answer, depth=0)
                if not _supported(ds):
                    return _unsupported_reason(child)
                zone = child  # a signed delegation
                continue
            denial = self.denial(response, child, dns.rdatatype.DS) if response else None
            if denial is None:
                raise Bogus(f"{zone} is signed, but the absence of a DS record at {child} is not")
            if denial.kind == "optout":
                return f"{child} is unsigned (an NSEC3 opt-out span of {zone} covers it)"
            cut = dns.rdatatype.NS in denial.types and dns.rdatatype.SOA not in denial.types
            if denial.kind == "nodata" and cut:
                return f"{child} is delegated from {zone} without a DS record: it is unsigned"
        return None

    def _expansion(self, rrset: dns.rrset.RRset, response: dns.message.Message) -> None:
        """An RRset a wildcard answered (its RRSIG has fewer labels than its
        name) holds only with proof that the name itself does not exist."""
        sigs = _signatures(response.answer, rrset)
        labels = sigs[0].labels if sigs is not None else len(rrset.name) - 1
        if rrset.name.is_wild() or labels >= len(rrset.name) - 1:
            return
        encloser = rrset.name.split(labels + 1)[1]
        proof = self._proof(response, rrset.name)
        if not no_closer_match(rrset.name, encloser, [(r.name, rd) for r in proof for rd in r]):
            raise Bogus(
                f"{rrset.name} was answered by the wildcard *.{encloser}, but nothing proves "
                f"that {rrset.name} itself does not exist"
            )

    def _proof(self, response: dns.message.Message, qname: dns.name.Name) -> list[dns.rrset.RRset]:
        """The response's NSEC/NSEC3 RRsets, each validated and of ``qname``'s zone."""
        proof = [
            r for r in response.authority if r.rdtype in (dns.rdatatype.NSEC, dns.rdatatype.NSEC3)
        ]
        for rrset in proof:
            self.rrset(rrset, response.authority, depth=0)  # Bogus unless signed and valid
            sigs = _signatures(response.authority, rrset)
            signer = sigs[0].signer if sigs is not None else dns.name.root
            if not qname.is_subdomain(signer):  # another zone's NSEC proves nothing here
                raise Bogus(f"the denial of {qname} is signed by {signer}, which is not its zone")
        return proof

    def denial(
        self,
        response: dns.message.Message | None,
        qname: dns.name.Name,
        rdtype: dns.rdatatype.RdataType,
    ) -> Denial | None:
        """What the response's validated NSEC/NSEC3 records prove of
        ``qname``/``rdtype``; None when it carries none; Bogus when they do
        not validate or do not prove the absence."""
        if response is None:
            return None
        proof = self._proof(response, qname)
        if not proof:
            return None
        if all(r.rdtype == dns.rdatatype.NSEC for r in proof):
            return nsec_denial(qname, rdtype, [(r.name, rd) for r in proof for rd in r])
        nsec3 = [r for r in proof if r.rdtype == dns.rdatatype.NSEC3]
        return nsec3_denial(qname, rdtype, [(r.name, rd) for r in nsec3 for rd in r])

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
        except _FAILURES as exc:
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
        except _FAILURES as exc:
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
            # A signed zone whose parent proves it has no DS is an island:
            # insecure, as validating resolvers take it; unproven, bogus.
            self._ds.setdefault(zone, response)
            insecure = self.insecure_cut(zone)
            if insecure is not None:
                raise Insecure(insecure)
            raise Bogus(f"{zone} has no DS record in its parent: it is not signed from above")
        self.rrset(ds, response.answer if response else (), depth + 1)
        if not _supported(ds):
            raise Insecure(_unsupported_reason(zone))
        trusted = [key for key in keys if _matches_ds(zone, key, list(ds))]
        if not trusted:
            raise Bogus(f"no DNSKEY of {zone} matches its DS records")
        return trusted


def _supported(ds: dns.rrset.RRset) -> bool:
    return any(r.algorithm in ALGORITHMS and r.digest_type in DIGEST_TYPES for r in ds)


def _unsupported_reason(zone: dns.name.Name) -> str:
    return (
        f"the DS records of {zone} use only algorithms or digests this validator does not "
        "support, so it is taken as unsigned (RFC 6840 5.2)"
    )


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
        except (dns.dnssec.UnsupportedAlgorithm, dns.exception.DeniedByPolicy, ValueError):
            continue  # e.g. a SHA-1 digest, which dnspython's policy no longer computes
    return False


def _rrset(zone: dns.name.Name, keys: list[dns.rdata.Rdata]) -> dns.rrset.RRset:
    rrset = dns.rrset.RRset(zone, dns.rdataclass.IN, dns.rdatatype.DNSKEY)
    for key in keys:
        rrset.add(key)
    return rrset


class Insecure(Exception):
    """The answer is provably unsigned: below a delegation without DS, or
    an NSEC3 span too costly to check."""


def _types(rdata: dns.rdata.Rdata) -> frozenset[int]:
    """The types an NSEC or NSEC3 record's bitmap lists."""
    found: set[int] = set()
    for window, bitmap in rdata.windows:  # type: ignore[attr-defined]
        for index, byte in enumerate(bitmap):
            for bit in range(8):
                if byte & (0x80 >> bit):
                    found.add(window * 256 + index * 8 + bit)
    return frozenset(found)


def _no_type(where: str, rdtype: dns.rdatatype.RdataType, types: frozenset[int]) -> frozenset[int]:
    if rdtype in types or dns.rdatatype.CNAME in types:
        listed = "CNAME" if dns.rdatatype.CNAME in types else dns.rdatatype.to_text(rdtype)
        raise Bogus(f"the denial's record at {where} lists {listed}: it proves nothing")
    return types


def _between(low: Any, value: Any, high: Any) -> bool:
    """``value`` lies in the span from ``low`` to ``high`` (the last span wraps)."""
    if low < high:
        return bool(low < value < high)
    return bool(value > low or value < high)


def _encloser(qname: dns.name.Name, *others: dns.name.Name) -> dns.name.Name:
    """The longest ancestor ``qname`` shares with any of ``others``."""
    common = max(qname.fullcompare(other)[2] for other in others)
    return qname.split(common)[1]


def nsec_denial(
    qname: dns.name.Name,
    rdtype: dns.rdatatype.RdataType,
    records: Sequence[tuple[dns.name.Name, dns.rdata.Rdata]],
) -> Denial:
    """RFC 4035 5.4: what NSEC records prove, or Bogus."""
    shown = f"{qname} {dns.rdatatype.to_text(rdtype)}"
    for owner, rdata in records:
        if owner == qname:
            return Denial("nodata", _no_type(str(owner), rdtype, _types(rdata)))
    for owner, rdata in records:
        following = rdata.next  # type: ignore[attr-defined]
        if not _between(owner, qname, following):
            continue
        if following.is_subdomain(qname):
            return Denial("nodata")  # an empty non-terminal: no records at all
        wildcard = dns.name.Name((b"*", *_encloser(qname, owner, following).labels))
        for other, data in records:
            if other == wildcard:
                return Denial("nodata", _no_type(str(other), rdtype, _types(data)))
            if _between(other, wildcard, data.next):  # type: ignore[attr-defined]
                return Denial("nxdomain")
        raise Bogus(f"no NSEC record proves that no wildcard {wildcard} answers {shown}")
    raise Bogus(f"no NSEC record proves the absence of {shown}")


class _NSEC3Set:
    """NSEC3 records of one zone, by hashed owner (RFC 5155)."""

    def __init__(
        self, records: Sequence[tuple[dns.name.Name, dns.rdata.Rdata]], shown: str
    ) -> None:
        params: Any = records[0][1]  # dnspython's NSEC3 rdata: algorithm, salt, iterations
        self.params = params
        if params.algorithm != 1:  # RFC 5155 8.1: only SHA-1 is defined
            raise Insecure(f"its NSEC3 records use hash algorithm {params.algorithm}, unknown")
        iterations = int(params.iterations)
        if iterations > MAX_NSEC3_ITERATIONS:
            raise Insecure(f"its NSEC3 records use {iterations} iterations (RFC 9276: insecure)")
        self.zone = records[0][0].parent()
        if any(owner.parent() != self.zone for owner, _ in records):
            raise Bogus(f"the NSEC3 records for {shown} are not all of one zone")
        try:
            self.hashed = [
                (base64.b32hexdecode(owner.labels[0].upper()), rdata) for owner, rdata in records
            ]
        except ValueError:  # binascii.Error
            raise Bogus(f"an NSEC3 owner name for {shown} is not a hash") from None

    def _digest(self, name: dns.name.Name) -> bytes:
        params = self.params
        return base64.b32hexdecode(
            dns.dnssec.nsec3_hash(name, params.salt, params.iterations, params.algorithm)
        )

    def matching(self, name: dns.name.Name) -> Any:
        value = self._digest(name)
        return next((rdata for owner, rdata in self.hashed if owner == value), None)

    def covering(self, name: dns.name.Name) -> Any:
        value = self._digest(name)
        return next(
            (rdata for owner, rdata in self.hashed if _between(owner, value, rdata.next)),  # type: ignore[attr-defined]
            None,
        )


def nsec3_denial(
    qname: dns.name.Name,
    rdtype: dns.rdatatype.RdataType,
    records: Sequence[tuple[dns.name.Name, dns.rdata.Rdata]],
) -> Denial:
    """RFC 5155 8.4-8.7: what NSEC3 records prove, or Bogus; an opt-out
    span over the next closer name is ``optout``."""
    shown = f"{qname} {dns.rdatatype.to_text(rdtype)}"
    spans = _NSEC3Set(records, shown)
    if not qname.is_subdomain(spans.zone):
        raise Bogus(f"the NSEC3 records for {shown} are not all of its zone")
    found = spans.matching(qname)
    if found is not None:
        return Denial("nodata", _no_type(str(qname), rdtype, _types(found)))
    encloser = qname.parent()
    while spans.matching(encloser) is None:
        if encloser == spans.zone or encloser == dns.name.root:
            raise Bogus(f"no NSEC3 record names a closest encloser of {shown}")
        encloser = encloser.parent()
    next_closer = qname.split(len(encloser) + 1)[1]
    span = spans.covering(next_closer)
    if span is None:
        raise Bogus(f"no NSEC3 record covers {next_closer}, as the absence of {shown} needs")
    if span.flags & 1:
        return Denial("optout")
    wildcard = dns.name.Name((b"*", *encloser.labels))
    found = spans.matching(wildcard)
    if found is not None:
        return Denial("nodata", _no_type(str(wildcard), rdtype, _types(found)))
    if spans.covering(wildcard) is None:
        raise Bogus(f"no NSEC3 record proves that no wildcard {wildcard} answers {shown}")
    return Denial("nxdomain")


def no_closer_match(
    name: dns.name.Name,
    encloser: dns.name.Name,
    records: Sequence[tuple[dns.name.Name, dns.rdata.Rdata]],
) -> bool:
    """RFC 4035 5.3.4, RFC 5155 8.8: do NSEC or NSEC3 ``records`` prove that
    ``name``, answered from the wildcard ``*.<encloser>``, does not exist?"""
    nsec = [(o, r) for o, r in records if r.rdtype == dns.rdatatype.NSEC]
    if any(_between(o, name, r.next) for o, r in nsec):  # type: ignore[attr-defined]
        return True
    nsec3 = [(o, r) for o, r in records if r.rdtype == dns.rdatatype.NSEC3]
    if not nsec3:
        return False
    spans = _NSEC3Set(nsec3, str(name))
    return spans.covering(name.split(len(encloser) + 1)[1]) is not None
