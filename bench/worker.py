"""Worker benchmarks: many checks in flight per process, figures and ratios from one run.

Nothing here asserts a time: machines differ. Run
``.venv/bin/python -m bench.worker`` and copy the tables into bench/README.md
with the machine and the load it ran under.

Everything runs on 127.0.0.1 with a fresh embedded redis-server, gunicorn
(``smtpcheck api``) and ``smtpcheck worker`` with its defaults, for
``--processes 2`` and ``--processes 1``:

1. head-of-line: a fast check submitted behind 100 checks to a tarpit (a
   server that greets and then says nothing; the per-target cap lifted)
   ends within 1 s; printed against the same check on idle workers;
2. in-flight capacity: slow (tarpit) checks held at once with the default
   ``--concurrency``, and the PSS of the pool's whole process tree: checks
   in flight per GB (target >= 500) and per process (target >= 200);
3. throughput against a fast local target (``--target lean``, bench/target.py;
   ``--target aiosmtpd`` for the tests' aiosmtpd and DNS server): checks/s
   through the whole service over RQ's trivial-job ceiling on the same
   machine in the same run (RQ's own ``SimpleWorker`` as RQ ships it, one job
   at a time per process, as many processes as the pool; target >= 70 %),
   and, stricter, over smtpcheck's own ``--worker-class simple`` (a
   SimpleWorker with fewer round trips per job), with the CPU each part of
   the run spent per check and per trivial job;
4. time the service adds to one check: POST + GET ``?wait`` over the same
   dialogue run in-process, one of each in turn (target <= 5 ms median), and
   where it goes (the POST, the queue, the job beside its engine, the engine's
   slowdown in the worker, the end of the job to the GET's answer), from the
   job's own timestamps: the parts of one pair add up to its added time;
5. Redis round trips per check in the worker, counted in-process by caller.

(3) and (4) run in ``--rounds`` turns, the ceilings' pools and the service's
taking turns, in the other order every other round, so that a load that
drifts during the run (a shared machine) weighs on both alike; each round is
printed with the load beside it, and the ratio of the medians. A rate is
refused (the run stops) if any of its jobs failed or any check ended other
than ``ok``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from rq.job import Job  # noqa: E402
from rq.serializers import JSONSerializer  # noqa: E402

from bench.service import (  # noqa: E402
    API_KEYS,
    SMTPCHECK,
    TARGETS,
    Api,
    RawApi,
    api_process,
    bench_env,
    check_request,
    cpu_seconds,
    e2e_rate,
    post_request,
    process,
    registered_workers,
    rq_ceiling,
    served,
    smtp_target,
    wait_for,
)
from smtpcheck.embedded_redis import EmbeddedRedis  # noqa: E402
from smtpcheck.redis_client import connect  # noqa: E402

QUEUE = "vantage:default"
TARPIT_TOTAL = 120  # seconds: a tarpit check outlives every measurement


def log(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# a tarpit: greets, then never says another word
# ---------------------------------------------------------------------------


def _serve_tarpit(ready: Any, stop: Any) -> None:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 tarpit.local.test ESMTP\r\n")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
            while await reader.read(4096):
                pass
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(client, "127.0.0.1", 0, backlog=1024)
        ready.send(server.sockets[0].getsockname()[1])
        while not stop.is_set():
            await asyncio.sleep(0.2)
        server.close()

    asyncio.run(main())


@contextlib.contextmanager
def tarpit() -> Iterator[int]:
    with served(_serve_tarpit) as port:
        yield int(port)


def tarpit_request(port: int) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": port,
        "stop_after": "ehlo",
        "timeouts": {"connect": 10, "command": TARPIT_TOTAL, "total": TARPIT_TOTAL},
    }


def fast_request(port: int) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": port, "tls": "none", "stop_after": "ehlo"}


# ---------------------------------------------------------------------------
# the pool under test
# ---------------------------------------------------------------------------


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    found = [pid]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent == pid:
                found += tree(int(entry.name))
    return found


def pss_kb(pid: int) -> int:
    total = 0
    for member in tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
    return total


def running(conn: redis.Redis) -> int:
    return int(conn.zcard(f"rq:wip:{QUEUE}"))


@contextlib.contextmanager
def pool(
    env: dict[str, str], tmp: Path, conn: redis.Redis, processes: int, kind: str = "threads"
) -> Iterator[Any]:
    argv = [*SMTPCHECK, "worker", "--processes", str(processes), "--worker-class", kind]
    with process(argv, env, tmp / f"workers-{kind}-{processes}.log") as proc:
        wait_for(lambda: registered_workers(conn) >= processes, 60, "workers")
        try:
            yield proc
        finally:
            # Cold: the tarpit checks would otherwise hold the warm stop.
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
                time.sleep(0.5)
                proc.send_signal(signal.SIGTERM)
    wait_for(lambda: registered_workers(conn) == 0, 60, "workers to stop")
    conn.flushall()


#: RQ's own SimpleWorker, as RQ ships it (no smtpcheck subclass): one process.
RQ_SIMPLE_WORKER = """
import os, sys, uuid
from redis import Redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer
conn = Redis.from_url(os.environ["REDIS_URL"])
queue = Queue(sys.argv[1], connection=conn, serializer=JSONSerializer)
worker = SimpleWorker([queue], connection=conn, serializer=JSONSerializer,
                      name="rq-simple-" + uuid.uuid4().hex[:8])
