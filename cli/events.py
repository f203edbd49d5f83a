"""Reading ``GET /v1/checks/{id}/events``: Server-Sent Events, resumed on a break.

A stream ends when the check ends (after its ``result`` event) or when the
service's bound on a held response passes; then it is opened again with
``Last-Event-ID``, so no line is shown twice and none is missed.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cli.client import auth_headers, opener
from cli.errors import Unreachable

READ_TIMEOUT = 45.0  # the service sends a comment every 15 s of silence


@dataclass
class Event:
    name: str
    data: Any
    id: str | None = None


class EventsUnavailable(Exception):
    """The service has no event stream for this check (an older one, or vantage all)."""


def parse(lines: Iterator[bytes]) -> Iterator[Event]:
    """SSE fields to events (https://html.spec.whatwg.org/#event-stream-interpretation)."""
    fields: dict[str, str] = {}
    data: list[str] = []
    for raw in lines:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if data and "event" in fields:
                try:
                    payload = json.loads("\n".join(data))
                except ValueError:
                    payload = None
                yield Event(fields["event"], payload, fields.get("id"))
            fields, data = {}, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        else:
            fields[name] = value


def follow(url: str, api_key: str | None, *, attempts: int = 5) -> Iterator[Event]:
    """Every event of one check until its ``result`` event, across reconnects."""
    last_id: str | None = None
    failures = 0
    while True:
        headers = {"Accept": "text/event-stream", **auth_headers(api_key)}
        if last_id:
            headers["Last-Event-ID"] = last_id
        request = urllib.request.Request(url, headers=headers)  # noqa: S310
        try:
            response = opener(url).open(request, timeout=READ_TIMEOUT)
        except urllib.error.HTTPError as exc:
            with exc:
                if exc.code in (404, 405, 409, 501):
                    raise EventsUnavailable(f"HTTP {exc.code}") from None
                failures += 1
                if failures >= attempts:
                    raise Unreachable(f"reading {url}: HTTP {exc.code}") from None
        except OSError as exc:
            failures += 1
            if failures >= attempts:
                raise Unreachable(f"reading {url}: {getattr(exc, 'reason', exc)}") from None
        else:
            with response:
                try:
                    for event in parse(iter(response.readline, b"")):
                        failures = 0
                        if event.id:
                            last_id = event.id
                        yield event
                        if event.name == "result":
                            return
                except OSError:  # a dropped connection: resume
                    failures += 1
                    if failures >= attempts:
                        raise Unreachable(f"reading {url}: the connection keeps dropping") from None
            continue  # the stream was bounded by the service: open it again
        time.sleep(min(2.0, 0.25 * 2**failures))
