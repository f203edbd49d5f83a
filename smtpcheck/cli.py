"""The ``smtpcheck`` command: ``dev``, ``api``, ``worker`` and ``check``.

``service`` and ``workers`` are imported lazily, inside the command that
needs them, so ``smtpcheck check`` against a remote service never loads the
SMTP engine and ``smtpcheck worker`` never loads Flask.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import getpass
import ipaddress
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from smtpcheck.config import ConfigError, Settings
from smtpcheck.contract import ALL_VANTAGES, PROBES, VANTAGE_PATTERN

PROG = "smtpcheck"

EXIT_OK = 0
EXIT_NOT_OK = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

DEV_WORKER_PROCESSES = 2
READY_TIMEOUT = 60.0


def err(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Argument parsing
# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Remote SMTP checks: a REST API, its workers, and a command-line client.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = commands.add_parser(
        "dev",
        help="run everything on this machine (embedded Redis, API, workers)",
        description="Run Redis (embedded unless REDIS_URL is set), the API and "
        f"{DEV_WORKER_PROCESSES} workers; Ctrl-C stops them all.",
    )
    dev.set_defaults(func=cmd_dev)

    api = commands.add_parser("api", help="run the API under gunicorn")
    api.add_argument("--workers", type=positive_int, help="gunicorn worker processes")
    api.add_argument("--threads", type=positive_int, default=8, help="threads per process")
    api.add_argument("--bind", help="listen address (default: SMTPCHECK_BIND or 127.0.0.1:8025)")
    api.set_defaults(func=cmd_api)

    worker = commands.add_parser("worker", help="run RQ workers for one vantage point")
    worker.add_argument("--vantage", help="vantage point name (default: SMTPCHECK_VANTAGE)")
    worker.add_argument("--processes", type=positive_int, default=2, help="worker processes")
    worker.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    worker.add_argument(
        "--worker-class",
        choices=("simple", "fork"),
        default="simple",
        help="simple: run checks in the worker process (default); fork: one process per check",
    )
    worker.set_defaults(func=cmd_worker)

    check = commands.add_parser(
        "check",
        help="run one SMTP check and print the transcript",
        description="Submit a check to a running service (or run it here with --local), "
        "wait for it and print the transcript and the verdict. Exit status: 0 ok, "
        "1 the check ran and was not ok, 2 bad input, 3 service unreachable.",
    )
    check.add_argument("host", help="server host name or IP; with --mx, a mail domain")
    check.add_argument("--port", type=int, help="TCP port (default 25)")
    check.add_argument("--tls", choices=("none", "starttls", "implicit", "auto"))
    check.add_argument("--tls-verify", action="store_true", help="fail on an untrusted certificate")
    check.add_argument("--helo", help="name to send in EHLO/HELO")
    check.add_argument("--auth-user", help="AUTH user name")
    check.add_argument(
        "--auth-password", help="AUTH password (asked for when --auth-user is given without it)"
    )
    check.add_argument(
        "--auth-mechanism", type=str.upper, choices=("AUTO", "PLAIN", "LOGIN", "CRAM-MD5")
    )
    check.add_argument("--from", dest="mail_from", help='envelope sender ("" for <>)')
    check.add_argument(
        "--to", dest="rcpt_to", action="append", help="envelope recipient (repeatable)"
    )
    check.add_argument("--data-file", help="whole message to send after DATA; - reads stdin")
    check.add_argument("--subject", help="build a message with this subject")
    check.add_argument("--body", help="build a message with this body")
    check.add_argument(
        "--stop-after",
        choices=("connect", "banner", "ehlo", "tls", "auth", "mail", "rcpt", "data"),
        help="last stage to run",
    )
    check.add_argument("--timeout", type=float, help="deadline for the whole check (seconds)")
    check.add_argument("--connect-timeout", type=float, help="TCP connect deadline (seconds)")
    check.add_argument("--command-timeout", type=float, help="per-reply deadline (seconds)")
    check.add_argument("--ip-version", type=int, choices=(4, 6))
    check.add_argument("--mx", action="store_true", help="HOST is a mail domain: check its MX")
    check.add_argument(
        "--mx-hosts",
        choices=("first", "all"),
        help="with --mx: stop at the first MX host that answers (default) or check all",
    )
    check.add_argument(
        "--probe",
        dest="probes",
        action="append",
        choices=PROBES,
        help="extra short dialogue: open_relay, starttls_required, vrfy, expn (repeatable)",
    )
    check.add_argument(
        "--retry-temporary",
        action="store_true",
        help="re-run a check that ends in a 4xx (greylisting); service only",
    )
    check.add_argument("--vantage", help="worker pool to run the check from")
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.add_argument("--local", action="store_true", help="run here, with no service")
    check.add_argument("--url", help="service URL (default: SMTPCHECK_URL)")
    check.add_argument("--api-key", help="API key (default: SMTPCHECK_API_KEY)")
    check.set_defaults(func=cmd_check)
    return parser


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``smtpcheck`` console script."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already reported
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        err(f"configuration error: {exc}")
        return EXIT_USAGE
    func: Callable[[argparse.Namespace, Settings], int] = args.func
    try:
        return func(args, settings)
    except KeyboardInterrupt:
        return 130


# ---------------------------------------------------------------------------
# smtpcheck api
# ---------------------------------------------------------------------------


def default_api_workers() -> int:
    """gunicorn processes: one per core, at least two (threads cover the waiting)."""
    return max(2, min(os.cpu_count() or 1, 8))


def gunicorn_argv(bind: str, workers: int, threads: int, log_level: str) -> list[str]:
    return [
        sys.executable, "-m", "gunicorn",
        "--worker-class", "gthread",
        "--threads", str(threads),
        "--workers", str(workers),
        "--bind", bind,
        "--no-control-socket",
        "--config", "python:service.server",
        "--log-level", log_level.lower(),
        "--error-logfile", "-",
        "service:create_app()",
    ]  # fmt: skip


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    argv = gunicorn_argv(
        args.bind or settings.bind,
        args.workers or default_api_workers(),
        args.threads,
        settings.log_level,
    )
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from service.server import metrics_dir

        # prometheus-client's multiprocess mode: every gunicorn process adds up.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir()
    sys.stdout.flush()
    sys.stderr.flush()
    # gunicorn's master takes over this pid, and with it the signals sent to it.
    os.execv(sys.executable, argv)  # noqa: S606
    return EXIT_OK  # pragma: no cover


# ---------------------------------------------------------------------------
# smtpcheck worker
# ---------------------------------------------------------------------------


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from workers.pool import run_pool

    vantage = args.vantage or settings.vantage
    if vantage == ALL_VANTAGES or not re.fullmatch(VANTAGE_PATTERN, vantage):
        err(
            f"{vantage!r} cannot name a vantage: use letters, digits, '.', '_' and '-' "
            f"(and not {ALL_VANTAGES!r}, which means every vantage)"
        )
        return EXIT_USAGE
    if not settings.redis_url:
        err("REDIS_URL is not set; using redis://127.0.0.1:6379/0")
    if not settings.secret_key:
        err("SMTPCHECK_SECRET_KEY is not set: checks with AUTH cannot be run")
    return run_pool(
        settings,
        vantage=vantage,
        processes=args.processes,
        burst=args.burst,
        kind=args.worker_class,
    )


# ---------------------------------------------------------------------------
# smtpcheck dev
# ---------------------------------------------------------------------------


class DevLock:
    """``data_dir/dev.lock``: an flock held while ``smtpcheck dev`` runs.

    The file names the pids of the holder and of its children. The kernel
    drops the flock when its holder dies, so a lock left by a dead process is
    simply taken over (and any children it left behind are stopped first).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> tuple[bool, dict[str, int]]:
        """(True, pids the previous holder left) or (False, the live holder's pids)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                return False, self.read()
            raise
        self.fd = fd
        left = self.read()
        self.write({"dev": os.getpid()})
        return True, left

    def read(self) -> dict[str, int]:
        pids: dict[str, int] = {}
        with contextlib.suppress(OSError):
            for line in self.path.read_text().splitlines():
                role, _, pid = line.partition(" ")
                if pid.strip().isdigit():
                    pids[role] = int(pid)
        return pids

    def write(self, pids: Mapping[str, int]) -> None:
        assert self.fd is not None
        text = "".join(f"{role} {pid}\n" for role, pid in pids.items())
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, text.encode(), 0)

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self.fd)
        self.fd = None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_mentions(pid: int, text: str) -> bool:
    """Whether a live process's command line or environment contains ``text``."""
    for name in ("cmdline", "environ"):
        with contextlib.suppress(OSError):
            if text.encode() in Path(f"/proc/{pid}/{name}").read_bytes():
                return True
    return False


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


