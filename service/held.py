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

A view that holds a check's answer asks for its room in the round trip that
reads the check, and holds no longer than it said::

    with held.asking(current_owner(), seconds) as ask:
        ...  # read the check with ask.command(...) beside, ask.answer(reply)
        lease = ask.lease()  # 429/503 here; None: the check had ended, nothing held
        ...  # block on Redis for at most `seconds`; lease.release_command() may
             # send the member's removal behind the blocking read

A streaming response (Server-Sent Events) takes its lease in the view, so
the 429/503 comes before the response starts, and hands the lease its
body, which gives the room back when the stream ends or the client goes::

    lease = held.acquire(current_owner(), seconds)
    return Response(lease.around(events()), mimetype="text/event-stream")
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import redis
from flask import current_app

from smtpcheck.contract import HELD_PREFIX

from .problems import SERVER_BUSY, TOO_MANY_HELD, Problem

T = TypeVar("T")

KEY_PREFIX = HELD_PREFIX
#: A member outlives its stated time by this much (the Redis read's own timeout).
MARGIN_SECONDS = 10

# Drop lapsed members, then add ARGV[3] (lapsing at ARGV[4]) if fewer than
# ARGV[2] remain. Returns -1 when added, else the seconds until the
# earliest held one lapses at the latest. Given a check's job hash (KEYS[2])
# and the fan-out record its id could name (KEYS[3]), it takes nothing and
# returns -2 (ENDED) when there is no fan-out and the job is gone or its
# status is one of ARGV[5], ARGV[6], ... (it has ended: nothing to wait for).
_TAKE = """
if #KEYS > 1 and redis.call('EXISTS', KEYS[3]) == 0 then
  local status = redis.call('HGET', KEYS[2], 'status')
  if not status then
    return -2
  end
  for i = 5, #ARGV do
    if status == ARGV[i] then
      return -2
    end
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.ceil(tonumber(first[2]) - tonumber(ARGV[1]))
end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[4]) - tonumber(ARGV[1])) + 1)
return -1
"""
TAKEN = -1
ENDED = -2


@dataclass
class Lease:
    """Room for one held response; :meth:`release` gives it back (once)."""

    holds: Holds
    key: str
    member: str
    released: bool = False
    staged: bool = False  # its ZREM is in a caller's batch

    def release_command(self) -> tuple[str, str, str]:
        """The command that gives the member back in Redis, for the caller to send
        (after a blocking read in the same batch; if that fails, the member lapses
        at its stated end). This process's count of held responses is given back
        by :meth:`release`, which its holder calls as the response ends
        (:func:`asking`, :meth:`around`)."""
        self.staged = True
        return ("ZREM", self.key, self.member)

    def release(self) -> None:
        """Give the room back (once)."""
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
        self.enter()
        try:
            key, member, args = _take_args(owner, seconds, self.per_key)
            reply = int(cast(int, self._take(keys=[key], args=args)))
        except BaseException:
            self.leave()
            raise
        if reply != TAKEN:
            self.leave()
            raise self.refused(reply, seconds)
        return Lease(self, key, member)

    def enter(self) -> None:
        """Count one more response this process holds, or 503 past its bound."""
        if not self.enter_if_room():
            raise Problem(
                503,
                "Service Unavailable",
                f"this API process already holds {self.total} waiting requests, the most "
                "it holds at once; ask again without ?wait, or shortly",
                type=SERVER_BUSY,
                headers={"Retry-After": "1"},
            )

    def enter_if_room(self) -> bool:
        with self._lock:
            if self.held >= self.total:
                return False
            self.held += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.held -= 1

    def refused(self, retry: int, seconds: float) -> Problem:
        """The 429 of a key at its bound, ``retry`` seconds before a hold of it lapses."""
        return Problem(
            429,
            "Too Many Requests",
            f"this API key already has {self.per_key} requests waiting (?wait or an "
            "event stream), the most it may hold at once; ask without ?wait, or when "
            "one has ended",
            type=TOO_MANY_HELD,
            headers={"Retry-After": str(max(1, min(retry, math.ceil(seconds))))},
        )


class Ask:
    """Room asked for one held answer of a check, in the round trip that reads the
    check (:func:`asking`): send :meth:`command` (the take) beside the reads, hand
    :meth:`answer` its reply, then :meth:`lease`. The take is written only for a
    check that has not ended, so an ended one costs nothing to ask for."""

    def __init__(self, holds: Holds, owner: str, seconds: float) -> None:
        self.holds = holds
        self.owner = owner
        self.seconds = seconds
        self.key, self.member, self.args = _take_args(owner, seconds, holds.per_key)
        self.entered = False  # counted in this process: the take is on its way
        self.reply: int | None = None
        self.held: Lease | None = None

    def command(
        self, job_key: str, fanout_key: str, ended: Iterable[str]
    ) -> tuple[Any, ...] | None:
        """The take, to send after the check's reads: for the job ``job_key`` unless
        its status is one of ``ended``, or for the fan-out ``fanout_key``. None when
        this process holds its most (:meth:`lease` then answers 503). Safe to send again
        with the reads (a retried read): it only adds this answer's own member."""
        if not self.entered:
            self.entered = self.holds.enter_if_room()
        if not self.entered:
            return None
        keys = (self.key, job_key, fanout_key)
        return ("EVAL", _TAKE, len(keys), *keys, *self.args, *ended)

    def answer(self, reply: object) -> None:
        """The staged take's reply (a lease taken is given back when :func:`asking`
        ends, whatever happens before :meth:`lease`)."""
        self.reply = int(cast(int, reply))
        if self.reply == TAKEN:
            self.held = Lease(self.holds, self.key, self.member)
        else:  # nothing held: the check had ended, or the key holds its most
            self.holds.leave()

    def lease(self) -> Lease | None:
        """The room held for the answer, or 429/503; None when the check had ended
        (or was gone) as the take read it: nothing is held."""
        if self.reply is None:  # not asked beside the reads (the process held its most)
            self.held = self.holds.acquire(self.owner, self.seconds)
        elif self.reply != ENDED and self.reply != TAKEN:
            raise self.holds.refused(self.reply, self.seconds)
        return self.held

    def close(self) -> None:
        if self.held is not None:
            self.held.release()
        elif self.entered and self.reply is None:
            self.holds.leave()  # staged, never answered (the read failed)

    def __enter__(self) -> Ask:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _take_args(owner: str, seconds: float, per_key: int) -> tuple[str, str, list[str | float]]:
    """The held set's key, a new member and the take script's first four arguments."""
    member = os.urandom(16).hex()  # random, as uuid4().hex, without its two Python calls
    now = time.time()
    return KEY_PREFIX + owner, member, [now, per_key, member, now + seconds + MARGIN_SECONDS]


def holds() -> Holds:
    """The app's :class:`Holds`, made on first use (so the app starts without Redis)."""
    found = current_app.extensions.get("smtpcheck.holds")
    if found is None:
        store = current_app.extensions["smtpcheck"]
        settings = store.settings
        found = Holds(store.connection, settings.max_held_per_key, settings.max_held)
        current_app.extensions["smtpcheck.holds"] = found
    return cast(Holds, found)


def asking(owner: str, seconds: float) -> Ask:
    """An :class:`Ask` of the current app, its room given back when the ``with``
    block ends (a class's own ``__exit__``: a generator's contextmanager costs
    three Python calls more)."""
    return Ask(holds(), owner, seconds)


def acquire(owner: str, seconds: float) -> Lease:
    """:meth:`Holds.acquire` of the current app."""
    return holds().acquire(owner, seconds)
