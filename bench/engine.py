"""Engine throughput next to CPython's smtplib, in one run.

Both play the same dialogue (connect, banner, EHLO, MAIL, RCPT, DATA, QUIT)
back to back against the same local aiosmtpd, which runs in a child process
so that it does not compete with the client for this process's GIL. The
figure that matters is the ratio, measured in one run, not the absolute
rate of this machine.
Target: the engine within 1.5x of smtplib (ratio >= 0.67).

    .venv/bin/python -m bench.engine [--checks N] [--rounds R]
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import multiprocessing
import smtplib
import statistics
import tempfile
import time
from pathlib import Path

from smtpcheck.config import Settings
from tests.smtp_servers import Certificates, SMTPTarget
from workers.check import run_check

MESSAGE = b"Subject: bench\r\nFrom: a@example.org\r\n\r\nhello\r\n.dot\r\n"
RCPT = "bob@local.test"


def serve(port_pipe: multiprocessing.connection.Connection) -> None:
    """The target, in a process of its own, until the parent closes the pipe."""
    tmp = Path(tempfile.mkdtemp(prefix="smtpcheck-bench-"))
    target = SMTPTarget(Certificates(tmp), tls="none").start()
    port_pipe.send(target.port)
    with contextlib.suppress(EOFError):
        port_pipe.recv()
    target.stop()


def with_engine(port: int, settings: Settings, n: int) -> float:
    request = {
        "host": "127.0.0.1",
        "port": port,
        "tls": "none",
        "mail_from": "a@example.org",
        "rcpt_to": [RCPT],
        "data": MESSAGE.decode(),
    }
    started = time.perf_counter()
    for _ in range(n):
        result = run_check(request, settings)
        assert result["ok"], result["summary"]
    return n / (time.perf_counter() - started)


def with_smtplib(port: int, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        client = smtplib.SMTP("127.0.0.1", port, local_hostname="checker.test", timeout=10)
        client.ehlo()
        client.sendmail("a@example.org", [RCPT], MESSAGE)
        client.quit()
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=200, help="dialogues per round and side")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    parent, child = multiprocessing.Pipe()
    server = multiprocessing.get_context("spawn").Process(target=serve, args=(child,))
    server.start()
    port = parent.recv()
    settings = Settings(
        allow_networks=(ipaddress.ip_network("127.0.0.0/8"),),
        allowed_ports=frozenset({port}),
        helo_name="checker.test",
    )
    try:
        with_engine(port, settings, 20)  # warm both paths up
        with_smtplib(port, 20)
        engine, stdlib = [], []
        for _ in range(args.rounds):  # interleaved, so drift hits both alike
            engine.append(with_engine(port, settings, args.checks))
            stdlib.append(with_smtplib(port, args.checks))
    finally:
        parent.close()
        server.join(10)
    e, s = statistics.median(engine), statistics.median(stdlib)
    print(f"engine : {e:8.1f} checks/s (median of {args.rounds} rounds of {args.checks})")
    print(f"smtplib: {s:8.1f} checks/s")
    print(f"ratio engine/smtplib: {e / s:.2f}  (target >= 0.67, i.e. within 1.5x)")


if __name__ == "__main__":
    main()
