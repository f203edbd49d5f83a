"""A hostile server cannot hurt a worker: its memory stays bounded and the
check ends by its total deadline.

Each case runs the engine in a fresh Python process, which reads its own
VmRSS (and VmHWM, the peak, reset just before) from /proc/self/status around
one check, after a warm-up check against a well-behaved server has loaded
everything a check needs.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.dns_server import DNSServer
from tests.smtp_servers import ScriptedServer, read_line

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc"
)

MB = 1024 * 1024
TOTAL = 3.0

CHILD = r"""
import gc, json, re, sys, time, ipaddress
from smtpcheck.config import Settings, Timeouts
from smtpcheck.contract import check_request
from workers.engine import run_check

def memory():
    status = open("/proc/self/status").read()
    return {k: int(re.search(k + r":\s+(\d+) kB", status).group(1)) * 1024
            for k in ("VmRSS", "VmHWM")}

polite_port, hostile_port, dns_port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
total = float(sys.argv[4])
settings = Settings(
    allow_networks=(ipaddress.ip_network("127.0.0.0/8"),),
    allowed_ports=frozenset({polite_port, hostile_port}),
    dns_servers=(("127.0.0.1", dns_port),),  # PTR: NXDOMAIN at once, the same each time
    helo_name="checker.test",
)

def check(port):
    request = check_request(settings, host="127.0.0.1", port=port, tls="none",
                            stop_after="ehlo",
                            timeouts={"connect": 2, "command": 30, "total": total})
    return run_check(request, settings, check_id="hostile")

for _ in range(2):
    assert check(polite_port)["outcome"] == "ok"
gc.collect()
open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
before = memory()
started = time.monotonic()
result = check(hostile_port)
took = time.monotonic() - started
gc.collect()
after = memory()
print(json.dumps({"before": before, "after": after, "took": took,
                  "outcome": result["outcome"], "summary": result["summary"]}))
"""


def polite(sock: socket.socket) -> None:
    sock.sendall(b"220 polite.test ESMTP\r\n")
    while line := read_line(sock):
        if line.upper().startswith(b"QUIT"):
            sock.sendall(b"221 bye\r\n")
            return
        sock.sendall(b"250-polite.test\r\n250 SIZE 1000\r\n")


def ten_mb_banner(server: Callable[[], ScriptedServer]) -> Callable[[socket.socket], None]:
    """A 10 MB greeting line with no CRLF."""

    def script(sock: socket.socket) -> None:
        chunk = b"220 " + b"A" * (MB - 4)
        for _ in range(10):
            sock.sendall(chunk)
        while not server().stopping and sock.recv(4096):
            pass

    return script


def ten_mb_ehlo_reply(server: Callable[[], ScriptedServer]) -> Callable[[socket.socket], None]:
    """A polite greeting, then a 10 MB EHLO reply line with no CRLF."""

    def script(sock: socket.socket) -> None:
        sock.sendall(b"220 hostile.test ESMTP\r\n")
        read_line(sock)
        chunk = b"250-" + b"B" * (MB - 4)
        for _ in range(10):
            sock.sendall(chunk)
        while not server().stopping and sock.recv(4096):
            pass

    return script


def endless_reply(server: Callable[[], ScriptedServer]) -> Callable[[socket.socket], None]:
    """A multi-line EHLO reply that never ends (10 MB of short continuation lines)."""

    def script(sock: socket.socket) -> None:
        sock.sendall(b"220 hostile.test ESMTP\r\n")
        read_line(sock)
        chunk = b"250-X\r\n" * (MB // 7)
        for _ in range(10):
            sock.sendall(chunk)
        while not server().stopping and sock.recv(4096):
            pass

    return script


def drip(server: Callable[[], ScriptedServer]) -> Callable[[socket.socket], None]:
    """One byte every 50 ms, never a whole line: only the total deadline stops it."""

    def script(sock: socket.socket) -> None:
        while not server().stopping:
            sock.sendall(b"2")
            time.sleep(0.05)

    return script


@pytest.mark.parametrize(
    ("script", "outcomes"),
    [
        (ten_mb_banner, {"protocol_error"}),
        (ten_mb_ehlo_reply, {"protocol_error"}),
        (endless_reply, {"protocol_error"}),
        (drip, {"timeout", "banner_timeout"}),
    ],
)
def test_memory_stays_bounded_and_the_check_ends_by_its_deadline(
    scripted_server: Callable[..., ScriptedServer],
    dns_server: Callable[..., DNSServer],
    script: Callable[[Callable[[], ScriptedServer]], Callable[[socket.socket], None]],
    outcomes: set[str],
) -> None:
    good = scripted_server(polite)
    holder: list[ScriptedServer] = []
    bad = scripted_server(script(lambda: holder[0]))
    holder.append(bad)
    dns = dns_server({})

    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(good.port), str(bad.port), str(dns.port), str(TOTAL)],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout)
    assert report["outcome"] in outcomes, report["summary"]
    assert report["took"] <= TOTAL + 0.5
    growth = report["after"]["VmRSS"] - report["before"]["VmRSS"]
    peak = report["after"]["VmHWM"] - report["before"]["VmRSS"]
    assert growth < MB, f"RSS grew by {growth} bytes"
    assert peak < MB, f"RSS peaked {peak} bytes above where it started"
