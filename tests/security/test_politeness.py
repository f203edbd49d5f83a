"""Politeness: no more than SMTPCHECK_MAX_CONCURRENT_PER_TARGET checks talk to
one address at once, whoever asks; a wait is noted and bounded by the check's
deadline; a slot held by a worker that died frees itself."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from redis.backoff import NoBackoff
from redis.retry import Retry
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from smtpcheck.config import Settings, Timeouts
from smtpcheck.contract import TARGET_SLOTS_PREFIX, check_request
from tests.security.conftest import ALICE
from tests.smtp_servers import ScriptedServer, read_line
from workers import politeness
from workers.engine import run_check
from workers.politeness import TargetBusy, TargetGate

LOOPBACK = ipaddress.ip_address("127.0.0.1")
KEY = TARGET_SLOTS_PREFIX + "127.0.0.1"


class Talking:
    """A polite SMTP server that counts how many clients it talks to at once."""

    def __init__(self, hold: float = 0.0, on_connect: Callable[[], None] | None = None) -> None:
        self.hold = hold
        self.on_connect = on_connect
        self.now = 0
        self.most = 0
        self.total = 0
        self._lock = threading.Lock()

    def __call__(self, sock: socket.socket) -> None:
        with self._lock:
            self.now += 1
            self.total += 1
            self.most = max(self.most, self.now)
        if self.on_connect is not None:
            self.on_connect()
        try:
            time.sleep(self.hold)
            sock.sendall(b"220 polite.test ESMTP\r\n")
            while line := read_line(sock):
                if line.upper().startswith(b"QUIT"):
                    sock.sendall(b"221 bye\r\n")
                    return
                sock.sendall(b"250 polite.test\r\n")
        finally:
            with self._lock:
                self.now -= 1


def settings_for(server: ScriptedServer, **changes: Any) -> Settings:
    return Settings(
        allow_networks=(ipaddress.ip_network("127.0.0.0/8"),),
        allowed_ports=frozenset({server.port}),
        helo_name="checker.test",
        timeouts=Timeouts(connect=2, command=3, total=6),
        **changes,
    )


def request_for(server: ScriptedServer, **changes: Any) -> dict[str, Any]:
    """The fields a test gives (the API's body; check_request completes it for the engine)."""
    return {"host": server.host, "port": server.port, "tls": "none", **changes}


def check_with(
    server: ScriptedServer, gate: TargetGate, settings: Settings | None = None, **changes: Any
) -> dict[str, Any]:
    settings = settings or settings_for(server)
    return run_check(check_request(settings, **request_for(server, **changes)), settings, gate=gate)


def notes(result: dict[str, Any]) -> list[str]:
    return [entry["text"] for entry in result["transcript"] if entry["dir"] == "note"]


@pytest.fixture
def connection(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@contextlib.contextmanager
def held_slot(connection: redis.Redis, limit: int = 1) -> Iterator[None]:
    """Take a slot to 127.0.0.1 as another check would."""
    with TargetGate(connection, limit)(LOOPBACK, time.monotonic() + 5, lambda _: None):
        yield


def test_checks_to_one_address_wait_their_turn(
    scripted_server: Callable[..., ScriptedServer], connection: redis.Redis
) -> None:
    talking = Talking(hold=0.4)
    server = scripted_server(talking)
    gate = TargetGate(connection, 2)
    settings = settings_for(server)
    results: list[dict[str, Any]] = []

    def one() -> None:
        results.append(check_with(server, gate, settings))

    threads = [threading.Thread(target=one) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert [r["outcome"] for r in results] == ["ok"] * 5
    assert talking.total == 5
    assert talking.most == 2
    waited = [r for r in results if any(n.startswith("waiting for a free slot") for n in notes(r))]
    assert len(waited) >= 3
    for result in waited:
        assert any(n.startswith("slot to 127.0.0.1 free after") for n in notes(result))
    assert connection.zcard(KEY) == 0  # every slot given back


def test_no_slot_before_the_deadline_is_a_timeout(
    scripted_server: Callable[..., ScriptedServer], connection: redis.Redis
) -> None:
    talking = Talking()
    server = scripted_server(talking)
    with held_slot(connection, limit=1):
        started = time.monotonic()
        result = check_with(server, TargetGate(connection, 1), timeouts={"total": 1.5})
        took = time.monotonic() - started

    assert result["outcome"] == "timeout"
    assert result["stage"] == "connect"
    assert "ran out of time during connect" in result["summary"]
    assert "slots to 127.0.0.1" in result["summary"]
    assert 1.4 < took < 2.5
    assert talking.total == 0  # never dialled
    assert any(n.startswith("waiting for a free slot: 1 checks") for n in notes(result))


def test_the_slot_is_held_through_probes_and_freed_after(
    scripted_server: Callable[..., ScriptedServer], connection: redis.Redis
) -> None:
    slots_taken: list[int] = []
    talking = Talking(on_connect=lambda: slots_taken.append(int(connection.zcard(KEY))))
    server = scripted_server(talking)

    result = check_with(server, TargetGate(connection, 1), probes=["vrfy"])

    assert result["outcome"] == "ok"
    assert result["probes"]["vrfy"]
    assert talking.total == 2  # the check, then its probe on a second connection
    assert slots_taken == [1, 1]  # one slot, held by this check for both
    assert connection.zcard(KEY) == 0


def test_a_lease_is_renewed_while_the_check_talks(connection: redis.Redis) -> None:
    gate = TargetGate(connection, 1, lease=0.5, renew_every=0.1)
    other = TargetGate(connection, 1)
    with gate(LOOPBACK, time.monotonic() + 10, lambda _: None):
        time.sleep(1.2)  # more than two leases
        with (
            pytest.raises(TargetBusy, match="none freed"),
            other(LOOPBACK, time.monotonic() + 0.3, lambda _: None),
        ):
            pass


def _switches(thread: threading.Thread) -> int:
    """How often ``thread`` has gone to sleep and woken (Linux's count)."""
    status = f"/proc/self/task/{thread.native_id}/status"
    with open(status) as lines:
        return sum(int(line.split()[1]) for line in lines if "ctxt_switches" in line)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_renewer_sleeps_while_no_lease_is_due(connection: redis.Redis) -> None:
    """The renewer thread wakes when a lease is due, not on a clock: with no
    lease held (or none due for a while) it does not wake at all."""
    renewer = politeness._Renewer()
    gate = TargetGate(connection, 1, lease=30, renew_every=10)
    lease = politeness._Lease(gate, KEY, "a-check", time.monotonic() + 10)
    renewer.hold(lease)  # starts the thread, which waits for the lease to be due
    thread = renewer._thread._thread
    assert thread is not None
    time.sleep(0.1)
    held = _switches(thread)
    time.sleep(0.3)
    renewer.release(lease)
    time.sleep(0.1)
    released = _switches(thread)
    time.sleep(0.3)

    assert _switches(thread) == released == held  # it never woke, lease or none


HOLDER = """
import sys, time, redis, ipaddress
from workers.politeness import TargetGate
gate = TargetGate(redis.Redis.from_url(sys.argv[1]), 1, lease=1, renew_every=0.2)
with gate(ipaddress.ip_address("127.0.0.1"), time.monotonic() + 60, print):
    print("holding", flush=True)
    time.sleep(60)
"""


def test_a_slot_held_by_a_killed_worker_frees_itself(
    scripted_server: Callable[..., ScriptedServer], connection: redis.Redis, redis_url: str
) -> None:
    talking = Talking()
    server = scripted_server(talking)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, redis_url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "holding"
        os.kill(holder.pid, signal.SIGKILL)
    finally:
        holder.kill()
        holder.wait(5)
        if holder.stdout is not None:
            holder.stdout.close()
    assert connection.zcard(KEY) == 1  # the dead worker's slot, still there

    result = check_with(server, TargetGate(connection, 1))

    assert result["outcome"] == "ok"
    waited = [n for n in notes(result) if n.startswith("slot to 127.0.0.1 free after")]
    assert len(waited) == 1
    assert int(waited[0].split()[-2]) < 1500  # within one lease


def test_without_redis_the_check_goes_ahead_and_says_so(
    scripted_server: Callable[..., ScriptedServer],
) -> None:
    server = scripted_server(Talking())
    unreachable = redis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))

    result = check_with(server, TargetGate(unreachable, 1))

    assert result["outcome"] == "ok"
    assert any("politeness limit not applied" in n for n in notes(result))
    unreachable.close()


def test_the_worker_job_applies_the_limit_from_the_environment(
    scripted_server: Callable[..., ScriptedServer],
    connection: redis.Redis,
    make_app: Callable[..., Flask],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """workers.job wires the gate; the caller has no field to lift it."""
    talking = Talking()
    server = scripted_server(talking)
    for name, value in {
        "SMTPCHECK_SECRET_KEY": "security-test-secret",
        "SMTPCHECK_ALLOW_NETWORKS": "127.0.0.0/8",
        "SMTPCHECK_ALLOWED_PORTS": str(server.port),
        "SMTPCHECK_MAX_CONCURRENT_PER_TARGET": "1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SMTPCHECK_DNS_SERVERS", raising=False)
    app = make_app(
        allow_networks=(ipaddress.ip_network("127.0.0.0/8"),),
        allowed_ports=frozenset({server.port}),
    )
    client = app.test_client()
    body = {**request_for(server), "timeouts": {"total": 1.5}}
    created = client.post("/v1/checks", json=body, headers=ALICE)
    assert created.status_code == 202, created.get_json()

    with held_slot(connection, limit=1):
        queue = Queue("vantage:default", connection=connection, serializer=JSONSerializer)
        SimpleWorker([queue], connection=connection, serializer=JSONSerializer).work(
            burst=True, logging_level="WARNING"
        )

    result = client.get(created.headers["Location"], headers=ALICE).get_json()["result"]
    assert result["outcome"] == "timeout"
    assert "slots to 127.0.0.1" in result["summary"]
    assert talking.total == 0


def test_one_key_leaves_a_slot_to_another(connection: redis.Redis) -> None:
    """Key a's checks take its share (half) and more only while a slot stays
    free, so key b's check to the same address is not kept waiting."""
    limit = 4
    a, b = TargetGate(connection, limit, owner="a"), TargetGate(connection, limit, owner="b")
    notes: list[str] = []
    with contextlib.ExitStack() as held:
        for _ in range(3):  # its share (2), and one more: a fourth slot stays free
            held.enter_context(a(LOOPBACK, time.monotonic() + 5, notes.append))
        with (
            pytest.raises(TargetBusy, match="this API key's share"),
            a(LOOPBACK, time.monotonic() + 0.3, notes.append),
        ):
            pass
        assert any("this API key's checks hold 3" in note for note in notes), notes
        started = time.monotonic()
        with b(LOOPBACK, time.monotonic() + 5, lambda _: None):
            assert time.monotonic() - started < 0.2
            assert connection.zcard(KEY) == limit
    assert connection.zcard(KEY) == 0
