"""Two vantages on two networks of their own, one with port 25 blocked.

The mission's central case: a server checked from a network whose provider
drops outbound port 25, and from one that does not. Each worker pool runs in
its own network namespace (tests/network_namespaces.py) with its own
address; Redis, the API, a DNS server and an aiosmtpd target on port 25 live
in a hub both reach; nftables in one vantage drops every packet to port 25.
``vantage: "all"`` through the real API must show the two side by side.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from smtpcheck.embedded_redis import redis_server_binary
from tests.dns_server import DNSServer
from tests.e2e.conftest import SMTPCHECK, Client, Proc, base_env
from tests.network_namespaces import SERVICES, TARGET, Namespaces, unavailable

pytestmark = pytest.mark.e2e

REDIS_PORT = 6379  # the hub is a namespace of its own: no other test can hold its ports
API_PORT = 8025
VANTAGE = {"a": "open-network", "b": "port25-blocked"}
ZONE = {
    "25.0.18.198.in-addr.arpa.": {"PTR": ["mx.netns.test."]},
    "mx.netns.test.": {"A": [TARGET]},
}


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    made = Namespaces().create()
    try:
        yield made
    finally:
        made.delete()


def wait_for(condition: Callable[[], bool], timeout: float, what: str, procs: list[Proc]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for proc in procs:
            if not proc.alive():
                raise AssertionError(f"{proc.name} exited while waiting for {what}:\n{proc.log()}")
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name} ---\n{p.log()}" for p in procs)
            raise AssertionError(f"not {what} within {timeout:.0f}s\n{logs}")
        time.sleep(0.1)


def answers(namespaces: Namespaces, port: int) -> bool:
    def attempt() -> bool:
        with contextlib.suppress(OSError), socket.create_connection((SERVICES, port), 1):
            return True
        return False

    return namespaces.in_hub(attempt)


def smtp_answers(namespaces: Namespaces) -> bool:
    def attempt() -> bool:
        with contextlib.suppress(OSError), socket.create_connection((TARGET, 25), 1) as sock:
            return sock.recv(64).startswith(b"220")
        return False

    return namespaces.in_hub(attempt)


def test_a_blocked_port_shows_as_the_vantages_disagreeing(
    namespaces: Namespaces, tmp_path: Path
) -> None:
    procs: list[Proc] = []
    dns = namespaces.in_hub(lambda: DNSServer(ZONE, host=SERVICES).start())

    def start(name: str, namespace: str, argv: list[str], env: dict[str, str]) -> Proc:
        proc = Proc(name, namespaces.argv(namespace, argv), env, tmp_path / f"{name}.log")
        procs.append(proc.start())
        return proc

    try:
        env = base_env(tmp_path, f"redis://{SERVICES}:{REDIS_PORT}/0", [25], dns)
        env["SMTPCHECK_ALLOW_NETWORKS"] = "198.18.0.0/24"
        start(
            "redis",
            namespaces.hub,
            [
                redis_server_binary(), "--bind", SERVICES, "--port", str(REDIS_PORT),
                "--save", "", "--appendonly", "no", "--protected-mode", "no",
                "--dir", str(tmp_path),
            ],
            env,
        )  # fmt: skip
        start(
            "target",
            namespaces.hub,
            [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"{TARGET}:25", "-c",
             "aiosmtpd.handlers.Sink"],
            env,
        )  # fmt: skip
        wait_for(lambda: answers(namespaces, REDIS_PORT), 15, "Redis answering", procs)
        start(
            "api",
            namespaces.hub,
            [*SMTPCHECK, "api", "--workers", "1", "--bind", f"{SERVICES}:{API_PORT}"],
            env,
        )
        for key, vantage in VANTAGE.items():
            start(
                f"workers-{vantage}",
                namespaces.vantages[key],
                [*SMTPCHECK, "worker", "--vantage", vantage, "--processes", "1"],
                env,
            )
        namespaces.drop_port("b", 25)

        client = Client(f"http://{SERVICES}:{API_PORT}")

        def call(method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
            def send() -> Any:
                return client.request(method, path, body, timeout=timeout)

            return namespaces.in_hub(send)

        def ready() -> bool:
            with contextlib.suppress(OSError, http.client.HTTPException):
                reply = call("GET", "/v1/vantages", timeout=2)
                if reply.status == 200:
                    live = {v["name"]: v["workers"] for v in reply.json()}
                    return all(live.get(name, 0) >= 1 for name in VANTAGE.values())
            return False

        wait_for(lambda: smtp_answers(namespaces), 15, "the target greeting", procs)
        wait_for(ready, 30, "both vantages with a live worker", procs)

        reply = call(
            "POST",
            "/v1/checks",
            {
                "host": TARGET,
                "port": 25,
                "vantage": "all",
                "tls": "none",
                "stop_after": "banner",
                "timeouts": {"connect": 1, "command": 5, "total": 15},
            },
        )
        assert reply.status == 202, reply.text
        check_id = reply.json()["id"]
        deadline = time.monotonic() + 40
        while True:
            job = call("GET", f"/v1/checks/{check_id}?wait=10", timeout=25).json()
            if job["status"] == "finished" or time.monotonic() > deadline:
                break
        assert job["status"] == "finished", job

        rows = {row["vantage"]: row for row in job["vantages"]}
        assert set(rows) == set(VANTAGE.values())
        opened, blocked = rows[VANTAGE["a"]], rows[VANTAGE["b"]]
        assert opened["ok"] is True and opened["outcome"] == "ok", opened
        assert blocked["ok"] is False and blocked["outcome"] == "connect_timeout", blocked

        # Each vantage's own check says where its packets came from: the
        # blocked one too (the kernel chose its SYN's source address).
        sources = {}
        for key, row in (("a", opened), ("b", blocked)):
            own = call("GET", f"/v1/checks/{row['id']}").json()
            assert own["vantage"] == VANTAGE[key]
            assert own["result"]["target"]["address"] == TARGET
            sources[VANTAGE[key]] = own["result"]["target"]["source"]
        assert sources == {VANTAGE[k]: namespaces.source(k) for k in VANTAGE}, sources

        summary = job["result"]["summary"]
        assert job["result"]["ok"] is False
        assert "disagree" in summary, summary
        assert f"connect_timeout from {VANTAGE['b']}" in summary, summary
        assert f"ok from {VANTAGE['a']}" in summary, summary
        assert "blocked port" in summary, summary
        print(f"\nvantages side by side: {summary}; sources {sources}")
    finally:
        for proc in reversed(procs):
            proc.stop()
        namespaces.in_hub(dns.stop)
