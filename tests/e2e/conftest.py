"""End-to-end fixtures: real gunicorn, real ``smtpcheck worker`` processes,
a real redis-server and real SMTP targets, all on 127.0.0.1.

Every process these fixtures start carries ``SMTPCHECK_E2E_RUN=<token>`` in
its environment; whatever is still running with that token when the session
ends is killed, and the test that left it fails loudly in ``leftovers``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from smtpcheck.embedded_redis import EmbeddedRedis, free_port
from smtpcheck.redis_client import connect
from tests.dns_server import DNSServer
from tests.smtp_servers import Certificates, ScriptedServer, SMTPTarget

RUN_TOKEN = uuid.uuid4().hex
RUN_MARKER = f"SMTPCHECK_E2E_RUN={RUN_TOKEN}"
API_KEY = "e2e-" + uuid.uuid4().hex
API_KEY_NAME = "e2e"
SECRET_KEY = "e2e-secret-" + uuid.uuid4().hex
SMTPCHECK = [sys.executable, "-m", "cli"]


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------


def processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose environment or command line contains ``text``."""
    found = []
    needle = text.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        for name in ("environ", "cmdline"):
            try:
                data = (entry / name).read_bytes()
            except OSError:
                continue
            if needle in data:
                with contextlib.suppress(OSError):
                    state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
                    if state != "Z":  # a zombie is gone, only not yet reaped
                        found.append(int(entry.name))
                break
    return found


def children_of(pid: int) -> list[int]:
    """Pids of the live (not zombie) child processes of ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state, parent = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            except (OSError, ValueError):
                continue
            if int(parent) == pid and state != "Z":
                found.append(int(entry.name))
    return found


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [pid for pid in alive if pid in processes_mentioning(RUN_MARKER)]
    return alive


@dataclass
class Proc:
    """A child process in its own session, its output in a log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        self.log_file = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-6000:]
        return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        self.log_file.close()
        return process.returncode


#: What the local resolver knows: the PTR of 127.0.0.1 and its forward check.
#: The service never asks a resolver outside this machine, so a test does not
#: wait on one that is slow or unreachable.
LOCAL_ZONE = {
    "1.0.0.127.in-addr.arpa.": {"PTR": ["mail.local.test."]},
    "mail.local.test.": {"A": ["127.0.0.1"]},
}


@pytest.fixture(scope="session")
def e2e_dns() -> Iterator[DNSServer]:
    server = DNSServer(LOCAL_ZONE).start()
    try:
        yield server
    finally:
        server.stop()


