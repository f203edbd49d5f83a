"""``smtpcheck list``: your checks on the service, newest first."""

from __future__ import annotations

import argparse
import json
import urllib.parse
from collections.abc import Mapping
from typing import Any

from cli.client import http_call, raise_for_problem, service_of
from cli.errors import EXIT_OK, PROG, err, reported
from smtpcheck.config import Settings


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    base, api_key = service_of(args, settings)
    query = {"limit": str(min(args.limit, 100))}
    if args.status:
        query["status"] = args.status
    if args.cursor:
        query["cursor"] = args.cursor
    url = f"{base}/v1/checks?{urllib.parse.urlencode(query)}"
    fetched: list[bytes] = []

    def fetch() -> int:
        status, _, payload = http_call("GET", url, api_key)
        if status != 200:
            raise_for_problem(status, payload, "listing checks")
        fetched.append(payload)
        return EXIT_OK

    code = reported(fetch)
    if code != EXIT_OK:
        return code
    payload = fetched[0]
    page = json.loads(payload)
    if args.json:
        print(json.dumps(page, indent=2))
        return EXIT_OK
    rows = [row(item) for item in page.get("items") or []]
    if not rows:
        print("no checks" + (f" with status {args.status}" if args.status else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))] if rows else []
    for cells in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)))
    if page.get("next"):
        err(f"more: {PROG} list --cursor {page['next']}")
    return EXIT_OK


def row(item: Mapping[str, Any]) -> list[str]:
    """id, status, outcome, target and when, for one check."""
    request = item.get("request") or {}
    result = item.get("result") or {}
    target = str(request.get("host", "?"))
    if request.get("mx"):
        target += " (mx)"
    elif request.get("port"):
        target += f":{request['port']}"
    if item.get("vantage") and item.get("vantage") != "default":
        target += f" @{item['vantage']}"
    return [
        str(item.get("id")),
        str(item.get("status")),
        str(result.get("outcome") or "-"),
        target,
        str(item.get("created_at") or ""),
    ]
