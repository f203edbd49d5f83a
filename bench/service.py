"""Service benchmarks: figures and ratios measured in one run, printed.

Nothing here asserts a time: machines differ. Run ``make bench`` (or
``.venv/bin/python bench/service.py``) and copy the table into
bench/README.md with the machine it ran on.

What it measures, all on 127.0.0.1 with a fresh embedded redis-server:

1. RQ's own ceiling: trivial jobs (``math.sqrt``) per second through
   ``smtpcheck worker --processes 2``, per worker class;
2. end-to-end checks per second through the service (HTTP POST to gunicorn,
   RQ, two workers, an SMTP dialogue with a local target: ``--target lean``,
   bench/target.py, or ``aiosmtpd``), per
   worker class, and its ratio to (1) (target >= 70 %);
3. the latency one check gains by going through the service (POST, then
   GET ?wait=) over the same dialogue run in-process (target <= 5 ms median);
4. API submissions per second with gunicorn and p50/p99 latency, driven by
   a few client processes over keep-alive connections (target >= 1000/s,
   p99 <= 50 ms), beside RQ's own ``Queue.enqueue`` rate from as many
   processes in the same run (what a POST stands on: it validates, admits
   in one Lua script and enqueues in one pipeline).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import multiprocessing
import os
import platform
import queue
import resource
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple, cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from rq import Queue  # noqa: E402
from rq.registry import FailedJobRegistry, FinishedJobRegistry  # noqa: E402
from rq.serializers import JSONSerializer  # noqa: E402

from smtpcheck.config import Settings  # noqa: E402
from smtpcheck.contract import DEFAULT_VANTAGE, FINISHED_KEY  # noqa: E402
from smtpcheck.embedded_redis import EmbeddedRedis, free_port  # noqa: E402
from smtpcheck.redis_client import connect  # noqa: E402

SMTPCHECK = [sys.executable, "-m", "cli"]
QUEUE = "vantage:default"
API_KEYS = [f"bench{i}:benchkey{i}" for i in range(8)]


def log(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def process(
    argv: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``argv`` running (in ``cwd``, so that ``-m cli`` is that tree's) until the
    block ends: then SIGTERM, and SIGKILL to its group after 30 s."""
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


def registered_workers(conn: redis.Redis) -> int:
    return int(conn.scard(f"rq:workers:{QUEUE}"))


@contextlib.contextmanager
def workers(env: dict[str, str], tmp: Path, conn: redis.Redis, kind: str) -> Iterator[None]:
    argv = [*SMTPCHECK, "worker", "--processes", "2", "--worker-class", kind]
    with process(argv, env, tmp / f"workers-{kind}.log"):
        wait_for(lambda: registered_workers(conn) >= 2, 30, "two workers")
        yield
    wait_for(lambda: registered_workers(conn) == 0, 30, "workers to stop")


@contextlib.contextmanager
def api_process(env: dict[str, str], tmp: Path, extra: list[str]) -> Iterator[tuple[int, int]]:
    """``smtpcheck api`` on a free port: yields (port, the gunicorn master's pid)."""
    port = free_port()
    argv = [*SMTPCHECK, "api", "--bind", f"127.0.0.1:{port}", *extra]
    with process(argv, env, tmp / "api.log") as proc:
        wait_for(lambda: http_status(port, "/readyz") == 200, 30, "the API")
        yield port, proc.pid


@contextlib.contextmanager
def api(env: dict[str, str], tmp: Path, extra: list[str]) -> Iterator[int]:
    with api_process(env, tmp, extra) as (port, _):
        yield port


def http_status(port: int, path: str) -> int:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", path)
        status = conn.getresponse().status
        conn.close()
        return status
    except OSError:
        return 0


def counts(conn: redis.Redis) -> int:
    queue = Queue(QUEUE, connection=conn, serializer=JSONSerializer)
    finished = FinishedJobRegistry(queue=queue)
    failed = FailedJobRegistry(queue=queue)
    return int(conn.zcard(finished.key)) + int(conn.zcard(failed.key))


