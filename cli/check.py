"""``smtpcheck check``: one check, on a service or here with ``--local``.

The check id is printed at once; then each transcript line as the worker
records it (the service's event stream, or the engine's own transcript
listener with ``--local``), then the verdict. Ctrl-C cancels the check on
the service (``DELETE``) and shows where it stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Any

from cli import events
from cli.client import http_call, raise_for_problem, service_of
from cli.errors import (
    EXIT_INTERRUPTED,
    EXIT_NOT_OK,
    EXIT_OK,
    EXIT_USAGE,
    Unreachable,
    UsageError,
    err,
    reported,
)
from cli.request import (
    ASK,
    ask_password,
    build_request,
    permissive,
    report_invalid,
    validate_request,
)
from cli.terminal import Terminal
from smtpcheck.config import Settings
from smtpcheck.contract import SECRET_MASK, CheckRequest
from smtpcheck.report import findings_lines, mx_lines, verdict_lines

ENDED = ("finished", "failed", "canceled")
CANCEL_WAIT = 5  # seconds to wait for a canceled check to say where it stopped


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    from marshmallow import ValidationError

    try:
        request, password = build_request(args, settings)
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
    if request.get("auth") and password is None:  # the target is valid: now ask
        try:
            password = ask_password(request, args.auth_user)
        except UsageError as exc:
            err(str(exc))
            return EXIT_USAGE
        assert normalized["auth"] is not None  # it came with request["auth"]
        normalized["auth"]["password"] = password
    terminal = Terminal()
    if args.local:
        return check_local(normalized, password, settings, as_json=args.json, terminal=terminal)
    base, api_key = service_of(args, settings)
    return reported(
        lambda: check_remote(base, api_key, request, as_json=args.json, terminal=terminal)
    )


def check_local(
    request: CheckRequest,
    password: str | None,
    settings: Settings,
    *,
    as_json: bool,
    terminal: Terminal,
) -> int:
    from workers.engine import run_check
    from workers.transcript import listening

    auth = request["auth"]
    assert auth is None or auth["password"] != ASK
    if auth is not None:  # the password travels beside the request, as to a worker
        request = {**request, "auth": {**auth, "password": SECRET_MASK}}
    live = contextlib.nullcontext() if as_json else listening(terminal.line)
    terminal.status("running")
    with terminal.spinner(), live:
        result = run_check(request, settings, password=password)
    if as_json:
        print_json(result)
    else:
        terminal.verdict(report_lines(result))
    return EXIT_OK if result.get("ok") else EXIT_NOT_OK


def report_lines(result: Mapping[str, Any]) -> list[str]:
    """What ``render_text`` prints after the transcript."""
    return [*verdict_lines(result), *mx_lines(result), *findings_lines(result)]


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=False))
    sys.stdout.flush()


def check_remote(
    base: str,
    api_key: str | None,
    request: dict[str, Any],
    *,
    as_json: bool,
    terminal: Terminal,
) -> int:
    status, _, payload = http_call("POST", f"{base}/v1/checks", api_key, body=request)
    if status != 202:
        raise_for_problem(status, payload, "the service refused the check")
    try:
        check_id = str(json.loads(payload)["id"])
    except (ValueError, KeyError, TypeError):
        raise Unreachable(f"unexpected answer from {base}/v1/checks: {payload[:200]!r}") from None
    check_url = f"{base}/v1/checks/{urllib.parse.quote(check_id)}"
    announce = f"check {check_id} at {base} (Ctrl-C cancels it)"
    if as_json:
        terminal.say(announce)
    else:
        terminal.write(terminal.paint(f"=== {announce}", "note") + "\n")
    watch = Watch(check_url, api_key, terminal, show_lines=not as_json)
    total = float((request.get("timeouts") or {}).get("total") or 300)
    try:
        job = watch.until_ended(deadline=time.monotonic() + total + 120)
    except KeyboardInterrupt:
        terminal.say(f"canceling check {check_id} ...")
        stopped = cancel_and_read(check_url, api_key)
        if stopped is not None:
            finish(stopped, watch, as_json=as_json)
        terminal.say(f"check {check_id} canceled")
        return EXIT_INTERRUPTED
    return finish(job, watch, as_json=as_json)


class Watch:
    """Follows one check: its event stream, or polling where there is none."""

    def __init__(
        self, check_url: str, api_key: str | None, terminal: Terminal, *, show_lines: bool
    ) -> None:
        self.check_url = check_url
        self.api_key = api_key
        self.terminal = terminal
        self.show_lines = show_lines
        self.printed = 0  # transcript lines shown so far
        self.complete = False  # the stream reached its result: every line was shown

    def until_ended(self, deadline: float) -> dict[str, Any]:
        self.terminal.status("queued")
        with self.terminal.spinner():
            try:
                return self._stream()
            except events.EventsUnavailable:  # vantage all, or an older service
                return self._poll(deadline)

    def _stream(self) -> dict[str, Any]:
        for event in events.follow(f"{self.check_url}/events", self.api_key):
            if event.name == "status" and isinstance(event.data, dict):
                self.terminal.status(str(event.data.get("status")))
            elif event.name == "line" and isinstance(event.data, dict):
                self.line(event.data)
            elif event.name == "result" and isinstance(event.data, dict):
                self.complete = True
                return event.data
        raise Unreachable(f"{self.check_url}/events ended without the check's result")

    def line(self, entry: Mapping[str, Any]) -> None:
        if self.show_lines:
            self.terminal.line(entry)
        self.printed += 1

    def _poll(self, deadline: float) -> dict[str, Any]:
        job: dict[str, Any] = {}
        for job in poll(self.check_url, self.api_key, deadline):
            self.terminal.status(str(job.get("status")))
        return job

    def rest_of(self, result: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        """The transcript lines not shown yet: none after a whole stream, all after
        polling, and after an interrupted stream those past the ones shown (a
        domain check's result lays its hosts' lines out anew, so the count is
        only trusted where the stream was cut short)."""
        transcript = result.get("transcript")
        if self.complete or not isinstance(transcript, list):
            return []
        return list(transcript[self.printed :])


def poll(check_url: str, api_key: str | None, deadline: float) -> Iterator[dict[str, Any]]:
    """The check's document, read with ``?wait`` until it ends."""
    job: dict[str, Any] = {}
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Unreachable(
                f"{check_url} is still {job.get('status', 'queued')} after waiting; "
                "are workers running for its vantage point?"
            )
        wait = max(1, min(60, int(remaining)))
        status, _, payload = http_call(
            "GET", f"{check_url}?wait={wait}", api_key, timeout=wait + 30
        )
        if status != 200:
            raise_for_problem(status, payload, f"reading {check_url}")
        job = json.loads(payload)
        yield job
        if job.get("status") in ENDED:
            return


