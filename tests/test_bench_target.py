"""The benchmarks' lean SMTP and DNS target (bench/target.py).

It must speak both protocols correctly for what the checks send, and the
engine must come to the same verdict against it as against aiosmtpd with the
test DNS server, so that bench/worker.py measures the same check with either
``--target``. One target for the module; every socket on 127.0.0.1 at a free port.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from bench.target import LeanTarget, default_zone
from smtpcheck.config import Settings, Timeouts
from smtpcheck.contract import check_request
from tests.dns_server import DNSServer
from tests.smtp_servers import SMTPTarget
from workers.engine import run_check


@pytest.fixture(scope="module")
def lean() -> Iterator[LeanTarget]:
    with LeanTarget() as target:
        yield target


class Client:
    """A raw SMTP client: send bytes, read whole replies."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.pending = b""

    def reply(self) -> list[bytes]:
        lines = []
        while True:
            while b"\r\n" not in self.pending:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError(f"closed; had {self.pending!r}")
                self.pending += data
            line, _, self.pending = self.pending.partition(b"\r\n")
            lines.append(line)
            if line[3:4] != b"-":
                return lines

    def say(self, data: bytes, replies: int = 1) -> list[bytes]:
        """Send ``data``; the first line of each of the ``replies`` replies."""
        self.sock.sendall(data)
        return [self.reply()[0] for _ in range(replies)]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def client(lean: LeanTarget) -> Iterator[Client]:
    smtp = Client(lean.smtp_port)
    yield smtp
    smtp.close()


def test_dialogue_in_sequence(client: Client) -> None:
    assert client.reply() == [b"220 mail.local.test ESMTP smtpcheck-bench"]
    assert client.say(b"MAIL FROM:<a@b.test>\r\n") == [b"503 5.5.1 Error: send HELO/EHLO first"]
    client.sock.sendall(b"EHLO client.test\r\n")
    ehlo = client.reply()
    assert ehlo[0] == b"250-mail.local.test" and ehlo[-1] == b"250 HELP"
    assert b"250-PIPELINING" in ehlo and b"250-SIZE 10485760" in ehlo
    assert client.say(b"RCPT TO:<x@y.test>\r\n") == [b"503 5.5.1 Error: need MAIL command"]
    assert client.say(b"DATA\r\n") == [b"503 5.5.1 Error: need MAIL command"]
    assert client.say(b"MAIL FROM:a@b.test\r\n")[0].startswith(b"501 ")
    assert client.say(b"MAIL FROM:<a@b.test> SIZE=99999999\r\n")[0].startswith(b"552 ")
    assert client.say(b"MAIL FROM:<>\r\n") == [b"250 2.1.0 OK"]
    assert client.say(b"MAIL FROM:<a@b.test>\r\n") == [b"503 5.5.1 Error: nested MAIL command"]
    assert client.say(b"DATA\r\n") == [b"503 5.5.1 Error: need RCPT command"]
    assert client.say(b"RCPT TO:<>\r\n")[0].startswith(b"501 ")
    assert client.say(b"RSET\r\n") == [b"250 2.0.0 Reset"]
    assert client.say(b"RCPT TO:<x@y.test>\r\n")[0].startswith(b"503 ")
    assert client.say(b"NOOP\r\n") == [b"250 2.0.0 OK"]
    assert client.say(b"VRFY postmaster\r\n")[0].startswith(b"252 ")
    assert client.say(b"EXPN staff\r\n")[0].startswith(b"502 ")
    assert client.say(b"HELP\r\n")[0].startswith(b"214 ")
    assert client.say(b"BDAT 10 LAST\r\n") == [b"500 5.5.2 Error: command not recognized"]
    assert client.say(b"HELO\r\n")[0].startswith(b"501 ")
    assert client.say(b"helo client.test\r\n") == [b"250 mail.local.test"]
    assert client.say(b"QUIT\r\n") == [b"221 2.0.0 mail.local.test closing connection"]
    assert client.sock.recv(10) == b""


def test_pipelined_transaction_with_dot_stuffing(client: Client, lean: LeanTarget) -> None:
    client.reply()
    before = lean.messages
    replies = client.say(
        b"EHLO c.test\r\nMAIL FROM:<a@b.test> SIZE=20\r\nRCPT TO:<x@y.test>\r\n"
        b"RCPT TO:<z@y.test>\r\nDATA\r\n",
        5,
    )
    assert [r[:3] for r in replies] == [b"250", b"250", b"250", b"250", b"354"]
    # "..x" is ".x" stuffed; ".\n" after a bare LF is text, not the end (no smuggling).
    body = b"Subject: t\r\n\r\n..x\r\nbare\n.\nstill text\r\n"
    client.sock.sendall(body[:7])
    client.sock.sendall(body[7:] + b".\r\nNOOP\r\n")
    assert client.reply() == [b"250 2.0.0 OK: queued"]
    assert client.reply() == [b"250 2.0.0 OK"]
    assert lean.messages == before + 1
    assert lean.last_size == len(body) - 1
    # The transaction ended: a new one needs MAIL again.
    assert client.say(b"RCPT TO:<x@y.test>\r\n")[0].startswith(b"503 ")