def failures(conn: redis.Redis) -> int:
    queue = Queue(QUEUE, connection=conn, serializer=JSONSerializer)
    return int(conn.zcard(FailedJobRegistry(queue=queue).key))


def none_failed(conn: redis.Redis, before: int, what: str) -> None:
    """A rate counts jobs that ended; refuse a run where some of them failed."""
    failed = failures(conn) - before
    if failed:
        raise RuntimeError(f"{failed} {what} failed: the rate would count failures")


# ---------------------------------------------------------------------------
# 1. RQ ceiling
# ---------------------------------------------------------------------------


def rq_ceiling(conn: redis.Redis, n: int) -> float:
    queue = Queue(QUEUE, connection=conn, serializer=JSONSerializer)
    before, failed = counts(conn), failures(conn)
    start = time.perf_counter()
    for chunk in range(0, n, 200):
        queue.enqueue_many(
            [
                Queue.prepare_data("math.sqrt", args=(4,), description="smtpcheck", result_ttl=600)
                for _ in range(min(200, n - chunk))
            ]
        )
    wait_for(lambda: counts(conn) - before >= n, 300, "trivial jobs")
    elapsed = time.perf_counter() - start
    none_failed(conn, failed, "trivial jobs")
    return n / elapsed


# ---------------------------------------------------------------------------
# HTTP clients
# ---------------------------------------------------------------------------


