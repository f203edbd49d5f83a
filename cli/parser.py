"""The ``smtpcheck`` command line: every command, option and its help."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from cli.errors import PROG
from smtpcheck.config import Settings
from smtpcheck.contract import PROBES

Command = Callable[[argparse.Namespace, Settings], int]

#: Started by ``smtpcheck dev`` (cli/dev.py); said in its help.
DEV_WORKER_PROCESSES = 2

MAIN_EXAMPLES = f"""\
examples:
  {PROG} dev                                  everything on this machine (Ctrl-C stops it)
  {PROG} check mx.example.com --stop-after banner
  {PROG} list
  {PROG} COMMAND --help                       the options of one command
"""

CHECK_EXAMPLES = f"""\
examples:
  is port 25 open, and who answers?
    {PROG} check mx.example.com --stop-after banner
  STARTTLS and the certificate of a submission server:
    {PROG} check smtp.example.com --port 587 --tls starttls --stop-after tls
  AUTH, the password from a file (or SMTPCHECK_AUTH_PASSWORD, or a prompt):
    {PROG} check smtp.example.com --port 587 --tls starttls --auth-user alice@example.com \\
        --auth-password-file ~/.smtp-password
  every MX host of a domain, up to RCPT:
    {PROG} check example.com --mx --mx-hosts all --from "" --to postmaster@example.com
  a built message with a header, retried while greylisted, and a webhook when it ends:
    {PROG} check mx.example.com --from me@example.org --to you@example.com \\
        --subject test --header 'X-Ticket: 4711' --retry-temporary --retry-attempts 3 \\
        --callback-url https://hooks.example.org/smtp --callback-secret-file ~/.hook-secret
  from every vantage point at once:
    {PROG} check mx.example.com --vantage all --stop-after banner
  here, without a service:
    {PROG} check 127.0.0.1 --port 2525 --local

The service comes from SMTPCHECK_URL and SMTPCHECK_API_KEY (smtpcheck dev prints both).
"""

LIST_EXAMPLES = f"""\
examples:
  {PROG} list
  {PROG} list --status running
  {PROG} list --limit 100 --json
"""


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # ~40 ms: only for --version

    try:
        return version("smtpcheck")
    except PackageNotFoundError:
        return "unknown"


def command(module: str, name: str) -> Command:
    """``module.name``, imported when the command runs: ``smtpcheck check``
    loads neither the process supervisor nor gunicorn's launcher."""

    def run(args: argparse.Namespace, settings: Settings) -> int:
        func: Command = getattr(importlib.import_module(module), name)
        return func(args, settings)

    return run


