"""Canceling a running check: ``DELETE /v1/checks/{id}`` sets a flag, the engine stops.

The API sets ``smtpcheck:cancel:<check id>`` (smtpcheck/contract.py). While a
check runs inside ``watching(...)``, the Connection reads in slices of
``POLL`` seconds and asks :class:`CancelWatch` between them (which reads the
flag from Redis at most once a slice), so even a tarpit that never sends a
byte is left within a second. The read that sees the flag raises
:class:`workers.errors.Canceled` (outcome ``canceled``); the engine says QUIT if
the dialogue allows it, and every later read gets at most ``GRACE`` seconds
before it is canceled too. Opening a new connection after that is refused.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar

import redis

from smtpcheck.contract import CANCEL_KEY_PREFIX
from workers.errors import Canceled, ReadTimeout

POLL = 0.25  # seconds between two looks at the flag during a read
GRACE = 0.5  # seconds a read may still take once the check is canceled (the QUIT reply)

log = logging.getLogger("smtpcheck.worker")


class CancelWatch:
    """Whether one check was canceled; reads Redis at most once per ``POLL``."""

    def __init__(self, connection: redis.Redis, check_id: str) -> None:
        self.connection = connection
        self.key = CANCEL_KEY_PREFIX + check_id
        self.canceled_at: float | None = None
        self._next_look = 0.0

    def requested(self) -> bool:
        if self.canceled_at is not None:
            return True
        now = time.monotonic()
        if now < self._next_look:
            return False
        self._next_look = now + POLL
        try:
            flagged = bool(self.connection.exists(self.key))
        except redis.exceptions.RedisError as exc:
            log.debug("cannot read %s: %s", self.key, exc)
            return False  # Redis away: the check runs on to its own deadline
        if flagged:
            self.canceled_at = now
        return flagged

    def check(self) -> None:
        """Raise Canceled once the check is canceled."""
        if self.requested():
            raise Canceled("the caller canceled the check")


_watch: ContextVar[CancelWatch | None] = ContextVar("cancel_watch", default=None)


@contextlib.contextmanager
def watching(connection: redis.Redis, check_id: str) -> Iterator[CancelWatch]:
    """Let ``DELETE`` cancel the check run inside this block (in this thread)."""
    watch = CancelWatch(connection, check_id)
    token = _watch.set(watch)
    try:
        yield watch
    finally:
        _watch.reset(token)


def before_connect() -> None:
    """Refuse to open a connection for a check already canceled."""
    watch = _watch.get()
    if watch is not None:
        watch.check()


def read(read_until: Callable[[float], bytes], deadline: float) -> bytes:
    """``read_until(deadline)``, in slices, raising Canceled when canceled.

    With no watch (``smtpcheck check --local``, tests) it is one plain read.
    The first read after the cancel raises at once; later ones (the QUIT's
    reply) get ``GRACE`` seconds, then raise as well.
    """
    watch = _watch.get()
    if watch is None:
        return read_until(deadline)
    first = watch.canceled_at is None
    while True:
        if watch.requested():
            assert watch.canceled_at is not None
            if first or time.monotonic() >= watch.canceled_at + GRACE:
                raise Canceled("the caller canceled the check")
            step = min(deadline, watch.canceled_at + GRACE)
        else:
            step = min(deadline, time.monotonic() + POLL)
        try:
            return read_until(step)
        except ReadTimeout:
            if step >= deadline:
                raise
