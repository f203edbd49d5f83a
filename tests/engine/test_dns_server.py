"""The test DNS server answers like an authoritative server would."""

from __future__ import annotations

import socket
from collections.abc import Callable

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.resolver
import pytest

from tests.dns_server import DNSServer, dns_server  # noqa: F401 (the fixture, until conftest has it)

ZONE = {
    "mx.local.test.": {"A": ["127.0.0.1"], "AAAA": ["::1"]},
    "local.test.": {"MX": ["10 mx.local.test."]},
    "nullmx.test.": {"MX": ["0 ."]},
    "smtp.local.test.": {"CNAME": ["mx.local.test."]},
    "1.0.0.127.in-addr.arpa.": {"PTR": ["mx.local.test."]},
}


@pytest.fixture
def server(dns_server: Callable[..., DNSServer]) -> DNSServer:  # noqa: F811
    return dns_server(ZONE, servfail=["broken.test."], silent=["slow.test."])


def ask(server: DNSServer, name: str, rdtype: str) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    return dns.query.udp(query, "127.0.0.1", port=server.port, timeout=2)


def test_a_and_aaaa(server: DNSServer) -> None:
    resolver = server.resolver()
    assert [r.to_text() for r in resolver.resolve("mx.local.test.", "A")] == ["127.0.0.1"]
    assert [r.to_text() for r in resolver.resolve("mx.local.test.", "AAAA")] == ["::1"]


def test_mx_and_null_mx(server: DNSServer) -> None:
    resolver = server.resolver()
    [mx] = resolver.resolve("local.test.", "MX")
    assert (mx.preference, mx.exchange.to_text()) == (10, "mx.local.test.")
    [null] = resolver.resolve("nullmx.test.", "MX")
    assert (null.preference, null.exchange.to_text()) == (0, ".")


def test_ptr(server: DNSServer) -> None:
    [ptr] = server.resolver().resolve_address("127.0.0.1")
    assert ptr.to_text() == "mx.local.test."


def test_names_match_case_insensitively(server: DNSServer) -> None:
    answer = server.resolver().resolve("MX.Local.TEST.", "A")
    assert [r.to_text() for r in answer] == ["127.0.0.1"]


def test_cname_is_followed_inside_the_zone(server: DNSServer) -> None:
    answer = server.resolver().resolve("smtp.local.test.", "A")
    assert answer.canonical_name.to_text() == "mx.local.test."
    assert [r.to_text() for r in answer] == ["127.0.0.1"]


def test_unknown_name_is_nxdomain(server: DNSServer) -> None:
    response = ask(server, "nope.local.test.", "A")
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.flags & dns.flags.AA
    with pytest.raises(dns.resolver.NXDOMAIN):
        server.resolver().resolve("nope.local.test.", "A")


def test_existing_name_without_the_type_is_nodata(server: DNSServer) -> None:
    response = ask(server, "local.test.", "A")
    assert (response.rcode(), response.answer) == (dns.rcode.NOERROR, [])
    with pytest.raises(dns.resolver.NoAnswer):
        server.resolver().resolve("local.test.", "A")
    with pytest.raises(dns.resolver.NoAnswer):
        server.resolver().resolve("mx.local.test.", "MX")


def test_empty_non_terminal_is_nodata_not_nxdomain(server: DNSServer) -> None:
    response = ask(server, "0.0.127.in-addr.arpa.", "PTR")
    assert (response.rcode(), response.answer) == (dns.rcode.NOERROR, [])


def test_servfail(server: DNSServer) -> None:
    assert ask(server, "broken.test.", "MX").rcode() == dns.rcode.SERVFAIL
    with pytest.raises(dns.resolver.NoNameservers):
        server.resolver().resolve("broken.test.", "MX")


def test_silent_name_times_out_and_others_still_answer(server: DNSServer) -> None:
    with pytest.raises(dns.resolver.LifetimeTimeout):
        server.resolver(lifetime=0.3).resolve("slow.test.", "A")
    assert server.resolver().resolve("mx.local.test.", "A")
    assert ("slow.test.", "A") in server.queries


def test_garbage_datagram_is_ignored(server: DNSServer) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"\x00not dns", ("127.0.0.1", server.port))
    assert server.resolver().resolve("mx.local.test.", "A")


def test_stop_closes_the_socket_and_joins_the_thread() -> None:
    server = DNSServer(ZONE).start()
    thread, sock = server._thread, server._sock
    assert thread is not None and sock is not None and thread.is_alive()
    server.stop()
    assert not thread.is_alive()
    assert sock.fileno() == -1


def test_stop_before_start_is_harmless() -> None:
    DNSServer(ZONE).stop()
