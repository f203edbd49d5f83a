"""Responses held open (``?wait=N``, the event stream): bounded per key and in total.

Under gunicorn's gevent worker (``cli/gunicorn_config.py``) a held request costs
a greenlet and one Redis connection, not a thread, so holding one never
stalls ``/healthz`` or a submission. What it does cost is bounded here:

- per API key, across every API process: at most
  ``SMTPCHECK_MAX_HELD_PER_KEY`` held at once. A sorted set
  ``smtpcheck:held:<key name>`` holds one member per held response, scored
  with the moment it ends at the latest, so a process that dies holding
  some leaks nothing: its members lapse. Over the limit: 429 problem+json
  (``urn:smtpcheck:problem:too-many-held``) with ``Retry-After``.
- per API process: at most ``SMTPCHECK_MAX_HELD`` at once (the Redis
  connections they take). Over it: 503 (``urn:smtpcheck:problem:busy``)
  with ``Retry-After``.

A view that holds uses the context manager, and holds no longer than it said::

    with held.hold(current_owner(), seconds) as lease:
        ...  # block on Redis for at most `seconds`; lease.release(pipeline) may
             # stage the member's removal behind the blocking read

A streaming response (Server-Sent Events) takes its lease in the view, so
the 429/503 comes before the response starts, and hands the lease its
body, which gives the room back when the stream ends or the client goes::

    lease = held.acquire(current_owner(), seconds)
    return Response(lease.around(events()), mimetype="text/event-stream")
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar, cast

import redis
from flask import current_app
from redis.client import Pipeline

from smtpcheck.contract import HELD_PREFIX

from .problems import SERVER_BUSY, TOO_MANY_HELD, Problem

T = TypeVar("T")

KEY_PREFIX = HELD_PREFIX
#: A member outlives its stated time by this much (the Redis read's own timeout).
MARGIN_SECONDS = 10

# Drop lapsed members, then add ARGV[3] (lapsing at ARGV[4]) if fewer than
# ARGV[2] remain. Returns -1 when added, else the seconds until the
# earliest held one lapses at the latest.
_TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.ceil(tonumber(first[2]) - tonumber(ARGV[1]))
end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[4]) - tonumber(ARGV[1])) + 1)
return -1
"""


@dataclass
class Lease:
    """Room for one held response; :meth:`release` gives it back (once)."""

    holds: Holds
    key: str
    member: str
    released: bool = False
    staged: bool = False  # its ZREM is on a caller's pipeline

    def release(self, pipeline: Pipeline | None = None) -> None:
        """Give the room back. With ``pipeline``, only its member in Redis, when the
        caller sends the pipeline (after a blocking read in it; if that fails, the
        member lapses at its stated end); this process's count of held responses
        is given back by the call without one, which :meth:`Holds.hold` makes as
        the response ends."""
        if pipeline is not None:
            if not self.released:  # each pipeline sent again stages it again
                pipeline.zrem(self.key, self.member)
                self.staged = True
            return
        if self.released:
            return
        self.released = True
        try:
            if not self.staged:
                self.holds.connection.zrem(self.key, self.member)
        finally:
            self.holds.leave()

    def around(self, body: Iterable[T]) -> Iterator[T]:
        """``body``, then the room given back (also when the client goes mid-stream)."""
        try:
            yield from body
        finally:
            self.release()


class Holds:
    """The per-key and per-process bounds on held responses, for one app."""

    def __init__(self, connection: redis.Redis, per_key: int, total: int) -> None:
        self.connection = connection
        self.per_key = per_key
        self.total = total
        self.held = 0
        self._lock = threading.Lock()
        self._take = connection.register_script(_TAKE)

    def acquire(self, owner: str, seconds: float) -> Lease:
        """Room to hold one response of ``owner`` open for up to ``seconds``, or 429/503."""
        with self._lock:
            if self.held >= self.total:
                raise Problem(
                    503,
                    "Service Unavailable",
                    f"this API process already holds {self.total} waiting requests, the most "
                    "it holds at once; ask again without ?wait, or shortly",
                    type=SERVER_BUSY,
                    headers={"Retry-After": "1"},
                )
            self.held += 1
        try:
            key = KEY_PREFIX + owner
            member = uuid.uuid4().hex
            now = time.time()
            lapse = now + seconds + MARGIN_SECONDS
            retry = int(cast(int, self._take(keys=[key], args=[now, self.per_key, member, lapse])))
        except BaseException:
            self.leave()
            raise
        if retry >= 0:
            self.leave()
            raise Problem(
                429,
                "Too Many Requests",
                f"this API key already has {self.per_key} requests waiting (?wait or an "
                "event stream), the most it may hold at once; ask without ?wait, or when "
                "one has ended",
                type=TOO_MANY_HELD,
                headers={"Retry-After": str(max(1, min(retry, math.ceil(seconds))))},
            )
        return Lease(self, key, member)

    def leave(self) -> None:
        with self._lock:
            self.held -= 1

    @contextmanager
    def hold(self, owner: str, seconds: float) -> Iterator[Lease]:
        lease = self.acquire(owner, seconds)
        try:
            yield lease
        finally:
            lease.release()


def holds() -> Holds:
    """The app's :class:`Holds`, made on first use (so the app starts without Redis)."""
    found = current_app.extensions.get("smtpcheck.holds")
    if found is None:
        store = current_app.extensions["smtpcheck"]
        settings = store.settings
        found = Holds(store.connection, settings.max_held_per_key, settings.max_held)
        current_app.extensions["smtpcheck.holds"] = found
    return cast(Holds, found)


@contextmanager
def hold(owner: str, seconds: float) -> Iterator[Lease | None]:
    """:meth:`Holds.hold` of the current app; nothing to bound (no lease) when
    ``seconds`` is 0."""
    if seconds <= 0:
        yield None
        return
    with holds().hold(owner, seconds) as lease:
        yield lease


def acquire(owner: str, seconds: float) -> Lease:
    """:meth:`Holds.acquire` of the current app."""
    return holds().acquire(owner, seconds)
