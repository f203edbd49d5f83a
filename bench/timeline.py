"""Where one check's wall time goes through the service, from the scheduler's own trace.

bench/worker.py measures the time the service adds to a check and splits it
by the job's timestamps; this script says which process ran, and when, on
that path. It starts what bench/worker.py starts for ``--processes 1`` (an
embedded redis-server, ``smtpcheck api``, ``smtpcheck worker --processes 1``,
the lean SMTP and DNS target), warms up, then runs ``--pairs`` pairs back to
back, each one check in-process and one through the service (POST, then
``GET ?wait`` on one keep-alive raw-socket connection), while ``perf record``
traces the scheduler (``sched_switch``, ``sched_wakeup``) on every CPU, on the
clock the bench reads (CLOCK_MONOTONIC). It prints:

- CPU of each process (median over the pairs) in the in-process check and
  in the check through the service: the API's gunicorn worker, the worker
  process (every thread), redis-server, the SMTP target, the bench (the
  in-process check runs in it; through the service, its client);
- the worker process's CPU per pair by thread (the check's thread, the
  publisher, the main thread...: threads ranked by their CPU over the run);
- the time through the service and the in-process check's, with the
  in-process dialogue (from its first wake of the target to the target's
  last wake of the bench).

Where a check waits for whom is read in ``--show``'s timeline: a wake-up is
where one process hands the check to the next, though one that is already
running needs none (so cutting the path at wake-ups alone would miss some).

Needs root, ``perf`` and the kernel's sched tracepoints (Debian's
linux-perf; tracefs is mounted if missing). Nothing here asserts a time.

    .venv/bin/python -m bench.timeline [--pairs N] [--show K]

``--show K`` also prints pair K's timeline: every run of a process and every
wake-up, in microseconds from the pair's start.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.service import (  # noqa: E402
    RawApi,
    api_process,
    bench_env,
    check_request,
    log,
    post_request,
    smtp_target,
)
from bench.worker import API_KEYS, pool, tarpit, tree  # noqa: E402
from smtpcheck.embedded_redis import EmbeddedRedis  # noqa: E402
from smtpcheck.redis_client import connect  # noqa: E402

EVENTS = ("sched:sched_switch", "sched:sched_wakeup")


class Pair(NamedTuple):
    """CLOCK_MONOTONIC seconds: the in-process check, then the check through the service."""

    alone_start: float
    alone_end: float
    start: float
    posted: float
    end: float


class Run(NamedTuple):
    """One on-CPU stretch of a thread."""

    start: float
    end: float
    cpu: int
    tid: int


class Wake(NamedTuple):
    time: float
    waker: int  # tid
    wakee: int  # tid


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------


def traced_pairs(pairs: int, out: Path) -> tuple[list[Pair], dict[str, list[int]]]:
    """Run the pairs under ``perf record``; the pairs and the pids of each role."""
    from smtpcheck.config import Settings
    from smtpcheck.contract import check_request as normalized
    from workers.engine import run_check

    with (
        tempfile.TemporaryDirectory(prefix="smtpcheck-timeline-") as tmp_name,
        smtp_target("lean") as (target_port, dns_port, target_pid),
        tarpit() as tarpit_port,
    ):
        tmp = Path(tmp_name)
        server = EmbeddedRedis(tmp / "redis", persist=False).start()
        conn = connect(server.url)
        env = bench_env(server.url, [target_port, tarpit_port], dns_port)
        os.environ.update(
            {k: v for k, v in env.items() if k.startswith("SMTPCHECK_") or k == "REDIS_URL"}
        )
        settings = Settings.from_env()
        request = normalized(settings, **check_request(target_port))
        try:
            with api_process(env, tmp, []) as (port, api_pid), pool(env, tmp, conn, 1) as proc:
                key = API_KEYS[0].partition(":")[2]
                client = RawApi(port, key)
                post = post_request(port, key, check_request(target_port))

                def pair() -> Pair:
                    clock = time.CLOCK_MONOTONIC
                    alone_start = time.clock_gettime(clock)
                    assert run_check(request, settings)["ok"]
                    alone_end = start = time.clock_gettime(clock)
                    status, payload = client.send(post)
                    posted = time.clock_gettime(clock)
                    assert status == 202, payload
                    check_id = json.loads(payload)["id"]
                    status, payload = client.get(f"/v1/checks/{check_id}?wait=30")
                    end = time.clock_gettime(clock)
                    assert status == 200 and json.loads(payload)["status"] == "finished"
                    return Pair(alone_start, alone_end, start, posted, end)

                try:
                    log("warming up: 50 pairs")
                    for _ in range(50):
                        pair()
                    roles = {
                        "api": [p for p in tree(api_pid) if p != api_pid],
                        "worker": [p for p in tree(proc.pid) if p != proc.pid],
                        "redis": [server.process.pid] if server.process else [],
                        "target": [target_pid],
                        "bench": [os.getpid()],
                    }
                    log(f"tracing {pairs} pairs")
                    with perf_record(out):
                        done = [pair() for _ in range(pairs)]
                finally:
                    client.close()
        finally:
            conn.close()
            server.stop()
    return done, roles


class perf_record:
    """``perf record`` of the scheduler on every CPU while the block runs."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> None:
        argv = ["perf", "record", "-q", "-k", "mono", "-a", "-o", str(self.out)]
        for event in EVENTS:
            argv += ["-e", event]
        self.proc = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self.out.exists() or self.out.stat().st_size == 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("perf record did not start (root and sched tracepoints needed)")
            time.sleep(0.05)
        time.sleep(0.5)  # perf maps every CPU's buffer before it records

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        time.sleep(0.1)
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=30)


