"""The check request built from ``smtpcheck check``'s options, and its errors."""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cli.errors import UsageError, err
from smtpcheck.config import Settings
from smtpcheck.contract import CheckRequest

# Request field -> the option that sets it, for error messages.
OPTION_FOR_FIELD = {
    "host": "HOST",
    "port": "--port",
    "tls": "--tls",
    "tls_verify": "--tls-verify",
    "tls_name": "--tls-name",
    "tls_ca": "--tls-ca",
    "helo": "--helo",
    "auth.username": "--auth-user",
    "auth.password": "--auth-password",
    "auth.mechanism": "--auth-mechanism",
    "auth.allow_plaintext": "--auth-allow-plaintext",
    "auth": "--auth-user",
    "mail_from": "--from",
    "rcpt_to": "--to",
    "data": "--data-file",
    "message": "--subject/--body",
    "message.subject": "--subject",
    "message.body": "--body",
    "message.headers": "--header",
    "stop_after": "--stop-after",
    "timeouts.total": "--timeout",
    "timeouts.connect": "--connect-timeout",
    "timeouts.command": "--command-timeout",
    "ip_version": "--ip-version",
    "mx": "--mx",
    "mx_hosts": "--mx-hosts",
    "probes": "--probe",
    "retry_temporary": "--retry-temporary",
    "retry": "--retry-attempts/--retry-delay",
    "retry.attempts": "--retry-attempts",
    "retry.delay": "--retry-delay",
    "callback": "--callback-url",
    "callback.url": "--callback-url",
    "callback.secret": "--callback-secret-file",
    "vantage": "--vantage",
}


