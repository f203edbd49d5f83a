"""Capacity figures for sizing Redis: memory per check, checks per second.

Everything runs here on 127.0.0.1, started by this script: a fresh embedded
redis-server, ``smtpcheck api`` (gunicorn), ``smtpcheck worker --processes N``,
an aiosmtpd target (``--target``) and a DNS server (their own process), and a server that
greets and then stalls (for checks in flight). Checks go through the real
API, so every key a real check writes is there (job, result, transcript
events, registries, per-key admission, rate limits, metrics).

It measures:

1. Redis memory per queued check: ``used_memory`` before and after
   submitting N checks with no worker running, divided by N;
2. checks per second one Redis sustains with 1, 2 and 4 worker processes:
   the same N queued checks drained by the workers, and the Redis CPU time
   (``INFO cpu``) each check cost, hence how many a Redis core could take;
3. Redis memory per stored (finished) check, for a typical check (banner,
   EHLO, MAIL, RCPT, QUIT) and for a large one (20 recipients and a 64 KiB
   message sent through DATA): ``used_memory`` growth per check once all
   have ended, and ``MEMORY USAGE`` of the keys named after each check;
4. Redis memory per check in flight: checks held by a stalling server, one
   per worker process.

Nothing is asserted: print, then copy the tables into docs/operations.md
with the machine and its load. ``.venv/bin/python -m bench.capacity``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.service import (  # noqa: E402
    API_KEYS,
    SMTPCHECK,
    TARGETS,
    Api,
    api,
    bench_env,
    counts,
    log,
    process,
    smtp_target,
    wait_for,
)
from smtpcheck.embedded_redis import EmbeddedRedis  # noqa: E402
from smtpcheck.redis_client import FailoverRedis, connect  # noqa: E402

MiB = 1024 * 1024
EXECUTION = re.compile(r":[0-9a-f]{32}$")
SIZING_DAYS = 7  # SMTPCHECK_RESULT_TTL's default


def used_memory(conn: FailoverRedis) -> int:
    return int(conn.info("memory")["used_memory"])


def redis_cpu(conn: FailoverRedis) -> float:
    info = conn.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def typical(port: int) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": port,
        "tls": "none",
        "mail_from": "probe@bench.test",
        "rcpt_to": ["postmaster@bench.test"],
    }


def large(port: int) -> dict[str, Any]:
    line = "The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    return {
        **typical(port),
        "rcpt_to": [f"user{i}@bench.test" for i in range(20)],
        "message": {"subject": "capacity", "body": line * (64 * 1024 // len(line))},
    }


def submit(port: int, body: dict[str, Any], n: int, threads: int = 4) -> list[str]:
    """POST ``n`` checks over ``threads`` keep-alive connections (one API key each)."""
    clients = [Api(port, API_KEYS[i].partition(":")[2]) for i in range(threads)]

    def post(index: int) -> str:
        status, payload = clients[index % threads].call("POST", "/v1/checks", body)
        if status != 202:
            raise RuntimeError(f"submission refused: {status} {payload[:200]!r}")
        return str(json.loads(payload)["id"])

    try:
        # One connection per thread: index i goes to client i % threads, in order.
        with ThreadPoolExecutor(threads) as pool:
            lanes = [range(t, n, threads) for t in range(threads)]
            done = pool.map(lambda lane: [post(i) for i in lane], lanes)
            return [check_id for lane in done for check_id in lane]
    finally:
        for client in clients:
            client.close()


def keys_of(conn: FailoverRedis, check_ids: list[str]) -> dict[str, tuple[int, int]]:
    """The keys named after each check: kind -> (MEMORY USAGE bytes per check, TTL seconds)."""
    wanted = set(check_ids)
    totals: dict[str, int] = {}
    ttls: dict[str, int] = {}
    for key in conn.scan_iter(count=1000):
        name = key.decode()
        found = next((i for i in wanted if i in name), None)
        if found is None:
            continue
        kind = EXECUTION.sub(":<execution>", name.replace(found, "<id>"))
        totals[kind] = totals.get(kind, 0) + int(conn.memory_usage(key, samples=0) or 0)
        ttls.setdefault(kind, int(conn.ttl(key)))
    return {
        kind: (round(size / len(check_ids)), ttls[kind]) for kind, size in sorted(totals.items())
    }


def wait_ended(conn: FailoverRedis, total: int) -> None:
    """Until ``total`` checks have ended (finished or failed) since the start."""
    wait_for(lambda: counts(conn) >= total, 600, f"{total} checks ended")


@contextlib.contextmanager
def workers(env: dict[str, str], tmp: Path, conn: FailoverRedis, n: int) -> Iterator[None]:
    argv = [*SMTPCHECK, "worker", "--processes", str(n)]
    with process(argv, env, tmp / f"workers-{n}.log"):
        wait_for(lambda: int(conn.scard("rq:workers:vantage:default")) >= n, 60, f"{n} workers")
        yield
    wait_for(lambda: int(conn.scard("rq:workers:vantage:default")) == 0, 60, "workers to stop")


@contextlib.contextmanager
def stalling_server() -> Iterator[int]:
    """Greets, then never answers: a check stays in flight until its deadline."""
    from tests.smtp_servers import ScriptedServer

    def script(sock: Any) -> None:
        sock.sendall(b"220 stall.bench.test ESMTP\r\n")
        while sock.recv(4096):
            pass

    server = ScriptedServer(script).start()
    try:
        yield server.port
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=600, help="checks per worker count")
    parser.add_argument("--large", type=int, default=200, help="checks with a large transcript")
    parser.add_argument("--processes", default="1,2,4", help="worker process counts to try")
    parser.add_argument(
        "--target",
        choices=TARGETS,
        default="aiosmtpd",
        help="the SMTP and DNS target; aiosmtpd refuses the relay, so a stored check is "
        "the size docs/operations.md measured (the lean target accepts every recipient)",
    )
    args = parser.parse_args()
    counts_to_try = [int(n) for n in args.processes.split(",")]

    report: dict[str, Any] = {"throughput": []}
    with (
        tempfile.TemporaryDirectory(prefix="smtpcheck-capacity-") as tmp_name,
        smtp_target(args.target) as (target_port, dns_port, _),
        stalling_server() as stall_port,
    ):
        tmp = Path(tmp_name)
        server = EmbeddedRedis(tmp / "redis", persist=False).start()
        conn = connect(server.url)
        env = bench_env(server.url, [target_port, stall_port], dns_port)
        try:
            with api(env, tmp, []) as port:
                # Warm up: the first check creates the shared keys (metrics, registries).
                with workers(env, tmp, conn, 1):
                    submit(port, typical(target_port), 20, threads=1)
                    wait_for(lambda: counts(conn) >= 20, 60, "warm-up checks")
                stored_ids: list[str] = []
                base = used_memory(conn)
                for n in counts_to_try:
                    log(f"{args.checks} checks queued, then drained by {n} worker processes")
                    before = used_memory(conn)
                    ids = submit(port, typical(target_port), args.checks)
                    queued = (used_memory(conn) - before) / len(ids)
                    report.setdefault("queued", queued)
                    report.setdefault("queued_keys", keys_of(conn, ids[:50]))
                    done = counts(conn)
                    cpu = redis_cpu(conn)
                    start = time.perf_counter()
                    with workers(env, tmp, conn, n):
                        started = time.perf_counter()
                        wait_ended(conn, done + len(ids))
                        elapsed = time.perf_counter() - started
                    cpu_per_check = (redis_cpu(conn) - cpu) / len(ids)
                    report["throughput"].append(
                        {
                            "processes": n,
                            "rate": len(ids) / elapsed,
                            "cpu_ms": cpu_per_check * 1000,
                            "startup": started - start,
                        }
                    )
                    stored_ids += ids
                report["stored"] = (used_memory(conn) - base) / len(stored_ids)
                report["stored_keys"] = keys_of(conn, stored_ids[:50])

                log(f"{args.large} checks with 20 recipients and a 64 KiB message")
                before = used_memory(conn)
                done = counts(conn)
                with workers(env, tmp, conn, 2):
                    ids = submit(port, large(target_port), args.large)
                    wait_ended(conn, done + len(ids))
                report["large"] = (used_memory(conn) - before) / len(ids)
                report["large_keys"] = keys_of(conn, ids[:50])

                inflight = 4
                log(f"{inflight} checks in flight against a stalling server")
                with workers(env, tmp, conn, inflight):
                    time.sleep(2)
                    before = used_memory(conn)
                    body = {
                        "host": "127.0.0.1",
                        "port": stall_port,
                        "tls": "none",
                        "timeouts": {"connect": 5, "command": 60, "total": 90},
                    }
                    ids = submit(port, body, inflight, threads=1)
                    wait_for(
                        lambda: int(conn.zcard("rq:wip:vantage:default")) >= inflight,
                        30,
                        "checks in flight",
                    )
                    time.sleep(1)
                    report["inflight"] = (used_memory(conn) - before) / inflight
                    report["inflight_keys"] = keys_of(conn, ids)
                    client = Api(port, API_KEYS[0].partition(":")[2])
                    for check_id in ids:
                        client.call("DELETE", f"/v1/checks/{check_id}")
                    client.close()
        finally:
            conn.close()
            server.stop()

    print_report(report)
    return 0


def print_report(report: dict[str, Any]) -> None:
    machine = platform.processor() or platform.machine()
    load = os.getloadavg()
    print(
        f"machine: {machine}, {os.cpu_count()} cores, load average {load[0]:.1f}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )
    print()
    print("| Redis memory per check | bytes |")
    print("| --- | ---: |")
    print(f"| queued (typical request) | {report['queued']:.0f} |")
    print(f"| in flight (held by a stalling server) | {report['inflight']:.0f} |")
    print(f"| stored, typical (banner, EHLO, MAIL, RCPT, QUIT) | {report['stored']:.0f} |")
    print(f"| stored, large (20 RCPT, 64 KiB through DATA) | {report['large']:.0f} |")
    for title, key in (
        ("queued", "queued_keys"),
        ("in flight", "inflight_keys"),
        ("stored typical", "stored_keys"),
        ("stored large", "large_keys"),
    ):
        parts = ", ".join(f"{k} {v[0]} B (TTL {v[1]} s)" for k, v in report[key].items())
        print(f"\nkeys of a {title} check, MEMORY USAGE per check: {parts}")
    print()
    print("| worker processes | checks/s | Redis CPU ms per check | one Redis core, checks/s |")
    print("| ---: | ---: | ---: | ---: |")
    for row in report["throughput"]:
        ceiling = 1000 / row["cpu_ms"] if row["cpu_ms"] else float("inf")
        print(f"| {row['processes']} | {row['rate']:.0f} | {row['cpu_ms']:.2f} | {ceiling:.0f} |")
    print()
    print(f"| checks a day | stored for {SIZING_DAYS} days, typical | large |")
    print("| ---: | ---: | ---: |")
    for per_day in (1_000, 10_000, 100_000, 1_000_000):
        kept = per_day * SIZING_DAYS
        print(
            f"| {per_day:,} | {kept * report['stored'] / MiB:,.0f} MiB "
            f"| {kept * report['large'] / MiB:,.0f} MiB |"
        )


if __name__ == "__main__":
    sys.exit(main())