# ---------------------------------------------------------------------------
# the trace
# ---------------------------------------------------------------------------

_LINE = re.compile(r"\s*(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+sched:(\w+):(.*)")


def parse(text: str) -> tuple[list[Run], list[Wake], dict[int, int]]:
    """``perf script -F pid,tid,cpu,time,event,trace`` output: the runs, the
    wake-ups and each thread's process (tid -> pid)."""
    runs: list[Run] = []
    wakes: list[Wake] = []
    process: dict[int, int] = {}
    current: dict[int, tuple[float, int]] = {}  # cpu -> (since, tid)
    for line in text.splitlines():
        found = _LINE.match(line)
        if not found:
            continue
        pid, tid, cpu, at = int(found[1]), int(found[2]), int(found[3]), float(found[4])
        event, rest = found[5], found[6]
        process[tid] = pid
        if event == "sched_switch":
            prev = int(_field(rest, "prev_pid"))
            following = int(_field(rest, "next_pid"))
            since = current.get(cpu)
            if since is not None and since[1] == prev:
                runs.append(Run(since[0], at, cpu, prev))
            current[cpu] = (at, following)
        elif event == "sched_wakeup":
            wakes.append(Wake(at, tid, int(_field(rest, " pid"))))
    return runs, wakes, process


def _field(text: str, name: str) -> str:
    found = re.search(rf"{name}=(\d+)", text)
    assert found, (name, text)
    return found[1]


def role_of(process: dict[int, int], roles: dict[str, list[int]]) -> dict[int, str]:
    """tid -> role for every thread of the roles' processes."""
    by_pid = {pid: role for role, pids in roles.items() for pid in pids}
    return {tid: by_pid[pid] for tid, pid in process.items() if pid in by_pid}


def cpu_in(
    runs: list[Run], name: Callable[[int], object], low: float, high: float
) -> dict[object, float]:
    """Microseconds on CPU between ``low`` and ``high`` of each ``name(tid)`` (runs
    of threads it names None are left out)."""
    spent: dict[object, float] = collections.defaultdict(float)
    for run in runs:
        key = name(run.tid)
        start, end = max(run.start, low), min(run.end, high)
        if key is not None and end > start:
            spent[key] += (end - start) * 1e6
    return spent


def worker_threads(runs: list[Run], role: dict[int, str], pairs: list[Pair]) -> list[list[float]]:
    """Each worker thread's microseconds on CPU in each pair (through the service),
    the busiest thread first (threads under 1 us per pair left out)."""

    def thread(tid: int) -> int | None:
        return tid if role.get(tid) == "worker" else None

    per_pair = [cpu_in(runs, thread, pair.start, pair.end) for pair in pairs]
    tids = {tid for spent in per_pair for tid in spent}
    ranked = sorted(
        ([spent.get(tid, 0.0) for spent in per_pair] for tid in tids), key=sum, reverse=True
    )
    return [each for each in ranked if sum(each) / len(pairs) >= 1]