def http_ready(url: str, timeout: float = 2.0) -> bool:
    try:
        with _opener(url).open(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


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
    auth = f'-H "Authorization: Bearer {key}"'
    body = '{"host": "smtp.gmail.com", "port": 587, "tls": "starttls", "stop_after": "tls"}'
    extract = "python3 -c 'import json,sys; print(json.load(sys.stdin)[\"id\"])'"
    return "\n".join(
        [
            f"  id=$(curl -s -X POST {base}/v1/checks {auth} \\",
            f"        -H 'Content-Type: application/json' -d '{body}' | {extract})",
            f'  curl -s "{base}/v1/checks/$id?wait=30" {auth}',
            f'  curl -s "{base}/v1/checks/$id/transcript" {auth}',
        ]
    )


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
        for role, pid in pids.items():
            if role == "dev" or pid == os.getpid() or not pid_alive(pid):
                continue
            if not process_mentions(pid, str(self.data_dir)):
                continue  # the pid was reused by something else
            err(f"stopping {role} (pid {pid}) left behind by an earlier smtpcheck dev")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)

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
        me = [sys.executable, "-c", "import sys; from smtpcheck.cli import main; sys.exit(main())"]
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
        redis_note = "from REDIS_URL"
        if self.redis is not None:
            redis_note = f"embedded, data in {self.data_dir / 'redis'}"
        lines = [
            "",
            f"smtpcheck dev is up: {base}",
            "",
            f"  API      {base}   (spec: {base}/openapi.yaml)",
            f"  API key  {api_key}   (kept in {self.data_dir / 'api_key'})",
            f"  Redis    {redis_url}   ({redis_note})",
            f"  Workers  {DEV_WORKER_PROCESSES} for vantage {self.settings.vantage!r}",
            "",
            "Try it (POST a check, wait for it, read the transcript):",
            "",
            curl_example(base, api_key),
            "",
            "or with the command-line client:",
            "",
            f"  export SMTPCHECK_URL={base} SMTPCHECK_API_KEY={api_key}",
            "  smtpcheck check smtp.gmail.com --port 587 --tls starttls --stop-after tls",
            "",
        ]
        if not self.settings.allow_networks:
            lines += [
                "Local targets (loopback, private networks) are refused by the target policy;",
                "to check a server on this machine, restart with",
                "SMTPCHECK_ALLOW_NETWORKS=127.0.0.0/8 (and SMTPCHECK_ALLOWED_PORTS=25,2525,...",
                "if it listens on another port).",
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


# ---------------------------------------------------------------------------
# smtpcheck check
# ---------------------------------------------------------------------------


class UsageError(Exception):
    """Bad input: reported on stderr, exit status 2."""


class Unreachable(Exception):
    """The service could not be reached or could not serve: exit status 3."""


# Request field -> the option that sets it, for error messages.
OPTION_FOR_FIELD = {
    "host": "HOST",
    "port": "--port",
    "tls": "--tls",
    "tls_verify": "--tls-verify",
    "helo": "--helo",
    "auth.username": "--auth-user",
    "auth.password": "--auth-password",
    "auth.mechanism": "--auth-mechanism",
    "auth": "--auth-user",
    "mail_from": "--from",
    "rcpt_to": "--to",
    "data": "--data-file",
    "message": "--subject/--body",
    "message.subject": "--subject",
    "message.body": "--body",
    "stop_after": "--stop-after",
    "timeouts.total": "--timeout",
    "timeouts.connect": "--connect-timeout",
    "timeouts.command": "--command-timeout",
    "ip_version": "--ip-version",
    "mx": "--mx",
    "mx_hosts": "--mx-hosts",
    "probes": "--probe",
    "retry_temporary": "--retry-temporary",
    "vantage": "--vantage",
}


def build_request(args: argparse.Namespace) -> tuple[dict[str, Any], str | None]:
    """The check request (as the API takes it) and the AUTH password."""
    request: dict[str, Any] = {"host": args.host}
    for option, name in (
        ("port", "port"),
        ("tls", "tls"),
        ("helo", "helo"),
        ("mail_from", "mail_from"),
        ("rcpt_to", "rcpt_to"),
        ("stop_after", "stop_after"),
        ("ip_version", "ip_version"),
        ("vantage", "vantage"),
        ("mx_hosts", "mx_hosts"),
        ("probes", "probes"),
    ):
        value = getattr(args, option)
        if value is not None:
            request[name] = value
    if args.tls_verify:
        request["tls_verify"] = True
    if args.mx:
        request["mx"] = True
    if args.retry_temporary:
        request["retry_temporary"] = True
    password: str | None = None
    if args.auth_user is not None or args.auth_password is not None:
        password = args.auth_password
        if password is None:
            if not sys.stdin.isatty():
                raise UsageError("--auth-user needs --auth-password (no terminal to ask on)")
            password = getpass.getpass(f"Password for {args.auth_user}: ")
        auth: dict[str, Any] = {"username": args.auth_user or "", "password": password}
        if args.auth_mechanism:
            auth["mechanism"] = "auto" if args.auth_mechanism == "AUTO" else args.auth_mechanism
        request["auth"] = auth
    elif args.auth_mechanism:
        raise UsageError("--auth-mechanism needs --auth-user and --auth-password")
    if args.data_file is not None:
        if args.subject is not None or args.body is not None:
            raise UsageError("use either --data-file or --subject/--body, not both")
        request["data"] = read_message(args.data_file)
    elif args.subject is not None or args.body is not None:
        message: dict[str, Any] = {}
        if args.subject is not None:
            message["subject"] = args.subject
        if args.body is not None:
            message["body"] = args.body
        request["message"] = message
    timeouts = {
        name: value
        for name, value in (
            ("connect", args.connect_timeout),
            ("command", args.command_timeout),
            ("total", args.timeout),
        )
        if value is not None
    }
    if timeouts:
        request["timeouts"] = timeouts
    return request, password


def read_message(path: str) -> str:
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"--data-file: cannot read {path}: {exc.strerror}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"--data-file: {path} is not UTF-8 text") from None


def flatten_errors(messages: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """marshmallow's nested error messages as (field.path, message) pairs."""
    if isinstance(messages, Mapping):
        for key, value in messages.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            yield from flatten_errors(value, path)
    elif isinstance(messages, list | tuple):
        for item in messages:
            yield from flatten_errors(item, prefix)
    else:
        yield prefix or "request", str(messages)


def describe_field(path: str) -> str:
    """``rcpt_to.1`` -> ``--to (rcpt_to.1)``; unknown paths are returned as they are."""
    parts = path.split(".")
    for n in range(len(parts), 0, -1):
        option = OPTION_FOR_FIELD.get(".".join(p for p in parts[:n] if not p.isdigit()))
        if option:
            return f"{option} ({path})"
    return path


def report_invalid(messages: Any) -> None:
    for path, message in flatten_errors(messages):
        err(f"invalid {describe_field(path)}: {message}")


def validate_request(request: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    """The request as the service would normalize it; raises marshmallow's ValidationError.

    The schema is the service's own, built for ``settings``.
    """
    from service.schemas import build_schemas

    schema = build_schemas(settings).check_request()
    loaded: dict[str, Any] = schema.load(dict(request))
    return loaded


def permissive(settings: Settings) -> Settings:
    """Settings whose target policy lets everything through.

    A remote service applies its own operator's policy (ports, networks); the
    client checks only what no service would accept, and leaves the rest to it.
    """
    return settings.replace(
        allowed_ports=frozenset(range(1, 65536)),
        allow_networks=(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")),
    )


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    from marshmallow import ValidationError

    try:
        request, password = build_request(args)
    except UsageError as exc:
        err(str(exc))
        return EXIT_USAGE
    try:
        normalized = validate_request(request, settings if args.local else permissive(settings))
    except ValidationError as exc:
        report_invalid(exc.messages)
        if args.local and {"host", "port"} & set(exc.messages_dict):
            err(
                "(--local applies this machine's target policy: set SMTPCHECK_ALLOW_NETWORKS "
                "and SMTPCHECK_ALLOWED_PORTS to allow a target)"
            )
        return EXIT_USAGE
    if args.local:
        return check_local(normalized, password, settings, as_json=args.json)
    url = args.url or settings.service_url or f"http://{settings.bind}"
    api_key = args.api_key or settings.client_api_key
    try:
        return check_remote(url.rstrip("/"), api_key, request, as_json=args.json)
    except UsageError as exc:
        err(str(exc))
        return EXIT_USAGE
    except Unreachable as exc:
        err(str(exc))
        return EXIT_UNREACHABLE


def check_local(
    request: dict[str, Any], password: str | None, settings: Settings, *, as_json: bool
) -> int:
    from smtpcheck.report import render_text
    from workers.check import run_check

    if request.get("auth"):
        request = {**request, "auth": {**request["auth"], "password": "****"}}
    result = run_check(request, settings, password=password)
    print_result(result, as_json=as_json, text=None if as_json else render_text(result))
    return EXIT_OK if result.get("ok") else EXIT_NOT_OK


def print_result(result: Mapping[str, Any], *, as_json: bool, text: str | None) -> None:
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=False))
    else:
        sys.stdout.write(text or "")
    sys.stdout.flush()


# --- the HTTP client (urllib only) -----------------------------------------


def _opener(url: str) -> urllib.request.OpenerDirector:
    """Loopback URLs bypass any HTTP proxy from the environment."""
    host = urllib.parse.urlsplit(url).hostname or ""
    loopback = host == "localhost"
    with contextlib.suppress(ValueError):
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    if loopback:
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener()


def http_call(
    method: str,
    url: str,
    api_key: str | None,
    *,
    body: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
) -> tuple[int, Any, bytes]:
    headers = {"Accept": "application/json, application/problem+json, text/plain"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise UsageError(f"--url must be an http:// or https:// URL, not {url!r}")
    req = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
    try:
        with _opener(url).open(req, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Unreachable(f"cannot reach the smtpcheck service at {url}: {reason}") from None


def problem_text(status: int, payload: bytes) -> tuple[str, Any]:
    """A one-line message from a problem+json body, and its field errors."""
    try:
        problem = json.loads(payload)
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        text = payload.decode("utf-8", "replace").strip().splitlines()
        return f"HTTP {status}" + (f": {text[0][:200]}" if text else ""), None
    title = problem.get("title") or f"HTTP {status}"
    detail = problem.get("detail")
    return f"{title} (HTTP {status})" + (f": {detail}" if detail else ""), problem.get("errors")


def raise_for_problem(status: int, payload: bytes, what: str) -> None:
    message, errors = problem_text(status, payload)
    if errors:
        report_invalid(errors)
    if status in (401, 403):
        raise UsageError(f"{what}: {message}; check --api-key or SMTPCHECK_API_KEY")
    if status == 429 or status >= 500:
        raise Unreachable(f"{what}: {message}")
    raise UsageError(f"{what}: {message}")


def check_remote(base: str, api_key: str | None, request: dict[str, Any], *, as_json: bool) -> int:
    status, _, payload = http_call("POST", f"{base}/v1/checks", api_key, body=request)
    if status != 202:
        raise_for_problem(status, payload, "the service refused the check")
    try:
        check_id = str(json.loads(payload)["id"])
    except (ValueError, KeyError, TypeError):
        raise Unreachable(f"unexpected answer from {base}/v1/checks: {payload[:200]!r}") from None
    total = float((request.get("timeouts") or {}).get("total") or 300)
    deadline = time.monotonic() + total + 120  # the check's own deadline, plus time queued
    job: dict[str, Any] = {}
    check_url = f"{base}/v1/checks/{urllib.parse.quote(check_id)}"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Unreachable(
                f"check {check_id} is still {job.get('status', 'queued')} after waiting; "
                "are workers running for its vantage point?"
            )
        wait = max(1, min(60, int(remaining)))
        status, _, payload = http_call(
            "GET", f"{check_url}?wait={wait}", api_key, timeout=wait + 30
        )
        if status != 200:
            raise_for_problem(status, payload, f"reading check {check_id}")
        job = json.loads(payload)
        if job.get("status") in ("finished", "failed"):
            break
    result = job.get("result")
    if job.get("status") == "failed" or not isinstance(result, dict):
        if as_json:
            print(json.dumps(job, indent=2))
        why = job.get("error") or job.get("detail") or "the worker did not finish it"
        err(f"check {check_id} failed: {why}")
        return EXIT_NOT_OK
    text = None
    if not as_json:
        status, _, payload = http_call("GET", f"{check_url}/transcript", api_key)
        if status != 200:
            raise_for_problem(status, payload, f"reading the transcript of {check_id}")
        text = payload.decode("utf-8", "replace")
    print_result(result, as_json=as_json, text=text)
    return EXIT_OK if result.get("ok") else EXIT_NOT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
