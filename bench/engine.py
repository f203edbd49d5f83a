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

With ``--cpu`` it measures instead what does not move with the machine's
load: the bench's fast check (connect, banner, EHLO, QUIT and the PTR
lookup with its forward confirmation, against a DNS server in the target's
process) run by one tree's engine in a child process, which prints its
Python calls per check (a profile hook in every thread), its CPU per check
(getrusage over ``--checks`` checks, run one after another), the same two
with a transcript listener that encodes every line as the worker's
publisher does (``listened_*``), and its CPU per check with ``--threads``
threads running checks side by side, as a worker does. With ``--baseline``
both trees run in turns, and the script prints new/old of each figure and
the load beside them.

    .venv/bin/python -m bench.engine --cpu [--checks N] [--rounds R] [--threads T] [--baseline REV]

With ``--worker`` the same fast checks go through the API (in-process,
Flask's test client) to a fresh embedded Redis, and one tree's threaded
worker class runs them all in burst mode in a child process, as many in
flight as it takes: the figure is that process's CPU per check over the
worker's run (getrusage; the POSTs not counted). ``--baseline`` takes a
revision or the path of a tree (say, today's main with only the engine's
commits reverted, to see what the engine alone changed in the worker).

    .venv/bin/python -m bench.engine --worker [--checks N] [--rounds R] [--baseline REV|PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import multiprocessing
import os
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from smtpcheck.config import Settings
from smtpcheck.contract import check_request
from tests.smtp_servers import Certificates, SMTPTarget
from workers.engine import run_check

ROOT = Path(__file__).resolve().parent.parent
MESSAGE = b"Subject: bench\r\nFrom: a@example.org\r\n\r\nhello\r\n.dot\r\n"
RCPT = "bob@local.test"


def serve(port_pipe: multiprocessing.connection.Connection) -> None:
    """The target and a DNS server answering the checks' PTR lookups of
    127.0.0.1 (as bench/worker.py's), in a process of their own, until the
    parent closes the pipe."""
    from tests.dns_server import DNSServer

    tmp = Path(tempfile.mkdtemp(prefix="smtpcheck-bench-"))
    target = SMTPTarget(Certificates(tmp), tls="none").start()
    dns = DNSServer({"1.0.0.127.in-addr.arpa.": {"PTR": ["mail.local.test."]}}).start()
    port_pipe.send((target.port, dns.port))
    with contextlib.suppress(EOFError):
        port_pipe.recv()
    dns.stop()
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


#: The --cpu child: one tree's engine, the bench's fast check; prints JSON.
CPU_CHILD = """
import ipaddress, json, resource, sys, threading
from smtpcheck.config import Settings
from smtpcheck.contract import check_request
from workers.engine import run_check
port, dns_port, n, threads = (int(arg) for arg in sys.argv[1:5])
settings = Settings(
    allow_networks=(ipaddress.ip_network("127.0.0.0/8"),),
    allowed_ports=frozenset({port}),
    helo_name="bench.local.test",
    dns_servers=(("127.0.0.1", dns_port),),
)
request = check_request(settings, host="127.0.0.1", port=port, tls="none", stop_after="ehlo")
def check():
    result = run_check(request, settings)
    assert result["ok"] and result["dns"]["ptr"] == ["mail.local.test"], result
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
for _ in range(30):
    check()
calls = [0]
def hook(frame, event, arg):
    if event == "call":
        calls[0] += 1
def counted(run):
    calls[0] = 0
    threading.setprofile(hook)
    sys.setprofile(hook)
    for _ in range(50):
        run()
    sys.setprofile(None)
    threading.setprofile(None)
    return calls[0] / 50
def cpu_of(run):
    started = cpu()
    for _ in range(n):
        run()
    return (cpu() - started) / n
try:  # the encoding of a published line; an older tree has it in workers.events
    from workers.transcript import entry_json as encoded
except ImportError:
    from workers.events import _encode as encoded
from workers.transcript import listening
published = []
def listened():
    with listening(lambda entry: published.append(encoded(entry))):
        check()
    published.clear()
alone_calls, alone = counted(check), cpu_of(check)
listened_calls, listened_cpu = counted(listened), cpu_of(listened)
def runs():
    for _ in range(n // threads):
        check()
pool = [threading.Thread(target=runs) for _ in range(threads)]
started = cpu()
for thread in pool:
    thread.start()
for thread in pool:
    thread.join()
side_by_side = (cpu() - started) / (n // threads * threads)
figures = {
    "calls": alone_calls,
    "cpu_ms": alone * 1e3,
    "listened_calls": listened_calls,
    "listened_cpu_ms": listened_cpu * 1e3,
    "threads_cpu_ms": side_by_side * 1e3,
}
print(json.dumps(figures))
"""


#: The --worker child: POSTs in-process, then one threaded worker's burst.
WORKER_CHILD = """
import json, os, resource, sys
import workers.job
from service import create_app
from smtpcheck.config import Settings
from smtpcheck.redis_client import connect
from workers.pool import build_worker
redis_url, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
keys = [key.partition(":")[2] for key in os.environ["SMTPCHECK_API_KEYS"].split(",")]
settings = Settings.from_env()
client = create_app(settings).test_client()
body = {"host": "127.0.0.1", "port": port, "tls": "none", "stop_after": "ehlo"}
def post(count):
    for i in range(count):
        headers = {"Authorization": "Bearer " + keys[i % len(keys)]}
        answer = client.post("/v1/checks", json=body, headers=headers)
        assert answer.status_code == 202, answer.get_data()
def burst(name):
    build_worker(settings, connect(redis_url), vantage="default", name=name).work(
        burst=True, logging_level="WARNING"
    )
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
workers.job.use_settings(settings)
post(50)
burst("warm-%d" % os.getpid())
post(n)
started = cpu()
burst("measured-%d" % os.getpid())
print(json.dumps({"worker_cpu_ms": (cpu() - started) / n * 1e3}))
"""


def child_figures(tree: Path, code: str, argv: list[str], env: dict[str, str]) -> dict[str, float]:
    """The JSON figures a child process running ``code`` on ``tree`` prints."""
    done = subprocess.run(
        [sys.executable, "-c", code, *argv],
        env={**env, "PYTHONPATH": str(tree)},
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    )
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def cpu_of(tree: Path, port: int, dns_port: int, n: int, threads: int) -> dict[str, float]:
    """The --cpu figures of the engine in ``tree``, from a child process."""
    argv = [str(port), str(dns_port), str(n), str(threads)]
    return child_figures(tree, CPU_CHILD, argv, {"PATH": "/usr/bin:/bin"})


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f}"


def new_and_old(stack: contextlib.ExitStack, baseline: str | None) -> dict[str, Path]:
    """This tree as "new" and, given a ``baseline`` (a tree's path, or a revision
    checked out in a worktree that ``stack`` removes), that one as "old"."""
    trees = {"new": ROOT}
    if baseline:
        given = Path(baseline)
        trees["old"] = (
            given.resolve() if given.is_dir() else stack.enter_context(checkout(baseline))
        )
    return trees


def figures_in_turns(
    trees: dict[str, Path],
    rounds: int,
    measure: Callable[[str, Path], dict[str, Any]],
    *,
    no_ratio: str,
) -> None:
    """``measure(name, tree)`` of each tree in turns (the other order every other
    round), printed per round with the load, then each figure's median, new/old
    when there is an "old" tree (but for the figure ``no_ratio``), and the most
    called functions if a figures dict carried them (its "functions")."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    top: list[list[Any]] = []
    for turn in range(rounds):
        order = list(trees.items())
        for name, tree in order if turn % 2 == 0 else order[::-1]:
            figures = measure(name, tree)
            top = figures.pop("functions", top)
            runs[name].append(figures)
            shown = ", ".join(f"{k} {v:.2f}" for k, v in figures.items())
            print(f"round {turn + 1} {name}: {shown}  ({load()})")
    medians = {
        name: {key: statistics.median(run[key] for run in got) for key in got[0]}
        for name, got in runs.items()
    }
    for name, figures in medians.items():
        print(f"median {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in figures.items()))
    if "old" in medians:
        new, old = medians["new"], medians["old"]
        print(
            "new/old: "
            + ", ".join(f"{k} {new[k] / old[k]:.2f}" for k in new if old[k] and k != no_ratio)
        )
    for function, calls in top:
        print(f"{calls:8.2f}  {function}")
    print(f"end: {load()}")


def cpu_rounds(args: argparse.Namespace, port: int, dns_port: int) -> None:
    """--cpu and --worker: the trees in turns (the other order every other
    round), each figure's median and new/old."""
    print(f"start: {load()}")
    with contextlib.ExitStack() as stack:
        trees = {"engine": ROOT}
        if args.baseline:
            given = Path(args.baseline)
            if given.is_dir():
                trees[args.baseline] = given.resolve()
            else:
                trees[args.baseline] = stack.enter_context(checkout(args.baseline))
        if args.worker:
            from bench.service import bench_env
            from smtpcheck.embedded_redis import EmbeddedRedis

            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            server = EmbeddedRedis(tmp / "redis", persist=False).start()
            stack.callback(server.stop)
            env = bench_env(server.url, [port], dns_port)
            argv = [server.url, str(port), str(args.checks)]
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for turn in range(args.rounds):
            order = list(trees.items())
            for name, tree in order if turn % 2 == 0 else order[::-1]:
                if args.worker:
                    figures = child_figures(tree, WORKER_CHILD, argv, env)
                else:
                    figures = cpu_of(tree, port, dns_port, args.checks, args.threads)
                runs[name].append(figures)
                shown = ", ".join(f"{k} {v:.3f}" for k, v in figures.items())
                print(f"round {turn + 1} {name:>12}: {shown}  ({load()})")
    medians = {
        name: {key: statistics.median(run[key] for run in got) for key in got[0]}
        for name, got in runs.items()
    }
    for name, figures in medians.items():
        shown = ", ".join(f"{k} {v:.3f}" for k, v in figures.items())
        print(f"median {name:>12}: {shown}")
    if args.baseline:
        new, old = medians["engine"], medians[args.baseline]
        print("new/old: " + ", ".join(f"{k} {new[k] / old[k]:.2f}" for k in new))
    print(f"end: {load()}")


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
    parser.add_argument("--cpu", action="store_true", help="calls and CPU per fast check")
    parser.add_argument("--threads", type=int, default=4, help="--cpu: checks side by side")
    parser.add_argument("--worker", action="store_true", help="CPU per check in the worker")
    args = parser.parse_args()

    parent, child = multiprocessing.Pipe()
    server = multiprocessing.get_context("spawn").Process(target=serve, args=(child,))
    server.start()
    port, dns_port = parent.recv()
    if args.cpu or args.worker:
        try:
            cpu_rounds(args, port, dns_port)
        finally:
            parent.close()
            server.join(10)
        return
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
            for turn in range(args.rounds):  # interleaved, so drift hits all alike
                engine.append(with_engine(port, settings, args.checks))
                stdlib.append(with_smtplib(port, args.checks))
                if baseline is not None:  # each tree first every other round
                    trees = [(new, ROOT), (old, baseline)]
                    for figures, tree in trees if turn % 2 == 0 else trees[::-1]:
                        figures.append(engine_of(tree, port, args.checks))
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
