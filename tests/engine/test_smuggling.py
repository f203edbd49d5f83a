"""The smuggling probe against scripted servers that do and do not take a
bare terminator as the end of DATA (SMTP smuggling, CVE-2023-51764 family)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest

from tests.smtp_servers import ScriptedServer, read_line
from workers import probes

STRICT_END = b"\r\n.\r\n"


@pytest.fixture(autouse=True)
def short_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """These servers answer a terminator at once or never: 1.5 s of silence is
    plenty on loopback (the 5 s default is for servers across the internet)."""
    monkeypatch.setattr(probes, "SMUGGLING_WAIT", 1.5)


def data_server(mode: str) -> tuple[Callable[[socket.socket], None], list[bytes]]:
    """A small SMTP server; ``mode`` says how it ends DATA:

    - ``strict``: only at <CR><LF>.<CR><LF> (what RFC 5321 says);
    - ``lf``: also at <LF>.<LF> and <LF>.<CR><LF> (vulnerable, as unpatched
      Postfix with smtpd_forbid_bare_newline off, or Exim before 4.97.1);
    - ``reject``: refuses a bare <LF> in the message with 521 and hangs up
      (Postfix smtpd_forbid_bare_newline = reject).

    Every message body it took is appended to the returned list.
    """
    bodies: list[bytes] = []
    lock = threading.Lock()

    def ends(buffer: bytes) -> int | None:
        marks = [STRICT_END]
        if mode == "lf":
            marks += [b"\n.\n", b"\n.\r\n"]
        found = [buffer.find(mark) + len(mark) for mark in marks if mark in buffer]
        return min(found) if found else None

    def script(sock: socket.socket) -> None:
        sock.settimeout(15)
        sock.sendall(b"220 strict.test ESMTP\r\n")
        while True:
            line = read_line(sock)
            if not line:
                return
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                sock.sendall(b"250-strict.test\r\n250 PIPELINING\r\n")
            elif verb in (b"MAIL", b"RCPT", b"RSET"):
                sock.sendall(b"250 2.1.0 Ok\r\n")
            elif verb == b"QUIT":
                sock.sendall(b"221 2.0.0 Bye\r\n")
                return
            elif verb == b"DATA":
                sock.sendall(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                buffer = b""
                while (end := ends(buffer)) is None:
                    if mode == "reject" and b"\n" in buffer.replace(b"\r\n", b""):
                        sock.sendall(b"521 5.5.2 strict.test Error: bare <LF> received\r\n")
                        return
                    chunk = sock.recv(4096)
                    if not chunk:
                        return
                    buffer += chunk
                with lock:
                    bodies.append(buffer[:end])
                sock.sendall(b"250 2.0.0 Ok: queued as 4F2A1\r\n")
            else:
                sock.sendall(b"502 5.5.2 Error: command not recognized\r\n")

    return script, bodies


def _smuggling(
    check: Callable[..., dict[str, Any]],
    scripted_server: Callable[..., ScriptedServer],
    mode: str,
) -> tuple[dict[str, Any], list[bytes], ScriptedServer]:
    script, bodies = data_server(mode)
    server = scripted_server(script)
    result = check(
        host="127.0.0.1",
        port=server.port,
        tls="none",
        mail_from="probe@example.org",
        rcpt_to=["postmaster@strict.test"],
        probes=["smuggling"],
    )
    return result, bodies, server


def test_a_server_that_ends_data_at_a_bare_lf_is_vulnerable(check, scripted_server) -> None:
    result, bodies, _ = _smuggling(check, scripted_server, "lf")
    probe = result["probes"]["smuggling"]
    assert probe["result"] == "vulnerable"
    assert probe["detail"] == "accepts <LF>.<LF>, <LF>.<CR><LF> as the end of a message"
    tries = probe["terminators"]
    assert tries["<LF>.<LF>"]["result"] == "accepted"
    assert tries["<CR>.<CR>"]["result"] == "waited"
    finding = {f["code"]: f for f in result["findings"]}["smtp_smuggling"]
    assert finding["severity"] == "fail"
    assert "CVE-2023-51764" in finding["message"]
    assert "smtpd_forbid_bare_newline" in finding["message"]
    # Only the probe's own messages, one per terminator, and nothing smuggled inside them.
    assert len(bodies) == 3
    assert all(b"MAIL FROM" not in body.upper() for body in bodies)


def test_a_strict_server_is_not_vulnerable(check, scripted_server) -> None:
    result, bodies, _ = _smuggling(check, scripted_server, "strict")
    probe = result["probes"]["smuggling"]
    assert probe["result"] == "not_vulnerable", probe
    assert {t["result"] for t in probe["terminators"].values()} == {"waited"}
    codes = {f["code"] for f in result["findings"]}
    assert "smtp_smuggling_not_vulnerable" in codes
    assert len(bodies) == 3  # each message ended properly, once
    transcript = [line["text"] for line in result["transcript"]]
    assert "<LF>.<LF> (sent as it is)" in transcript
    assert transcript.count("QUIT") == 4  # the check and every probe connection say goodbye


def test_a_server_that_refuses_bare_lf_is_not_vulnerable(check, scripted_server) -> None:
    result, bodies, _ = _smuggling(check, scripted_server, "reject")
    probe = result["probes"]["smuggling"]
    assert probe["result"] == "not_vulnerable"
    assert probe["terminators"]["<LF>.<LF>"]["result"] == "rejected"
    assert probe["terminators"]["<LF>.<LF>"]["reply"]["code"] == 521
    assert len(bodies) == 1  # only <CR>.<CR> carries no bare <LF>: that one message ended