def base_env(
    tmp: Path, redis_url: str | None, allowed_ports: list[int], dns: DNSServer
) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SMTPCHECK_", "REDIS_URL", "GUNICORN_"))
    }
    env.update(
        {
            "SMTPCHECK_E2E_RUN": RUN_TOKEN,
            "SMTPCHECK_SECRET_KEY": SECRET_KEY,
            "SMTPCHECK_API_KEYS": f"{API_KEY_NAME}:{API_KEY}",
            "SMTPCHECK_ALLOW_NETWORKS": "127.0.0.0/8",
            "SMTPCHECK_ALLOWED_PORTS": ",".join(str(p) for p in allowed_ports),
            "SMTPCHECK_HELO_NAME": "checker.local.test",
            "SMTPCHECK_DNS_SERVERS": f"127.0.0.1:{dns.port}",
            # All targets are 127.0.0.1; these tests are not about limits.
            "SMTPCHECK_RATE_LIMIT": "10000/minute",
            "SMTPCHECK_MAX_CONCURRENT_PER_TARGET": "100",
            "SMTPCHECK_MAX_CONCURRENT_PER_KEY": "100",
            "SMTPCHECK_DATA_DIR": str(tmp / "data"),
            "SMTPCHECK_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


# ---------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip()

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


@dataclass
class Client:
    base: str
    api_key: str | None = API_KEY

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        host, _, port = self.base.removeprefix("http://").partition(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
        sent = dict(headers or {})
        if self.api_key:
            sent.setdefault("Authorization", f"Bearer {self.api_key}")
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        try:
            connection.request(method, path, body=payload, headers=sent)
            reply = connection.getresponse()
            data = reply.read()
            return Response(reply.status, {k.lower(): v for k, v in reply.getheaders()}, data)
        finally:
            connection.close()

    def submit(self, body: Mapping[str, Any]) -> str:
        reply = self.request("POST", "/v1/checks", dict(body))
        assert reply.status == 202, (reply.status, reply.text)
        return str(reply.json()["id"])

    def wait(self, check_id: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            wait = max(1, min(30, int(deadline - time.monotonic())))
            reply = self.request("GET", f"/v1/checks/{check_id}?wait={wait}", timeout=wait + 15)
            assert reply.status == 200, (reply.status, reply.text)
            job: dict[str, Any] = reply.json()
            if job["status"] in ("finished", "failed", "canceled") or time.monotonic() > deadline:
                return job


def wait_http_ready(url: str, proc: Proc | None = None, timeout: float = 30.0) -> None:
    client = Client(url, api_key=None)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited at start:\n{proc.log()}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if client.request("GET", "/readyz", timeout=2).status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url}/readyz not ready in {timeout}s:\n{proc.log() if proc else ''}")


def worker_count(redis_url: str, vantage: str = "default") -> int:
    client = connect(redis_url)  # redis+sentinel:// too
    try:
        return int(client.scard(f"rq:workers:vantage:{vantage}"))
    finally:
        client.close()


def wait_workers(redis_url: str, count: int, proc: Proc, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while worker_count(redis_url) < count:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited at start:\n{proc.log()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} workers not registered in {timeout}s:\n{proc.log()}")
        time.sleep(0.1)


# ---------------------------------------------------------------------------
# The service: gunicorn + workers
# ---------------------------------------------------------------------------


@dataclass
class Service:
    tmp: Path
    env: dict[str, str]
    redis_url: str
    procs: list[Proc] = field(default_factory=list)
    api: Proc | None = None
    workers: Proc | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def client(self) -> Client:
        return Client(self.url)

    def start_api(self, gunicorn_workers: int = 2) -> Service:
        api = self._launch_api(gunicorn_workers)
        wait_http_ready(self.url, api)
        return self

    def start_workers(self, processes: int = 2) -> Service:
        pool = self._launch_workers(processes)
        wait_workers(self.redis_url, processes, pool)
        return self

    def start(self, gunicorn_workers: int = 2, workers: int = 2) -> Service:
        """The API and the workers side by side: each takes a second or more to start."""
        api, pool = self._launch_api(gunicorn_workers), self._launch_workers(workers)
        wait_http_ready(self.url, api)
        wait_workers(self.redis_url, workers, pool)
        return self

    def _launch_api(self, gunicorn_workers: int) -> Proc:
        self.port = free_port()
        argv = [*SMTPCHECK, "api", "--workers", str(gunicorn_workers)]
        argv += ["--bind", f"127.0.0.1:{self.port}"]
        self.api = Proc("api", argv, self.env, self.tmp / "api.log").start()
        self.procs.append(self.api)
        return self.api

    def _launch_workers(self, processes: int) -> Proc:
        argv = [*SMTPCHECK, "worker", "--processes", str(processes)]
        self.workers = Proc("workers", argv, self.env, self.tmp / "workers.log").start()
        self.procs.append(self.workers)
        return self.workers

    def stop(self) -> None:
        """Every process stopped at once, each waited for on a thread of its own."""
        procs = list(reversed(self.procs))
        if procs:
            with ThreadPoolExecutor(len(procs)) as pool:
                list(pool.map(Proc.stop, procs))
        self.procs.clear()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log()}" for p in self.procs)


@pytest.fixture(scope="session")
def e2e_certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return Certificates(tmp_path_factory.mktemp("e2e-tls"))


@dataclass
class Targets:
    plain: SMTPTarget
    starttls: SMTPTarget
    stall: ScriptedServer
    stall_connections: list[float]
    dns: DNSServer

    @property
    def ports(self) -> list[int]:
        return [self.plain.port, self.starttls.port, self.stall.port]


def stall_after_banner(connections: list[float]) -> Callable[[Any], None]:
    """A server that greets, then never answers again (until the client goes)."""

    def script(sock: Any) -> None:
        connections.append(time.monotonic())
        sock.sendall(b"220 stall.local.test ESMTP\r\n")
        while sock.recv(4096):
            pass

    return script


@pytest.fixture(scope="module")
def targets(e2e_certificates: Certificates, e2e_dns: DNSServer) -> Iterator[Targets]:
    connections: list[float] = []
    plain = SMTPTarget(e2e_certificates, tls="none").start()
    starttls = SMTPTarget(e2e_certificates, tls="starttls").start()
    stall = ScriptedServer(stall_after_banner(connections)).start()
    try:
        yield Targets(plain, starttls, stall, connections, e2e_dns)
    finally:
        stall.stop()
        starttls.stop()
        plain.stop()


@pytest.fixture(scope="module")
def service(
    redis_server: EmbeddedRedis, targets: Targets, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """gunicorn and two ``smtpcheck worker`` processes on the session Redis."""
    with running_service(
        redis_server.url, tmp_path_factory.mktemp("service"), targets.ports, targets.dns
    ) as svc:
        yield svc


@contextlib.contextmanager
def running_service(
    redis_url: str,
    tmp: Path,
    ports: list[int],
    dns: DNSServer,
    *,
    gunicorn_workers: int = 2,
    workers: int = 2,
) -> Iterator[Service]:
    """A fresh Redis database, gunicorn and workers allowed to dial ``ports``; logs on failure."""
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    client.close()
    svc = Service(tmp, base_env(tmp, redis_url, ports, dns), redis_url)
    try:
        svc.start(gunicorn_workers, workers)
        yield svc
    except BaseException:
        print(svc.logs())
        raise
    finally:
        svc.stop()


@pytest.fixture(scope="session", autouse=True)
def leftovers() -> Iterator[None]:
    """Fail the session if any process started here outlived its fixture."""
    yield
    pids = processes_mentioning(RUN_MARKER)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not pids, f"processes left running by the e2e tests: {pids}"