worker.work(logging_level="WARNING")
"""


@contextlib.contextmanager
def rq_simple_pool(
    env: dict[str, str], tmp: Path, conn: redis.Redis, processes: int
) -> Iterator[list[int]]:
    """``processes`` processes of RQ's own ``SimpleWorker`` on the checks'
    queue; yields their pids. The issue's "RQ's trivial-job ceiling"."""
    with contextlib.ExitStack() as stack:
        procs = [
            stack.enter_context(
                process(
                    [sys.executable, "-c", RQ_SIMPLE_WORKER, QUEUE],
                    env,
                    tmp / f"rq-simple-{processes}-{i}.log",
                )
            )
            for i in range(processes)
        ]
        wait_for(lambda: registered_workers(conn) >= processes, 60, "RQ's SimpleWorkers")
        yield [proc.pid for proc in procs]
    wait_for(lambda: registered_workers(conn) == 0, 60, "RQ's SimpleWorkers to stop")
    conn.flushall()


def submit_all(port: int, body: dict[str, Any], count: int, keys: list[str]) -> list[str]:
    clients = [Api(port, key.partition(":")[2]) for key in keys]
    ids = []
    try:
        for i in range(count):
            status, payload = clients[i % len(clients)].call("POST", "/v1/checks", body)
            if status != 202:
                raise RuntimeError(f"submission refused: {status} {payload[:200]!r}")
            ids.append(json.loads(payload)["id"])
    finally:
        for client in clients:
            client.close()
    return ids


def timed_check(port: int, body: dict[str, Any], key: str) -> float:
    """Seconds from POST to the answer of GET ?wait with the finished check."""
    client = Api(port, key.partition(":")[2])
    try:
        start = time.perf_counter()
        status, payload = client.call("POST", "/v1/checks", body)
        assert status == 202, payload
        check_id = json.loads(payload)["id"]
        status, payload = client.call("GET", f"/v1/checks/{check_id}?wait=30")
        elapsed = time.perf_counter() - start
        job = json.loads(payload)
        assert job["status"] == "finished" and job["result"]["ok"], payload[:300]
        return elapsed
    finally:
        client.close()


# ---------------------------------------------------------------------------
# the measurements, for one --processes
# ---------------------------------------------------------------------------


ADDED_PARTS = (
    "POST",
    "POST answered to job started",
    "the job, less its engine",
    "engine in the worker less the whole in-process check",
    "job ended to GET answered",
)


