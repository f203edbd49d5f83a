"""``smtpcheck dev``: the supervisor of Redis, the API and workers on one machine."""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from cli.client import http_ready
from cli.devlock import SUPERVISED, DevLock, leftovers, pid_alive, process_mentions
from cli.errors import EXIT_NOT_OK, EXIT_OK, EXIT_USAGE, err
from cli.parser import DEV_WORKER_PROCESSES
from smtpcheck.config import Settings

READY_TIMEOUT = 60.0
LEFTOVER_GRACE = 10.0  # seconds leftovers get to exit on SIGTERM before SIGKILL


def read_or_create_secret(path: Path, nbytes: int = 32) -> str:
    """A random secret kept in ``path`` (mode 0600), created on first use."""
    with contextlib.suppress(FileNotFoundError):
        value = path.read_text().strip()
        if value:
            return value
    value = secrets.token_urlsafe(nbytes)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    os.replace(tmp, path)
    return value


def split_bind(bind: str) -> tuple[str, int]:
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"SMTPCHECK_BIND={bind!r} is not HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def port_in_use(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn does
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class Child:
    """A process started by ``smtpcheck dev`` in its own session."""

    def __init__(self, role: str, argv: list[str], env: Mapping[str, str]) -> None:
        self.role = role
        self.process = subprocess.Popen(
            argv, env=dict(env), stdin=subprocess.DEVNULL, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def signal(self, sig: int) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, sig)

    def wait(self, timeout: float) -> bool:
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)


def curl_example(base: str, key: str) -> str:
    """POST a check, then watch it: lines that work as pasted into bash or zsh."""
    auth = f'-H "Authorization: Bearer {key}"'
    body = '{"host": "smtp.gmail.com", "port": 587, "tls": "starttls", "stop_after": "tls"}'
    # The id, or the service's problem+json on stderr (then the id is empty).
    extract = (
        "python3 -c 'import json,sys; r=json.load(sys.stdin); "
        'print(r["id"]) if "id" in r else sys.exit(json.dumps(r, indent=2))\''
    )
    return "\n".join(
        [
            f"  id=$(curl -s -X POST {base}/v1/checks {auth} \\",
            f"        -H 'Content-Type: application/json' -d '{body}' | {extract})",
            f'  curl -N "{base}/v1/checks/$id/events" {auth}      # as it happens',
            f'  curl -s "{base}/v1/checks/$id/transcript" {auth}  # as text',
        ]
    )


def command_path() -> tuple[str, str | None]:
    """How to type ``smtpcheck``: its full path, and the PATH export that shortens it."""
    script = Path(sys.executable).parent / "smtpcheck"
    if not script.exists():
        return "smtpcheck", None
    if shutil.which("smtpcheck") == str(script):
        return "smtpcheck", None  # already on PATH
    return str(script), f'export PATH="{script.parent}:$PATH"'


