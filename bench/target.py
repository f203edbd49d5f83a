"""A lean local target for the benchmarks: an SMTP server and a DNS server.

The throughput and latency figures of bench/worker.py measure the service,
not the peer it talks to; but on a machine where everything shares the
cores, every millisecond of CPU the peer spends is taken from the service.
aiosmtpd (tests/smtp_servers.py) is a complete asyncio SMTP server with its
own per-command machinery (a coroutine and a handler lookup per command,
its own line reader, session and envelope objects), and the dnspython-built
test DNS server parses every query and builds every answer anew. Here both
are lean: one asyncio event loop in one thread serves both, with the least
work per line or datagram that still speaks the protocols correctly.

SMTP (RFC 5321), for what the checks send:

- a 220 banner; EHLO (multi-line, with PIPELINING, SIZE, 8BITMIME,
  ENHANCEDSTATUSCODES, SMTPUTF8 and HELP) and HELO; MAIL, RCPT, DATA
  (dot-stuffing undone, the message counted, the end-of-data line found
  across reads), RSET, NOOP, VRFY (252), EXPN (502), HELP, QUIT;
- 503 for a command out of sequence, 501 for bad arguments, 500 for an
  unknown command or an over-long line, 552 for a message over SIZE;
- commands may be pipelined: replies go out in order, in one write per read.

DNS (RFC 1035), UDP: every answer is built once when the server starts; a
query gets the prebuilt answer with its own message id and its question
copied back. TTLs are 0 (and the SOA's minimum), so no resolver anywhere
could serve a later check from a cache. A name in the zone with records of
the asked type: NOERROR with them; in the zone without that type (or an
empty non-terminal): NOERROR, no answer, the SOA (NODATA); an unknown name
inside the zone: NXDOMAIN with the SOA; a name outside it: REFUSED; a query
that is not a plain one-question QUERY: FORMERR or NOTIMP; a datagram that
is no DNS query at all: dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
import threading
from collections.abc import Iterable, Mapping
from typing import Any, cast

HOSTNAME = "mail.local.test"
ADDRESS = "127.0.0.1"
MAX_SIZE = 10 * 1024 * 1024
MAX_COMMAND = 512  # octets, CRLF included (RFC 5321 4.5.3.1.4)
MAX_TEXT_LINE = 1000  # octets, CRLF included (RFC 5321 4.5.3.1.6)

# ---------------------------------------------------------------------------
# SMTP
# ---------------------------------------------------------------------------

_GREETED, _MAIL, _RCPT = 1, 2, 3  # 0: before EHLO/HELO


class _Replies:
    """The fixed replies, as bytes, built once per server."""

    def __init__(self, hostname: str) -> None:
        self.banner = f"220 {hostname} ESMTP smtpcheck-bench\r\n".encode()
        self.ehlo = (
            f"250-{hostname}\r\n250-PIPELINING\r\n250-SIZE {MAX_SIZE}\r\n250-8BITMIME\r\n"
            "250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250 HELP\r\n"
        ).encode()
        self.helo = f"250 {hostname}\r\n".encode()
        self.bye = f"221 2.0.0 {hostname} closing connection\r\n".encode()


OK = b"250 2.0.0 OK\r\n"
SENDER_OK = b"250 2.1.0 OK\r\n"
RECIPIENT_OK = b"250 2.1.5 OK\r\n"
GO_AHEAD = b"354 End data with <CR><LF>.<CR><LF>\r\n"
QUEUED = b"250 2.0.0 OK: queued\r\n"
RESET = b"250 2.0.0 Reset\r\n"
VRFY = b"252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery\r\n"
EXPN = b"502 5.5.1 EXPN not implemented\r\n"
HELP = b"214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP VRFY EXPN HELP QUIT\r\n"
UNKNOWN = b"500 5.5.2 Error: command not recognized\r\n"
TOO_LONG = b"500 5.5.2 Error: line too long\r\n"
SYNTAX = b"501 5.5.4 Syntax error in parameters or arguments\r\n"
NEED_HELO = b"503 5.5.1 Error: send HELO/EHLO first\r\n"
NESTED = b"503 5.5.1 Error: nested MAIL command\r\n"
NEED_MAIL = b"503 5.5.1 Error: need MAIL command\r\n"
NEED_RCPT = b"503 5.5.1 Error: need RCPT command\r\n"
TOO_BIG = b"552 5.3.4 Message size exceeds fixed limit\r\n"
NO_ARGUMENTS = b"501 5.5.4 Syntax: no parameters allowed\r\n"


def _path(argument: bytes, keyword: bytes) -> bytes | None:
    """The ``<path>`` after ``FROM:``/``TO:`` (parameters after it allowed), or None."""
    if argument[: len(keyword)].upper() != keyword:
        return None
    rest = argument[len(keyword) :].lstrip()
    if not rest.startswith(b"<"):
        return None
    end = rest.find(b">")
    if end < 0:
        return None
    return rest[1:end]


class _Session(asyncio.Protocol):
    """One SMTP connection: lines in, replies out, a few ints of state."""

    def __init__(self, replies: _Replies, server: LeanTarget) -> None:
        self.replies = replies
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.state = 0
        self.in_data = False
        self.size = 0  # octets of the message so far
        self.too_big = False
        self.skipping = False  # inside an over-long line, already answered or counted
        self.after_crlf = True  # the last message line ended with CRLF

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.replies.banner)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        out: list[bytes] = []
        start = 0
        closing = False
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            line = buffer[start : end + 1]
            start = end + 1
            if self.skipping:  # the end of an over-long line
                self.skipping = False
                if self.in_data:
                    self._count(len(line))
                    self.after_crlf = line.endswith(b"\r\n")
                continue
            if self.in_data:
                out.extend(self._data_line(line))
                continue
            if len(line) > MAX_COMMAND:
                out.append(TOO_LONG)
                continue
            reply = self._command(line.rstrip(b"\r\n"))
            out.append(reply)
            if reply is self.replies.bye:
                closing = True
                break
        rest = buffer[start:]
        if not closing and len(rest) > (MAX_TEXT_LINE if self.in_data else MAX_COMMAND):
            # An over-long line without its end yet: count or refuse it now, skip the rest.
            if self.in_data:
                self._count(len(rest))
            elif not self.skipping:
                out.append(TOO_LONG)
            rest = b""
            self.skipping = True
        elif self.skipping:
            if self.in_data:
                self._count(len(rest))
            rest = b""
        self.buffer = rest
        assert self.transport is not None
        if out:
            self.transport.write(b"".join(out))
        if closing:
            self.transport.close()

    def _count(self, octets: int) -> None:
        self.size += octets
        if self.size > MAX_SIZE:
            self.too_big = True

    def _data_line(self, line: bytes) -> list[bytes]:
        # The end is <CRLF>.<CRLF> only: a bare LF around the dot is message text
        # (what SMTP smuggling relies on a server taking as the end).
        after_crlf, self.after_crlf = self.after_crlf, line.endswith(b"\r\n")
        if line == b".\r\n" and after_crlf:
            self.in_data = False
            self.state = _GREETED
            if self.too_big:
                return [TOO_BIG]
            self.server.messages += 1
            self.server.last_size = self.size
            return [QUEUED]
        # RFC 5321 4.5.2: a leading dot of a line (after a CRLF) that is not the end was doubled.
        self._count(len(line) - 1 if after_crlf and line.startswith(b".") else len(line))
        return []

    def _command(self, line: bytes) -> bytes:
        verb, _, argument = line.partition(b" ")
        verb = verb.upper()
        replies = self.replies
        if verb == b"EHLO" or verb == b"HELO":
            if not argument.strip():
                return SYNTAX
            self.state = _GREETED
            return replies.ehlo if verb == b"EHLO" else replies.helo
        if verb == b"QUIT":
            return replies.bye
        if verb == b"NOOP":
            return OK
        if verb == b"RSET":
            if argument.strip():
                return NO_ARGUMENTS
            if self.state:
                self.state = _GREETED
            return RESET
        if verb == b"MAIL":
            if not self.state:
                return NEED_HELO
            if self.state != _GREETED:
                return NESTED
            if _path(argument, b"FROM:") is None:
                return SYNTAX
            declared = argument.upper().partition(b" SIZE=")[2].split(b" ", 1)[0]
            if declared.isdigit() and int(declared) > MAX_SIZE:  # RFC 1870
                return TOO_BIG
            self.state = _MAIL
            return SENDER_OK
        if verb == b"RCPT":
            if self.state < _MAIL:
                return NEED_MAIL
            path = _path(argument, b"TO:")
            if not path:  # "<>" is no recipient
                return SYNTAX
            self.state = _RCPT
            return RECIPIENT_OK
        if verb == b"DATA":
            if argument.strip():
                return NO_ARGUMENTS
            if self.state == _MAIL:
                return NEED_RCPT
            if self.state != _RCPT:
                return NEED_MAIL
            self.in_data, self.size, self.too_big, self.after_crlf = True, 0, False, True
            return GO_AHEAD
        if verb == b"VRFY":
            return VRFY if argument.strip() else SYNTAX
        if verb == b"EXPN":
            return EXPN
        if verb == b"HELP":
            return HELP
        return UNKNOWN

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


# ---------------------------------------------------------------------------
# DNS
# ---------------------------------------------------------------------------

_TYPES = {"A": 1, "PTR": 12, "SOA": 6, "AAAA": 28}
_NOERROR, _FORMERR, _NXDOMAIN, _NOTIMP, _REFUSED = 0, 1, 3, 4, 5
_POINTER = b"\xc0\x0c"  # the name of the question, at offset 12


def _wire(name: str) -> bytes:
    """A domain name in wire form, lower case, uncompressed."""
    out = b""
    for label in name.lower().rstrip(".").split("."):
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise ValueError(f"bad label in {name!r}")
        out += bytes([len(raw)]) + raw
    return out + b"\x00"


def _rdata(rdtype: str, value: str) -> bytes:
    if rdtype == "A":
        return ipaddress.IPv4Address(value).packed
    if rdtype == "AAAA":
        return ipaddress.IPv6Address(value).packed
    if rdtype == "PTR":
        return _wire(value)
    raise ValueError(f"record type {rdtype} is not served")


def _record(owner: bytes, rdtype: int, rdata: bytes) -> bytes:
    return owner + struct.pack("!HHIH", rdtype, 1, 0, len(rdata)) + rdata


def _is_under(name: bytes, apex: bytes) -> bool:
    """Whether wire name ``name`` is ``apex`` or below it (labels, not bytes)."""
    if name == apex:
        return True
    at = 0
    while name[at]:
        at += 1 + name[at]
        if name[at:] == apex:
            return True
    return False


class _Zone:
    """Every answer body (flags, counts, answer and authority sections after
    the question), built once, by (lower-case wire name, type)."""

    def __init__(self, records: Mapping[str, Mapping[str, Iterable[str]]], apexes: Iterable[str]):
        self.apexes = {_wire(apex): apex for apex in apexes}
        self.answers: dict[tuple[bytes, int], tuple[int, int, int, bytes]] = {}
        self.names: set[bytes] = set()
        for name, by_type in records.items():
            owner = _wire(name)
            if not any(_is_under(owner, apex) for apex in self.apexes):
                raise ValueError(f"{name} lies outside the zones served")
            self.names.add(owner)
            for rdtype, values in by_type.items():
                rrs = [_record(_POINTER, _TYPES[rdtype], _rdata(rdtype, v)) for v in values]
                self.answers[owner, _TYPES[rdtype]] = (_NOERROR, len(rrs), 0, b"".join(rrs))
        # Empty non-terminals exist (NODATA, not NXDOMAIN): every name between
        # a record and its apex.
        for owner in list(self.names):
            at = 0
            while owner[at]:
                at += 1 + owner[at]
                if any(_is_under(owner[at:], apex) for apex in self.apexes):
                    self.names.add(owner[at:])
        self.soa = {apex: self._soa(apex) for apex in self.apexes}

    @staticmethod
    def _soa(apex: bytes) -> bytes:
        # mname, rname (uncompressed), serial, refresh, retry, expire, minimum 0
        rdata = (
            b"\x02ns" + apex + b"\x0ahostmaster" + apex + struct.pack("!IIIII", 1, 60, 60, 60, 0)
        )
        return _record(apex, _TYPES["SOA"], rdata)

    def body(self, name: bytes, rdtype: int) -> tuple[int, int, int, bytes]:
        """(rcode, answers, authority records, the sections after the question)."""
        found = self.answers.get((name, rdtype))
        if found is not None:
            return found
        apex = next((a for a in self.apexes if _is_under(name, a)), None)
        if apex is None:
            return (_REFUSED, 0, 0, b"")
        rcode = _NOERROR if name in self.names else _NXDOMAIN
        return (rcode, 0, 1, self.soa[apex])


class _DNS(asyncio.DatagramProtocol):
    def __init__(self, zone: _Zone, server: LeanTarget) -> None:
        self.zone = zone
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None
        # (lower-case question bytes) -> everything after the id, but the question
        self.cache: dict[bytes, tuple[bytes, bytes]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        answer = self.answer(data)
        if answer is not None and self.transport is not None:
            self.server.queries += 1
            self.transport.sendto(answer, addr)

    def answer(self, query: bytes) -> bytes | None:
        """The answer to one query datagram; None to drop it."""
        if len(query) < 12 or query[2] & 0x80:  # too short, or a response
            return None
        flags = query[2] & 0x79  # opcode and RD, kept
        qdcount = (query[4] << 8) | query[5]
        end = 12
        try:
            while query[end]:
                if query[end] & 0xC0:  # a client never compresses its question
                    raise IndexError
                end += 1 + query[end]
            end += 5  # the root label, type and class
            if end > len(query):
                raise IndexError
        except IndexError:
            return query[:2] + bytes([0x80 | flags, _FORMERR]) + b"\x00" * 8
        question = query[12:end]
        if (query[2] >> 3) & 0x0F:  # not a standard QUERY
            return (
                query[:2]
                + bytes([0x80 | flags, _NOTIMP])
                + b"\x00\x01\x00\x00\x00\x00\x00\x00"
                + question
            )
        if qdcount != 1:
            return query[:2] + bytes([0x80 | flags, _FORMERR]) + b"\x00" * 8
        key = question.lower()
        built = self.cache.get(key)
        if built is None:
            name, (rdtype, rdclass) = key[:-4], struct.unpack("!HH", key[-4:])
            if rdclass != 1:
                rcode, answers, authority, sections = _REFUSED, 0, 0, b""
            else:
                rcode, answers, authority, sections = self.zone.body(name, rdtype)
            aa = 0x04 if rcode != _REFUSED else 0
            head = bytes([0x80 | flags | aa, rcode]) + struct.pack(
                "!HHHH", 1, answers, authority, 0
            )
            built = (head, sections)
            if len(self.cache) < 1024:
                self.cache[key] = built
        head, sections = built
        return query[:2] + head + question + sections


# ---------------------------------------------------------------------------
# the server
# ---------------------------------------------------------------------------


def default_zone(
    hostname: str = HOSTNAME, address: str = ADDRESS
) -> dict[str, dict[str, list[str]]]:
    """The records a check of ``address`` asks for: its PTR and the PTR name's A record."""
    reverse = ipaddress.ip_address(address).reverse_pointer
    return {reverse + ".": {"PTR": [hostname + "."]}, hostname + ".": {"A": [address]}}


