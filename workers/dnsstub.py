"""The engine's plain lookups (A, AAAA, PTR) without dnspython's machinery.

``Resolver.resolve`` builds a query object, renders it, parses every answer
into rdata objects and follows a generic state machine: about 500 Python
calls and 0.3 ms of CPU per lookup, and every check does two of them (the
PTR of the dialled address and its forward confirmation). This module does
the same exchange with the wire in hand: the query is a few bytes, and a
response is walked once for the records asked for.

It behaves as ``dns.resolver.Resolver.resolve(name, rdtype, search=False)``
on the same resolver configuration, and raises dnspython's own exceptions
for its outcomes, so callers map them to DNSError as before:

- the servers in order (shuffled with ``rotate``), each try bounded by
  ``resolver.timeout`` and all of them by ``lifetime``; when every server
  was tried, the next round waits 0.1 s, then 0.2 s, ... up to 2 s;
- a datagram from another address, with another id, or that is not an
  answer to the question is ignored, as is one that does not parse; a
  truncated answer is asked again over TCP (by dnspython);
- NOERROR follows the CNAME chain in the answer section (at most
  ``dns.message.MAX_CHAIN`` links); no record of the type is ``NoAnswer``;
  NXDOMAIN is ``NXDOMAIN``; YXDOMAIN is ``YXDOMAIN``; any other code, a
  chain too long or an answer with NXDOMAIN takes that server out, and when
  none is left that is ``NoNameservers``; no answer in time is
  ``LifetimeTimeout``; EDNS as the resolver is configured (resolv.conf's
  ``options edns0``).

The fast parser accepts only what it fully understands (class IN; A, AAAA,
CNAME, PTR, NS and SOA records; an OPT record without options): anything
else in a datagram, and every truncated one, is parsed by dnspython
(``dns.message.from_wire``) and read from its objects, so an unusual answer
is read exactly as before. No answer is kept between lookups: each lookup
asks the servers.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import random
import re
import select
import socket
import struct
import time
from dataclasses import dataclass

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rdatatype
import dns.resolver

A, NS, CNAME, SOA, PTR, AAAA, OPT = 1, 2, 5, 6, 12, 28, 41
IN = 1
QTYPES = {"A": A, "AAAA": AAAA, "PTR": PTR}

_QR, _TC, _RD = 0x8000, 0x0200, 0x0100
_OPCODE = 0x7800
NOERROR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED, YXDOMAIN = 0, 2, 3, 4, 5, 6
FORMERR = 1
#: Codes with which a response may leave its question out (dnspython's is_response).
_QUESTIONLESS = frozenset({FORMERR, SERVFAIL, NOTIMP, REFUSED})

_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
_QUESTION = struct.Struct("!HH")
_POINTER_HOPS = 16  # dnspython's MAX_COMPRESSION_POINTER_CHAIN

#: Host names the lean path asks as they are: LDH (and underscore) labels.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-]{1,63}(\.[A-Za-z0-9_-]{1,63})*\Z")

Labels = tuple[bytes, ...]  # a name's labels, the root's b"" last, as on the wire


class Unsure(Exception):
    """The fast parser met something it does not read: dnspython reads the datagram."""


class _Ignored(Exception):
    """Not an answer to the query (dnspython's receive_udp waits on)."""


class _Truncated(Exception):
    """An answer to the query with TC set: ask again over TCP."""


@dataclass(frozen=True, slots=True)
class Config:
    """What of a dnspython resolver's configuration a lookup uses."""

    servers: tuple[tuple[str, int], ...]
    rotate: bool
    opt: bytes  # the OPT record to add, or b""

    @classmethod
    def of(cls, resolver: dns.resolver.Resolver) -> Config | None:
        """The configuration, or None when it uses something this module
        does not do (TSIG, EDNS options, custom flags, DoH/DoT servers)."""
        if resolver.keyname is not None or resolver.flags is not None or resolver.ednsoptions:
            return None
        servers = _servers(resolver.nameservers, resolver.nameserver_ports, resolver.port)
        if servers is None:
            return None
        opt = b""
        if resolver.edns is not None and resolver.edns is not False and resolver.edns >= 0:
            flags = (int(resolver.ednsflags) & 0xFF00FFFF) | (int(resolver.edns) << 16)
            opt = b"\x00" + _RR.pack(OPT, int(resolver.payload), flags, 0)
        return cls(servers, bool(resolver.rotate), opt)

    @classmethod
    def of_servers(cls, servers: tuple[tuple[str, int], ...]) -> Config | None:
        """What ``of`` makes of a resolver on ``servers`` (SMTPCHECK_DNS_SERVERS:
        the configuration workers.resolver gives dnspython), without one;
        worked out once per process for each setting (it holds no answers)."""
        return _config_of_servers(servers)


@functools.lru_cache(maxsize=16)
def _config_of_servers(servers: tuple[tuple[str, int], ...]) -> Config | None:
    found = _servers([ip for ip, _ in servers], dict(servers), 53)
    return Config(found, False, b"") if found is not None else None


def _servers(
    nameservers: object, ports: dict[str, int], default_port: int
) -> tuple[tuple[str, int], ...] | None:
    """(address, port) of each server, or None unless all are plain addresses."""
    found = []
    for server in nameservers if isinstance(nameservers, list) else ():
        if not isinstance(server, str) or "%" in server:
            return None
        try:
            ipaddress.ip_address(server)
        except ValueError:
            return None
        found.append((server, int(ports.get(server, default_port))))
    return tuple(found) or None


# -- names -------------------------------------------------------------------


def plain_name(text: str) -> Labels | None:
    """The labels of a host name dnspython would read the same way (ASCII
    letters, digits, ``-`` and ``_``; no escapes, no trailing dot), or None."""
    if len(text) > 253 or not _PLAIN_NAME.match(text):
        return None
    return (*text.encode("ascii").split(b"."), b"")


def reverse_name(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Labels:
    """``dns.reversename.from_address``: IPv4 (and IPv4-mapped IPv6) under
    in-addr.arpa, IPv6 nibble by nibble under ip6.arpa."""
    if address.version == 6:
        mapped = address.ipv4_mapped
        if mapped is None:
            nibbles = address.packed.hex()
            return (*[n.encode() for n in reversed(nibbles)], b"ip6", b"arpa", b"")
        address = mapped
    return (*[b"%d" % byte for byte in reversed(address.packed)], b"in-addr", b"arpa", b"")


_ESCAPED = frozenset(b'"().;\\@$')
_SAFE = bytes(c for c in range(0x21, 0x7F) if c not in _ESCAPED)


def _label_text(label: bytes) -> str:
    if not label.translate(None, _SAFE):  # the common case: nothing to escape
        return label.decode("ascii")
    text = []
    for c in label:
        if c in _ESCAPED:
            text.append("\\" + chr(c))
        elif 0x20 < c < 0x7F:
            text.append(chr(c))
        else:
            text.append(f"\\{c:03d}")
    return "".join(text)


_SAFE_OR_DOT = _SAFE + b"."


def name_text(labels: Labels) -> str:
    """``dns.name.Name(labels).to_text()`` of an absolute name."""
    if labels == (b"",):
        return "."
    joined = b".".join(labels)
    if not joined.translate(None, _SAFE_OR_DOT) and joined.count(b".") == len(labels) - 1:
        return joined.decode("ascii")  # nothing to escape, no dot inside a label
    return ".".join([_label_text(label) for label in labels])


def _wire(labels: Labels) -> bytes:
    return b"".join([bytes((len(label),)) + label for label in labels])


def _key(labels: Labels) -> bytes:
    """The name as a dict key, compared as DNS compares names (ASCII case ignored)."""
    return _wire(labels).lower()


# -- the fast parser ------------------------------------------------------------


def _name(wire: bytes, pos: int) -> tuple[Labels, bytes, int]:
    """The name at ``pos``: its labels, its key (:func:`_key`) and the offset
    after it; the same rules as dnspython's from_wire_parser (pointers only
    backwards, a target never overlapping the name), else Unsure."""
    labels: list[bytes] = []
    segments: list[bytes] = []  # the name's wire form, a run of labels per pointer followed
    end = len(wire)  # how far the current segment may read
    after = -1
    biggest = start = pos
    hops = 0
    while True:
        if pos >= end:
            raise Unsure
        count = wire[pos]
        if count == 0:
            segments.append(wire[start : pos + 1])
            pos += 1
            break
        if count < 64:
            label_end = pos + 1 + count
            if label_end > end:
                raise Unsure
            labels.append(wire[pos + 1 : label_end])
            pos = label_end
        elif count >= 192:
            if pos + 2 > end:
                raise Unsure
            target = (count & 0x3F) * 256 + wire[pos + 1]
            if target >= biggest or hops >= _POINTER_HOPS:
                raise Unsure
            if after < 0:
                after = pos + 2
            segments.append(wire[start:pos])
            biggest = target
            hops += 1
            end = start
            pos = start = target
        else:
            raise Unsure
    key = b"".join(segments).lower()
    if len(key) > 255:
        raise Unsure
    labels.append(b"")
    return tuple(labels), key, (after if after >= 0 else pos)


@dataclass(slots=True)
class Response:
    """What a lookup reads of a response: its header, question and answer
    RRsets (owner key, type, class) -> records in order, duplicates dropped
    (a record is an address's bytes, or a name's labels)."""

    id: int
    flags: int
    rcode: int
    questions: tuple[tuple[bytes, int, int], ...]
    answer: dict[tuple[bytes, int, int], list[bytes | Labels]]


def parse(wire: bytes) -> Response:
    """The fast parse of one datagram; Unsure when dnspython should read it."""
    if len(wire) < 12:
        raise Unsure
    ident, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(wire)
    if flags & (_TC | _OPCODE):
        raise Unsure  # dnspython decides whether to ask again over TCP; not a QUERY
    pos = 12
    questions: tuple[tuple[bytes, int, int], ...] = ()
    if qdcount > 1:
        raise Unsure
    if qdcount == 1:
        _, key, pos = _name(wire, pos)
        if pos + 4 > len(wire):
            raise Unsure
        qtype, qclass = _QUESTION.unpack_from(wire, pos)
        pos += 4
        questions = ((key, qtype, qclass),)
    answer: dict[tuple[bytes, int, int], list[bytes | Labels]] = {}
    seen: dict[tuple[bytes, int, int], set[bytes]] = {}
    rcode_high = 0
    opt_seen = False
    for section, count in ((1, ancount), (2, nscount), (3, arcount)):
        for _ in range(count):
            owner, owner_key, pos = _name(wire, pos)
            if pos + 10 > len(wire):
                raise Unsure
            rtype, rclass, ttl, rdlength = _RR.unpack_from(wire, pos)
            pos += 10
            rdata_end = pos + rdlength
            if rdata_end > len(wire):
                raise Unsure
            if rtype == OPT:
                if section != 3 or opt_seen or owner != (b"",) or rdlength:
                    raise Unsure
                opt_seen = True
                rcode_high = ttl >> 24
                continue
            if rclass != IN:
                raise Unsure
            value: bytes | Labels
            if rtype in (A, AAAA):
                if rdlength != (4 if rtype == A else 16):
                    raise Unsure
                value = wire[pos:rdata_end]
                canonical = value
            elif rtype in (CNAME, PTR, NS):
                value, canonical, after = _name(wire, pos)
                if after != rdata_end:
                    raise Unsure
            elif rtype == SOA:
                _, _, after = _name(wire, pos)  # MNAME, then RNAME
                _, _, after = _name(wire, after)
                if after + 20 != rdata_end:
                    raise Unsure
                pos = rdata_end
                continue  # validated; nothing of it is read
            else:
                raise Unsure
            pos = rdata_end
            if section != 1:
                continue
            rrset = (owner_key, rtype, rclass)
            canonicals = seen.setdefault(rrset, set())
            if canonical not in canonicals:
                canonicals.add(canonical)
                answer.setdefault(rrset, []).append(value)
    if pos != len(wire) or rcode_high:
        raise Unsure  # trailing bytes, or an extended RCODE
    return Response(ident, flags, flags & 0x000F, questions, answer)


def from_dnspython(message: dns.message.Message) -> Response:
    """The same reading of a response dnspython parsed."""
    questions = tuple(
        (_key(asked.name.labels), int(asked.rdtype), int(asked.rdclass))
        for asked in message.question
    )
    answer: dict[tuple[bytes, int, int], list[bytes | Labels]] = {}
    for rrset in message.answer:
        key = (_key(rrset.name.labels), int(rrset.rdtype), int(rrset.rdclass))
        values = answer.setdefault(key, [])
        for rdata in rrset:
            if rrset.rdtype in (A, AAAA):
                values.append(socket.inet_pton(_family(rdata.address), rdata.address))
            elif rrset.rdtype in (CNAME, PTR, NS):
                values.append(rdata.target.labels)
    return Response(message.id, int(message.flags), int(message.rcode()), questions, answer)


def _family(text: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in text else socket.AF_INET


# -- reading a response -----------------------------------------------------------


def answers(response: Response, query_id: int, question: tuple[bytes, int, int]) -> bool:
    """dnspython's ``query.is_response(response)``."""
    if not response.flags & _QR or response.id != query_id or response.flags & _OPCODE:
        return False
    if not response.questions:
        return response.rcode in _QUESTIONLESS
    return set(response.questions) == {question}


class _ChainTooLong(Exception):
    pass


def chain(response: Response, question: tuple[bytes, int, int]) -> list[bytes | Labels] | None:
    """The records answering the question, following CNAMEs in the answer
    section (``resolve_chaining``); None when there are none."""
    qkey, qtype, qclass = question
    for _ in range(dns.message.MAX_CHAIN):
        found = response.answer.get((qkey, qtype, qclass))
        if found is not None:
            return found
        if qtype == CNAME:
            return None
        alias = response.answer.get((qkey, CNAME, qclass))
        if not alias:
            return None
        target = alias[0]
        assert isinstance(target, tuple)
        qkey = _key(target)
    raise _ChainTooLong


# -- the exchange ------------------------------------------------------------------


def _query_wire(ident: int, qname: bytes, qtype: int, opt: bytes) -> bytes:
    """The query, ``qname`` in wire form."""
    header = _HEADER.pack(ident, _RD, 1, 0, 0, 1 if opt else 0)
    return header + qname + _QUESTION.pack(qtype, IN) + opt


def _new_id() -> int:
    return int.from_bytes(os.urandom(2), "big")


def _read(data: bytes, ident: int, question: tuple[bytes, int, int], wire: bytes) -> Response:
    """One datagram as receive_udp(ignore_errors=True, raise_on_truncation=True) reads it."""
    try:
        response = parse(data)
    except Unsure:
        response = _dnspython_read(data, wire)
    if not answers(response, ident, question):
        raise _Ignored
    return response


def _dnspython_read(data: bytes, wire: bytes) -> Response:
    query = dns.message.from_wire(wire)
    try:
        message = dns.message.from_wire(data, raise_on_truncation=True)
    except dns.message.Truncated as exc:
        if not query.is_response(exc.message()):
            raise _Ignored from None
        raise _Truncated from None
    except Exception:
        raise _Ignored from None
    if not query.is_response(message):
        raise _Ignored
    return from_dnspython(message)


def _tcp(
    server: tuple[str, int],
    ident: int,
    qname: bytes,
    question: tuple[bytes, int, int],
    opt: bytes,
    timeout: float,
) -> Response:
    """The TCP retry of a truncated answer, by dnspython as before."""
    query = dns.message.from_wire(_query_wire(ident, qname, question[1], opt))
    response = dns.query.tcp(query, server[0], timeout=timeout, port=server[1])
    return from_dnspython(response)


#: Errors after which dnspython takes a server out of the round (query_result).
_BROKEN = (dns.exception.FormError, EOFError, OSError, NotImplementedError)


def lookup(
    config: Config, labels: Labels, rdtype: str, lifetime: float, try_timeout: float
) -> list[bytes | Labels]:
    """The records of type ``rdtype`` at ``labels`` (addresses as bytes,
    names as labels), each try bounded by ``try_timeout`` and all of them by
    ``lifetime``; dnspython's exceptions for every other outcome."""
    exchange = Exchange(config, labels, rdtype, lifetime, try_timeout)
    while not exchange.done:
        exchange.wait(exchange.wake_at)
        exchange.step()
    return exchange.result()


class Exchange:
    """One lookup as steps, for a thread that waits on other sockets too.

    The first query goes out at once. ``fileno()`` (None while pausing
    between two rounds) and ``wake_at`` (the monotonic time the current try
    or pause ends) say what to wait for; ``step()`` reads whatever came and
    acts on the time that passed; once ``done``, ``result()`` returns the
    records or raises. The rare TCP retry of a truncated answer is made
    within one ``step()``, blocking, by dnspython.
    """

    def __init__(
        self, config: Config, labels: Labels, rdtype: str, lifetime: float, try_timeout: float
    ) -> None:
        self._opt = config.opt
        self._qname = _wire(labels)
        self._question = (self._qname.lower(), QTYPES[rdtype], IN)
        self._lifetime, self._try_timeout = lifetime, try_timeout
        servers = list(config.servers)
        if config.rotate:
            random.shuffle(servers)
        self._servers = servers
        self._current = servers[:]
        self._backoff = 0.10
        self._started = time.monotonic()
        self._server: tuple[str, int] | None = None
        self._sock: socket.socket | None = None
        self._ident = 0
        self._wire = b""
        self._pausing = False
        self.wake_at = self._started
        self.done = False
        self._found: list[bytes | Labels] = []
        self._error: Exception | None = None
        self._next()

    def fileno(self) -> int | None:
        return self._sock.fileno() if self._sock is not None else None

    def result(self) -> list[bytes | Labels]:
        assert self.done
        if self._error is not None:
            raise self._error
        return self._found

    def wait(self, until: float) -> None:
        """Sleep until the answer may have come or ``until``, whichever is first."""
        left = max(0.0, min(until, self.wake_at) - time.monotonic())
        if self._sock is None:
            time.sleep(left)
        else:
            poller = select.poll()
            poller.register(self._sock, select.POLLIN)
            poller.poll(left * 1000)

    def close(self) -> None:
        """Give the lookup up (its socket closed); ``done`` stays as it was."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # -- the tries ---------------------------------------------------------

    def _end(
        self, found: list[bytes | Labels] | None = None, error: Exception | None = None
    ) -> None:
        self.close()
        self.done = True
        self._found = found or []
        self._error = error

    def _drop_server(self) -> None:
        """This server is no good for this lookup (dnspython's query_result)."""
        assert self._server is not None
        self._servers.remove(self._server)

    def _next(self) -> None:
        """The next server's try; a pause first when a round of them is over."""
        self.close()
        if not self._current:
            if not self._servers:
                self._end(error=dns.resolver.NoNameservers())
                return
            self._current = self._servers[:]
            self._server = self._current.pop(0)
            pause, self._backoff = self._backoff, min(self._backoff * 2, 2)
            self._pausing = True
            self.wake_at = time.monotonic() + pause
            return
        self._server = self._current.pop(0)
        self._try(tcp=False)

    def _try(self, *, tcp: bool) -> None:
        assert self._server is not None
        elapsed = time.monotonic() - self._started
        if elapsed >= self._lifetime:
            self._end(error=dns.resolver.LifetimeTimeout(timeout=elapsed, errors=[]))
            return
        timeout = min(self._lifetime - elapsed, self._try_timeout)
        ident = _new_id()
        if tcp:
            try:
                response = _tcp(
                    self._server, ident, self._qname, self._question, self._opt, timeout
                )
            except (dns.message.Truncated, *_BROKEN):  # truncated over TCP too, or broken
                self._drop_server()
                self._next()
                return
            except Exception:  # a timeout, or anything else: the next server; this one stays
                self._next()
                return
            self._answered(response)
            return
        wire = _query_wire(ident, self._qname, self._question[1], self._opt)
        try:
            sock = socket.socket(_family(self._server[0]), socket.SOCK_DGRAM)
        except OSError:
            self._drop_server()
            self._next()
            return
        expires = time.monotonic() + timeout
        try:
            sock.setblocking(False)
            while True:
                try:
                    sock.sendto(wire, self._server)
                    break
                except BlockingIOError:  # no room to send yet: wait, as dnspython does
                    poller = select.poll()
                    poller.register(sock, select.POLLOUT)
                    if not poller.poll(max(0.0, expires - time.monotonic()) * 1000):
                        raise dns.exception.Timeout from None
        except dns.exception.Timeout:  # this try is over; the server stays
            sock.close()
            self._next()
            return
        except OSError:
            sock.close()
            self._drop_server()
            self._next()
            return
        self._sock, self._ident, self._wire = sock, ident, wire
        self.wake_at = expires

    def step(self) -> None:
        """Read what came (before looking at the clock, as dnspython does),
        then act on the time: the next try when this one is over."""
        if self.done:
            return
        if self._pausing:
            if time.monotonic() >= self.wake_at:
                self._pausing = False
                self._try(tcp=False)
            return
        sock, server = self._sock, self._server
        assert sock is not None and server is not None
        family = _family(server[0])
        packed = socket.inet_pton(family, server[0])
        while True:
            try:
                data, source = sock.recvfrom(65535)
            except BlockingIOError:
                break
            except OSError:
                self._drop_server()
                self._next()
                return
            if source[1] != server[1] or socket.inet_pton(family, source[0]) != packed:
                continue
            try:
                response = _read(data, self._ident, self._question, self._wire)
            except _Ignored:
                continue
            except _Truncated:
                self.close()
                self._try(tcp=True)
                return
            self.close()
            self._answered(response)
            return
        if time.monotonic() >= self.wake_at:  # no answer in this try: the next server
            self._next()

    def _answered(self, response: Response) -> None:
        rcode = response.rcode
        if rcode in (NOERROR, NXDOMAIN):
            try:
                if len(response.questions) != 1:  # resolve_chaining's FormError
                    raise _ChainTooLong
                found = chain(response, self._question)
            except _ChainTooLong:
                self._drop_server()
                self._next()
                return
            if rcode == NXDOMAIN:
                if found is not None:  # an answer with NXDOMAIN: this server is no good
                    self._drop_server()
                    self._next()
                    return
                self._end(error=dns.resolver.NXDOMAIN())
            elif found is None:
                self._end(error=dns.resolver.NoAnswer())
            else:
                self._end(found)
            return
        if rcode == YXDOMAIN:
            self._end(error=dns.resolver.YXDOMAIN())
            return
        self._drop_server()
        self._next()
