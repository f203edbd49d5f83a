"""Politeness: at most ``SMTPCHECK_MAX_CONCURRENT_PER_TARGET`` checks talk to
one address at once, across every worker of every vantage point.

No caller can lift this limit: it protects the mail servers being checked,
not the service. A :class:`TargetGate` is the ``gate`` that
``workers.job`` hands to ``workers.check.run_check``; the engine enters it
with the resolved address just before it dials, and leaves it when it is
done with that address (after QUIT and any probes).

Slots live in Redis, one sorted set per address
(``smtpcheck:target:<address>``): a member per check holding a slot, scored
with the moment its lease ends on Redis's own clock (``TIME``), so workers'
clocks need not agree. A holder renews its lease every ``RENEW_SECONDS``
while it talks; a worker that dies stops renewing and its slot frees itself
within ``LEASE_SECONDS``. Fairness: one API key takes at most
:func:`key_share` of an address's slots (half, rounded up), and more only
while one more stays free, so a caller's tarpit checks never take every slot
to an address another caller checks too. A check that finds every slot
taken, or its caller's share used, waits (noted in its transcript), bounded
by its own deadline; when the deadline passes first it ends with the outcome
``timeout``, and when the caller cancels it meanwhile, ``canceled`` at once.

If Redis cannot be reached the check goes ahead ungated, with a note: the
worker cannot take new checks from the queue then either, so at most the
checks already in hand are affected.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import cast

import redis

from smtpcheck import wire
from smtpcheck.contract import TARGET_SLOTS_PREFIX
from smtpcheck.targetpolicy import IPAddress
from workers import cancel, events
from workers.daemon_thread import DaemonThread
from workers.errors import CheckAborted

log = logging.getLogger(__name__)

LEASE_SECONDS = 15
RENEW_SECONDS = 5.0
POLL_FIRST = 0.05
POLL_MAX = 0.5

# KEYS[1] the address's set; ARGV: limit, member, lease seconds, the caller's
# member prefix ('' for none) and its share. Returns {taken (1/0), held, mine}:
# how many held a slot (all callers, then this caller) before.
_ACQUIRE = wire.Script("""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
local held = #members
local mine = 0
local prefix = ARGV[4]
if prefix ~= '' then
  for _, member in ipairs(members) do
    if string.sub(member, 1, #prefix) == prefix then
      mine = mine + 1
    end
  end
end
local limit = tonumber(ARGV[1])
-- Past its share a caller may take a slot only if one stays free for another.
if held >= limit or (prefix ~= '' and mine >= tonumber(ARGV[5]) and held + 1 >= limit) then
  return {0, held, mine}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3])) + 1)
return {1, held, mine}
""")

# KEYS[1] the address's set; ARGV: member, lease seconds. 1 if still held.
_RENEW = wire.Script("""
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 1)
return 1
""")


class TargetBusy(CheckAborted):
    """Every slot to the address stayed taken until the check's deadline."""

    outcome = "timeout"


def key_share(limit: int) -> int:
    """Slots to one address that one API key may always take: half, rounded
    up. Past it, a key takes a slot only while another stays free, so with a
    limit of 2 or more another caller always finds one free or gets the next."""
    return max(1, math.ceil(limit / 2))