def cancel_and_read(check_url: str, api_key: str | None) -> dict[str, Any] | None:
    """DELETE the check, then its document once it has stopped (None if it is gone)."""
    status, _, payload = http_call("DELETE", check_url, api_key, timeout=10)
    if status == 204:
        return None  # it had ended already and is now deleted
    if status != 202:
        raise_for_problem(status, payload, "canceling the check")
    last: dict[str, Any] | None = None
    with contextlib.suppress(Unreachable):
        for job in poll(check_url, api_key, time.monotonic() + CANCEL_WAIT):
            last = job
    return last


def finish(job: Mapping[str, Any], watch: Watch, *, as_json: bool) -> int:
    """Print what the watch has not shown yet, and the verdict; the exit status."""
    result = job.get("result")
    if not isinstance(result, dict):
        if as_json:
            print_json(job)
        why = job.get("error") or job.get("detail") or "the worker did not finish it"
        err(f"check {job.get('id')} {job.get('status')}: {why}")
        return EXIT_NOT_OK
    if as_json:
        print_json(result)
    elif "transcript" not in result:  # vantage all: one transcript per vantage
        status, _, payload = http_call("GET", f"{watch.check_url}/transcript", watch.api_key)
        if status != 200:
            raise_for_problem(status, payload, "reading the transcript")
        watch.terminal.write(payload.decode("utf-8", "replace"))
    else:
        for entry in watch.rest_of(result):
            watch.terminal.line(entry)
        watch.terminal.verdict(report_lines(result))
    return EXIT_OK if result.get("ok") else EXIT_NOT_OK
