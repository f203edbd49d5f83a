"""A host with several addresses is tried address by address (RFC 5321 s5):
loopback addresses behind the test DNS server, one refusing (nothing listens
on it), one timing out (a listener whose queue is full), one answering."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from smtpcheck.config import Timeouts
from smtpcheck.contract import check_request
from tests.smtp_servers import read_line
from workers.connection import most_informative
from workers.engine import run_check
from workers.errors import ConnectRefused, ConnectTimeout, NetworkUnreachable


@pytest.fixture
def silent_port() -> Iterator[tuple[str, int]]:
    """127.0.0.3:<port> that takes no connection: its accept queue is full."""
    listener = socket.socket()
    listener.bind(("127.0.0.3", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    filler = socket.create_connection(("127.0.0.3", port), timeout=2)
    yield "127.0.0.3", port
    filler.close()
    listener.close()


def zone(port_owner: str, *addresses: str) -> dict[str, dict[str, list[str]]]:
    return {f"{port_owner}.": {"A": list(addresses)}}


def smtp_script(sock: socket.socket) -> None:
    sock.sendall(b"220 second.local.test ESMTP\r\n")
    while line := read_line(sock):
        if line.upper().startswith(b"QUIT"):
            sock.sendall(b"221 bye\r\n")
            return
        sock.sendall(b"250 second.local.test\r\n")


def test_a_refusing_address_is_followed_by_the_next(scripted_server, settings, dns_server):
    working = scripted_server(smtp_script, host="127.0.0.9")
    port = working.port  # nothing listens on 127.0.0.5 at this port: it refuses
    server = dns_server(zone("multi.local.test", "127.0.0.5", "127.0.0.9"))
    settings = settings.replace(dns_servers=(("127.0.0.1", server.port),))
    result = run_check(
        check_request(settings, host="multi.local.test", port=port, tls="none", stop_after="ehlo"),
        settings,
    )

    assert result["ok"] is True, result["summary"]
    assert result["target"]["addresses"] == ["127.0.0.5", "127.0.0.9"]
    assert result["target"]["address"] == "127.0.0.9"
    assert result["target"]["source"] == "127.0.0.1"
    lines = [(e["dir"], e["text"]) for e in result["transcript"]]
    tries = lines.index(("note", f"connecting to 127.0.0.5:{port}"))
    assert lines[tries : tries + 3] == [
        ("note", f"connecting to 127.0.0.5:{port}"),
        ("error", f"127.0.0.5:{port}: connection refused; trying the next address"),
        ("note", f"connecting to 127.0.0.9:{port}"),
    ]


def test_when_every_address_fails_the_most_telling_failure_is_the_outcome(
    settings, dns_server, silent_port
):
    address, port = silent_port
    server = dns_server(zone("dead.local.test", address, "127.0.0.4"))
    settings = settings.replace(
        dns_servers=(("127.0.0.1", server.port),),
        timeouts=Timeouts(connect=0.5, command=2, total=10),
    )
    result = run_check(
        check_request(settings, host="dead.local.test", port=port, stop_after="connect"), settings
    )

    # the last address refused: that is the outcome, and both tries are said
    assert result["outcome"] == "connect_refused"
    assert result["target"]["address"] == "127.0.0.4"
    assert result["target"]["source"] == "127.0.0.1"  # known even though nothing answered
    errors = [e["text"] for e in result["transcript"] if e["dir"] == "error"]
    assert errors[0] == f"{address}:{port}: connect timed out; trying the next address"
    assert errors[-1] == (
        f"connect_refused: every address failed: {address}:{port} connect timed out; "
        f"127.0.0.4:{port} connection refused"
    )


def test_a_refusing_single_address_keeps_its_own_words(settings):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = int(unused.getsockname()[1])  # bound, not listening: refuses
        result = run_check(
            check_request(settings, host="127.0.0.1", port=port, stop_after="connect"), settings
        )
    assert result["outcome"] == "connect_refused"
    assert result["target"]["source"] == "127.0.0.1"
    assert [e["text"] for e in result["transcript"] if e["dir"] == "error"] == [
        "connect_refused: connection refused"
    ]


def test_unreachable_says_less_than_refused_or_timed_out():
    refused, timed_out, unreachable = (
        ConnectRefused("refused"),
        ConnectTimeout("timed out"),
        NetworkUnreachable("no route"),
    )
    assert most_informative([refused, unreachable]) is refused
    assert most_informative([refused, timed_out]) is timed_out  # the last
    assert most_informative([unreachable, unreachable]) is unreachable
