"""A tiny authoritative DNS server for the tests, built with dnspython.

It answers UDP queries on 127.0.0.1 from a zone given as a dict::

    {"mx.local.test.": {"A": ["127.0.0.1"], "AAAA": ["::1"]},
     "local.test.": {"MX": ["10 mx.local.test."]},
     "1.0.0.127.in-addr.arpa.": {"PTR": ["mx.local.test."]}}

- a name in the zone with records of the asked type: NOERROR and the records;
- a name in the zone (or an empty non-terminal) without that type: NOERROR
  with an empty answer (NODATA);
- a name that has a CNAME: the CNAME, followed inside the zone;
- any other name: NXDOMAIN;
- a name in ``servfail``: SERVFAIL (``"name. AAAA"``: for that type only);
- a name in ``silent``: no answer at all, so the client times out.
- with ``signers`` (zone apex -> :class:`ZoneKey`), a query with the
  DNSSEC OK bit gets an RRSIG beside every answer RRset inside a signed
  zone, made on the fly (the zone's DNSKEY record goes in ``zone`` like any
  other), and a NODATA or NXDOMAIN answer gets the zone's NSEC records that
  prove it (RFC 4035 3.1.3), signed; ``ad=True`` sets the AD bit on every
  answer, as a validating resolver would, except for a name in ``no_ad``
  (``"name. TYPE"``: for that type only), as for an insecure answer.
- a zone cut is a signer's apex or a name with NS records: below an NS cut
  without a signer the zone is unsigned, and its parent's NSEC at the cut
  proves it has no DS (an insecure delegation);
- a name in ``unsigned`` (``"name. TYPE"``) gets neither RRSIG nor NSEC for
  that type, as if stripped on the way: a signed zone's bogus answer.

Names are matched case-insensitively; every answer is authoritative and
lists its records in the zone's order.
Each query is recorded in ``queries`` as ``(name, type)``, so a test can
assert what was asked.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import dns.dnssec
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

Zone = Mapping[str, Mapping[str, Sequence[str]]]


class ZoneKey:
    """A DNSSEC signing key for a test zone (ECDSA P-256, as a KSK)."""

    def __init__(self, apex: str) -> None:
        self.apex = dns.name.from_text(apex)
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.dnskey = dns.dnssec.make_dnskey(
            self.private.public_key(), dns.dnssec.Algorithm.ECDSAP256SHA256, flags=257
        )

    @property
    def dnskey_text(self) -> str:
        return self.dnskey.to_text()

    @property
    def ds_text(self) -> str:
        return dns.dnssec.make_ds(self.apex, self.dnskey, "SHA256").to_text()

    def sign(self, rrset: dns.rrset.RRset) -> dns.rrset.RRset:
        rrsig = dns.dnssec.sign(rrset, self.private, self.apex, self.dnskey, lifetime=3600)
        sigs = dns.rrset.RRset(rrset.name, dns.rdataclass.IN, dns.rdatatype.RRSIG, rrset.rdtype)
        sigs.add(rrsig, rrset.ttl)
        return sigs


_MAX_CNAME_CHAIN = 8


class DNSServer:
    """An authoritative UDP DNS server on 127.0.0.1, served by one daemon thread."""

    def __init__(
        self,
        zone: Zone,
        *,
        servfail: Iterable[str] = (),
        silent: Iterable[str] = (),
        ttl: int = 60,
        host: str = "127.0.0.1",
        signers: Iterable[ZoneKey] = (),
        ad: bool = False,
        unsigned: Iterable[str] = (),
        no_ad: Iterable[str] = (),
    ) -> None:
        self.zone: dict[dns.name.Name, dict[dns.rdatatype.RdataType, list[str]]] = {
            dns.name.from_text(name): {
                dns.rdatatype.from_text(rdtype.upper()): list(values)
                for rdtype, values in records.items()
            }
            for name, records in zone.items()
        }
        self.servfail = {_name_and_type(entry) for entry in servfail}
        self.silent = {dns.name.from_text(name) for name in silent}
        self.ttl = ttl
        self.host = host
        self.signers = sorted(signers, key=lambda k: len(k.apex), reverse=True)
        self.ad = ad
        self.unsigned = {_name_and_type(entry) for entry in unsigned}
        self.no_ad = {_name_and_type(entry) for entry in no_ad}
        self.cuts = {k.apex for k in self.signers} | {
            name for name, records in self.zone.items() if dns.rdatatype.NS in records
        }
        self.queries: list[tuple[str, str]] = []
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> DNSServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((self.host, 0))
            sock.settimeout(0.2)  # a backstop; stop() also wakes the thread at once
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="test-dns", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        try:
            if self._sock is not None and self._thread is not None and self._thread.is_alive():
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as waker:
                    waker.sendto(b"", self._sock.getsockname())
        except OSError:
            pass  # the timeout above still ends the loop
        finally:
            if self._thread is not None:
                self._thread.join(5)
            if self._sock is not None:
                self._sock.close()

    def __enter__(self) -> DNSServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._sock is None:
            raise RuntimeError("DNS server not started")
        return int(self._sock.getsockname()[1])

    def resolver(self, lifetime: float = 2.0) -> dns.resolver.Resolver:
        """A resolver that asks only this server, with no cache and no system config."""
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [self.host]
        resolver.port = self.port
        resolver.timeout = lifetime
        resolver.lifetime = lifetime
        return resolver

    # -- serving -----------------------------------------------------------

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                wire, peer = self._sock.recvfrom(65535)
            except (TimeoutError, ConnectionError):
                continue
            except OSError:
                return  # the socket is gone
            if self._stopping.is_set():
                return
            answer = self._answer(wire)
            if answer is not None:
                self._sock.sendto(answer, peer)

    def _answer(self, wire: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None  # not a DNS query: ignore it, as a real server would
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        qname, qtype = question.name, dns.rdatatype.RdataType(question.rdtype)
        self.queries.append((qname.to_text(), dns.rdatatype.to_text(qtype)))
        if qname in self.silent:
            return None
        if (qname, None) in self.servfail or (qname, qtype) in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()
        response.set_rcode(self._fill(response, qname, qtype))
        if self.ad and not ({(qname, None), (qname, qtype)} & self.no_ad):
            response.flags |= dns.flags.AD
        if query.ednsflags & dns.flags.DO:
            response.use_edns(0, dns.flags.DO, 1232)
            for rrset in list(response.answer):
                key = self._key(rrset.name, rrset.rdtype)
                if key is not None:
                    response.answer.append(key.sign(rrset))
            target = qname
            for rrset in response.answer:
                if rrset.rdtype == dns.rdatatype.CNAME and rrset.name == target:
                    target = rrset[0].target
            if response.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN) and not any(
                rrset.rdtype == qtype for rrset in response.answer
            ):
                self._deny(response, target, qtype)
        max_size = max(512, query.payload if query.edns >= 0 else 512)
        try:
            # In the zone's order (dnspython shuffles by default): tests rely on it.
            return response.to_wire(max_size=max_size, want_shuffle=False)
        except dns.exception.TooBig:
            truncated = dns.message.make_response(query)
            truncated.flags |= dns.flags.AA | dns.flags.TC
            return truncated.to_wire()

    def _fill(
        self, response: dns.message.Message, qname: dns.name.Name, qtype: dns.rdatatype.RdataType
    ) -> dns.rcode.Rcode:
        """Put the answer for ``qname``/``qtype`` into ``response``; return the rcode."""
        for _ in range(_MAX_CNAME_CHAIN):
            records = self.zone.get(qname)
            if records is None:
                if any(name.is_subdomain(qname) for name in self.zone):
                    return dns.rcode.NOERROR  # empty non-terminal: NODATA
                return dns.rcode.NXDOMAIN
            values = records.get(qtype)
            if values:
                response.answer.append(self._rrset(qname, qtype, values))
                return dns.rcode.NOERROR
            cname = records.get(dns.rdatatype.CNAME)
            if not cname:
                return dns.rcode.NOERROR  # the name exists without this type: NODATA
            response.answer.append(self._rrset(qname, dns.rdatatype.CNAME, cname))
            qname = dns.name.from_text(cname[0])
            if qname not in self.zone:
                return dns.rcode.NOERROR  # the target lies outside what we serve
        return dns.rcode.SERVFAIL  # a CNAME loop

    # -- DNSSEC --------------------------------------------------------------

    def _apex(self, name: dns.name.Name, rdtype: int) -> dns.name.Name | None:
        """The zone ``name``'s ``rdtype`` lives in: the closest cut above it,
        except that a DS record belongs to the parent, above its cut."""
        cuts = [c for c in self.cuts if name.is_subdomain(c)]
        if rdtype == dns.rdatatype.DS:
            cuts = [c for c in cuts if c != name]
        return max(cuts, key=len, default=None)

    def _key(self, name: dns.name.Name, rdtype: int) -> ZoneKey | None:
        """The key that signs ``name``'s ``rdtype`` (None: unsigned)."""
        if (name, None) in self.unsigned or (name, rdtype) in self.unsigned:
            return None
        apex = self._apex(name, rdtype)
        return next((k for k in self.signers if k.apex == apex), None)

    def _chain(self, apex: dns.name.Name) -> list[tuple[dns.name.Name, set[int]]]:
        """The names of the zone at ``apex`` in canonical order, each with the
        types its NSEC record lists (a cut below: its NS and DS only)."""
        chain = []
        for name in sorted(self.zone):
            inside = name.is_subdomain(apex) and self._apex(name, dns.rdatatype.DS) == apex
            if name != apex and not inside:
                continue
            types = set(self.zone[name])
            if name == apex:
                types.discard(dns.rdatatype.DS)
            elif name in self.cuts:
                types &= {dns.rdatatype.NS, dns.rdatatype.DS}
            chain.append((name, types | {dns.rdatatype.NSEC, dns.rdatatype.RRSIG}))
        return chain

    def _deny(
        self, response: dns.message.Message, qname: dns.name.Name, qtype: dns.rdatatype.RdataType
    ) -> None:
        """Add the signed NSEC records proving that ``qname`` has no ``qtype``."""
        key = self._key(qname, qtype)
        if key is None:
            return
        chain = self._chain(key.apex)
        names = [name for name, _ in chain]

        def record(index: int) -> dns.rrset.RRset:
            owner, types = chain[index]
            following = names[(index + 1) % len(names)]
            text = " ".join([following.to_text(), *map(dns.rdatatype.to_text, sorted(types))])
            return dns.rrset.from_text(owner, self.ttl, dns.rdataclass.IN, "NSEC", text)

        def covering(name: dns.name.Name) -> int:
            return max((i for i, owner in enumerate(names) if owner < name), default=len(names) - 1)

        wanted = [names.index(qname)] if qname in names else [covering(qname)]
        if qname not in names and not any(n.is_subdomain(qname) for n in names):
            # NXDOMAIN: and no wildcard at the closest encloser
            encloser = qname.parent()
            while encloser not in names and not any(n.is_subdomain(encloser) for n in names):
                encloser = encloser.parent()
            wanted.append(covering(dns.name.Name((b"*", *encloser.labels))))
        for index in dict.fromkeys(wanted):
            nsec = record(index)
            response.authority += [nsec, key.sign(nsec)]

    def _rrset(
        self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType, values: Sequence[str]
    ) -> dns.rrset.RRset:
        return dns.rrset.from_text_list(name, self.ttl, dns.rdataclass.IN, rdtype, list(values))


def _name_and_type(entry: str) -> tuple[dns.name.Name, dns.rdatatype.RdataType | None]:
    name, _, rdtype = entry.partition(" ")
    return dns.name.from_text(name), dns.rdatatype.from_text(rdtype) if rdtype else None


@pytest.fixture
def dns_server() -> Iterator[Callable[..., DNSServer]]:
    """Factory: ``dns_server(zone, servfail=[...], silent=[...])`` starts a server.

    Every server it started is stopped (socket closed, thread joined) after the test.
    """
    started: list[DNSServer] = []

    def start(zone: Zone, **kwargs: Any) -> DNSServer:
        server = DNSServer(zone, **kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