class VersionAction(argparse.Action):
    """``--version``, with the installed version read only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(f"{PROG} {package_version()}", file=sys.stdout, flush=True)
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Remote SMTP checks: a REST API, its workers, and a command-line client.",
        epilog=MAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action=VersionAction, help="show program's version number and exit"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = commands.add_parser(
        "dev",
        help="run everything on this machine (embedded Redis, API, workers)",
        description="Run Redis (embedded unless REDIS_URL is set), the API and "
        f"{DEV_WORKER_PROCESSES} workers; Ctrl-C stops them all.",
    )
    dev.set_defaults(func=command("cli.dev", "cmd_dev"))

    api = commands.add_parser("api", help="run the API under gunicorn")
    api.add_argument("--workers", type=positive_int, help="gunicorn worker processes")
    api.add_argument(
        "--connections",
        type=positive_int,
        default=1000,
        help="connections each gunicorn process serves at once (gevent)",
    )
    api.add_argument("--bind", help="listen address (default: SMTPCHECK_BIND or 127.0.0.1:8025)")
    api.set_defaults(func=command("cli.api", "cmd_api"))

    worker = commands.add_parser("worker", help="run RQ workers for one vantage point")
    worker.add_argument("--vantage", help="vantage point name (default: SMTPCHECK_VANTAGE)")
    worker.add_argument("--processes", type=positive_int, default=2, help="worker processes")
    worker.add_argument(
        "--concurrency",
        type=positive_int,
        help="checks in flight per process (threads class; default 200)",
    )
    worker.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    worker.add_argument(
        "--worker-class",
        choices=("threads", "simple", "fork"),
        default="threads",
        help="threads: many checks at once per process, a thread each (default); "
        "simple: one check at a time in the worker process; fork: one process per check",
    )
    worker.set_defaults(func=command("cli.worker", "cmd_worker"))

    check = commands.add_parser(
        "check",
        help="run one SMTP check and print the transcript as it happens",
        description="Submit a check to a running service (or run it here with --local) and "
        "print its id at once, then the transcript line by line as the worker records it, "
        "then the verdict. Ctrl-C cancels the check on the service. Colours on a terminal "
        "unless NO_COLOR is set. Exit status: 0 ok, 1 the check ran and was not ok, "
        "2 bad input, 3 service unreachable, 130 canceled with Ctrl-C.",
        epilog=CHECK_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("host", help="server host name or IP; with --mx, a mail domain")
    check.add_argument("--port", type=int, help="TCP port (default 25)")
    check.add_argument(
        "--tls",
        choices=("none", "starttls", "implicit", "auto"),
        help="none: plain text only; starttls: require STARTTLS; implicit: TLS from the "
        "first byte (SMTPS, port 465); auto (default): STARTTLS when offered, implicit on 465",
    )
    check.add_argument("--tls-verify", action="store_true", help="fail on an untrusted certificate")
    check.add_argument(
        "--tls-name", help="name sent as SNI and verified (default: HOST when it is a name)"
    )
    check.add_argument(
        "--tls-ca", metavar="PEM_FILE", help="extra CA certificates to trust for this check"
    )
    check.add_argument("--helo", help="name to send in EHLO/HELO (default: the service's)")
    check.add_argument(
        "--auth-user",
        help="AUTH user name; the password comes from SMTPCHECK_AUTH_PASSWORD, "
        "--auth-password-file, or a prompt (after the target is checked)",
    )
    check.add_argument(
        "--auth-password-file",
        metavar="PATH",
        help="read the AUTH password from the first line of PATH (- reads stdin)",
    )
    check.add_argument(
        "--auth-password",
        help="AUTH password on the command line: visible in ps and shell history, "
        "prefer SMTPCHECK_AUTH_PASSWORD or --auth-password-file",
    )
    check.add_argument(
        "--auth-mechanism",
        type=str.upper,
        choices=("AUTO", "PLAIN", "LOGIN", "CRAM-MD5"),
        help="SASL mechanism (default AUTO: the best the server offers)",
    )
    check.add_argument(
        "--auth-allow-plaintext",
        action="store_true",
        help="send the credentials even over a connection without TLS (--tls none always does)",
    )
    check.add_argument("--from", dest="mail_from", help='envelope sender ("" for <>)')
    check.add_argument(
        "--to", dest="rcpt_to", action="append", help="envelope recipient (repeatable)"
    )
    check.add_argument("--data-file", help="whole message to send after DATA; - reads stdin")
    check.add_argument("--subject", help="build a message with this subject")
    check.add_argument("--body", help="build a message with this body")
    check.add_argument(
        "--header",
        dest="headers",
        action="append",
        metavar="'NAME: VALUE'",
        help="build a message with this extra header field (repeatable)",
    )
    check.add_argument(
        "--stop-after",
        choices=("connect", "banner", "ehlo", "tls", "auth", "mail", "rcpt", "data"),
        help="last stage to run (default: the last one the other options imply)",
    )
    check.add_argument("--timeout", type=float, help="deadline for the whole check (seconds)")
    check.add_argument("--connect-timeout", type=float, help="TCP connect deadline (seconds)")
    check.add_argument("--command-timeout", type=float, help="per-reply deadline (seconds)")
    check.add_argument(
        "--ip-version",
        type=int,
        choices=(4, 6),
        help="dial only IPv4 or only IPv6 addresses of HOST (default: either)",
    )
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
        help="extra short dialogue: "
        + ", ".join(PROBES)
        + " (repeatable; smuggling needs --from and --to)",
    )
    check.add_argument(
        "--retry-temporary",
        action="store_true",
        help="re-run a check that ends in a 4xx (greylisting); service only",
    )
    check.add_argument(
        "--retry-attempts",
        type=positive_int,
        help="with --retry-temporary: attempts in all, the first included",
    )
    check.add_argument(
        "--retry-delay", type=float, help="with --retry-temporary: seconds between attempts"
    )
    check.add_argument(
        "--callback-url",
        help="POST the check's document to this URL when it ends (a signed webhook); the "
        "secret comes from SMTPCHECK_CALLBACK_SECRET or --callback-secret-file; service only",
    )
    check.add_argument(
        "--callback-secret-file",
        metavar="PATH",
        help="file whose first line is the webhook secret (- reads stdin)",
    )
    check.add_argument(
        "--vantage", help="worker pool to run the check from (all: every one, side by side)"
    )
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.add_argument("--local", action="store_true", help="run here, with no service")
    add_service_options(check)
    check.set_defaults(func=command("cli.check", "cmd_check"))

    listing = commands.add_parser(
        "list",
        help="list your checks on the service, newest first",
        description="Your checks (those of the API key), newest first, one a line: id, "
        "status, outcome, target, created.",
        epilog=LIST_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    listing.add_argument(
        "--status",
        choices=("queued", "running", "retrying", "finished", "failed", "canceled"),
        help="only checks with this status",
    )
    listing.add_argument(
        "--limit", type=positive_int, default=20, help="how many (default 20, at most 100)"
    )
    listing.add_argument("--cursor", help="start after this point (printed below a full page)")
    listing.add_argument("--json", action="store_true", help="print the page as JSON")
    add_service_options(listing)
    listing.set_defaults(func=command("cli.listing", "cmd_list"))

    cancel = commands.add_parser(
        "cancel",
        help="cancel a queued or running check (or delete an ended one)",
        description="Cancel a check on the service: a queued one at once, a running one "
        "within a second (it says QUIT if it can and keeps its transcript so far). "
        "A check that has ended is deleted instead.",
        epilog=f"example:\n  {PROG} cancel 5b0f8a52-1c1e-4f5e-9a57-0d8c2f0e6a11",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cancel.add_argument("check_id", metavar="ID", help="the check id (smtpcheck check prints it)")
    add_service_options(cancel)
    cancel.set_defaults(func=command("cli.cancel", "cmd_cancel"))
    return parser


def add_service_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--url", help="service URL (default: SMTPCHECK_URL, else http://SMTPCHECK_BIND)"
    )
    command.add_argument(
        "--api-key",
        help="API key (default: SMTPCHECK_API_KEY; an option is visible in ps, the variable not)",
    )


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value
