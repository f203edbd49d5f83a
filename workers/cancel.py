"""Canceling a running check: ``DELETE /v1/checks/{id}`` sets a flag, the engine stops.

The API sets ``smtpcheck:cancel:<check id>`` (smtpcheck/contract.py). One
thread per worker process (:class:`Watcher`) looks at the flags of every
check in flight there, all in one ``MGET``, every ``POLL`` seconds (while a
check runs inside ``watching(...)``; with none, it goes on waking every
``POLL`` for ``IDLE_LOOKS`` seconds, so that a check starting then costs it
no wake-up, between the check's start and its connect), and marks a check's
:class:`CancelWatch` when its flag is up. The check's own thread never asks
Redis; it looks at its mark wherever it waits:

* reads: the Connection reads in slices of ``SLICE`` seconds (:func:`read`),
  so even a tarpit that never sends a byte is left within a second;
* the politeness gate's pauses (:func:`pause`);
* DNS lookups (:func:`interruptible`: the lookup runs in a thread of its
  own, bounded by its own timeout, while the check's thread waits for it or
  the cancel).

The wait that sees the mark raises :class:`workers.errors.Canceled` (outcome
``canceled``); the engine says QUIT if the dialogue allows it, and every later
read gets at most ``GRACE`` seconds before it is canceled too. Opening a new
connection after that is refused.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import TypeVar

import redis

from smtpcheck import wire
from smtpcheck.contract import CANCEL_KEY_PREFIX
from workers.daemon_thread import DaemonThread
from workers.errors import Canceled, ReadTimeout

POLL = 0.1  # seconds between two looks at the flags (one MGET per process)
SLICE = 0.25  # seconds of one read slice: a read sees the mark within POLL + SLICE
GRACE = 0.5  # seconds a read may still take once the check is canceled (the QUIT reply)
LOOKUP_SLICE = 0.05  # seconds between two looks at the mark while a DNS lookup runs
#: Seconds the watcher goes on waking every ``POLL`` once no check is watched,
#: before it waits to be woken by the next one (a check's ``SPARE_IDLE``).
IDLE_LOOKS = 10.0

log = logging.getLogger("smtpcheck.worker")

T = TypeVar("T")


class CancelWatch:
    """Whether one check was canceled: marked by the process's :class:`Watcher`."""

    def __init__(self, connection: redis.Redis, check_id: str) -> None:
        self.connection = connection
        self.key = CANCEL_KEY_PREFIX + check_id
        self.canceled_at: float | None = None
        self._event = threading.Event()

    def mark(self) -> None:
        if self.canceled_at is None:
            self.canceled_at = time.monotonic()
        self._event.set()

    def requested(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise Canceled once the check is canceled."""
        if self._event.is_set():
            raise Canceled("the caller canceled the check")

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds``, raising Canceled as soon as the check is canceled."""
        if self._event.wait(max(0.0, seconds)):
            raise Canceled("the caller canceled the check")


class Watcher:
    """One thread per process: every ``poll`` seconds, one ``MGET`` of the
    cancel flags of every check watched (per Redis client, on a connection
    of the thread's own: :mod:`smtpcheck.wire`), marking those up."""

    def __init__(self, poll: float = POLL, idle: float = IDLE_LOOKS) -> None:
        self.poll = poll
        self.idle = idle
        self._watches: set[CancelWatch] = set()
        self._cond = threading.Condition()
        self._thread = DaemonThread(self._run, "smtpcheck-cancel")
        self._failing = False
        #: The thread waits for a first watch (or has not started): only then
        #: does a new watch wake it (a wake-up on the way to the check's connect).
        self.parked = True
        self.round_trips = 0  # for tests and benchmarks

    def add(self, watch: CancelWatch) -> None:
        with self._cond:
            self._watches.add(watch)
            self._thread.ensure()
            if self.parked:
                self._cond.notify()

    def discard(self, watch: CancelWatch) -> None:
        with self._cond:
            self._watches.discard(watch)

    def _run(self) -> None:
        watched_at = time.monotonic()
        while True:
            with self._cond:
                if self._watches:
                    watched_at = time.monotonic()
                elif time.monotonic() - watched_at >= self.idle:
                    self.parked = True
                    self._cond.wait_for(lambda: bool(self._watches))
                self.parked = False
            time.sleep(self.poll)
            with self._cond:
                watches = [w for w in self._watches if not w.requested()]
            by_connection: dict[int, list[CancelWatch]] = {}
            for watch in watches:
                by_connection.setdefault(id(watch.connection), []).append(watch)
            for group in by_connection.values():
                self._look(group)

    def _look(self, watches: list[CancelWatch]) -> None:
        try:
            flags = wire.of(watches[0].connection).command(
                "MGET", *(watch.key for watch in watches)
            )
            self.round_trips += 1
        except redis.exceptions.RedisError as exc:
            if not self._failing:  # Redis away: the checks run on to their own deadlines
                log.warning("cannot read the cancel flags of %d checks: %s", len(watches), exc)
            self._failing = True
            return
        self._failing = False
        for watch, flag in zip(watches, flags, strict=True):
            if flag is not None:
                watch.mark()


_watcher = Watcher()
_watch: ContextVar[CancelWatch | None] = ContextVar("cancel_watch", default=None)


@contextlib.contextmanager
def watching(
    connection: redis.Redis, check_id: str, watcher: Watcher | None = None
) -> Iterator[CancelWatch]:
    """Let ``DELETE`` cancel the check run inside this block (in this thread)."""
    watch = CancelWatch(connection, check_id)
    watcher = watcher or _watcher
    watcher.add(watch)
    token = _watch.set(watch)
    try:
        yield watch
    finally:
        _watch.reset(token)
        watcher.discard(watch)


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Waits inside this block are not cut short by a cancel (a step whose
    caller has no way to end the check as canceled); later ones are again."""
    token = _watch.set(None)
    try:
        yield
    finally:
        _watch.reset(token)


def stop_if_canceled() -> None:
    """Raise Canceled if the check is canceled (before a connection opens,
    after a wait that ended early)."""
    watch = _watch.get()
    if watch is not None:
        watch.check()


def pause(seconds: float) -> None:
    """``time.sleep(seconds)``, cut short by Canceled when the check is canceled."""
    watch = _watch.get()
    if watch is None:
        time.sleep(seconds)
    else:
        watch.wait(seconds)


def join(thread: threading.Thread, timeout: float) -> None:
    """``thread.join(timeout)``, ending early when the check is canceled."""
    watch = _watch.get()
    if watch is None:
        thread.join(timeout)
        return
    ends = time.monotonic() + timeout
    while thread.is_alive() and not watch.requested():
        left = ends - time.monotonic()
        if left <= 0:
            return
        thread.join(min(left, LOOKUP_SLICE))


def interruptible(call: Callable[[], T], name: str = "smtpcheck-lookup") -> T:
    """``call()`` (a lookup bounded by its own timeout), given up with Canceled
    when the check is canceled while it runs.

    With no watch it runs in the calling thread. With one it runs in a thread
    of its own, which a cancel leaves to end by its own timeout.
    """
    watch = _watch.get()
    if watch is None:
        return call()
    watch.check()
    done = threading.Event()
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # handed to the waiting thread as it is
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name=name, daemon=True).start()
    while not done.wait(LOOKUP_SLICE):
        watch.check()
    if failure:
        raise failure[0]
    return outcome[0]


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
            step = min(deadline, time.monotonic() + SLICE)
        try:
            return read_until(step)
        except ReadTimeout:
            if step >= deadline:
                raise
