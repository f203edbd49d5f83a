"""Hostile and broken servers: each ends in its outcome, by its deadline,
with the checker's memory bounded."""

from __future__ import annotations

import errno
import os
import socket
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

from smtpcheck.config import Timeouts
from smtpcheck.contract import check_request
from tests.smtp_servers import read_line
from workers.engine import run_check
from workers.errors import CheckAborted
from workers.stream import map_exceptions

FAST = {"connect": 2, "command": 2, "total": 6}


def client_lines(result: dict[str, Any]) -> list[str]:
    return [e["text"] for e in result["transcript"] if e["dir"] == "client"]


def wait_for_stop(server: Any, seconds: float) -> None:
    end = time.monotonic() + seconds
    while not server.stopping and time.monotonic() < end:
        time.sleep(0.05)


def smtp_script(
    replies: dict[str, bytes], banner: bytes = b"220 scripted.test ESMTP\r\n"
) -> Callable[[socket.socket], None]:
    """A tiny server: the banner, then a canned reply per verb (default 250)."""

    def script(sock: socket.socket) -> None:
        sock.sendall(banner)
        while True:
            line = read_line(sock)
            if not line:
                return
            verb = line.split(b" ")[0].strip().upper().decode("latin-1")
            sock.sendall(replies.get(verb, b"250 OK\r\n"))
            if verb == "QUIT":
                return

    return script


def timed(check: Callable[..., dict[str, Any]], **request: Any) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    result = check(**request)
    return result, time.monotonic() - started


def test_no_banner_is_banner_timeout(scripted_server, check):
    server = scripted_server(lambda sock: wait_for_stop(server, 10))
    result, took = timed(check, host=server.host, port=server.port, timeouts=FAST)
    assert result["outcome"] == "banner_timeout"
    assert result["stage"] == "banner"
    assert "sent no greeting within 2 s" in result["summary"]
    assert 1.9 < took < 3
    assert client_lines(result) == []  # never spoke first


def test_one_byte_a_second_is_stopped_by_the_total_deadline(scripted_server, check):
    def drip(sock: socket.socket) -> None:
        for byte in b"220 " + b"x" * 100:
            if server.stopping:
                return
            sock.sendall(bytes([byte]))
            time.sleep(0.5)

    server = scripted_server(drip)
    timeouts = {"connect": 2, "command": 30, "total": 3}
    result, took = timed(check, host=server.host, port=server.port, timeouts=timeouts)
    assert result["outcome"] == "timeout"
    assert "3 s deadline" in result["summary"]
    assert took < 3.5


def test_multiline_reply_that_never_ends(scripted_server, check):
    def endless(sock: socket.socket) -> None:
        sock.sendall(b"220-hello\r\n" * 10_000)

    server = scripted_server(endless)
    result = check(host=server.host, port=server.port, timeouts=FAST)
    assert result["outcome"] == "protocol_error"
    assert "more than 100 lines" in result["summary"]
    assert len(result["transcript"]) < 150


def test_ten_megabyte_line_without_crlf_stays_bounded(scripted_server, check):
    chunk = b"220 " + b"A" * (1024 * 1024 - 4)

    def flood(sock: socket.socket) -> None:
        for _ in range(10):
            sock.sendall(chunk)
        wait_for_stop(server, 5)

    server = scripted_server(flood)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = check(host=server.host, port=server.port, timeouts=FAST)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result["outcome"] == "protocol_error"
    assert "longer than 8192 bytes" in result["summary"]
    assert peak < 1024 * 1024, f"peak {peak} bytes while reading a 10 MB line"


def test_binary_garbage(scripted_server, check):
    server = scripted_server(lambda sock: sock.sendall(os.urandom(2000) + b"\r\n"))
    result = check(host=server.host, port=server.port, timeouts=FAST)
    assert result["outcome"] == "protocol_error"
    assert result["stage"] == "banner"


def test_close_on_connect(scripted_server, check):
    server = scripted_server(lambda sock: None)  # the script returns: the socket closes
    result = check(host=server.host, port=server.port, timeouts=FAST)
    assert result["outcome"] == "connection_closed"
    assert result["stage"] == "banner"
    assert "closed the connection" in result["summary"]


@pytest.mark.parametrize("code", [421, 554])
def test_refusing_greeting_is_service_unavailable(scripted_server, check, code):
    banner = f"{code} 4.3.2 too busy, try later\r\n".encode()
    server = scripted_server(smtp_script({"QUIT": b"221 bye\r\n"}, banner=banner))
    result = check(host=server.host, port=server.port, timeouts=FAST)
    assert result["outcome"] == "service_unavailable"
    assert result["banner"]["code"] == code
    assert f"greeted with {code}" in result["summary"]


def test_starttls_answered_with_garbage(scripted_server, check):
    def garbage_after_starttls(sock: socket.socket) -> None:
        sock.sendall(b"220 scripted.test ESMTP\r\n")
        read_line(sock)
        sock.sendall(b"250-scripted.test\r\n250 STARTTLS\r\n")
        read_line(sock)
        sock.sendall(b"220 go ahead\r\n")
        time.sleep(0.2)  # after our reply, in its own packet
        sock.sendall(b"this is not a TLS handshake at all\r\n" * 3)
        wait_for_stop(server, 3)

    server = scripted_server(garbage_after_starttls)
    result = check(host=server.host, port=server.port, tls="starttls", timeouts=FAST)
    assert result["outcome"] == "tls_error"
    assert result["stage"] == "tls"
    assert "TLS" in result["summary"]