def test_over_long_command_line(client: Client) -> None:
    client.reply()
    assert client.say(b"NOOP " + b"x" * 600 + b"\r\n")[0].startswith(b"500 ")
    client.sock.sendall(b"NOOP " + b"y" * 2000)  # no end yet: refused once, the rest skipped
    assert client.reply()[0].startswith(b"500 ")
    assert client.say(b"yyy\r\nNOOP\r\n") == [b"250 2.0.0 OK"]


def query(lean: LeanTarget, name: str, rdtype: str, **kwargs: Any) -> dns.message.Message:
    request = dns.message.make_query(name, rdtype, **kwargs)
    answer = dns.query.udp(request, "127.0.0.1", port=lean.dns_port, timeout=5)
    assert answer.id == request.id and answer.question == request.question
    return answer


def test_dns_answers(lean: LeanTarget) -> None:
    ptr = query(lean, "1.0.0.127.IN-ADDR.arpa.", "PTR")
    assert ptr.rcode() == dns.rcode.NOERROR and ptr.flags & dns.flags.AA
    assert [(rr.ttl, [r.to_text() for r in rr]) for rr in ptr.answer] == [(0, ["mail.local.test."])]
    edns = query(lean, "1.0.0.127.in-addr.arpa.", "PTR", use_edns=0, want_dnssec=True)
    assert edns.answer == ptr.answer and edns.edns < 0  # answered without EDNS, as it may be
    forward = query(lean, "Mail.Local.Test.", "A")
    assert [r.to_text() for rr in forward.answer for r in rr] == ["127.0.0.1"]
    assert forward.question[0].name.to_text() == "Mail.Local.Test."  # the asker's case
    nodata = query(lean, "mail.local.test.", "AAAA")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    (soa,) = nodata.authority
    assert soa.rdtype == dns.rdatatype.SOA and soa.ttl == 0 and soa[0].minimum == 0
    assert query(lean, "0.0.127.in-addr.arpa.", "PTR").rcode() == dns.rcode.NOERROR
    nx = query(lean, "other.local.test.", "A")
    assert nx.rcode() == dns.rcode.NXDOMAIN and nx.authority
    assert query(lean, "example.com.", "A").rcode() == dns.rcode.REFUSED


def test_dns_malformed(lean: LeanTarget) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        two = dns.message.make_query("mail.local.test.", "A").to_wire()
        two = two[:5] + b"\x02" + two[6:]  # QDCOUNT 2
        sock.sendto(two, ("127.0.0.1", lean.dns_port))
        answer = sock.recv(512)
        assert answer[:2] == two[:2] and answer[3] & 0x0F == dns.rcode.FORMERR
        sock.sendto(b"not dns", ("127.0.0.1", lean.dns_port))  # dropped
        sock.sendto(b"\x00\x07" + two[2:5] + b"\x01" + two[6:], ("127.0.0.1", lean.dns_port))
        assert sock.recv(512)[:2] == b"\x00\x07"  # the next real query is answered


def verdict(result: dict[str, Any]) -> dict[str, Any]:
    """What a check concluded, without the texts that name the server software."""
    return {
        "ok": result["ok"],
        "outcome": result["outcome"],
        "stage": result["stage"],
        "findings": [(f["severity"], f["code"]) for f in result["findings"]],
        "dns": result["dns"],
        "banner": result["banner"]["code"],
        "mail": result["mail"] and result["mail"]["code"],
        "rcpt": [r["code"] for r in result["rcpt"]],
        "data": result["data"] and result["data"]["code"],
    }


def test_engine_sees_the_same_server_as_with_aiosmtpd(lean: LeanTarget) -> None:
    """The bench's two targets as bench/service.py starts them: the engine's
    verdict is the same against both, for the bench's check and a whole transaction."""
    aiosmtpd = SMTPTarget(tls="none", auth=False).start()
    try:
        with DNSServer(default_zone(), ttl=0) as dns_server:
            settings = Settings(
                allow_networks=(ipaddress.ip_network("127.0.0.0/8"),),
                allowed_ports=frozenset(range(1, 65536)),
                helo_name="checker.test",
                timeouts=Timeouts(connect=3, command=5, total=20),
            )
            checks: list[dict[str, Any]] = [
                {"tls": "none", "stop_after": "ehlo"},
                {
                    "tls": "none",
                    "mail_from": "a@checker.test",
                    "rcpt_to": ["bob@local.test"],
                    "message": {"subject": "t", "body": ".dot\r\n..two\r\n", "headers": {}},
                },
            ]
            for fields in checks:
                seen = []
                for port, dns_port in (
                    (lean.smtp_port, lean.dns_port),
                    (aiosmtpd.port, dns_server.port),
                ):
                    used = settings.replace(dns_servers=(("127.0.0.1", dns_port),))
                    request = check_request(used, host="127.0.0.1", port=port, **fields)
                    seen.append(verdict(run_check(request, used)))
                assert seen[0] == seen[1]
                assert seen[0]["ok"] and seen[0]["dns"]["forward_confirmed"] is True
    finally:
        aiosmtpd.stop()