class Dev:
    """``smtpcheck dev``: Redis, API and workers, started and stopped together."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir.resolve()
        self.lock = DevLock(self.data_dir / "dev.lock")
        self.children: list[Child] = []
        self.redis: Any = None  # EmbeddedRedis, imported lazily
        self.stop_requested = 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop_requested += 1
        if self.stop_requested > 1:
            err("stopping (please wait; checks in flight get a few seconds)")

    def run(self) -> int:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            host, port = split_bind(self.settings.bind)
        except (OSError, ValueError) as exc:
            err(str(exc))
            return EXIT_USAGE
        acquired, pids = self.lock.acquire()
        if not acquired:
            holder = pids.get("dev")
            err(
                f"smtpcheck dev is already running (pid {holder or '?'}) with data folder "
                f"{self.data_dir}; stop it with Ctrl-C in its terminal"
                + (f" or `kill {holder}`" if holder else "")
                + ", or set SMTPCHECK_DATA_DIR to run another one."
            )
            return EXIT_NOT_OK
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            self._stop_leftovers(pids)
            return self._run(host, port)
        finally:
            self._stop_all()
            self.lock.release()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop_leftovers(self, pids: Mapping[str, int]) -> None:
        """Stop what a killed ``smtpcheck dev`` left running with this data folder."""
        left = leftovers(self.data_dir)
        for role, pid in pids.items():
            if role == "dev" or pid == os.getpid() or pid in left or not pid_alive(pid):
                continue
            if process_mentions(pid, str(self.data_dir)):  # else the pid was reused
                left[pid] = role
        if not left:
            return
        for pid, what in sorted(left.items()):
            err(f"stopping {what} (pid {pid}), left behind by an earlier smtpcheck dev")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + LEFTOVER_GRACE
        while any(pid_alive(pid) for pid in left) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in left:
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def _run(self, host: str, port: int) -> int:
        try:
            in_use = port_in_use(host, port)
        except OSError as exc:
            err(f"cannot listen on {host}:{port} (SMTPCHECK_BIND): {exc.strerror or exc}")
            return EXIT_USAGE
        if in_use:
            err(
                f"the API address {host}:{port} is already in use by another program; "
                "stop it, or choose another address, e.g. SMTPCHECK_BIND=127.0.0.1:8026"
            )
            return EXIT_NOT_OK
        secret_key = self.settings.secret_key or read_or_create_secret(self.data_dir / "secret_key")
        api_key = read_or_create_secret(self.data_dir / "api_key", 24)
        redis_url = self.settings.redis_url or self._start_redis()
        if redis_url is None:
            return EXIT_NOT_OK
        taken = {item.partition(":")[0].strip() for item in self.settings.api_keys.split(",")}
        name = next(n for n in ("dev", "smtpcheck-dev", f"dev-{os.getpid()}") if n not in taken)
        keys = [k for k in (self.settings.api_keys, f"{name}:{api_key}") if k]
        env = dict(os.environ)
        env.update(
            REDIS_URL=redis_url,
            SMTPCHECK_SECRET_KEY=secret_key,
            SMTPCHECK_API_KEYS=",".join(keys),
            SMTPCHECK_BIND=f"{host}:{port}",
            SMTPCHECK_DATA_DIR=str(self.data_dir),
        )
        env[SUPERVISED] = str(self.data_dir)  # how a later dev finds them if this one is killed
        me = [sys.executable, "-m", "cli"]
        if self.stop_requested:
            return EXIT_OK
        self.children.append(Child("api", [*me, "api", "--workers", "2"], env))
        self.children.append(
            Child("workers", [*me, "worker", "--processes", str(DEV_WORKER_PROCESSES)], env)
        )
        self._record_pids()
        base = f"http://{url_host(host)}:{port}"
        if not self._wait_ready(base):
            return EXIT_OK if self.stop_requested else EXIT_NOT_OK
        self._print_banner(base, api_key, redis_url)
        while not self.stop_requested:
            for child in self.children:
                if child.process.poll() is not None:
                    code = child.process.returncode
                    err(f"the {child.role} process exited (status {code}); stopping")
                    return EXIT_NOT_OK
            if self.redis is not None and self.redis.process.poll() is not None:
                err("the embedded redis-server exited; stopping")
                return EXIT_NOT_OK
            time.sleep(0.2)
        print("\nsmtpcheck dev: stopping ...", file=sys.stderr, flush=True)
        return EXIT_OK

    def _start_redis(self) -> str | None:
        from smtpcheck.embedded_redis import EmbeddedRedis, free_port

        port_file = self.data_dir / "redis.port"
        port = None
        with contextlib.suppress(OSError, ValueError):
            port = int(port_file.read_text().strip())
        if port is None or port_in_use("127.0.0.1", port):
            port = free_port()
        self.redis = EmbeddedRedis(self.data_dir / "redis", port)
        try:
            self.redis.start()
        except RuntimeError as exc:
            err(f"cannot start the embedded redis-server: {exc}")
            self.redis = None
            return None
        port_file.write_text(f"{port}\n")
        self._record_pids()
        url: str = self.redis.url
        return url

    def _record_pids(self) -> None:
        pids = {"dev": os.getpid()}
        if self.redis is not None and self.redis.process is not None:
            pids["redis"] = self.redis.process.pid
        for child in self.children:
            pids[child.role] = child.pid
        self.lock.write(pids)

    def _wait_ready(self, base: str) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.stop_requested:
                return False
            for child in self.children:
                if child.process.poll() is not None:
                    code = child.process.returncode
                    err(f"the {child.role} process exited at start (status {code})")
                    return False
            if http_ready(base + "/readyz"):
                return True
            time.sleep(0.2)
        err(f"the API did not become ready at {base}/readyz within {READY_TIMEOUT:.0f}s")
        return False

    def _print_banner(self, base: str, api_key: str, redis_url: str) -> None:
        from workers.pool import DEFAULT_CONCURRENCY

        redis_note = "from REDIS_URL"
        command, on_path = command_path()
        if self.redis is not None:
            redis_note = f"embedded, data in {self.data_dir / 'redis'}"
        lines = [
            "",
            f"smtpcheck dev is up: {base}",
            "",
            f"  API      {base}   (spec: {base}/openapi.yaml)",
            f"  Web page {base}/   (API reference: {base}/docs)",
            f"  API key  {api_key}   (kept in {self.data_dir / 'api_key'})",
            f"  Redis    {redis_url}   ({redis_note})",
            f"  Workers  {DEV_WORKER_PROCESSES} processes x {DEFAULT_CONCURRENCY} checks at once, "
            f"for vantage {self.settings.vantage!r}",
            "",
            "Try it (POST a check, then watch its transcript arrive):",
            "",
            curl_example(base, api_key),
            "",
            "or with the command-line client:",
            "",
            f"  export SMTPCHECK_URL={base} SMTPCHECK_API_KEY={api_key}",
            f"  {command} check smtp.gmail.com --port 587 --tls starttls --stop-after tls",
            f"  {command} list",
            "",
        ]
        if on_path is not None:
            lines += ["To type just `smtpcheck`, put it on your PATH:", "", f"  {on_path}", ""]
        if not self.settings.allow_networks:
            lines += [
                "Local targets (loopback, private networks) are refused by the target policy;",
                "to check a server on this machine, restart with",
                "SMTPCHECK_ALLOW_NETWORKS=127.0.0.0/8 (and SMTPCHECK_ALLOWED_PORTS=25,2525,...",
                "or a range such as 2601-2614, if it listens on another port).",
                "",
            ]
        lines.append("Ctrl-C stops everything.")
        print("\n".join(lines), flush=True)

    def _stop_all(self) -> None:
        api = [c for c in self.children if c.role == "api"]
        workers = [c for c in self.children if c.role != "api"]
        for child in api:
            child.signal(signal.SIGINT)  # gunicorn: quick shutdown
        for child in workers:
            child.signal(signal.SIGTERM)  # warm: finish the check in hand
        for child in api:
            if not child.wait(10):
                child.kill_group()
        for child in workers:
            if not child.wait(10):
                child.signal(signal.SIGTERM)  # a second signal: cold shutdown
                if not child.wait(5):
                    child.kill_group()
        self.children.clear()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None


def cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    return Dev(settings).run()