def dialogue_alone(wakes: list[Wake], role: dict[int, str], pair: Pair) -> float | None:
    """Microseconds from the in-process check's first wake of the target to the
    target's last wake of the bench."""
    inside = [w for w in wakes if pair.alone_start <= w.time <= pair.alone_end]
    begin = next((w.time for w in inside if _is(w, "bench", "target", role)), None)
    end = next((w.time for w in reversed(inside) if _is(w, "target", "bench", role)), None)
    return None if begin is None or end is None else (end - begin) * 1e6


def _is(wake: Wake, waker: str, wakee: str, role: dict[int, str]) -> bool:
    return role.get(wake.waker) == waker and role.get(wake.wakee) == wakee


def show(runs: list[Run], wakes: list[Wake], role: dict[int, str], pair: Pair) -> Iterator[str]:
    """Pair's timeline through the service: runs and wake-ups, us from its start."""
    events: list[tuple[float, str]] = []
    for run in runs:
        if run.end >= pair.start and run.start <= pair.end and run.tid in role:
            events.append(
                (
                    run.start,
                    f"{role[run.tid]}/{run.tid} runs {(run.end - run.start) * 1e6:.0f} us"
                    f" on cpu{run.cpu}",
                )
            )
    for wake in wakes:
        if pair.start <= wake.time <= pair.end and (wake.waker in role or wake.wakee in role):
            events.append(
                (
                    wake.time,
                    f"{role.get(wake.waker, wake.waker)}/{wake.waker} wakes "
                    f"{role.get(wake.wakee, wake.wakee)}/{wake.wakee}",
                )
            )
    events.append((pair.posted, "bench has the POST's answer"))
    for at, what in sorted(events):
        yield f"{(at - pair.start) * 1e6:+8.0f}  {what}"


# ---------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=60)
    parser.add_argument("--show", type=int, help="print this pair's timeline")
    args = parser.parse_args()
    if shutil.which("perf") is None:
        print("needs perf (Debian: linux-perf)", file=sys.stderr)
        return 2
    if not Path("/sys/kernel/tracing/events").exists():
        subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"], check=False)
    with tempfile.TemporaryDirectory(prefix="smtpcheck-perf-") as tmp:
        data = Path(tmp) / "perf.data"
        done, roles = traced_pairs(args.pairs, data)
        text = subprocess.run(
            ["perf", "script", "-i", str(data), "-F", "pid,tid,cpu,time,event,trace"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    runs, wakes, process = parse(text)
    role = role_of(process, roles)
    print(f"load average {os.getloadavg()[0]:.2f}; {len(done)} pairs, back to back")
    print()
    alone_cpu = [cpu_in(runs, role.get, p.alone_start, p.alone_end) for p in done]
    service_cpu = [cpu_in(runs, role.get, p.start, p.end) for p in done]
    print("| process | CPU, median us: the in-process check | the check through the service |")
    print("| --- | ---: | ---: |")
    for name in roles:
        alone_us = statistics.median(spent.get(name, 0.0) for spent in alone_cpu)
        service_us = statistics.median(spent.get(name, 0.0) for spent in service_cpu)
        print(f"| {name} | {alone_us:.0f} | {service_us:.0f} |")
    threads = worker_threads(runs, role, done)
    print()
    print("| worker thread (ranked by CPU) | CPU per pair, median us |")
    print("| --- | ---: |")
    for rank, per_pair in enumerate(threads, 1):
        print(f"| {rank} | {statistics.median(per_pair):.0f} |")
    alone = [d for d in (dialogue_alone(wakes, role, pair) for pair in done) if d is not None]
    print()
    print("| median per pair | us |")
    print("| --- | ---: |")
    through = statistics.median((p.end - p.start) * 1e6 for p in done)
    inproc = statistics.median((p.alone_end - p.alone_start) * 1e6 for p in done)
    print(f"| through the service, median | {through:.0f} |")
    print(f"| the in-process check, median | {inproc:.0f} |")
    if alone:
        print(f"| its dialogue with the target, median | {statistics.median(alone):.0f} |")
    if args.show is not None:
        print()
        print(f"pair {args.show}:")
        for line in show(runs, wakes, role, done[args.show]):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
