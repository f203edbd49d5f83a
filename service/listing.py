"""``GET /v1/checks``: one API key's checks, newest first, a page at a time.

Each key has a sorted set ``smtpcheck:checks:<key name>`` of check ids (a
fan-out's own id, not its members') scored by their creation time in
microseconds; it expires with the checks (every add renews the TTL and drops
members older than it). A cursor is the last item's ``(score, id)``, opaque
to callers (base64url). Members of one score are ordered by id, so a page
starts strictly after the cursor: checks created meanwhile are newer than
every cursor and land before it, never inside a later page, so paging never
shows an item twice and never skips one.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.client import Pipeline

from smtpcheck.contract import CHECKS_INDEX_PREFIX
from smtpcheck.redis_client import FailoverRedis

INDEX_PREFIX = CHECKS_INDEX_PREFIX
MAX_SCANNED = 1000  # ids looked at for one page (a ?status= filter skips some)

Cursor = tuple[int, str]


def index_key(owner: str) -> str:
    return INDEX_PREFIX + owner


def add(connection: redis.Redis, owner: str, check_id: str, ttl: int) -> None:
    """Index a new check of ``owner``."""
    pipe = connection.pipeline(transaction=False)
    stage(pipe, owner, check_id, ttl)
    pipe.execute()


def stage(pipe: Pipeline, owner: str, check_id: str, ttl: int) -> None:
    """:func:`add` on the caller's pipeline (a submission writes in one round trip)."""
    now = int(time.time() * 1_000_000)
    key = index_key(owner)
    pipe.zadd(key, {check_id: now})
    pipe.zremrangebyscore(key, "-inf", now - ttl * 1_000_000)
    pipe.expire(key, ttl)


def remove(connection: redis.Redis, owner: str, check_id: str) -> None:
    connection.zrem(index_key(owner), check_id)


def encode_cursor(cursor: Cursor) -> str:
    raw = f"{cursor[0]}:{cursor[1]}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> Cursor | None:
    """The cursor a previous page handed out, or None if ``text`` is not one."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    score, sep, check_id = raw.partition(":")
    if not sep or not score.isdigit() or not check_id or len(check_id) > 100:
        return None
    return int(score), check_id


def after(connection: FailoverRedis, owner: str, cursor: Cursor | None, count: int) -> list[Cursor]:
    """Up to ``count`` (score, id) pairs after ``cursor``, newest first."""
    key = index_key(owner)
    found: list[Cursor] = []
    if cursor is None:
        return _scored(
            connection.zrevrangebyscore(key, "+inf", "-inf", start=0, num=count, withscores=True)
        )
    score, last = cursor

    # Same score: ZREVRANGEBYSCORE orders them by id, descending. Both in one round
    # trip, the older ones read as if no tie came first.
    def stage(pipe: Pipeline) -> None:
        pipe.zrangebyscore(key, score, score)
        pipe.zrevrangebyscore(key, f"({score}", "-inf", start=0, num=count, withscores=True)

    same, older = connection.read_pipeline(stage)
    ties = sorted((_text(member) for member in same), reverse=True)
    found = [(score, member) for member in ties if member < last][:count]
    return found + _scored(older)[: count - len(found)]


def page(
    connection: FailoverRedis,
    owner: str,
    *,
    limit: int,
    cursor: Cursor | None,
    describe: Callable[[list[str]], list[dict[str, Any] | None]],
    status: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of ``owner``'s checks and the cursor of the next (None: the last page).

    ``describe(ids)`` gives each check's list item, or None for one that is gone
    (all of a batch at once, so they can be read in one round trip).
    """
    items: list[dict[str, Any]] = []
    position = cursor
    scanned = 0
    while len(items) < limit and scanned < MAX_SCANNED:
        wanted = limit - len(items)
        if status is not None:  # some of them will not match: read more at once
            wanted = min(100, max(wanted, 20))
        batch = after(connection, owner, position, wanted)
        if not batch:
            return items, None
        for entry, item in zip(batch, describe([check_id for _, check_id in batch]), strict=True):
            position = entry
            scanned += 1
            if item is None:
                continue
            if status is None or item.get("status") == status:
                items.append(item)
                if len(items) == limit:
                    break
    assert position is not None
    if not after(connection, owner, position, 1):
        return items, None
    return items, encode_cursor(position)


def _scored(rows: Any) -> list[Cursor]:
    return [(int(score), _text(member)) for member, score in rows]


def _text(member: bytes | str) -> str:
    return member.decode() if isinstance(member, bytes) else member
