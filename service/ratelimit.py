"""Admission of new checks, per API key: a rate limit and a cap on checks in flight.

Both count what a request creates: a ``vantage: "all"`` check that fans out
to three vantages is three submissions and three checks in flight. One Lua
script (one round trip) decides both at once and writes the checks, all or
nothing: either every window has room for all of the request's checks and
the cap has room for them too, and all are counted and written (their jobs,
queues, listing: the commands the caller staged), or nothing is. (Redis
does not roll a script back: a staged command failing inside it, say on a
key of the wrong type, would leave what ran before it. The commands are
RQ's and ours, on keys only they write.)

- Rate: ``SMTPCHECK_RATE_LIMIT`` (the ``limits`` package's syntax, e.g.
  ``60/minute;1000/hour``), each a moving window per key: a sorted set
  ``smtpcheck:ratelimit:<key name>:<amount>/<seconds>`` of the checks
  counted in it, scored by when. It lives in Redis, so it holds across API
  processes and machines. A POST that creates nothing (invalid, wrong media
  type, over the cap) still counts once: probing costs the same as
  submitting.
- Concurrency: at most ``SMTPCHECK_MAX_CONCURRENT_PER_KEY`` checks of one
  key queued, waiting for a retry, or running: a sorted set
  ``smtpcheck:active:<key name>`` of their ids, scored with the moment they
  expire. A check that ended, was deleted or expired is dropped from it the
  next time the key is full, so nothing has to report back and a dead
  worker cannot leak a slot. An id is counted in the same script that
  writes its job, so an API process dying at any moment leaves either both
  or neither: an id without a job is one whose job expired or was deleted,
  dropped at once.

Both refusals are 429 problem+json saying which limit, with ``Retry-After``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import redis
from flask import Flask
from limits import parse_many
from redis.typing import EncodableT
from rq.job import Job, JobStatus

from smtpcheck import wire
from smtpcheck.config import Settings
from smtpcheck.contract import ACTIVE_PREFIX, RATELIMIT_PREFIX

from .problems import RATE_LIMITED, TOO_MANY_CHECKS, Problem

KEY_PREFIX = RATELIMIT_PREFIX + ":"
#: What a caller refused for too many checks in flight is told to wait.
BUSY_RETRY_AFTER = 5
#: Statuses of a check that no longer occupies a slot.
ENDED = frozenset(
    status.value.encode()
    for status in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)
)

# KEYS: the active set, then one sorted set per rate window.
# ARGV: now, the cap (0: none), the active members' expiry, the number of
# windows, then (amount, seconds) per window, then how many members, the
# members to count, then the writes: per command its word count and words.
# Returns {0} when all were counted and written; {1, window, seconds to
# wait} when a window has no room (seconds -1: the request alone is over
# the limit); {2, held} when the cap has no room. Refused: nothing written.
_ADMIT = wire.Script("""
local now = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local windows = tonumber(ARGV[4])
local n = tonumber(ARGV[5 + 2 * windows])
local first = 6 + 2 * windows
local last = first + n - 1
for w = 1, windows do
  local key = KEYS[1 + w]
  local amount = tonumber(ARGV[3 + 2 * w])
  local seconds = tonumber(ARGV[4 + 2 * w])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - seconds)
  local count = redis.call('ZCARD', key)
  if count + n > amount then
    if n > amount then
      return {1, w, -1}
    end
    local lapse = count + n - amount - 1
    local oldest = redis.call('ZRANGE', key, lapse, lapse, 'WITHSCORES')
    return {1, w, math.ceil(tonumber(oldest[2]) + seconds - now)}
  end
end
if cap > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  local held = redis.call('ZCARD', KEYS[1])
  if held + n > cap then
    return {2, held}
  end
end
for w = 1, windows do
  local key = KEYS[1 + w]
  for i = first, last do
    redis.call('ZADD', key, now, ARGV[i])
  end
  redis.call('EXPIRE', key, math.ceil(tonumber(ARGV[4 + 2 * w])) + 1)
end
if cap > 0 then
  for i = first, last do
    redis.call('ZADD', KEYS[1], ARGV[3], ARGV[i])
  end
  if redis.call('TTL', KEYS[1]) < math.ceil(tonumber(ARGV[3]) - now) then
    redis.call('EXPIREAT', KEYS[1], math.ceil(tonumber(ARGV[3])))
  end
end
local i = last + 1
while i <= #ARGV do
  local words = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + words))
  i = i + words + 1
