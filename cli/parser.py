"""The ``smtpcheck`` command line: every command, option and its help."""

from __future__ import annotations

import argparse

from cli.api import cmd_api
from cli.check import cmd_check
from cli.dev import DEV_WORKER_PROCESSES, cmd_dev
from cli.errors import PROG
from cli.worker import cmd_worker
from smtpcheck.contract import PROBES


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
    api.add_argument(
        "--connections",
        type=positive_int,
        default=1000,
        help="connections each gunicorn process serves at once (gevent)",
    )
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
    check.add_argument(
        "--tls-name", help="name sent as SNI and verified (default: HOST when it is a name)"
    )
    check.add_argument(
        "--tls-ca", metavar="PEM_FILE", help="extra CA certificates to trust for this check"
    )
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