def paired_latency(
    port: int, target_port: int, runs: int, conn: redis.Redis
) -> tuple[list[float], list[float], list[dict[str, float]]]:
    """ms of one check in-process and through the service, one of each in turn
    (so both see the same moment's load); the client (:class:`RawApi`) keeps its
    connection open.
    Also where each pair's added time went, from the job's own timestamps (one
    clock: everything runs on this machine): the parts of :data:`ADDED_PARTS`
    add up to that pair's service time less its in-process time."""
    from smtpcheck.config import Settings
    from smtpcheck.contract import check_request as normalized
    from workers.engine import run_check

    settings = Settings.from_env()
    request = normalized(settings, **check_request(target_port))
    key = API_KEYS[0].partition(":")[2]
    client = RawApi(port, key)
    post = post_request(port, key, check_request(target_port))
    inprocess, service, parts = [], [], []
    try:
        for _ in range(runs):
            start = time.perf_counter()
            result = run_check(request, settings)
            alone = (time.perf_counter() - start) * 1000
            inprocess.append(alone)
            assert result["ok"], result["summary"]
            start, wall = time.perf_counter(), time.time()
            status, payload = client.send(post)
            posted = time.time()
            assert status == 202, payload
            check_id = json.loads(payload)["id"]
            status, payload = client.get(f"/v1/checks/{check_id}?wait=30")
            service.append((time.perf_counter() - start) * 1000)
            answered = time.time()
            body = json.loads(payload)
            assert status == 200 and body["status"] == "finished", payload[:300]
            assert body["result"]["ok"], body["result"]["summary"]
            job = Job.fetch(check_id, connection=conn, serializer=JSONSerializer)
            assert job.started_at is not None and job.ended_at is not None
            began = job.started_at.replace(tzinfo=dt.UTC).timestamp()
            ended = job.ended_at.replace(tzinfo=dt.UTC).timestamp()
            engine = float(body["result"]["timings"]["total"])
            parts.append(
                dict(
                    zip(
                        ADDED_PARTS,
                        (
                            (posted - wall) * 1000,
                            (began - posted) * 1000,
                            (ended - began) * 1000 - engine,
                            engine - alone,
                            (answered - ended) * 1000,
                        ),
                        strict=True,
                    ),
                    engine=engine,
                    added=(answered - wall) * 1000 - alone,
                )
            )
    finally:
        client.close()
    return inprocess, service, parts


def round_trips(redis_url: str, target_port: int, n: int) -> tuple[float, list[tuple[str, float]]]:
    """Redis round trips per check in the worker, counted: ``n`` checks POSTed
    (in-process, Flask's test client), then run by the threaded worker class in
    this process, every command batch sent to Redis counted by who sent it."""
    import collections
    import traceback

    import redis.connection

    import workers.job
    from service import create_app
    from smtpcheck.config import Settings
    from workers.pool import build_worker

    settings = Settings.from_env()
    app = create_app(settings)
    client = app.test_client()
    for i in range(n):
        key = API_KEYS[i % 4].partition(":")[2]
        answer = client.post(
            "/v1/checks",
            json=check_request(target_port),
            headers={"Authorization": f"Bearer {key}"},
        )
        assert answer.status_code == 202, answer.get_data()
    app.extensions["smtpcheck"].close()
    workers.job.use_settings(settings)
    worker = build_worker(settings, connect(redis_url), vantage="default", name="counted")
    by_caller: collections.Counter[str] = collections.Counter()
    send = redis.connection.AbstractConnection.send_packed_command

    def counted(self: Any, command: Any, check_health: bool = True) -> None:
        # Named by who asked, not by the plumbing that sent it (smtpcheck/wire.py).
        frames = [
            f"{Path(frame.filename).stem}.{frame.name}"
            for frame in traceback.extract_stack(limit=24)
            if "/workers/" in frame.filename or "/rq/" in frame.filename
        ]
        by_caller[" > ".join(frames[-2:]) or "?"] += 1
        send(self, command, check_health)

    redis.connection.AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
    try:
        worker.work(burst=True, logging_level="WARNING")
    finally:
        redis.connection.AbstractConnection.send_packed_command = send  # type: ignore[method-assign]
    total = sum(by_caller.values())
    return total / n, [(caller, count / n) for caller, count in by_caller.most_common(12)]


