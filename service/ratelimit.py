"""Admission of new checks, per API key: a rate limit and a cap on checks in flight.

Only ``POST /v1/checks`` is admitted here; reads are not limited (each is
cheap and bounded: ``?wait`` is capped, and gunicorn's worker count bounds
how many are held at once).

- Rate: ``SMTPCHECK_RATE_LIMIT`` (the ``limits`` package's syntax, e.g.
  ``60/minute;1000/hour``), a moving window per key kept in Redis, so it
  holds across API processes and machines. Every POST counts, valid or not.
- Concurrency: at most ``SMTPCHECK_MAX_CONCURRENT_PER_KEY`` checks of one
  key queued, waiting for a retry, or running. Each key has a sorted set
  ``smtpcheck:active:<key name>`` of its check ids (and short-lived
  reservations taken just before enqueueing); a check that ended, was
  deleted or expired is dropped from it the next time the key is full, so
  nothing has to report back and a dead worker cannot leak a slot.

Both refusals are 429 problem+json with ``Retry-After``.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

import redis
from flask import current_app
from limits import RateLimitItem, parse_many
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter
from rq.job import Job, JobStatus

from smtpcheck.config import Settings
from smtpcheck.contract import ACTIVE_PREFIX, RATELIMIT_PREFIX
from smtpcheck.redis_client import DEFAULT_URL

from .problems import RATE_LIMITED, TOO_MANY_CHECKS, Problem

RESERVATION_PREFIX = "reserved:"
#: A reservation not turned into a check id within this many seconds is void.
RESERVATION_SECONDS = 30
#: What a caller refused for too many checks in flight is told to wait.
BUSY_RETRY_AFTER = 5
#: Statuses of a check that no longer occupies a slot.
ENDED = frozenset(
    status.value.encode()
    for status in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)
)

# Drop stale entries, then add ARGV[3] (expiring at ARGV[4]) if fewer than
# ARGV[2] remain. Returns the count before adding, negated when full.
_RESERVE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local held = redis.call('ZCARD', KEYS[1])
if held >= tonumber(ARGV[2]) then
  return -held - 1
end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[5]) then
  redis.call('EXPIRE', KEYS[1], ARGV[5])
end
return held
"""


@dataclass
class Slot:
    """A reservation for one check of ``owner``; :meth:`hold` binds it to the check id."""

    admission: Admission
    owner: str
    member: str

    def hold(self, check_id: str) -> None:
        key = self.admission.active_key(self.owner)
        with self.admission.connection.pipeline() as pipe:
            pipe.zadd(key, {check_id: time.time() + self.admission.settings.result_ttl})
            pipe.zrem(key, self.member)
            pipe.execute()
        self.member = check_id


class Admission:
    """The rate limiter and the in-flight cap for one app."""

    def __init__(self, settings: Settings, connection: redis.Redis) -> None:
        self.settings = settings
        self.connection = connection
        self.items: list[RateLimitItem] = parse_many(settings.rate_limit)
        # The limiter shares the app's pool (smtpcheck.redis_client): same URL
        # parsing, same primary after a failover; the URI here is only a label.
        storage = RedisStorage(
            settings.redis_url or DEFAULT_URL,
            connection_pool=connection.connection_pool,
            key_prefix=RATELIMIT_PREFIX,
        )
        self.limiter = MovingWindowRateLimiter(storage)
        self._reserve = connection.register_script(_RESERVE)

    # -- rate ------------------------------------------------------------------

    def check_rate(self, owner: str) -> None:
        """Count one POST for ``owner``; 429 when any of the limits is spent."""
        # One round trip per limit, as flask-limiter does: a POST refused by a
        # later (longer) window still counts in the earlier ones, which only
        # delays a caller who is over a limit anyway.
        for item in self.items:
            if not self.limiter.hit(item, owner):
                raise self._rate_limited(item, owner)

    def _rate_limited(self, item: RateLimitItem, owner: str) -> Problem:
        reset = self.limiter.get_window_stats(item, owner).reset_time
        wait = max(1, math.ceil(reset - time.time()))
        return Problem(
            429,
            "Too Many Requests",
            f"this API key may submit {item} checks; try again in {wait} s",
            type=RATE_LIMITED,
            headers={"Retry-After": str(wait)},
        )

    # -- concurrency -------------------------------------------------------------

    def active_key(self, owner: str) -> str:
        return ACTIVE_PREFIX + owner

    @contextmanager
    def slot(self, owner: str) -> Iterator[Slot]:
        """Reserve room for one more check of ``owner`` (429 when full).

        The caller enqueues inside the block and calls ``slot.hold(check_id)``;
        a block that raises gives the room back.
        """
        member = RESERVATION_PREFIX + uuid.uuid4().hex
        if not self._try_reserve(owner, member):
            self._forget_ended(owner)
            if not self._try_reserve(owner, member):
                limit = self.settings.max_concurrent_per_key
                raise Problem(
                    429,
                    "Too Many Requests",
                    f"this API key already has {limit} checks queued or running, the most it "
                    "may have at once; submit more when one has ended",
                    type=TOO_MANY_CHECKS,
                    headers={"Retry-After": str(BUSY_RETRY_AFTER)},
                )
        slot = Slot(self, owner, member)
        try:
            yield slot
        except BaseException:
            self.connection.zrem(self.active_key(owner), slot.member)
            raise

    def _try_reserve(self, owner: str, member: str) -> bool:
        now = time.time()
        held = self._reserve(
            keys=[self.active_key(owner)],
            args=[
                now,
                self.settings.max_concurrent_per_key,
                member,
                now + RESERVATION_SECONDS,
                self.settings.result_ttl + RESERVATION_SECONDS,
            ],
        )
        return int(cast(int, held)) >= 0

    def _forget_ended(self, owner: str) -> None:
        """Drop the checks of ``owner`` that ended, were deleted or expired."""
        key = self.active_key(owner)
        members = [m.decode() for m in cast(list[bytes], self.connection.zrange(key, 0, -1))]
        check_ids = [m for m in members if not m.startswith(RESERVATION_PREFIX)]
        if not check_ids:
            return
        with self.connection.pipeline(transaction=False) as pipe:
            for check_id in check_ids:
                pipe.hget(Job.key_for(check_id), "status")
            statuses = cast(list[bytes | None], pipe.execute())
        gone = [
            check_id
            for check_id, status in zip(check_ids, statuses, strict=True)
            if status is None or status in ENDED
        ]
        if gone:
            self.connection.zrem(key, *gone)


def admission() -> Admission:
    """The app's :class:`Admission`, made on first use (so the app starts without Redis)."""
    found = current_app.extensions.get("smtpcheck.admission")
    if found is None:
        store = current_app.extensions["smtpcheck"]
        found = Admission(store.settings, store.connection)
        current_app.extensions["smtpcheck.admission"] = found
    return cast(Admission, found)