def build_request(
    args: argparse.Namespace, settings: Settings
) -> tuple[dict[str, Any], str | None]:
    """The check request (as the API takes it) and the AUTH password.

    With ``--auth-user`` but no password from SMTPCHECK_AUTH_PASSWORD,
    ``--auth-password-file`` or ``--auth-password``, the request carries
    ``ASK`` as its password and the password is None: ``ask_password`` asks
    for it once the request has been validated.
    """
    request: dict[str, Any] = {"host": args.host}
    for option, name in (
        ("port", "port"),
        ("tls", "tls"),
        ("tls_name", "tls_name"),
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
    if args.tls_ca is not None:
        request["tls_ca"] = read_text(args.tls_ca, "--tls-ca")
    if args.mx:
        request["mx"] = True
    if args.retry_temporary:
        request["retry_temporary"] = True
    retry = {
        name: value
        for name, value in (("attempts", args.retry_attempts), ("delay", args.retry_delay))
        if value is not None
    }
    if retry and not args.retry_temporary:
        raise UsageError("--retry-attempts and --retry-delay need --retry-temporary")
    if retry:
        request["retry"] = retry
    if args.callback_url is not None:
        request["callback"] = {"url": args.callback_url, "secret": callback_secret(args, settings)}
    elif args.callback_secret_file is not None:
        raise UsageError("--callback-secret-file needs --callback-url")
    password: str | None = None
    if args.auth_user is not None or args.auth_password is not None or args.auth_password_file:
        password = password_from(args, settings)
        auth: dict[str, Any] = {"username": args.auth_user or "", "password": password or ASK}
        if args.auth_mechanism:
            auth["mechanism"] = "auto" if args.auth_mechanism == "AUTO" else args.auth_mechanism
        if args.auth_allow_plaintext:
            auth["allow_plaintext"] = True
        request["auth"] = auth
    elif args.auth_mechanism or args.auth_allow_plaintext:
        raise UsageError("--auth-mechanism and --auth-allow-plaintext need --auth-user")
    built = args.subject is not None or args.body is not None or bool(args.headers)
    if args.data_file is not None:
        if built:
            raise UsageError("use either --data-file or --subject/--body/--header, not both")
        request["data"] = read_text(args.data_file, "--data-file")
    elif built:
        message: dict[str, Any] = {}
        if args.subject is not None:
            message["subject"] = args.subject
        if args.body is not None:
            message["body"] = args.body
        if args.headers:
            message["headers"] = header_fields(args.headers)
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


#: Stands in for a password still to be asked for, so the rest is validated first.
ASK = "(asked for)"


def password_from(args: argparse.Namespace, settings: Settings) -> str | None:
    """The AUTH password from --auth-password-file, --auth-password or
    SMTPCHECK_AUTH_PASSWORD, in that order; None when none gives one."""
    if args.auth_password_file is not None and args.auth_password is not None:
        raise UsageError("give the password once: --auth-password-file or --auth-password")
    if args.auth_password_file is not None:
        if args.auth_password_file == "-" and args.data_file == "-":  # noqa: S105
            raise UsageError("--auth-password-file - and --data-file - cannot both read stdin")
        return first_line(args.auth_password_file, "--auth-password-file", "password")
    if args.auth_password is not None:
        return str(args.auth_password)
    return settings.client_auth_password


def header_fields(given: list[str]) -> dict[str, str]:
    """``--header 'NAME: VALUE'`` options as the request's ``message.headers``."""
    headers: dict[str, str] = {}
    for text in given:
        name, colon, value = text.partition(":")
        if not colon or not name.strip():
            raise UsageError(f"--header {text!r}: give it as 'Name: value'")
        if name.strip() in headers:
            raise UsageError(f"--header {name.strip()!r} is given twice")
        headers[name.strip()] = value.strip()
    return headers


def callback_secret(args: argparse.Namespace, settings: Settings) -> str:
    """The webhook secret from --callback-secret-file or SMTPCHECK_CALLBACK_SECRET."""
    if args.local:
        raise UsageError("--callback-url needs a service: a --local check posts no webhook")
    path = args.callback_secret_file
    if path is not None:
        if path == "-" and "-" in (args.data_file, args.auth_password_file):
            raise UsageError("only one option can read stdin (-)")
        return first_line(path, "--callback-secret-file", "secret").strip()
    if settings.client_callback_secret is None:
        raise UsageError(
            "--callback-url needs the webhook's secret: set SMTPCHECK_CALLBACK_SECRET or give "
            "--callback-secret-file PATH (- reads stdin)"
        )
    return settings.client_callback_secret


def ask_password(request: dict[str, Any], user: str | None) -> str:
    """Ask on the terminal for the password ``build_request`` could not find."""
    if not sys.stdin.isatty():
        raise UsageError(
            "--auth-user needs a password: set SMTPCHECK_AUTH_PASSWORD, or give "
            "--auth-password-file PATH (- reads stdin); there is no terminal to ask on"
        )
    password = getpass.getpass(f"Password for {user or 'AUTH'}: ")
    if not password:
        raise UsageError("no password given")
    request["auth"]["password"] = password
    return password


def first_line(path: str, option: str, what: str) -> str:
    """The first line of the file ``option`` names (``-``: stdin), which must not be empty."""
    lines = read_text(path, option).splitlines()
    if not lines or not lines[0]:
        raise UsageError(f"{option}: {path} has no {what} on its first line")
    return lines[0]


def read_text(path: str, option: str) -> str:
    """A UTF-8 file named by ``option`` (``-``: stdin)."""
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"{option}: cannot read {path}: {exc.strerror}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{option}: {path} is not UTF-8 text") from None


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


def validate_request(request: Mapping[str, Any], settings: Settings) -> CheckRequest:
    """The request as the service would normalize it; raises marshmallow's ValidationError.

    The schema is the service's own, built for ``settings``.
    """
    from service.schemas import build_schemas

    schema = build_schemas(settings).check_request()
    loaded: CheckRequest = schema.load(dict(request))
    return loaded


def permissive(settings: Settings) -> Settings:
    """Settings whose target policy lets everything through.

    A remote service applies its own operator's policy (ports, networks); the
    client checks only what no service would accept, and leaves the rest to it.
    """
    return settings.replace(
        allowed_ports=frozenset(range(1, 65536)),
        allow_networks=(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")),
        callback_ports=frozenset(range(1, 65536)),
        callback_http=True,
    )
