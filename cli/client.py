"""The HTTP client of the ``smtpcheck`` command (urllib only)."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from cli.errors import Unreachable, UsageError
from cli.request import report_invalid
from smtpcheck.config import Settings


def opener(url: str) -> urllib.request.OpenerDirector:
    """Loopback URLs bypass any HTTP proxy from the environment."""
    host = urllib.parse.urlsplit(url).hostname or ""
    loopback = host == "localhost"
    with contextlib.suppress(ValueError):
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    if loopback:
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener()


def service_of(args: argparse.Namespace, settings: Settings) -> tuple[str, str | None]:
    """The service's base URL and the API key, from the options or the environment."""
    url = args.url or settings.service_url or f"http://{settings.bind}"
    return url.rstrip("/"), args.api_key or settings.client_api_key


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def http_call(
    method: str,
    url: str,
    api_key: str | None,
    *,
    body: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
) -> tuple[int, Any, bytes]:
    headers = {
        "Accept": "application/json, application/problem+json, text/plain",
        **auth_headers(api_key),
    }
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise UsageError(f"--url must be an http:// or https:// URL, not {url!r}")
    req = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
    try:
        with opener(url).open(req, timeout=timeout) as response:
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


def http_ready(url: str, timeout: float = 2.0) -> bool:
    try:
        with opener(url).open(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False