class LeanTarget:
    """The lean SMTP server and DNS server on 127.0.0.1, on one event loop in a
    daemon thread. ``start()`` binds free ports (``smtp_port``, ``dns_port``)."""

    def __init__(
        self,
        hostname: str = HOSTNAME,
        zone: Mapping[str, Mapping[str, Iterable[str]]] | None = None,
        apexes: Iterable[str] = ("local.test", "127.in-addr.arpa"),
        host: str = "127.0.0.1",
    ) -> None:
        self.hostname = hostname
        self.host = host
        self.zone = _Zone(zone if zone is not None else default_zone(hostname), apexes)
        self.smtp_port = 0
        self.dns_port = 0
        self.messages = 0  # accepted by DATA
        self.last_size = 0  # octets of the last message, its dot-stuffing undone
        self.queries = 0  # DNS queries answered
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    def start(self) -> LeanTarget:
        ready = threading.Event()
        failed: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(self._serve(ready))
            except BaseException as exc:  # reported to start()
                failed.append(exc)
                ready.set()

        self._thread = threading.Thread(target=run, name="lean-target", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failed:
            raise RuntimeError(f"the lean target did not start: {failed[0]!r}")
        return self

    async def _serve(self, ready: threading.Event) -> None:
        loop = asyncio.get_running_loop()
        self._loop, self._stopped = loop, asyncio.Event()
        replies = _Replies(self.hostname)
        smtp = await loop.create_server(
            lambda: _Session(replies, self), self.host, 0, backlog=1024, reuse_address=True
        )
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((self.host, 0))
        transport, _ = await loop.create_datagram_endpoint(lambda: _DNS(self.zone, self), sock=sock)
        self.smtp_port = smtp.sockets[0].getsockname()[1]
        self.dns_port = sock.getsockname()[1]
        ready.set()
        try:
            await self._stopped.wait()
        finally:
            transport.close()
            smtp.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(smtp.wait_closed(), 2)

    def stop(self) -> None:
        loop, stopped = self._loop, self._stopped
        if loop is not None and stopped is not None:
            with contextlib.suppress(RuntimeError):  # the loop has ended already
                loop.call_soon_threadsafe(stopped.set)
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> LeanTarget:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