def test_data_injected_before_the_tls_handshake_is_refused(scripted_server, check):
    def inject(sock: socket.socket) -> None:
        sock.sendall(b"220 scripted.test ESMTP\r\n")
        read_line(sock)
        sock.sendall(b"250-scripted.test\r\n250 STARTTLS\r\n")
        read_line(sock)
        sock.sendall(b"220 go ahead\r\n250 injected\r\n")
        wait_for_stop(server, 3)

    server = scripted_server(inject)
    result = check(host=server.host, port=server.port, tls="starttls", timeouts=FAST)
    assert result["outcome"] == "protocol_error"
    assert "before TLS" in result["summary"]


def test_450_on_rcpt(scripted_server, check):
    replies = {"RCPT": b"450 4.2.0 <b@local.test>: Recipient address rejected: Greylisted\r\n"}
    server = scripted_server(smtp_script(replies))
    result = check(
        host=server.host,
        port=server.port,
        tls="none",
        mail_from="a@example.org",
        rcpt_to=["b@local.test"],
        timeouts=FAST,
    )
    assert result["outcome"] == "temporary_failure"
    assert client_lines(result)[-2:] == ["RSET", "QUIT"]


def test_ehlo_refused_falls_back_to_helo(scripted_server, check):
    server = scripted_server(smtp_script({"EHLO": b"502 5.5.2 Error: command not recognized\r\n"}))
    result = check(host=server.host, port=server.port, tls="none", timeouts=FAST)
    assert result["ok"] is True, result["summary"]
    assert result["ehlo"]["command"] == "HELO"
    assert client_lines(result) == ["EHLO checker.test", "HELO checker.test", "QUIT"]


def test_ehlo_and_helo_refused(scripted_server, check):
    replies = {"EHLO": b"502 not here\r\n", "HELO": b"550 go away\r\n", "QUIT": b"221 bye\r\n"}
    server = scripted_server(smtp_script(replies))
    result = check(host=server.host, port=server.port, tls="none", timeouts=FAST)
    assert result["outcome"] == "ehlo_rejected"
    assert "550 go away" in result["summary"]


def test_connection_refused(check):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: refused
        result = check(host="127.0.0.1", port=port, timeouts=FAST)
    assert result["outcome"] == "connect_refused"
    assert result["stage"] == "connect"
    assert f"127.0.0.1:{port} was refused" in result["summary"]


def test_connect_timeout(check):
    """A listener whose accept queue is full drops new SYNs: connect hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        time.sleep(0.1)
        result, took = timed(
            check, host="127.0.0.1", port=port, timeouts={"connect": 1, "command": 2, "total": 5}
        )
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
    assert result["outcome"] == "connect_timeout", result["summary"]
    assert "firewall or the ISP" in result["summary"]
    assert took < 2


def test_forbidden_target_gets_no_packet(scripted_server, settings):
    server = scripted_server(smtp_script({}))
    strict = settings.replace(allow_networks=())
    result = run_check(check_request(strict, host=server.host, port=server.port), strict)
    assert result["outcome"] == "target_forbidden"
    assert "loopback" in result["summary"]
    time.sleep(0.1)
    assert server._clients == []


def test_port_outside_the_allowed_list(settings):
    settings = settings.replace(allowed_ports={25})
    result = run_check(check_request(settings, host="127.0.0.1", port=8080), settings)
    assert result["outcome"] == "target_forbidden"
    assert "port 8080" in result["summary"]


def test_total_deadline_caps_a_slow_but_steady_server(scripted_server, settings):
    """Every reply on time, but the whole check may not outlast its deadline."""

    def slow(sock: socket.socket) -> None:
        sock.sendall(b"220 slow.test\r\n")
        while not server.stopping:
            line = read_line(sock)
            if not line:
                return
            time.sleep(0.8)
            sock.sendall(b"250 OK\r\n")

    server = scripted_server(slow)
    quick = settings.replace(timeouts=Timeouts(connect=1, command=2, total=2))
    started = time.monotonic()
    result = run_check(
        check_request(
            quick,
            host=server.host,
            port=server.port,
            tls="none",
            mail_from="a@example.org",
            rcpt_to=[f"r{i}@local.test" for i in range(10)],
        ),
        quick,
    )
    assert result["outcome"] == "timeout"
    assert time.monotonic() - started < 2.5


def test_tls_handshake_failure_on_implicit_port(scripted_server, check):
    """Implicit TLS against a plain-text server."""
    server = scripted_server(smtp_script({}))
    result = check(host=server.host, port=server.port, tls="implicit", timeouts=FAST)
    assert result["outcome"] == "tls_error"


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (OSError(errno.ENETUNREACH, "Network is unreachable"), "network_unreachable"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "network_unreachable"),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "connect_refused"),
        (TimeoutError("timed out"), "connect_timeout"),
        (OSError(errno.ETIMEDOUT, "Connection timed out"), "connect_timeout"),
    ],
)
def test_os_errors_at_connect_map_to_one_outcome(error, outcome):
    """No route cannot be produced on loopback without touching the host's
    network, so the one boundary that translates it is tested directly."""
    with pytest.raises(CheckAborted) as caught, map_exceptions("connect"):
        raise error
    assert caught.value.outcome == outcome
