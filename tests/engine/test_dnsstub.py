"""workers.dnsstub against dnspython, byte for byte: the query it sends, how
it reads a response (every datagram it reads itself must be one dnspython
reads the same way), the CNAME chain, and whole lookups against real and
scripted UDP servers."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable, Iterator

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.reversename
import dns.rrset
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from workers import dnsstub

# -- names ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["127.0.0.1", "192.0.2.255", "2001:db8::1", "::1", "::ffff:192.0.2.7", "fe80::1:2"],
)
def test_reverse_name_is_dnspythons(text):
    expected = dns.reversename.from_address(text)
    labels = dnsstub.reverse_name(ipaddress.ip_address(text))
    assert labels == expected.labels
    assert dnsstub.name_text(labels) == expected.to_text()


@hypothesis_settings(max_examples=100, deadline=None)
@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)))
def test_reverse_name_of_any_address(address):
    assert dnsstub.reverse_name(address) == dns.reversename.from_address(str(address)).labels


@hypothesis_settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=20), min_size=0, max_size=5))
def test_name_text_escapes_as_dnspython(labels):
    name = dns.name.Name([*labels, b""])
    assert dnsstub.name_text(name.labels) == name.to_text()


@pytest.mark.parametrize(
    "text",
    ["mail.local.test", "MX1.Example.ORG", "_dmarc.x-y.test", "a", "1.0.0.127.in-addr.arpa"],
)
def test_plain_names_are_read_as_dnspython_reads_them(text):
    assert dnsstub.plain_name(text) == dns.name.from_text(text).labels


@pytest.mark.parametrize(
    "text",
    ["", ".", "a..b", "trailing.", "sp ace.test", "esc\\.aped.test", "caf\u00e9.test", "a" * 64],
)
def test_other_names_are_left_to_dnspython(text):
    assert dnsstub.plain_name(text) is None


# -- the query -------------------------------------------------------------------


def _dnspython_query(name: str, rdtype: str, ident: int, edns: bool) -> bytes:
    query = dns.message.make_query(name, rdtype)
    if edns:
        query.use_edns(0, 0, 1232)
    query.id = ident
    return query.to_wire()


@pytest.mark.parametrize("edns", [False, True])
@pytest.mark.parametrize(("name", "rdtype"), [("mail.local.test", "A"), ("x.test", "AAAA")])
def test_query_is_dnspythons(name, rdtype, edns):
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    if edns:
        resolver.use_edns(0, 0, 1232)  # what resolv.conf's "options edns0" does
    config = dnsstub.Config.of(resolver)
    assert config is not None
    labels = dnsstub.plain_name(name)
    assert labels is not None
    wire = dnsstub._query_wire(4321, dnsstub._wire(labels), dnsstub.QTYPES[rdtype], config.opt)
    assert wire == _dnspython_query(name, rdtype, 4321, edns)


@pytest.mark.parametrize(
    "servers",
    [
        (("127.0.0.1", 5353),),
        (("192.0.2.1", 53), ("2001:db8::1", 5300)),
        (("192.0.2.1", 53), ("192.0.2.1", 54)),  # one address twice: dnspython keeps one port
    ],
)
def test_dns_servers_configure_it_as_they_configure_dnspython(servers):
    resolver = dns.resolver.Resolver(configure=False)  # as workers.resolver configures it
    resolver.nameservers = [ip for ip, _ in servers]
    resolver.nameserver_ports = dict(servers)
    assert dnsstub.Config.of_servers(servers) == dnsstub.Config.of(resolver)


def test_configurations_it_does_not_do_are_left_to_dnspython():
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["https://dns.example/dns-query"]
    assert dnsstub.Config.of(resolver) is None
    resolver.nameservers = ["127.0.0.1"]
    resolver.flags = dns.flags.RD | dns.flags.AD
    assert dnsstub.Config.of(resolver) is None


# -- reading responses -----------------------------------------------------------

QNAME = "1.0.0.127.in-addr.arpa."


def _response(
    rcode: int = dns.rcode.NOERROR,
    answer: list[tuple[str, str, list[str]]] = (),  # type: ignore[assignment]
    authority: list[tuple[str, str, list[str]]] = (),  # type: ignore[assignment]
    qname: str = QNAME,
    qtype: str = "PTR",
    edns: bool = False,
) -> dns.message.Message:
    query = dns.message.make_query(qname, qtype)
    if edns:
        query.use_edns(0, 0, 1232)
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    for section, records in ((response.answer, answer), (response.authority, authority)):
        for owner, rdtype, values in records:
            rrset = dns.rrset.from_text_list(owner, 300, "IN", rdtype, values)
            section.append(rrset)
    return response


RESPONSES = {
    "ptr": _response(answer=[(QNAME, "PTR", ["mail.local.test.", "Other.Test."])]),
    "nxdomain": _response(
        dns.rcode.NXDOMAIN,
        authority=[("in-addr.arpa.", "SOA", ["ns. host. 1 2 3 4 5"])],
    ),
    "nodata": _response(authority=[("0.127.in-addr.arpa.", "SOA", ["ns. host. 1 2 3 4 5"])]),
    "cname": _response(
        answer=[
            (QNAME, "CNAME", ["1.0-25.0.0.127.in-addr.arpa."]),
            ("1.0-25.0.0.127.in-addr.arpa.", "PTR", ["mail.local.test."]),
        ]
    ),
    "a": _response(
        qname="mail.local.test.",
        qtype="A",
        answer=[("mail.local.test.", "A", ["127.0.0.1", "192.0.2.1"])],
        edns=True,
    ),
    "aaaa": _response(
        qname="mail.local.test.",
        qtype="AAAA",
        answer=[("Mail.Local.Test.", "AAAA", ["::1", "::ffff:192.0.2.1"])],
    ),
    "servfail": _response(dns.rcode.SERVFAIL),
    "ns": _response(
        qname="x.test.",
        qtype="A",
        authority=[("test.", "NS", ["ns1.test.", "ns2.test."])],
    ),
}


@pytest.mark.parametrize("kind", sorted(RESPONSES))
def test_common_responses_are_read_without_dnspython(kind):
    wire = RESPONSES[kind].to_wire()
    assert dnsstub.parse(wire) == dnsstub.from_dnspython(dns.message.from_wire(wire))


def test_duplicates_are_one_record_and_names_compare_without_case():
    wire = _response(
        answer=[
            (QNAME, "PTR", ["mail.local.test."]),
            (QNAME.upper(), "PTR", ["MAIL.local.test.", "other.test."]),
        ]
    ).to_wire()
    fast = dnsstub.parse(wire)
    assert fast == dnsstub.from_dnspython(dns.message.from_wire(wire))
    [records] = fast.answer.values()
    assert [dnsstub.name_text(r) for r in records if isinstance(r, tuple)] == [
        "mail.local.test.",
        "other.test.",
    ]


def test_truncated_and_unusual_responses_go_to_dnspython():
    truncated = _response()
    truncated.flags |= dns.flags.TC
    txt = _response(answer=[(QNAME, "TXT", ['"hello"'])])
    chaos = dns.message.make_response(dns.message.make_query("version.bind.", "TXT", "CH"))
    chaos.answer.append(dns.rrset.from_text("version.bind.", 0, "CH", "TXT", '"9"'))
    for message in (truncated, txt, chaos):
        with pytest.raises(dnsstub.Unsure):
            dnsstub.parse(message.to_wire())


def _dnspython_reads(wire: bytes) -> dnsstub.Response | None:
    try:
        return dnsstub.from_dnspython(dns.message.from_wire(wire))
    except Exception:
        return None


@hypothesis_settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(sorted(RESPONSES)),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=3),
    st.integers(0, 400),
)
def test_a_damaged_response_is_read_as_dnspython_reads_it_or_left_to_it(kind, changes, cut):
    """Whatever the fast parser accepts, dnspython reads the same way."""
    wire = bytearray(RESPONSES[kind].to_wire())
    for where, value in changes:
        if wire:
            wire[where % len(wire)] = value
    wire = wire[: max(cut, 12)] if cut < len(wire) else wire
    try:
        fast = dnsstub.parse(bytes(wire))
    except dnsstub.Unsure:
        return
    assert fast == _dnspython_reads(bytes(wire))


def test_is_response_is_dnspythons():
    query = dns.message.make_query(QNAME, "PTR")
    question = (dnsstub._key(dns.name.from_text(QNAME).labels), dnsstub.PTR, dnsstub.IN)
    cases = []
    good = dns.message.make_response(query)
    cases.append(good)
    other_id = dns.message.make_response(query)
    other_id.id ^= 1
    cases.append(other_id)
    not_response = dns.message.make_response(query)
    not_response.flags &= ~dns.flags.QR
    cases.append(not_response)
    other_type = dns.message.make_response(dns.message.make_query(QNAME, "A"))
    other_type.id = query.id
    cases.append(other_type)
    for rcode in (dns.rcode.SERVFAIL, dns.rcode.NOERROR):
        empty = dns.message.make_response(query)
        empty.question = []
        empty.set_rcode(rcode)
        cases.append(empty)
    for response in cases:
        ours = dnsstub.answers(dnsstub.parse(response.to_wire()), query.id, question)
        assert ours is query.is_response(response)


def _chained(wire: bytes) -> list[str] | str | None:
    """dnspython's chaining as texts (or the exception's name)."""
    try:
        found = dns.message.from_wire(wire).resolve_chaining().answer
    except Exception as exc:
        return type(exc).__name__
    return None if found is None else [r.to_text() for r in found]


def _ours(wire: bytes) -> list[str] | str | None:
    parsed = dnsstub.parse(wire)
    asked = dns.message.from_wire(wire).question[0]
    question = (dnsstub._key(asked.name.labels), int(asked.rdtype), dnsstub.IN)
    try:
        found = dnsstub.chain(parsed, question)
    except dnsstub._ChainTooLong:
        return "ChainTooLong"
    if found is None:
        return None
    return [
        dnsstub.name_text(r) if isinstance(r, tuple) else str(ipaddress.ip_address(r))
        for r in found
    ]


def _cname_loop(length: int) -> dns.message.Message:
    names = [f"n{i}.test." for i in range(length)]
    records = [(names[i], "CNAME", [names[(i + 1) % length]]) for i in range(length)]
    return _response(qname=names[0], qtype="A", answer=records)


@pytest.mark.parametrize(
    "response",
    [
        RESPONSES["cname"],
        RESPONSES["ptr"],
        RESPONSES["nodata"],
        _cname_loop(3),
        _cname_loop(20),
        _response(qname="a.test.", qtype="A", answer=[("a.test.", "CNAME", ["b.test."])]),
        _response(
            qname="a.test.",
            qtype="A",
            answer=[("A.TEST.", "CNAME", ["b.test."]), ("B.test.", "A", ["192.0.2.9"])],
        ),
    ],
)
def test_the_cname_chain_is_followed_as_dnspython_follows_it(response):
    wire = response.to_wire()  # dnspython shuffles the records of an RRset each time
    assert _ours(wire) == _chained(wire)


# -- whole lookups ---------------------------------------------------------------

ZONE = {
    "1.0.0.127.in-addr.arpa.": {"PTR": ["mail.local.test."]},
    "2.0.0.127.in-addr.arpa.": {"CNAME": ["2.0-25.0.0.127.in-addr.arpa."]},
    "2.0-25.0.0.127.in-addr.arpa.": {"PTR": ["classless.local.test."]},
    "mail.local.test.": {"A": ["127.0.0.1", "127.0.0.3"], "AAAA": ["::1"]},
    "txt.local.test.": {"TXT": ["hello"]},
}


def _outcome(call: Callable[[], object]) -> object:
    try:
        return call()
    except dns.exception.DNSException as exc:
        return type(exc).__name__


@pytest.fixture
def zone_server(dns_server):
    return dns_server(ZONE, servfail=["broken.local.test."], silent=["silent.local.test."])


@pytest.mark.parametrize(
    ("name", "rdtype"),
    [
        ("1.0.0.127.in-addr.arpa", "PTR"),
        ("2.0.0.127.in-addr.arpa", "PTR"),
        ("mail.local.test", "A"),
        ("mail.local.test", "AAAA"),
        ("txt.local.test", "A"),
        ("nothere.local.test", "A"),
        ("broken.local.test", "A"),
        ("silent.local.test", "PTR"),
    ],
)
def test_a_lookup_ends_as_dnspythons(zone_server, name, rdtype):
    resolver = zone_server.resolver(lifetime=0.3)
    resolver.timeout = 0.2
    config = dnsstub.Config.of(resolver)
    assert config is not None
    labels = dnsstub.plain_name(name)
    assert labels is not None

    def theirs() -> object:
        answer = resolver.resolve(name, rdtype, search=False)
        return [r.to_text() for r in answer]

    def ours() -> object:
        found = dnsstub.lookup(config, labels, rdtype, 0.3, 0.2)
        family = socket.AF_INET6 if rdtype == "AAAA" else socket.AF_INET
        return [
            dnsstub.name_text(r) if isinstance(r, tuple) else socket.inet_ntop(family, r)
            for r in found
        ]

    expected = _outcome(theirs)
    assert _outcome(ours) == expected
    if name == "silent.local.test":
        assert expected == "LifetimeTimeout"


@pytest.fixture
def scripted_udp() -> Iterator[Callable[[Callable[[bytes], list[bytes]]], int]]:
    """A UDP server on 127.0.0.1 answering each query with what ``script``
    makes of it (zero or more datagrams); yields a starter returning its port."""
    sockets: list[socket.socket] = []
    threads: list[threading.Thread] = []
    stopping = threading.Event()

    def start(script: Callable[[bytes], list[bytes]]) -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)

        def serve() -> None:
            while True:
                wire, peer = sock.recvfrom(65535)
                if stopping.is_set():
                    return
                for datagram in script(wire):
                    sock.sendto(datagram, peer)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        threads.append(thread)
        return int(sock.getsockname()[1])

    yield start
    stopping.set()
    for sock in sockets:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as waker:
            waker.sendto(b"", sock.getsockname())
    for thread in threads:
        thread.join(1)
    for sock in sockets:
        sock.close()


def _answer_to(wire: bytes, **changes: object) -> bytes:
    query = dns.message.from_wire(wire)
    response = dns.message.make_response(query)
    response.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "PTR", "ok.test."))
    for attribute, value in changes.items():
        setattr(response, attribute, value)
    return response.to_wire()


def test_wrong_ids_and_garbage_are_ignored_until_the_answer(scripted_udp):
    def script(wire: bytes) -> list[bytes]:
        query_id = dns.message.from_wire(wire).id
        return [b"garbage", _answer_to(wire, id=query_id ^ 0xFFFF), _answer_to(wire)]

    port = scripted_udp(script)
    config = dnsstub.Config((("127.0.0.1", port),), False, b"")
    labels = dnsstub.reverse_name(ipaddress.ip_address("127.0.0.1"))
    found = dnsstub.lookup(config, labels, "PTR", 2.0, 1.0)
    assert [dnsstub.name_text(r) for r in found if isinstance(r, tuple)] == ["ok.test."]


def test_a_refusing_server_is_left_for_the_next(scripted_udp):
    def refuse(wire: bytes) -> list[bytes]:
        response = dns.message.make_response(dns.message.from_wire(wire))
        response.set_rcode(dns.rcode.REFUSED)
        return [response.to_wire()]

    refusing = scripted_udp(refuse)
    answering = scripted_udp(lambda wire: [_answer_to(wire)])
    labels = dnsstub.reverse_name(ipaddress.ip_address("127.0.0.1"))
    both = dnsstub.Config((("127.0.0.1", refusing), ("127.0.0.1", answering)), False, b"")
    assert dnsstub.lookup(both, labels, "PTR", 2.0, 1.0) == [(b"ok", b"test", b"")]
    alone = dnsstub.Config((("127.0.0.1", refusing),), False, b"")
    with pytest.raises(dns.resolver.NoNameservers):
        dnsstub.lookup(alone, labels, "PTR", 2.0, 1.0)


def test_a_truncated_answer_is_asked_again_over_tcp(scripted_udp):
    """TC set: dnspython asks the same server over TCP; so does the stub."""
    asked_tcp = threading.Event()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def tcp_answer() -> None:
        conn, _ = listener.accept()
        with conn:
            size = int.from_bytes(conn.recv(2), "big")
            wire = b""
            while len(wire) < size:
                wire += conn.recv(size - len(wire))
            asked_tcp.set()
            answer = _answer_to(wire)
            conn.sendall(len(answer).to_bytes(2, "big") + answer)

    server = threading.Thread(target=tcp_answer, daemon=True)
    server.start()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", port))

    def udp_truncated() -> None:
        wire, peer = udp.recvfrom(65535)
        response = dns.message.make_response(dns.message.from_wire(wire))
        response.flags |= dns.flags.TC
        udp.sendto(response.to_wire(), peer)

    truncating = threading.Thread(target=udp_truncated, daemon=True)
    truncating.start()
    try:
        config = dnsstub.Config((("127.0.0.1", port),), False, b"")
        labels = dnsstub.reverse_name(ipaddress.ip_address("127.0.0.1"))
        assert dnsstub.lookup(config, labels, "PTR", 3.0, 2.0) == [(b"ok", b"test", b"")]
        assert asked_tcp.is_set()
    finally:
        udp.close()
        listener.close()
        server.join(2)
        truncating.join(2)
