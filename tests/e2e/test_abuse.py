"""Hostile clients against real gunicorn, as issue 11 tried them: each attack holds.

One gunicorn (2 processes, smtpcheck's own settings) on 127.0.0.1 and the
session's redis-server. No RQ worker runs: three vantages have a registered
worker that never takes a job, so every check stays queued and counts
against its key's cap for the whole module.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from smtpcheck.embedded_redis import EmbeddedRedis
from tests.dns_server import DNSServer
from tests.e2e.conftest import API_KEY, API_KEY_NAME, Client, Service, base_env

pytestmark = pytest.mark.e2e

HEADER_TIMEOUT = 5.0  # cli/gunicorn_config.py
FAN_KEY = "fan-" + API_KEY
VANTAGES = ("default", "east", "west")
CAP = 10
QUEUED = {"host": "127.0.0.1", "port": 2525, "tls": "none", "stop_after": "connect"}


@pytest.fixture(scope="module")
def abused(
    redis_server: EmbeddedRedis, e2e_dns: DNSServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    for vantage in VANTAGES:  # live, as far as GET /v1/vantages can tell
        queue = Queue(f"vantage:{vantage}", connection=client, serializer=JSONSerializer)
        SimpleWorker([queue], connection=client, serializer=JSONSerializer).register_birth()
    client.close()
    tmp = tmp_path_factory.mktemp("abuse")
    env = base_env(tmp, redis_server.url, [2525], e2e_dns)
    env.update(
        SMTPCHECK_API_KEYS=f"{API_KEY_NAME}:{API_KEY},fan:{FAN_KEY}",
        SMTPCHECK_MAX_CONCURRENT_PER_KEY=str(CAP),
        SMTPCHECK_MAX_HELD_PER_KEY="150",
        SMTPCHECK_LOG_LEVEL="WARNING",
        PROMETHEUS_MULTIPROC_DIR=str(tmp / "metrics"),
    )
    (tmp / "metrics").mkdir()
    svc = Service(tmp, env, redis_server.url)
    try:
        yield svc.start_api()
    except BaseException:
        print(svc.logs())
        raise
    finally:
        if svc.api is not None:
            svc.api.stop(2)  # SIGINT: quick shutdown, held requests are cut
        svc.stop()


def connect(service: Service, first_bytes: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=5)
    if first_bytes:
        sock.sendall(first_bytes)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        data = sock.recv(4096)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return not data or data.startswith(b"HTTP/")  # an error answer, then the close


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def test_slowloris_and_held_waits_leave_health_and_submissions_served(abused: Service) -> None:
    client = abused.client
    check_id = client.submit(QUEUED)  # no worker takes it: every ?wait on it holds
    opened = time.monotonic()
    slow = [connect(abused, b"GET /healthz HTTP/1.1\r\nHost: x\r\n") for _ in range(300)]
    idle = [connect(abused) for _ in range(50)]
    hold = (
        f"GET /v1/checks/{check_id}?wait=30 HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {API_KEY}\r\n\r\n"
    ).encode()
    waits = [connect(abused, hold) for _ in range(100)]
    store = redis.Redis.from_url(abused.redis_url)
    try:
        deadline = time.monotonic() + 10
        while store.zcard(f"smtpcheck:held:{API_KEY_NAME}") < 100:
            assert time.monotonic() < deadline, "the 100 ?wait requests are not all held"
            time.sleep(0.05)

        health = []
        for i in range(60):
            start = time.perf_counter()
            reply = client.request("GET", "/readyz" if i % 10 == 0 else "/healthz", timeout=4)
            health.append((time.perf_counter() - start) * 1000)
            assert reply.status == 200
            if i % 20 == 0:
                assert client.submit(QUEUED)
        assert percentile(health, 99) <= 200, sorted(health)[-5:]

        # Every slow and idle socket is closed by the server within the header timeout.
        open_ones = slow + idle
        while open_ones and time.monotonic() - opened < HEADER_TIMEOUT + 4:
            open_ones = [sock for sock in open_ones if not closed_by_server(sock)]
            time.sleep(0.2)
        assert not open_ones, f"{len(open_ones)} slow sockets still open"
        assert all(not closed_by_server(sock) for sock in waits)  # those are being answered
    finally:
        store.close()
        for sock in slow + idle + waits:
            sock.close()


def pipelined(service: Service, requests: list[bytes]) -> int:
    """Send ``requests`` on one connection at once (the last asks to close); the answers."""
    sock = connect(service)
    sock.settimeout(30)
    sock.sendall(b"".join(requests))
    received = bytearray()
    while chunk := sock.recv(65536):
        received += chunk
    sock.close()
    return received.count(b"HTTP/1.1 ")


def test_a_keep_alive_connection_in_use_is_not_cut_at_the_header_timeout(
    abused: Service,
) -> None:
    """The header timeout bounds each head's wait, not a connection's life: a
    client that keeps asking on one connection, a request every 10 ms, is
    answered past it. (One timer kept for a connection's heads once resumed
    with the time left, not the whole timeout, and so cut such a connection
    off after about 5 s of waits between its requests.)"""
    sock = connect(abused)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ask = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    received = b""
    answered = 0
    started = time.monotonic()
    try:
        while time.monotonic() - started < HEADER_TIMEOUT + 2:
            sock.sendall(ask)
            while received.count(b"HTTP/1.1 200") == answered:
                data = sock.recv(65536)
                assert data, f"closed after {answered} answers, {time.monotonic() - started:.1f} s"
                received += data
            answered += 1
            time.sleep(0.01)
    finally:
        sock.close()


def random_requests(rng: random.Random, count: int) -> list[bytes]:
    """``count`` requests of made-up methods and paths, the last asking to close."""
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    batch = []
    for i in range(count):
        method = "".join(rng.choices(letters, k=rng.randint(3, 12)))
        path = "/" + "/".join(f"{rng.getrandbits(40):x}" for _ in range(rng.randint(1, 3)))
        close = "Connection: close\r\n" if i == count - 1 else ""
        batch.append(f"{method} {path} HTTP/1.1\r\nHost: x\r\n{close}\r\n".encode())
    return batch


def test_random_methods_and_paths_do_not_grow_the_metrics(abused: Service) -> None:
    client = Client(abused.url, api_key=None)
    folder = Path(abused.env["PROMETHEUS_MULTIPROC_DIR"])

    def folder_size() -> int:
        return sum(p.stat().st_size for p in folder.iterdir())

    def warmed() -> bool:  # both processes have files of the same kinds (counter_<pid>.db)
        kinds: dict[str, set[str]] = {}
        for path in folder.iterdir():
            kind, _, pid = path.stem.rpartition("_")
            kinds.setdefault(pid, set()).add(kind)
        return len(kinds) >= 2 and len({frozenset(k) for k in kinds.values()}) == 1

    # A gunicorn process makes its metric files on its first answers of a kind:
    # run the same kind of requests until both processes have (the module's other
    # tests may or may not have run first), then measure.
    warm = random.Random(7)
    for _ in range(20):
        size = folder_size()
        for _ in range(20):  # new connections, so both processes take some
            pipelined(abused, random_requests(warm, 5))
        if warmed() and folder_size() == size:
            break
    before = client.request("GET", "/metrics").body
    folder_before = folder_size()
    rng = random.Random(11)
    batches = [random_requests(rng, 500) for _ in range(20)]
    answered = sum(pipelined(abused, batch) for batch in batches)
    assert answered >= 9_000  # a few may fall between a close and a reconnect

    after = client.request("GET", "/metrics").body
    assert len(after) - len(before) < 10 * 1024, len(after) - len(before)
    assert folder_size() == folder_before


def test_a_fan_out_counts_three_against_the_cap(abused: Service) -> None:
    fan = Client(abused.url, api_key=FAN_KEY)
    for _ in range(3):
        assert fan.request("POST", "/v1/checks", {**QUEUED, "vantage": "all"}).status == 202

    refused = fan.request("POST", "/v1/checks", {**QUEUED, "vantage": "all"})

    assert refused.status == 429, refused.text
    problem = refused.json()
    assert problem["type"] == "urn:smtpcheck:problem:too-many-checks"
    assert f"9 of its {CAP} checks" in problem["detail"]
    assert int(refused.headers["retry-after"]) >= 1
    assert fan.request("POST", "/v1/checks", QUEUED).status == 202  # the tenth
    assert fan.request("POST", "/v1/checks", QUEUED).status == 429


def test_fan_out_delete_answers_once_for_every_member(abused: Service) -> None:
    client = abused.client
    check_id = client.submit({**QUEUED, "vantage": "all"})
    members = [
        row["id"] for row in client.request("GET", f"/v1/checks/{check_id}").json()["vantages"]
    ]
    assert len(members) == 3

    canceled = client.request("DELETE", f"/v1/checks/{check_id}")
    assert canceled.status == 202, canceled.text
    assert {row["status"] for row in canceled.json()["vantages"]} == {"canceled"}

    assert client.request("DELETE", f"/v1/checks/{check_id}").status == 204
    assert client.request("GET", f"/v1/checks/{check_id}").status == 404
    for member in members:
        assert client.request("GET", f"/v1/checks/{member}").status == 404