class Api:
    def __init__(self, port: int, key: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        payload = None if body is None else json.dumps(body).encode()
        self.conn.request(method, path, body=payload, headers=self.headers)
        reply = self.conn.getresponse()
        return reply.status, reply.read()

    def close(self) -> None:
        self.conn.close()


TARGETS = ("lean", "aiosmtpd")


class Target(NamedTuple):
    """The SMTP target and DNS server, in their own process."""

    smtp_port: int
    dns_port: int
    pid: int  # their process, for its CPU


def _serve_aiosmtpd(ready: Any, stop: Any) -> None:
    from bench.target import default_zone
    from tests.dns_server import DNSServer
    from tests.smtp_servers import SMTPTarget

    # No AUTH: an MX on port 25 without TLS offers none (nor does the lean
    # target), so the engine's findings are the same against both.
    target = SMTPTarget(tls="none", auth=False).start()
    # The checks' PTR lookups of 127.0.0.1 (and the forward confirmation of
    # the name) go here, not to a resolver outside; TTL 0, as the lean one.
    dns = DNSServer(default_zone(), ttl=0).start()
    ready.send((target.port, dns.port, os.getpid()))
    stop.wait()
    dns.stop()
    target.stop()


def _serve_lean(ready: Any, stop: Any) -> None:
    from bench.target import LeanTarget

    target = LeanTarget().start()
    ready.send((target.smtp_port, target.dns_port, os.getpid()))
    stop.wait()
    target.stop()


@contextlib.contextmanager
def served(serve: Any) -> Iterator[Any]:
    """``serve(ready, stop)`` in a child process, not sharing our GIL: yields
    what it sends on ``ready`` (its ports), stops it at the end."""
    context = multiprocessing.get_context("fork")
    ready, child_end = context.Pipe()
    stop = context.Event()
    proc = context.Process(target=serve, args=(child_end, stop), daemon=True)
    proc.start()
    try:
        yield ready.recv()
    finally:
        stop.set()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()


@contextlib.contextmanager
def smtp_target(kind: str = "lean") -> Iterator[Target]:
    """The SMTP target and a DNS server answering the checks' PTR lookups, in
    their own process: ``lean`` (bench/target.py) or ``aiosmtpd`` (the tests'
    target and DNS server)."""
    serve = {"lean": _serve_lean, "aiosmtpd": _serve_aiosmtpd}[kind]
    with served(serve) as (smtp_port, dns_port, pid):
        yield Target(int(smtp_port), int(dns_port), int(pid))


def bench_env(redis_url: str, ports: list[int], dns_port: int) -> dict[str, str]:
    """The environment of the service under test (and of in-process checks)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMTPCHECK_", "REDIS"))}
    env.update(
        REDIS_URL=redis_url,
        SMTPCHECK_SECRET_KEY="bench",
        SMTPCHECK_API_KEYS=",".join(API_KEYS),
        SMTPCHECK_ALLOW_NETWORKS="127.0.0.0/8",
        SMTPCHECK_ALLOWED_PORTS=",".join(str(port) for port in ports),
        SMTPCHECK_HELO_NAME="bench.local.test",
        SMTPCHECK_DNS_SERVERS=f"127.0.0.1:{dns_port}",
        # Every check goes to 127.0.0.1: lift the per-key and per-target limits.
        SMTPCHECK_RATE_LIMIT="1000000/minute",
        SMTPCHECK_MAX_CONCURRENT_PER_KEY="1000000",
        SMTPCHECK_MAX_CONCURRENT_PER_TARGET="1000000",
        SMTPCHECK_LOG_LEVEL="WARNING",
    )
    return env


def check_request(target_port: int) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": target_port, "tls": "none", "stop_after": "ehlo"}


# ---------------------------------------------------------------------------
# 2. end-to-end checks per second
# ---------------------------------------------------------------------------


def e2e_rate(port: int, conn: redis.Redis, target_port: int, n: int, connections: int = 4) -> float:
    """Checks per second from the first POST to the last check's end; only
    when none was refused or failed and every one of them ended ``ok`` (the
    workers' own outcome counters, read after the clock stopped).

    The POSTs come from the lean keep-alive client of (4), in this thread:
    ``connections`` sockets, one API key each, one request in flight on each
    (the bench's own CPU is taken from the cores the service runs on)."""
    before, failed = counts(conn), failures(conn)
    ok_before = checks_ok(conn)
    keys = [API_KEYS[i % len(API_KEYS)].partition(":")[2] for i in range(connections)]
    answered: queue.SimpleQueue[Any] = queue.SimpleQueue()
    start = time.perf_counter()
    _submitter(port, keys, n, connections, target_port, answered)
    _, refused, _ = answered.get()
    if refused:
        raise RuntimeError(f"{refused} of {n} submissions refused")
    wait_for(lambda: counts(conn) - before >= n, 600, "checks")
    elapsed = time.perf_counter() - start
    none_failed(conn, failed, "checks")
    ok = checks_ok(conn) - ok_before
    if ok != n:
        raise RuntimeError(f"{n - ok} of {n} checks did not end ok: the rate would count them")
    return n / elapsed


def checks_ok(conn: redis.Redis) -> int:
    """Checks the workers counted as ended ``ok`` (what /metrics reports)."""
    return int(conn.hget(FINISHED_KEY, f"{DEFAULT_VANTAGE}|ok") or 0)


# ---------------------------------------------------------------------------
# 3. added latency
# ---------------------------------------------------------------------------


def inprocess_latency(target_port: int, runs: int) -> list[float]:
    from service.schemas import build_schemas
    from workers.engine import run_check

    settings = Settings.from_env()
    request = build_schemas(settings).check_request().load(check_request(target_port))
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        result = run_check(request, settings)
        samples.append((time.perf_counter() - start) * 1000)
        assert result["ok"], result["summary"]
    return samples


def service_latency(port: int, target_port: int, runs: int) -> list[float]:
    key = API_KEYS[0].partition(":")[2]
    client = RawApi(port, key)
    post = post_request(port, key, check_request(target_port))
    samples = []
    try:
        for _ in range(runs):
            start = time.perf_counter()
            status, payload = client.send(post)
            assert status == 202, payload
            check_id = json.loads(payload)["id"]
            status, payload = client.get(f"/v1/checks/{check_id}?wait=30")
            samples.append((time.perf_counter() - start) * 1000)
            job = json.loads(payload)
            assert status == 200 and job["status"] == "finished", payload
    finally:
        client.close()
    return samples


# ---------------------------------------------------------------------------
# 4. API submissions per second
# ---------------------------------------------------------------------------


def _in_processes(work: Any, arguments: list[tuple[Any, ...]]) -> tuple[list[Any], float]:
    """``work(*args, out)`` in a forked process per entry of ``arguments``, all
    at once: what each put on ``out``, and the seconds from first start to last answer."""
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    procs = [context.Process(target=work, args=(*args, out)) for args in arguments]
    start = time.perf_counter()
    for proc in procs:
        proc.start()
    results = [out.get() for _ in procs]
    elapsed = time.perf_counter() - start
    for proc in procs:
        proc.join()
    return results, elapsed


def post_request(port: int, key: str, body: dict[str, Any]) -> bytes:
    """One ``POST /v1/checks`` as the bytes a keep-alive HTTP/1.1 client sends, built once."""
    payload = json.dumps(body).encode()
    head = (
        f"POST /v1/checks HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


def answers(buffer: bytearray) -> Iterator[tuple[int, bytes]]:
    """Take every complete HTTP response off the front of ``buffer``; yield
    their statuses and bodies.

    Only what a gunicorn answer of this API needs: a status line, headers with
    a Content-Length, a body of that length (no chunked encoding)."""
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buffer[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            raise RuntimeError(f"an answer without Content-Length: {head[:200]!r}")
        stop = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : stop if stop >= 0 else len(head)])
        if len(buffer) < end + 4 + length:
            return
        status = int(head[9:12])
        body = bytes(buffer[end + 4 : end + 4 + length])
        del buffer[: end + 4 + length]
        yield status, body


class RawApi:
    """One keep-alive HTTP/1.1 connection on a raw socket, for timing one
    request at a time: requests are bytes (``post_request`` builds a POST once),
    answers are read as far as :func:`answers` reads them. ``http.client``
    spent about 0.09 ms of CPU and 0.2-0.4 ms of wall time more per request
    (measured against a server answering fixed bytes, load 8-12): the bench's
    time, which the service's added time should not carry."""

    def __init__(self, port: int, key: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = bytearray()
        self.headers = f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n\r\n"

    def get(self, path: str) -> tuple[int, bytes]:
        return self.send(f"GET {path} HTTP/1.1\r\n{self.headers}".encode())

    def send(self, request: bytes) -> tuple[int, bytes]:
        self.sock.sendall(request)
        while True:
            for answer in answers(self.buffer):
                return answer
            data = self.sock.recv(65536)
            if not data:
                raise RuntimeError("the API closed a keep-alive connection")
            self.buffer += data

    def close(self) -> None:
        self.sock.close()


def _submitter(
    port: int, keys: str | list[str], count: int, connections: int, target_port: int, out: Any
) -> None:
    """``count`` POSTs over ``connections`` keep-alive sockets (the API keys taking
    turns, one per socket), one request in flight on each: the request's bytes are
    built once, each answer is parsed only as far as its status and length. Puts
    (latencies, refused, this process's CPU seconds) on ``out``."""
    keys = [keys] if isinstance(keys, str) else keys
    selector = selectors.DefaultSelector()
    sent = 0
    latencies: list[float] = []
    refused = 0
    started: dict[socket.socket, float] = {}
    buffers: dict[socket.socket, bytearray] = {}
    requests: dict[socket.socket, bytes] = {}
    for i in range(min(connections, count)):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffers[sock] = bytearray()
        requests[sock] = post_request(port, keys[i % len(keys)], check_request(target_port))
        selector.register(sock, selectors.EVENT_READ)
        started[sock] = time.perf_counter()
        sock.sendall(requests[sock])
        sent += 1
    while len(latencies) < count:
        events = selector.select(timeout=60)
        if not events:
            raise RuntimeError(f"no answer from the API in 60 s ({len(latencies)} of {count})")
        for ready, _ in events:
            sock = cast(socket.socket, ready.fileobj)
            data = sock.recv(65536)
            if not data:
                raise RuntimeError("the API closed a keep-alive connection")
            buffers[sock] += data
            for status, _ in answers(buffers[sock]):
                latencies.append((time.perf_counter() - started[sock]) * 1000)
                refused += status != 202
                if sent < count:
                    started[sock] = time.perf_counter()
                    sock.sendall(requests[sock])
                    sent += 1
    for sock in buffers:
        selector.unregister(sock)
        sock.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out.put((latencies, refused, usage.ru_utime + usage.ru_stime))


def submissions(
    port: int, target_port: int, n: int, clients: int, connections: int
) -> tuple[float, list[float], int, float]:
    """POSTs/s, latencies, refused and the clients' CPU seconds (all processes)."""
    results, elapsed = _in_processes(
        _submitter,
        [
            (port, API_KEYS[i].partition(":")[2], n // clients, connections, target_port)
            for i in range(clients)
        ],
    )
    latencies = [x for lat, _, _ in results for x in lat]
    refused = sum(r for _, r, _ in results)
    cpu = sum(c for _, _, c in results)
    return len(latencies) / elapsed, latencies, refused, cpu


def _enqueuer(redis_url: str, count: int, out: Any) -> None:
    conn = redis.Redis.from_url(redis_url)
    queue = Queue("vantage:bench-enqueue", connection=conn, serializer=JSONSerializer)
    latencies = []
    for _ in range(count):
        start = time.perf_counter()
        queue.enqueue("math.sqrt", args=(4,), description="smtpcheck", result_ttl=600)
        latencies.append((time.perf_counter() - start) * 1000)
    conn.close()
    out.put(latencies)


def rq_enqueues(redis_url: str, n: int, clients: int) -> tuple[float, list[float]]:
    """RQ's own ``Queue.enqueue`` from ``clients`` processes: the floor a POST stands on."""
    results, elapsed = _in_processes(_enqueuer, [(redis_url, n // clients)] * clients)
    latencies = [x for lat in results for x in lat]
    return len(latencies) / elapsed, latencies


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) that ``pid`` and its live children have used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{current}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime, all threads
            # Each thread lists the children it started: all of them, not only the main one's.
            for task in Path(f"/proc/{current}/task").iterdir():
                with contextlib.suppress(OSError):
                    pending += [int(child) for child in (task / "children").read_text().split()]
    return total


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# ---------------------------------------------------------------------------


def print_workers(report: dict[str, Any], kinds: list[str]) -> None:
    print()
    print("| worker class | RQ ceiling (trivial jobs/s) | checks/s via service | ratio |")
    print("| --- | ---: | ---: | ---: |")
    for kind in kinds:
        r = report[kind]
        ratio = r["checks"] / r["ceiling"]
        print(f"| {kind} | {r['ceiling']:.0f} | {r['checks']:.0f} | {ratio:.0%} |")
    inproc, through = report["latency"]["inprocess"], report["latency"]["service"]
    m_in, m_svc = statistics.median(inproc), statistics.median(through)
    print()
    print("| one check (stop_after ehlo) | median ms | p90 ms |")
    print("| --- | ---: | ---: |")
    print(f"| in-process run_check | {m_in:.2f} | {percentile(inproc, 90):.2f} |")
    print(
        f"| through the service (POST + GET ?wait=30) | {m_svc:.2f} "
        f"| {percentile(through, 90):.2f} |"
    )
    print(f"| added by the service | {m_svc - m_in:.2f} | |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000, help="trivial jobs for the RQ ceiling")
    parser.add_argument("--checks", type=int, default=1000, help="checks for checks/s")
    parser.add_argument("--latency-runs", type=int, default=100)
    parser.add_argument("--submissions", type=int, default=4000)
    parser.add_argument("--clients", type=int, default=2, help="client processes for (4)")
    parser.add_argument(
        "--connections", type=int, default=8, help="keep-alive connections per client process"
    )
    parser.add_argument("--kinds", default="simple,fork", help="worker classes to compare")
    parser.add_argument("--api-workers", type=int, help="gunicorn processes (default: smtpcheck's)")
    parser.add_argument("--api-connections", type=int, help="connections per gunicorn process")
    parser.add_argument("--only-submissions", action="store_true", help="measure (4) only")
    parser.add_argument(
        "--target",
        choices=TARGETS,
        default="lean",
        help="the SMTP and DNS target (bench/README.md)",
    )
    args = parser.parse_args()
    api_args = []
    if args.api_workers:
        api_args += ["--workers", str(args.api_workers)]
    if args.api_connections:
        api_args += ["--connections", str(args.api_connections)]
    kinds = [] if args.only_submissions else args.kinds.split(",")

    report: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="smtpcheck-bench-") as tmp_name,
        smtp_target(args.target) as (target_port, dns_port, _),
    ):
        tmp = Path(tmp_name)
        server = EmbeddedRedis(tmp / "redis", persist=False).start()
        conn = connect(server.url)
        env = bench_env(server.url, [target_port], dns_port)
        os.environ.update(
            {k: v for k, v in env.items() if k.startswith("SMTPCHECK_") or k == "REDIS_URL"}
        )
        try:
            with api_process(env, tmp, api_args) as (port, api_pid):
                for kind in kinds:
                    with workers(env, tmp, conn, kind):
                        log(f"{kind}: RQ ceiling, {args.jobs} trivial jobs")
                        ceiling = rq_ceiling(conn, args.jobs)
                        log(f"{kind}: {args.checks} checks through the service")
                        checks = e2e_rate(port, conn, target_port, args.checks)
                        report[kind] = {"ceiling": ceiling, "checks": checks}
                        if kind == kinds[0]:
                            log(f"{kind}: latency, {args.latency_runs} sequential checks")
                            inproc = inprocess_latency(target_port, args.latency_runs)
                            through = service_latency(port, target_port, args.latency_runs)
                            report["latency"] = {"inprocess": inproc, "service": through}
                    conn.flushall()
                log(
                    f"API: {args.submissions} submissions, {args.clients} client processes "
                    f"x {args.connections} connections"
                )
                load_before = os.getloadavg()
                assert server.process is not None
                api_cpu, redis_cpu = cpu_seconds(api_pid), cpu_seconds(server.process.pid)
                rate, latencies, refused, client_cpu = submissions(
                    port, target_port, args.submissions, args.clients, args.connections
                )
                api_cpu = cpu_seconds(api_pid) - api_cpu
                redis_cpu = cpu_seconds(server.process.pid) - redis_cpu
                report["submissions"] = {
                    "rate": rate,
                    "latencies": latencies,
                    "refused": refused,
                    "cpu": {"api": api_cpu, "redis": redis_cpu, "clients": client_cpu},
                    "load": (load_before, os.getloadavg()),
                }
                conn.flushall()
                log(f"RQ: {args.submissions} Queue.enqueue calls, {args.clients} processes")
                rq_rate, rq_latencies = rq_enqueues(server.url, args.submissions, args.clients)
                report["enqueues"] = {"rate": rq_rate, "latencies": rq_latencies}
        finally:
            conn.close()
            server.stop()

    machine = platform.processor() or platform.machine()
    print(
        f"machine: {machine}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )
    print(f"API: smtpcheck api {' '.join(api_args) or '(defaults)'}; target: {args.target}")
    if kinds:
        print_workers(report, kinds)
    sub = report["submissions"]
    lat = sub["latencies"]
    print()
    rq = report["enqueues"]
    rq_lat = rq["latencies"]
    (before, after) = sub["load"]
    print(f"load average (1, 5, 15 min) before: {before[0]:.2f} {before[1]:.2f} {before[2]:.2f}")
    print(f"load average (1, 5, 15 min) after: {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}")
    print(
        f"{args.clients} client processes x {args.connections} keep-alive connections "
        "(raw sockets, one pre-built request); RQ's enqueue from as many processes"
    )
    print()
    print("| measure | POST /v1/checks | RQ Queue.enqueue | ratio |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| per second | {sub['rate']:.0f} | {rq['rate']:.0f} | {sub['rate'] / rq['rate']:.0%} |")
    for p in (50, 99):
        print(f"| p{p} latency ms | {percentile(lat, p):.2f} | {percentile(rq_lat, p):.2f} | |")
    print(f"| refused (not 202) | {sub['refused']} | | |")
    accepted = len(lat)
    print()
    print("| CPU during the POSTs | seconds | ms per POST |")
    print("| --- | ---: | ---: |")
    for who, seconds in sub["cpu"].items():
        print(f"| {who} | {seconds:.2f} | {1000 * seconds / accepted:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
