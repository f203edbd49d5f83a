"""Which gunicorn worker class holds against slow and idle clients: measured.

For each candidate setting, one run on 127.0.0.1 (a fresh embedded
redis-server, gunicorn serving ``service:create_app()`` with smtpcheck's own
gunicorn config, no RQ worker so checks stay queued):

1. open ``--slow`` sockets that send a request's first header line and
   nothing more (slowloris), ``--idle`` sockets that only connect, and
   ``--waits`` requests ``GET /v1/checks/{id}?wait=30`` on a queued check;
2. meanwhile probe ``GET /healthz`` (a new connection each, 4 s timeout) and
   ``POST /v1/checks``, and record latency and failures;
3. record how long gunicorn takes to close the slow sockets.

``.venv/bin/python -m bench.connections`` prints one table; nothing asserts a
time. The figures and the choice they led to are in README.md ("Serving").
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.service import log, percentile, process, wait_for  # noqa: E402
from smtpcheck.embedded_redis import EmbeddedRedis, free_port  # noqa: E402

API_KEY = "connkey"

#: name -> gunicorn arguments (beside ``-c python:cli.gunicorn_config``).
CANDIDATES: dict[str, list[str]] = {
    "gthread 2x8 (before)": ["--worker-class", "gthread", "--threads", "8"],
    "gthread 2x64 keepalive 5": [
        "--worker-class", "gthread", "--threads", "64", "--keep-alive", "5",
    ],
    # gunicorn's own gevent worker: --worker-class overrides the config's class.
    "gevent 2 procs keepalive 5": ["--worker-class", "gevent", "--keep-alive", "5"],
    # What `smtpcheck api` serves with: the config's class (cli/gunicorn_worker.py).
    "smtpcheck's worker (the config's)": [],
}  # fmt: skip


@contextlib.contextmanager
def gunicorn(env: dict[str, str], tmp: Path, extra: list[str]) -> Iterator[int]:
    port = free_port()
    argv = [
        sys.executable, "-m", "gunicorn", "--config", "python:cli.gunicorn_config",
        "--workers", "2", "--bind", f"127.0.0.1:{port}", "--no-control-socket",
        *extra, "service:create_app()",
    ]  # fmt: skip
    with process(argv, env, tmp / "gunicorn.log"):
        wait_for(lambda: _status(port, "GET", "/readyz")[0] == 200, 30, "gunicorn")
        yield port


def _status(port: int, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=4)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=payload, headers=headers)
        reply = conn.getresponse()
        data = reply.read()
        conn.close()
        return reply.status, data
    except (OSError, http.client.HTTPException):
        return 0, b""


def open_slow(port: int, count: int, send: bytes) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if send:
            sock.sendall(send)
        sockets.append(sock)
    return sockets


def closed_after(sockets: list[socket.socket], opened: float, limit: float) -> list[float]:
    """Seconds from ``opened`` until the server closed each socket (inf: not within limit)."""
    closed = [float("inf")] * len(sockets)
    for sock in sockets:
        sock.setblocking(False)
    deadline = opened + limit
    while time.monotonic() < deadline and any(c == float("inf") for c in closed):
        for i, sock in enumerate(sockets):
            if closed[i] != float("inf"):
                continue
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data or data.startswith(b"HTTP/"):  # closed, or an error reply and close
                closed[i] = time.monotonic() - opened
        time.sleep(0.1)
    return closed


def held_waits(port: int, check_id: str, count: int) -> list[threading.Thread]:
    def hold() -> None:
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=40)
            conn.request(
                "GET",
                f"/v1/checks/{check_id}?wait=30",
                headers={"Authorization": f"Bearer {API_KEY}"},
            )
            conn.getresponse().read()
            conn.close()

    threads = [threading.Thread(target=hold, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


def measure(port: int, args: argparse.Namespace) -> dict[str, Any]:
    body = {"host": "127.0.0.1", "port": 25, "tls": "none", "stop_after": "connect"}
    status, payload = _status(port, "POST", "/v1/checks", body)
    if status != 202:
        raise RuntimeError(f"POST answered {status}: {payload[:300]!r}")
    check_id = json.loads(payload)["id"]
    opened = time.monotonic()
    slow = open_slow(port, args.slow, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    idle = open_slow(port, args.idle, b"")
    waits = held_waits(port, check_id, args.waits)
    time.sleep(1.0)  # let every held request reach the app
    health: list[float] = []
    health_failed = 0
    posts_ok = 0
    for i in range(args.probes):
        start = time.perf_counter()
        ok = _status(port, "GET", "/healthz")[0] == 200
        health.append((time.perf_counter() - start) * 1000)
        health_failed += not ok
        if i % 4 == 0:
            posts_ok += _status(port, "POST", "/v1/checks", body)[0] == 202
    closed = closed_after(slow + idle, opened, args.close_within)
    for sock in slow + idle:
        sock.close()
    for thread in waits:
        thread.join(0)
    return {
        "health_p50": percentile(health, 50),
        "health_p99": percentile(health, 99),
        "health_failed": health_failed,
        "probes": args.probes,
        "posts": (posts_ok, len(range(0, args.probes, 4))),
        "closed": sum(c != float("inf") for c in closed),
        "closed_max": max((c for c in closed if c != float("inf")), default=float("nan")),
        "sockets": len(closed),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", type=int, default=300)
    parser.add_argument("--idle", type=int, default=100)
    parser.add_argument("--waits", type=int, default=100)
    parser.add_argument("--probes", type=int, default=40)
    parser.add_argument("--close-within", type=float, default=20.0)
    parser.add_argument("--only", help="a candidate's name prefix")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="smtpcheck-conn-") as tmp_name:
        tmp = Path(tmp_name)
        server = EmbeddedRedis(tmp / "redis", persist=False).start()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SMTPCHECK_", "REDIS"))}
        env.update(
            REDIS_URL=server.url,
            SMTPCHECK_API_KEYS=f"conn:{API_KEY}",
            SMTPCHECK_ALLOW_NETWORKS="127.0.0.0/8",
            SMTPCHECK_RATE_LIMIT="1000000/minute",
            SMTPCHECK_MAX_CONCURRENT_PER_KEY="1000000",
            SMTPCHECK_MAX_HELD_PER_KEY="1000",
            SMTPCHECK_LOG_LEVEL="WARNING",
            PROMETHEUS_MULTIPROC_DIR=str(tmp / "metrics"),
        )
        (tmp / "metrics").mkdir()
        try:
            for name, extra in CANDIDATES.items():
                if args.only and not name.startswith(args.only):
                    continue
                log(f"{name}: {args.slow} slow, {args.idle} idle, {args.waits} held waits")
                with gunicorn(env, tmp, extra) as port:
                    rows.append((name, measure(port, args)))
        finally:
            server.stop()
    print(
        f"\n{args.slow} slowloris + {args.idle} idle sockets + {args.waits} held ?wait=30, "
        f"{args.probes} /healthz probes (4 s timeout), a POST every 4th probe\n"
    )
    print("| gunicorn | /healthz p50 ms | p99 ms | failed | POST 202 | slow sockets closed |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for name, r in rows:
        print(
            f"| {name} | {r['health_p50']:.1f} | {r['health_p99']:.1f} "
            f"| {r['health_failed']}/{r['probes']} | {r['posts'][0]}/{r['posts'][1]} "
            f"| {r['closed']}/{r['sockets']} within {args.close_within:.0f} s"
            f" (last at {r['closed_max']:.1f} s) |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
