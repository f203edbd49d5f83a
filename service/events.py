"""A check as it happens: ``GET /v1/checks/{id}/events`` and the lines so far.

The worker appends each transcript line to the check's Redis stream
(workers/events.py). This module reads it:

- ``lines_so_far``: every line recorded yet, for the text transcript of a
  check still running;
- ``stream``: Server-Sent Events. A ``status`` event first and at every
  change, one ``line`` event per transcript line (``{"t_ms", "dir", "text"}``,
  with ``tls`` inside TLS) whose SSE ``id`` is the stream entry's id, and once
  the check has ended a final ``result`` event (the check's document, as
  ``GET /v1/checks/{id}`` returns it); then the response ends. A client that
  reconnects with ``Last-Event-ID`` gets only the lines after that id.

A stream is a held response: it lasts at most ``max_seconds`` (the
service's ``?wait`` cap); the client reconnects with ``Last-Event-ID`` (the
``retry`` field says after how long) and carries on where it left off.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis

from smtpcheck.contract import EVENTS_KEY_PREFIX, EVENTS_MAXLEN

#: A Redis stream entry id: what ``Last-Event-ID`` carries back.
ENTRY_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
BLOCK_MS = 1000  # a status change shows within about this long
KEEPALIVE = 15.0  # seconds of silence before a comment line keeps proxies from closing
RETRY_MS = 1000

Entry = tuple[str, dict[str, Any]]


def events_key(check_id: str) -> str:
    return EVENTS_KEY_PREFIX + check_id


def start_id(header: str | None) -> str:
    """Where a stream starts: after ``Last-Event-ID``, or at the first line."""
    header = (header or "").strip()
    return header if ENTRY_ID.fullmatch(header) else "0-0"


def _entries(rows: Any) -> list[Entry]:
    found: list[Entry] = []
    for entry_id, fields in rows or []:
        kind = fields.get(b"event", b"").decode()
        if kind != "line":
            continue
        try:
            found.append((entry_id.decode(), json.loads(fields.get(b"data", b"{}"))))
        except ValueError:
            continue
    return found


def read_after(connection: redis.Redis, check_id: str, last_id: str, count: int) -> list[Entry]:
    rows = connection.xrange(events_key(check_id), min=f"({last_id}", max="+", count=count)
    return _entries(rows)


def lines_so_far(connection: redis.Redis, check_id: str) -> list[dict[str, Any]]:
    """Every line the worker has published for the check yet."""
    rows = connection.xrange(events_key(check_id), min="-", max="+", count=EVENTS_MAXLEN)
    return [entry for _, entry in _entries(rows)]


def discard(connection: redis.Redis, check_id: str) -> None:
    connection.delete(events_key(check_id))


def sse(event: str, data: Any, event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def stream(
    blocking: redis.Redis,
    check_id: str,
    last_id: str,
    *,
    state: Callable[[], tuple[str, dict[str, Any]] | None],
    max_seconds: float,
) -> Iterator[str]:
    """The SSE body. ``state()`` is (status, document), or None once the check is gone.

    ``blocking`` is a Redis client whose read timeout outlasts ``BLOCK_MS``.
    The status is read before the lines: lines are published before the
    worker stores the result, so once the status says the check ended, the
    lines read after it are all there are.
    """
    yield f"retry: {RETRY_MS}\n\n"
    key = events_key(check_id)
    shown_status: str | None = None
    quiet_since = time.monotonic()
    ends_at = time.monotonic() + max_seconds
    while True:
        current = state()
        if current is None:
            return  # deleted (or expired) meanwhile
        status, document = current
        ended = status in ("finished", "failed", "canceled")
        if status == "queued" and shown_status == "running":
            status = "running"  # a line said it runs; the job's status may lag behind
        if status != shown_status:
            shown_status = status
            quiet_since = time.monotonic()
            yield sse("status", {"id": check_id, "status": status})
        while True:  # every line there is, without blocking
            batch = read_after(blocking, check_id, last_id, 500)
            if batch and shown_status in ("queued", "retrying"):
                # A worker records lines only while it runs the check: say so
                # before them, even if the job's own status is not written yet.
                shown_status = "running"
                yield sse("status", {"id": check_id, "status": "running"})
            for entry_id, entry in batch:
                last_id = entry_id
                yield sse("line", entry, entry_id)
            if batch:
                quiet_since = time.monotonic()
            if len(batch) < 500:
                break
        if ended:
            yield sse("result", document)
            return
        if time.monotonic() >= ends_at:
            return  # a held response is bounded; the client resumes with Last-Event-ID
        if time.monotonic() - quiet_since >= KEEPALIVE:
            quiet_since = time.monotonic()
            yield ": keep-alive\n\n"
        # Wait for the next line (or BLOCK_MS, to look at the status again).
        blocking.xread({key: last_id}, count=1, block=BLOCK_MS)