end
return {0}
""")

#: One Redis command as redis-py takes it: its words.
Command = tuple[EncodableT, ...]


@dataclass(frozen=True)
class Window:
    amount: int
    seconds: int
    text: str  # as the setting says it: "60 per 1 minute"


class Admission:
    """The rate limiter and the in-flight cap for one app."""

    def __init__(self, settings: Settings, connection: redis.Redis) -> None:
        self.settings = settings
        self.connection = connection
        self.windows = [
            Window(item.amount, item.get_expiry(), str(item))
            for item in parse_many(settings.rate_limit)
        ]
        # One EVALSHA per POST, its arguments the check's whole job hash: packed in
        # one go on a connection this Admission keeps, past redis-py's per-command
        # machinery and its pool's checkout. A write, so never sent twice
        # (smtpcheck/redis_client.py).
        self._wire = wire.kept(connection)
        self._keys: dict[str, list[str]] = {}

    def active_key(self, owner: str) -> str:
        return ACTIVE_PREFIX + owner

    def window_key(self, owner: str, window: Window) -> str:
        return f"{KEY_PREFIX}{owner}:{window.amount}/{window.seconds}"

    def admit(self, owner: str, check_ids: list[str], writes: Sequence[Command]) -> None:
        """Count ``check_ids`` (the checks one request creates) against both limits and
        run ``writes`` (the commands that create them) in the same script, or 429 with
        nothing counted or written. The ids hold their slots until they end.
        """
        verdict = self._run(owner, check_ids, capped=True, writes=writes)
        if verdict[0] == 2:
            self._forget_ended(owner)
            verdict = self._run(owner, check_ids, capped=True, writes=writes)
        if verdict[0] == 1:
            raise self._rate_limited(verdict, len(check_ids))
        if verdict[0] == 2:
            self.charge(owner)  # a refused POST counts once, like an invalid one
            limit = self.settings.max_concurrent_per_key
            asked = f" (this request would add {len(check_ids)})" if len(check_ids) > 1 else ""
            raise Problem(
                429,
                "Too Many Requests",
                f"too-many-checks: this API key already has {verdict[1]} of its {limit} checks "
                f"queued or running, the most it may have at once{asked}; submit more when "
                f"one has ended",
                type=TOO_MANY_CHECKS,
                headers={"Retry-After": str(BUSY_RETRY_AFTER)},
            )

    def charge(self, owner: str) -> None:
        """Count one POST that creates no check; 429 if the rate has no room for it."""
        verdict = self._run(owner, [f"refused:{uuid.uuid4().hex}"], capped=False)
        if verdict[0] == 1:
            raise self._rate_limited(verdict, 1)

    def _run(
        self, owner: str, members: list[str], *, capped: bool, writes: Sequence[Command] = ()
    ) -> list[int]:
        now = time.time()
        cap = self.settings.max_concurrent_per_key if capped else 0
        args: list[EncodableT] = [now, cap, now + self.settings.result_ttl, len(self.windows)]
        for window in self.windows:
            args += [window.amount, window.seconds]
        args += [len(members), *members]
        for command in writes:
            args += [len(command), *command]
        keys = self._keys.get(owner)
        if keys is None:  # one list per API key name (they are configured: a few)
            keys = [self.active_key(owner)] + [self.window_key(owner, w) for w in self.windows]
            self._keys[owner] = keys
        verdict: list[int] = self._wire.script(_ADMIT, keys, args)
        return list(map(int, verdict))

    def _rate_limited(self, verdict: list[int], created: int) -> Problem:
        window = self.windows[verdict[1] - 1]
        if verdict[2] < 0:
            return Problem(
                429,
                "Too Many Requests",
                f"rate-limited: this request creates {created} checks, more than this API key "
                f"may submit at all ({window.text})",
                type=RATE_LIMITED,
                headers={"Retry-After": str(window.seconds)},
            )
        wait = max(1, verdict[2])
        return Problem(
            429,
            "Too Many Requests",
            f"rate-limited: this API key may submit {window.text} checks; try again in {wait} s",
            type=RATE_LIMITED,
            headers={"Retry-After": str(wait)},
        )

    def _forget_ended(self, owner: str) -> None:
        """Drop the checks of ``owner`` that ended, were deleted or expired (an id is
        counted by the script that writes its job, so one with no job is gone)."""
        key = self.active_key(owner)
        held = cast(list[tuple[bytes, float]], self.connection.zrange(key, 0, -1, withscores=True))
        if not held:
            return
        with self.connection.pipeline(transaction=False) as pipe:
            for member, _ in held:
                pipe.hget(Job.key_for(member.decode()), "status")
            statuses = cast(list[bytes | None], pipe.execute())
        gone = [
            member
            for (member, _), status in zip(held, statuses, strict=True)
            if status is None or status in ENDED
        ]
        if gone:
            self.connection.zrem(key, *gone)


def admission(app: Flask) -> Admission:
    """The app's :class:`Admission`, made on first use (so the app starts without Redis)."""
    found: Admission | None = app.extensions.get("smtpcheck.admission")
    if found is None:
        store = app.extensions["smtpcheck"]
        found = app.extensions["smtpcheck.admission"] = Admission(store.settings, store.connection)
    return found
