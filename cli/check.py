"""``smtpcheck check``: one check, on a service or here with ``--local``."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any

from cli.client import http_call, raise_for_problem
from cli.errors import (
    EXIT_NOT_OK,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Unreachable,
    UsageError,
    err,
)
from cli.request import build_request, permissive, report_invalid, validate_request
from smtpcheck.config import Settings
from smtpcheck.contract import SECRET_MASK


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
        request = {**request, "auth": {**request["auth"], "password": SECRET_MASK}}
    result = run_check(request, settings, password=password)
    print_result(result, as_json=as_json, text=None if as_json else render_text(result))
    return EXIT_OK if result.get("ok") else EXIT_NOT_OK


def print_result(result: Mapping[str, Any], *, as_json: bool, text: str | None) -> None:
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=False))
    else:
        sys.stdout.write(text or "")
    sys.stdout.flush()


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
