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

A check with ``vantage: "all"`` (a fan-out) has one merged stream of all its
members' entries, oldest first: every ``line`` and each member's ``status``
event carries ``vantage``, and the fan-out's own ``status`` events carry none.
Its SSE ``id`` is composite: the last entry id of every member, in the
order of the fan-out's ``vantages``, joined by ``,``, so ``Last-Event-ID``
resumes each member where it was. The final ``result`` is the fan-out's own
document.

A stream is a held response: it lasts at most ``max_seconds`` (the
service's ``?wait`` cap); the client reconnects with ``Last-Event-ID`` (the
``retry`` field says after how long) and carries on where it left off.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import redis

from smtpcheck.contract import EVENTS_KEY_PREFIX, EVENTS_MAXLEN

#: A Redis stream entry id: what ``Last-Event-ID`` carries back.
ENTRY_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
BLOCK_MS = 1000  # a status change shows within about this long
KEEPALIVE = 15.0  # seconds of silence before a comment line keeps proxies from closing
RETRY_MS = 1000
BATCH = 500  # entries read per member and round trip
ENDED = ("finished", "failed", "canceled")

Entry = tuple[str, dict[str, Any]]

#: What a stream shows each time it looks: the document its ``result`` event
#: will carry, and each member's status (a check is its own only member).
State = tuple[dict[str, Any], list[str]]


@dataclass(frozen=True)
class Member:
    """One check whose entries a stream shows: ``vantage`` labels them in a fan-out."""

    check_id: str
    vantage: str | None = None


def events_key(check_id: str) -> str:
    return EVENTS_KEY_PREFIX + check_id


def start_ids(header: str | None, members: int) -> list[str]:
    """Where each member's part of a stream starts: after ``Last-Event-ID`` (one
    entry id per member, joined by ``,``), or, for an id that is not one, at the first line."""
    given = (header or "").strip().split(",")
    if len(given) == members and all(ENTRY_ID.fullmatch(part) for part in given):
        return given
    return ["0-0"] * members


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


def _order(entry_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence)


def _merged(
    blocking: redis.Redis, members: list[Member], last: list[str]
) -> tuple[list[tuple[int, Entry]], bool]:
    """The entries after ``last`` of every member, oldest first, as (member index,
    entry), and whether there are more to read.

    Where a member has more than one batch, only entries up to its batch's
    last are taken, so the merge never puts a later entry before an earlier one.
    """
    batches = [
        read_after(blocking, member.check_id, after, BATCH)
        for member, after in zip(members, last, strict=True)
    ]
    merged = sorted(
        ((index, entry) for index, batch in enumerate(batches) for entry in batch),
        key=lambda item: _order(item[1][0]),
    )
    full = [_order(batch[-1][0]) for batch in batches if len(batch) >= BATCH]
    if full:
        merged = [item for item in merged if _order(item[1][0]) <= min(full)]
    return merged, bool(full)


def stream(
    blocking: redis.Redis,
    members: list[Member],
    last: list[str],
    *,
    own_id: str,
    state: Callable[[], State | None],
    max_seconds: float,
) -> Iterator[str]:
    """The SSE body of check ``own_id``: one member (with no vantage) for a check,
    one per vantage for a fan-out. ``state()`` is None once the check is gone.

    ``blocking`` is a Redis client whose read timeout outlasts ``BLOCK_MS``.
    The status is read before the lines: lines are published before the
    worker stores the result, so once the status says the check ended, the
    lines read after it are all there are.
    """
    yield f"retry: {RETRY_MS}\n\n"
    keys = [events_key(member.check_id) for member in members]
    last = list(last)
    shown: str | None = None  # the status last said: the check's, or the fan-out's
    shown_members: list[str | None] = [None] * len(members)
    labelled = any(member.vantage is not None for member in members)
    quiet_since = time.monotonic()
    ends_at = time.monotonic() + max_seconds

    def say_status(index: int | None, status: str) -> Iterator[str]:
        """A status event, if it changes what was said; a fan-out's members say theirs too."""
        nonlocal shown, quiet_since
        if index is not None and labelled and shown_members[index] != status:
            shown_members[index] = status
            member = members[index]
            said = {"id": member.check_id, "vantage": member.vantage, "status": status}
            yield sse("status", said)
        if index is None and shown != status:
            shown = status
            quiet_since = time.monotonic()
            yield sse("status", {"id": own_id, "status": status})

    while True:
        current = state()
        if current is None:
            return  # deleted (or expired) meanwhile
        document, statuses = current
        status = str(document["status"])
        if status == "queued" and shown == "running":
            status = "running"  # a line said it runs; the job's status may lag behind
        yield from say_status(None, status)
        for index, member_status in enumerate(statuses):
            if member_status == "queued" and shown_members[index] == "running":
                member_status = "running"
            yield from say_status(index, member_status)
        more = True
        while more:  # every line there is, without blocking
            batch, more = _merged(blocking, members, last)
            for index, (entry_id, entry) in batch:
                # A worker records lines only while it runs the check: say so
                # before them, even if the job's own status is not written yet.
                if shown in ("queued", "retrying"):
                    yield from say_status(None, "running")
                if shown_members[index] in ("queued", "retrying"):
                    yield from say_status(index, "running")
                last[index] = entry_id
                if labelled:
                    entry = {**entry, "vantage": members[index].vantage}
                yield sse("line", entry, ",".join(last))
            if batch:
                quiet_since = time.monotonic()
        if status in ENDED:
            yield sse("result", document)
            return
        if time.monotonic() >= ends_at:
            return  # a held response is bounded; the client resumes with Last-Event-ID
        if time.monotonic() - quiet_since >= KEEPALIVE:
            quiet_since = time.monotonic()
            yield ": keep-alive\n\n"
        # Wait for the next line of any member (or BLOCK_MS, to look at the status again).
        blocking.xread(dict(zip(keys, last, strict=True)), count=1, block=BLOCK_MS)