class CPU:
    """CPU seconds the parts of the run have spent: the API (gunicorn's tree),
    the worker pool's tree (or RQ's SimpleWorker processes), redis-server, the
    SMTP target with its DNS server (their own process), and the rest of this
    process's tree: the bench itself with its HTTP clients (and the idle
    tarpit). Every process of the run is a descendant of this one, so the
    parts add up to all of them."""

    def __init__(self, api_pid: int, redis_pid: int, target_pid: int) -> None:
        self.api_pid, self.redis_pid, self.target_pid = api_pid, redis_pid, target_pid
        self.pool_pids: list[int] = []

    def sample(self) -> dict[str, float]:
        parts = {
            "api": cpu_seconds(self.api_pid),
            "workers": sum(cpu_seconds(pid) for pid in self.pool_pids),
            "redis": cpu_seconds(self.redis_pid),
            "SMTP target, DNS": cpu_seconds(self.target_pid),
        }
        parts["bench (clients)"] = cpu_seconds(os.getpid()) - sum(parts.values())
        return parts


def spent(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    """CPU ms per item, part by part."""
    return {part: (after[part] - before[part]) * 1000 / n for part in before}


def measure(
    env: dict[str, str],
    tmp: Path,
    conn: redis.Redis,
    port: int,
    cpu: CPU,
    target_port: int,
    tarpit_port: int,
    processes: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Throughput and latency in ``args.rounds`` rounds, the two ceilings and
    the service taking turns, in the reverse order every other round (the
    machine's load drifts: none always goes first); then head-of-line and
    capacity once."""
    out: dict[str, Any] = {"processes": processes, "rounds": []}
    tarpit_keys, other_key = API_KEYS[:4], API_KEYS[4]
    jobs, checks = args.jobs // args.rounds, args.checks // args.rounds
    runs = max(1, args.latency_runs // args.rounds)
    inprocess: list[float] = []
    service: list[float] = []
    spans: list[dict[str, float]] = []
    where = f"--processes {processes}, round"

    def rq_simple(number: int, done: dict[str, Any]) -> None:
        log(f"{where} {number}: RQ's trivial-job ceiling (RQ's own SimpleWorker)")
        with rq_simple_pool(env, tmp, conn, processes) as pids:
            cpu.pool_pids = pids
            before = cpu.sample()
            done["ceiling"] = rq_ceiling(conn, jobs)
            done["ceiling_cpu"] = spent(before, cpu.sample(), jobs)
        cpu.pool_pids = []

    def smtpcheck_simple(number: int, done: dict[str, Any]) -> None:
        log(f"{where} {number}: trivial jobs, smtpcheck's simple worker class")
        with pool(env, tmp, conn, processes, kind="simple") as proc:
            cpu.pool_pids = [proc.pid]
            before = cpu.sample()
            done["simple"] = rq_ceiling(conn, jobs)
            done["simple_cpu"] = spent(before, cpu.sample(), jobs)
        cpu.pool_pids = []

    def through_service(number: int, done: dict[str, Any]) -> None:
        with pool(env, tmp, conn, processes) as proc:
            cpu.pool_pids = [proc.pid]
            log(f"{where} {number}: trivial jobs, threaded worker")
            done["threads_trivial"] = rq_ceiling(conn, jobs)
            log(f"{where} {number}: checks/s through the service")
            before = cpu.sample()
            done["checks"] = e2e_rate(port, conn, target_port, checks)
            done["checks_cpu"] = spent(before, cpu.sample(), checks)
            log(f"{where} {number}: latency, {runs} pairs")
            alone, through, parts = paired_latency(port, target_port, runs, conn)
            inprocess.extend(alone)
            service.extend(through)
            spans.extend(parts)
        cpu.pool_pids = []

    for number in range(1, args.rounds + 1):
        done: dict[str, Any] = {"load": os.getloadavg()[0]}
        arms = (rq_simple, smtpcheck_simple, through_service)
        for arm in arms if number % 2 else reversed(arms):
            arm(number, done)
        done["load_end"] = os.getloadavg()[0]
        out["rounds"].append(done)
    out["inprocess"] = statistics.median(inprocess)
    out["service"] = statistics.median(service)
    out["spans"] = {part: statistics.median(span[part] for span in spans) for part in spans[0]}
    for key in ("ceiling", "simple", "threads_trivial", "checks"):
        out[key] = statistics.median(r[key] for r in out["rounds"])

    with pool(env, tmp, conn, processes) as proc:
        log(f"--processes {processes}: head-of-line")
        idle = [timed_check(port, fast_request(target_port), other_key) for _ in range(5)]
        out["hol_idle"] = statistics.median(idle)
        submit_all(port, tarpit_request(tarpit_port), 100, tarpit_keys)
        wait_for(lambda: running(conn) >= 100, 120, "100 tarpit checks running")
        out["hol"] = timed_check(port, fast_request(target_port), other_key)

        log(f"--processes {processes}: in-flight capacity")
        want = processes * args.concurrency
        submit_all(port, tarpit_request(tarpit_port), want - 100, tarpit_keys)
        wait_for(lambda: running(conn) >= want, 300, f"{want} tarpit checks running")
        time.sleep(2)  # let every check settle into its wait
        out["in_flight"] = running(conn)
        out["pss_kb"] = pss_kb(proc.pid)
        out["threads"] = sum(len(os.listdir(f"/proc/{pid}/task")) for pid in tree(proc.pid))
    with pool(env, tmp, conn, processes) as proc:
        time.sleep(2)
        out["pss_idle_kb"] = pss_kb(proc.pid)
    return out


def report(results: list[dict[str, Any]]) -> None:
    print()
    print(
        "| --processes | round | load | RQ's SimpleWorker, trivial jobs/s | smtpcheck simple, "
        "trivial jobs/s | threaded worker, trivial jobs/s | checks/s via service | ratio to "
        "RQ's SimpleWorker (>= 70 %) | ratio to smtpcheck simple |"
    )
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        for number, done in enumerate(r["rounds"], 1):
            print(
                f"| {r['processes']} | {number} | {done['load']:.1f} → {done['load_end']:.1f} "
                f"| {done['ceiling']:.0f} | {done['simple']:.0f} | {done['threads_trivial']:.0f} "
                f"| {done['checks']:.0f} | {done['checks'] / done['ceiling']:.0%} "
                f"| {done['checks'] / done['simple']:.0%} |"
            )
        print(
            f"| {r['processes']} | median | | {r['ceiling']:.0f} | {r['simple']:.0f} "
            f"| {r['threads_trivial']:.0f} | {r['checks']:.0f} "
            f"| **{r['checks'] / r['ceiling']:.0%}** | {r['checks'] / r['simple']:.0%} |"
        )
    print()
    parts = list(results[0]["rounds"][0]["checks_cpu"])
    print("| --processes | CPU ms per | " + " | ".join(parts) + " | all |")
    print("| ---: | --- | " + " | ".join("---:" for _ in parts) + " | ---: |")
    for r in results:
        for key, what in (
            ("ceiling_cpu", "trivial job (RQ's SimpleWorker)"),
            ("simple_cpu", "trivial job (smtpcheck simple)"),
            ("checks_cpu", "check (service)"),
        ):
            median = {p: statistics.median(d[key][p] for d in r["rounds"]) for p in parts}
            cells = " | ".join(f"{median[p]:.2f}" for p in parts)
            print(f"| {r['processes']} | {what} | {cells} | {sum(median.values()):.2f} |")
    print()
    print(
        "| --processes | one check in-process, median ms | through the service, median ms "
        "| added (<= 5 ms): difference of the medians | median of the pairs' differences |"
    )
    print("| ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(
            f"| {r['processes']} | {r['inprocess']:.2f} | {r['service']:.2f} "
            f"| **{r['service'] - r['inprocess']:.2f}** | {r['spans']['added']:.2f} |"
        )
    print()
    print("Where the added time goes (medians of each part over the pairs, ms; the parts")
    print("of one pair add up to its added time, their medians need not quite):")
    print()
    print("| --processes | " + " | ".join(ADDED_PARTS) + " | sum of the medians |")
    print("| ---: | " + " | ".join("---:" for _ in ADDED_PARTS) + " | ---: |")
    for r in results:
        cells = " | ".join(f"{r['spans'][p]:.2f}" for p in ADDED_PARTS)
        total = sum(r["spans"][p] for p in ADDED_PARTS)
        print(f"| {r['processes']} | {cells} | {total:.2f} |")
    print()
    print("| --processes | fast check, idle workers | behind 100 tarpit checks (<= 1 s) | ratio |")
    print("| ---: | ---: | ---: | ---: |")
    for r in results:
        print(
            f"| {r['processes']} | {r['hol_idle'] * 1000:.1f} ms | {r['hol'] * 1000:.1f} ms "
            f"| {r['hol'] / r['hol_idle']:.2f} |"
        )
    print()
    print(
        "| --processes | checks in flight | threads | pool PSS idle | PSS loaded "
        "| per check | checks per GB of PSS (>= 500) | per process (>= 200) |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        loaded, idle = r["pss_kb"] / 1024, r["pss_idle_kb"] / 1024
        per_check = (r["pss_kb"] - r["pss_idle_kb"]) / max(1, r["in_flight"])
        print(
            f"| {r['processes']} | {r['in_flight']} | {r['threads']} | {idle:.0f} MB "
            f"| {loaded:.0f} MB | {per_check:.0f} kB | {r['in_flight'] / (loaded / 1024):.0f} "
            f"| {r['in_flight'] / r['processes']:.0f} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000, help="trivial jobs per ceiling")
    parser.add_argument("--checks", type=int, default=1000, help="checks for checks/s")
    parser.add_argument("--latency-runs", type=int, default=100)
    parser.add_argument("--processes", default="2,1", help="pool sizes to measure")
    parser.add_argument(
        "--concurrency", type=int, default=200, help="the worker's default, for (2)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="turns of ceiling and service for (3) and (4)"
    )
    parser.add_argument("--counted", type=int, default=200, help="checks for the round trips")
    parser.add_argument(
        "--target",
        choices=TARGETS,
        default="lean",
        help="the SMTP and DNS target (bench/README.md)",
    )
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, Linux {platform.release()}; "
        f"load average at start {os.getloadavg()[0]:.2f}; target: {args.target}"
    )
    results = []
    with (
        tempfile.TemporaryDirectory(prefix="smtpcheck-bench-") as tmp_name,
        smtp_target(args.target) as (target_port, dns_port, target_pid),
        tarpit() as tarpit_port,
    ):
        tmp = Path(tmp_name)
        server = EmbeddedRedis(tmp / "redis", persist=False).start()
        conn = connect(server.url)
        env = bench_env(server.url, [target_port, tarpit_port], dns_port)
        os.environ.update(  # the in-process check of (4) reads the same settings
            {k: v for k, v in env.items() if k.startswith("SMTPCHECK_") or k == "REDIS_URL"}
        )
        try:
            log(f"Redis round trips per check: {args.counted} checks, in-process")
            per_check, callers = round_trips(server.url, target_port, args.counted)
            conn.flushall()
            with api_process(env, tmp, []) as (port, api_pid):
                assert server.process is not None
                cpu = CPU(api_pid, server.process.pid, target_pid)
                for processes in (int(p) for p in args.processes.split(",")):
                    results.append(
                        measure(
                            env, tmp, conn, port, cpu, target_port, tarpit_port, processes, args
                        )
                    )
        finally:
            conn.close()
            server.stop()
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    print()
    print(f"Redis round trips per check in the worker: {per_check:.1f}, by who sent them:")
    print()
    print("| per check | sent from |")
    print("| ---: | --- |")
    for caller, count in callers:
        if count >= 0.05:
            print(f"| {count:.2f} | `{caller}` |")
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