class TargetGate:
    """``gate(address, deadline, note)``: a context manager holding one slot to ``address``.

    With ``owner`` (the API key's name, from ``job.meta``), that caller holds
    at most :func:`key_share` of the address's slots; its members in the set
    start with a hash of the name, so Redis never holds the name itself.
    """

    def __init__(
        self,
        connection: redis.Redis,
        limit: int,
        *,
        owner: str | None = None,
        lease: float = LEASE_SECONDS,
        renew_every: float = RENEW_SECONDS,
    ) -> None:
        self.connection = connection
        self.limit = limit
        self.share = key_share(limit)
        self.prefix = ""
        if owner:
            self.prefix = hashlib.sha256(owner.encode()).hexdigest()[:16] + ":"
        self.lease = lease
        self.renew_every = renew_every

    @contextlib.contextmanager
    def __call__(
        self, address: IPAddress, deadline: float, note: Callable[[str], None]
    ) -> Iterator[None]:
        key = TARGET_SLOTS_PREFIX + str(address)
        member = self.prefix + uuid.uuid4().hex
        try:
            self._wait_for_slot(key, member, address, deadline, note)
        except redis.exceptions.RedisError as exc:
            log.warning("politeness limit for %s not applied: Redis error: %s", address, exc)
            note(f"politeness limit not applied: Redis cannot be reached ({exc})")
            member = ""
        if not member:
            yield
            return
        lease = _Lease(self, key, member, time.monotonic() + self.renew_every)
        _renewer.hold(lease)
        try:
            yield
        finally:
            _renewer.release(lease)
            # In a worker the slot goes back with the check's last lines, in the
            # round trip its end makes anyway; elsewhere (tests, --local) at once.
            if not events.defer(self.connection, [("ZREM", key, member)]):
                with contextlib.suppress(redis.exceptions.RedisError):
                    self.connection.zrem(key, member)

    def _wait_for_slot(
        self,
        key: str,
        member: str,
        address: IPAddress,
        deadline: float,
        note: Callable[[str], None],
    ) -> None:
        started = time.monotonic()
        pause = POLL_FIRST
        waiting = False
        args: list[str | int | float] = [self.limit, member, self.lease, self.prefix, self.share]
        while True:
            # On a connection of this thread's own: a worker's check thread runs
            # one check after another and closes it when it ends; no pool
            # checkout per check (~40 Python calls, between resolving and dialling).
            reply = wire.of(self.connection).script(_ACQUIRE, [key], args)
            taken, held, mine = (int(n) for n in cast(list[int], reply))
            if taken:
                break
            share_used = held < self.limit
            if not waiting:
                waiting = True
                if share_used:
                    note(
                        f"waiting for a free slot: this API key's checks hold {mine} of the "
                        f"{self.limit} slots to {address}, its share (smtpcheck keeps the rest "
                        "for other callers)"
                    )
                else:
                    note(
                        f"waiting for a free slot: {held} checks are talking to {address} "
                        f"(smtpcheck lets at most {self.limit} talk to one address at once)"
                    )
            left = deadline - time.monotonic()
            if left <= 0:
                waited = time.monotonic() - started
                why = (
                    f"this API key's share ({self.share}) of the {self.limit} slots"
                    if share_used
                    else f"one of the {self.limit} slots"
                )
                raise TargetBusy(
                    f"waited {waited:.1f} s for {why} to {address} "
                    "(smtpcheck's limit on checks talking to one address at once); "
                    "none freed before the check's deadline"
                )
            cancel.pause(min(pause, left))  # a DELETE ends the wait at once
            pause = min(pause * 2, POLL_MAX)
        if waiting:
            note(f"slot to {address} free after {(time.monotonic() - started) * 1000:.0f} ms")

    def renew(self, key: str, member: str) -> bool:
        """Extend one lease; False when it was lost (expired, or Redis lost it).
        Called by the renewer thread, on a connection of its own."""
        return bool(wire.of(self.connection).script(_RENEW, [key], [member, self.lease]))


@dataclass(eq=False)
class _Lease:
    gate: TargetGate
    key: str
    member: str
    due: float


class _Renewer:
    """One thread per process renews every lease its checks hold (a thread per
    check would double the threads of a worker with many checks in flight).

    It sleeps until the soonest lease is due, and with none held until one is
    taken, so a process holding no lease never wakes for it; when it wakes it
    renews every lease due within ``BATCH`` seconds, so leases taken at
    different moments cost it a wake-up per ``BATCH`` at most, not one each."""

    BATCH = 0.5

    def __init__(self) -> None:
        self._leases: set[_Lease] = set()
        self._changed = threading.Condition()
        self._wake_at = math.inf  # when the thread wakes next (-inf: it is renewing)
        self._thread = DaemonThread(self._run, "smtpcheck-slots")

    def hold(self, lease: _Lease) -> None:
        with self._changed:
            self._leases.add(lease)
            self._thread.ensure()
            if lease.due < self._wake_at:
                self._changed.notify()

    def release(self, lease: _Lease) -> None:
        with self._changed:
            self._leases.discard(lease)

    def _run(self) -> None:
        while True:
            for lease in self._due():
                lease.due = time.monotonic() + lease.gate.renew_every
                try:
                    if not lease.gate.renew(lease.key, lease.member):
                        log.warning(
                            "politeness slot %s lost (lease expired); not renewing", lease.key
                        )
                        self.release(lease)
                except redis.exceptions.RedisError as exc:
                    log.warning("politeness slot %s not renewed: %s", lease.key, exc)

    def _due(self) -> list[_Lease]:
        """Wait for the soonest lease to be due; the leases due by then."""
        with self._changed:
            while True:
                moment = time.monotonic()
                soonest = min((lease.due for lease in self._leases), default=math.inf)
                if soonest <= moment:
                    break
                self._wake_at = soonest
                self._changed.wait(None if soonest == math.inf else soonest - moment)
            self._wake_at = -math.inf
            return [lease for lease in self._leases if lease.due <= moment + self.BATCH]


_renewer = _Renewer()
