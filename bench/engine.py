"""Engine throughput next to CPython's smtplib, in one run.

Both play the same dialogue (connect, banner, EHLO, MAIL, RCPT, DATA, QUIT)
back to back against the same local aiosmtpd, which runs in a child process
so that it does not compete with the client for this process's GIL. The
figure that matters is the ratio, measured in one run, not the absolute
rate of this machine.
Target: the engine within 1.5x of smtplib (ratio >= 0.67).

With ``--baseline REV`` the engine of that git revision (checked out in a
temporary git worktree) runs the same rounds too, interleaved, each engine
in a child process of its own, and the script prints new/baseline: the
figure that says whether a change made the engine slower.

    .venv/bin/python -m bench.engine [--checks N] [--rounds R] [--baseline REV]
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import multiprocessing
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from smtpcheck.config import Settings
from smtpcheck.contract import check_request
from tests.smtp_servers import Certificates, SMTPTarget
from workers.engine import run_check

ROOT = Path(__file__).resolve().parent.parent
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
    request = check_request(
        settings,
        host="127.0.0.1",
        port=port,
        tls="none",
        mail_from="a@example.org",
        rcpt_to=[RCPT],
        data=MESSAGE.decode(),
    )
    started = time.perf_counter()
    for _ in range(n):
        result = run_check(request, settings)
        assert result["ok"], result["summary"]
    return n / (time.perf_counter() - started)


#: Run in a child process whose PYTHONPATH is one tree's root: the engine
#: of that tree, the same request as ``with_engine``; prints checks/s. An
#: older tree (a --baseline) has run_check in workers.check and takes the
#: request as given; today's wants it complete (smtpcheck.contract).
CHILD = """
import ipaddress, sys, time
from smtpcheck.config import Settings
try:
    from workers.engine import run_check
    from smtpcheck.contract import check_request
except ImportError:
    from workers.check import run_check
    check_request = lambda settings, **fields: fields
port, n = int(sys.argv[1]), int(sys.argv[2])
settings = Settings(
    allow_networks=(ipaddress.ip_network("127.0.0.0/8"),),
    allowed_ports=frozenset({port}),
    helo_name="checker.test",
)
request = check_request(settings, host="127.0.0.1", port=port, tls="none",
                        mail_from="a@example.org", rcpt_to=[sys.argv[3]], data=sys.argv[4])
for _ in range(20):
    run_check(request, settings)
started = time.perf_counter()
for _ in range(n):
    assert run_check(request, settings)["ok"]
print(n / (time.perf_counter() - started))
"""


def engine_of(tree: Path, port: int, n: int) -> float:
    """Checks/s of the engine in ``tree``, measured in a child process."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(port), str(n), RCPT, MESSAGE.decode()],
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def checkout(rev: str):  # type: ignore[no-untyped-def]
    """A temporary git worktree of ``rev``, removed afterwards."""
    where = Path(tempfile.mkdtemp(prefix="smtpcheck-baseline-")) / "tree"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), rev],
        check=True,
        capture_output=True,
    )
    try:
        yield where
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(where)],
            check=False,
            capture_output=True,
        )


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
    parser.add_argument("--baseline", help="a git revision whose engine to compare with")
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
    engine, stdlib, new, old = [], [], [], []
    try:
        with contextlib.ExitStack() as stack:
            baseline = stack.enter_context(checkout(args.baseline)) if args.baseline else None
            with_engine(port, settings, 20)  # warm both paths up
            with_smtplib(port, 20)
            for _ in range(args.rounds):  # interleaved, so drift hits all alike
                engine.append(with_engine(port, settings, args.checks))
                stdlib.append(with_smtplib(port, args.checks))
                if baseline is not None:
                    new.append(engine_of(ROOT, port, args.checks))
                    old.append(engine_of(baseline, port, args.checks))
    finally:
        parent.close()
        server.join(10)
    e, s = statistics.median(engine), statistics.median(stdlib)
    print(f"engine : {e:8.1f} checks/s (median of {args.rounds} rounds of {args.checks})")
    print(f"smtplib: {s:8.1f} checks/s")
    print(f"ratio engine/smtplib: {e / s:.2f}  (target >= 0.67, i.e. within 1.5x)")
    if new:
        n, o = statistics.median(new), statistics.median(old)
        print(f"engine in a child process: {n:8.1f} checks/s; {args.baseline}: {o:8.1f} checks/s")
        print(f"ratio engine/{args.baseline}: {n / o:.2f}  (>= 1.0: no slower than the baseline)")


if __name__ == "__main__":
    main()
