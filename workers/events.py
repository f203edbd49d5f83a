"""A running check's transcript lines, published as the engine records them.

Each line goes to the Redis stream ``smtpcheck:events:<check id>``
(smtpcheck/contract.py) as ``{"event": "line", "data": <the JSON entry>}``,
capped at ``EVENTS_MAXLEN`` entries and expiring with the check. The lines
are the transcript's own, so AUTH secrets are already ``****``. The API
reads the stream for ``GET /v1/checks/{id}/events`` and for the text
transcript of a check still running.

One thread per worker process writes the lines of every check in flight
(:class:`Publisher`): a check's thread only hands a line over and goes on
with its dialogue. The thread takes what has gathered (waiting at most
``LINGER`` seconds after the first line, so a line is in Redis within a few
milliseconds) and writes it all in one pipeline: an ``XADD`` per line (the
lines of one stream in one script), an
``EXPIRE`` for a stream's first lines and again at least every
``EXPIRE_REFRESH`` seconds, and one more with the check's last lines, so a
stream expires ``ttl`` after its check ended (an ``EXPIRE`` per line was a
third of a fast check's Redis commands). When a check ends, :meth:`CheckEvents.finish` writes
what is left of its lines at once (with whatever the caller adds to that
pipeline) and returns once they are in Redis, so the lines are there before
the worker stores the result (the API's ``/events`` relies on that order).

Publishing never fails a check: when Redis is away, the lines are dropped
with one warning per outage (they are still in the result), and ``finish``
waits for them at most ``FINISH_WAIT`` seconds.

The threaded worker goes one step further (:func:`holding`): a check's end
is kept, not written, until the worker has its result, and then goes out
with RQ's end transaction for the check (:meth:`HeldEnd.commit`): the last
lines, the ``/metrics`` counters, the politeness slot's release and the
result in one round trip, shared with whatever else of other checks the
thread writes at that moment. A batch holding such a commit is one
``MULTI``/``EXEC``, so the lines still come before the result, and nobody
sees half of a check's end. Batches are sent as they are, on a connection of
the sending thread's own (:mod:`smtpcheck.wire`), not through redis-py's
pipeline: the thread's, or, for ``finish`` (a check's end, which its caller
waits for), the caller's own, which writes that round trip itself rather
than waking the thread and waiting to be woken in turn; one write at a time,
in the order the batches were taken, so a check's lines still come first.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import redis

from smtpcheck import wire
from smtpcheck.contract import EVENTS_KEY_PREFIX, EVENTS_MAXLEN
from workers.daemon_thread import DaemonThread
from workers.transcript import entry_json, listening

log = logging.getLogger("smtpcheck.worker")

#: Seconds the thread lets lines gather after the first one before writing them.
LINGER = 0.005
#: Seconds a check's end waits for its lines to be written (Redis slow or away).
FINISH_WAIT = 2.0
#: Lines held at most while Redis cannot keep up; past it new lines are dropped.
MAX_PENDING = 100_000
#: Seconds at most between two ``EXPIRE`` of a running check's stream (and at
#: most half its TTL), so a long check's stream never expires while it runs.
EXPIRE_REFRESH = 60.0
#: Streams whose last ``EXPIRE`` the thread remembers; past it, it forgets them all
#: (each then gets one more ``EXPIRE`` than it needs).
MAX_TRACKED = 10_000

#: Commands as sent (smtpcheck/wire.py). What callers add to the publisher's
#: round trips comes built like this, not staged on a redis-py pipeline that
#: the publisher would build for each batch on the way to a check's result.
Commands = list[wire.Command]
_MAXLEN = str(EVENTS_MAXLEN)

# KEYS[1] a check's stream; ARGV[1] its cap, then one JSON entry per line: each
# added as its own XADD would add it.
_ADD_LINES = """
for i = 2, #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'event', 'line', 'data', ARGV[i])
end
return #ARGV - 1
"""


def _added(key: str, entries: list[str]) -> wire.Command:
    """The command adding ``entries`` to the stream ``key``: one line's XADD
    (the same as redis-py's ``xadd(maxlen=EVENTS_MAXLEN, approximate=False)``),
    or several lines' XADDs in one script (EVAL: a batch must not fail on a
    script Redis lost), so a batch costs a reply per stream, not per line."""
    if len(entries) == 1:
        return ("XADD", key, "MAXLEN", _MAXLEN, "*", "event", "line", "data", entries[0])
    return ("EVAL", _ADD_LINES, 1, key, _MAXLEN, *entries)


@dataclass(eq=False)
class Written:
    """A caller's wait for one round trip: ``error`` says why its commit failed."""

    event: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def wait(self, timeout: float | None = None) -> bool:
        return self.event.wait(timeout)


@dataclass(eq=False)
class _Batch:
    """What one round trip writes for one Redis client."""

    lines: dict[str, list[str]] = field(default_factory=dict)  # stream key: its JSON entries
    ttls: dict[str, int] = field(default_factory=dict)
    ends: dict[str, int] = field(default_factory=dict)  # streams of checks that ended: TTL
    added: Commands = field(default_factory=list)  # callers' commands
    starts: list[tuple[Commands, str]] = field(default_factory=list)  # (commands, check id)
    commits: list[tuple[Commands, Written]] = field(default_factory=list)
    done: list[Written] = field(default_factory=list)


class Publisher:
    """The process's one writer of transcript lines (created on first use,
    again after a fork)."""

    def __init__(self, linger: float = LINGER) -> None:
        self.linger = linger
        self._batches: dict[int, tuple[redis.Redis, _Batch]] = {}
        self._pending = 0
        self._urgent = False
        self._told = False  # the thread was woken for what is gathered
        # Taken by every line of every check: a plain lock costs no Python to
        # take (a Condition's does); the thread waits on a Condition over it.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        # Held by whoever takes gathered batches and writes them (this thread,
        # or a caller of finish()): batches go out one round trip after the
        # other, in the order they were taken. Taken before _lock, never while
        # holding it.
        self._writing = threading.Lock()
        self._thread = DaemonThread(self._run, "smtpcheck-events")
        self._failing = False
        self._refresh_at: dict[str, float] = {}  # stream key: when to EXPIRE it again
        self.round_trips = 0  # for tests and benchmarks

    def _batch(self, connection: redis.Redis) -> _Batch:
        """The batch being gathered for ``connection`` (call holding ``_lock``)."""
        entry = self._batches.get(id(connection))
        if entry is None:
            entry = self._batches[id(connection)] = (connection, _Batch())
        self._thread.ensure()
        return entry[1]

    def line(self, connection: redis.Redis, key: str, ttl: int, data: str) -> None:
        with self._lock:
            if self._pending >= MAX_PENDING:
                return  # Redis far behind: the line is still in the result
            entry = self._batches.get(id(connection))
            # A batch already gathered has the thread running for it (it was
            # started with the batch's first item), so a line needs no ensure().
            batch = entry[1] if entry is not None else self._batch(connection)
            batch.lines.setdefault(key, []).append(data)
            batch.ttls[key] = ttl
            self._pending += 1
            if not self._told:  # it waits for a first line; later ones it takes with it
                self._told = True
                self._cond.notify()

    def add(self, connection: redis.Redis, commands: Commands) -> None:
        """Add ``commands`` to the next round trip: the one a line asks for
        (within ``LINGER``) or a check's end makes. It wakes no thread: a
        check's politeness slot goes back this way just before its end."""
        with self._lock:
            self._batch(connection).added += commands

    def start(
        self, connection: redis.Redis, commands: Commands, check_id: str, *, wake: bool = True
    ) -> None:
        """Send a check's start (RQ's start transaction) with the next round
        trip (within ``LINGER``), before anything later of the same check;
        nobody waits for it: a failure is logged and the check runs on.

        Without ``wake`` the thread is not woken for it (a thread switch
        between a check's start and its connect): for a job whose first step
        is a transcript line (which wakes it; a check notes one before it
        resolves its host or dials it) or its end."""
        with self._lock:
            self._batch(connection).starts.append((commands, check_id))
            if wake and not self._told:
                self._told = True
                self._cond.notify()

    def finish(
        self,
        connection: redis.Redis,
        commands: Commands | None = None,
        key: str | None = None,
        ttl: int = 0,
        commit: Commands | None = None,
    ) -> Written:
        """Write every line handed over so far, and ``commands``, now;
        with ``key``, that stream's check has ended: it expires ``ttl`` from now.
        With ``commit``, those commands come last, and the whole round trip is
        one transaction; the answer's ``error`` says whether they failed.

        The calling thread writes the round trip itself, on its own connection
        (:func:`smtpcheck.wire.of`), with whatever else is gathered for
        ``connection`` at that moment (other checks' lines and ends): a caller
        waits for it anyway, and handing it to the thread cost two thread
        switches between a check's end and its result. Only when another
        write holds on past ``FINISH_WAIT`` (Redis slow) is it left to the
        thread, and the answer comes once that is written."""
        done = Written()
        with self._lock:
            batch = self._batch(connection)
            if key is not None:
                batch.ends[key] = ttl
            if commands is not None:
                batch.added += commands
            if commit is not None:
                batch.commits.append((commit, done))
            batch.done.append(done)
        if not self._writing.acquire(timeout=FINISH_WAIT):
            with self._lock:
                self._urgent = self._told = True
                self._cond.notify()
            return done
        try:
            if not done.event.is_set():  # (written meanwhile, with another's round trip)
                self._write_gathered(connection)
        finally:
            self._writing.release()
        return done

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._batches:
                    self._told = False
                    self._cond.wait()
                if not self._urgent:  # let the lines of this moment gather
                    self._cond.wait_for(lambda: self._urgent, self.linger)
            with self._writing:
                self._write_gathered()

    def _write_gathered(self, connection: redis.Redis | None = None) -> None:
        """Take what is gathered (for ``connection`` only, or for every
        client) and write it, one round trip per client (holding ``_writing``)."""
        for client, batch in self._gathered(connection):
            self._write(client, batch)

    def _gathered(self, connection: redis.Redis | None) -> list[tuple[redis.Redis, _Batch]]:
        """Take what is gathered, for ``connection`` or (the thread) every client."""
        with self._lock:
            if connection is None:  # the thread: not a batch whose waiter writes it
                batches = [
                    entry for entry in self._batches.values() if self._urgent or not entry[1].done
                ]
                for client, _ in batches:
                    del self._batches[id(client)]
                self._urgent = False
            else:
                entry = self._batches.pop(id(connection), None)
                batches = [] if entry is None else [entry]
            self._pending = sum(
                len(lines) for _, left in self._batches.values() for lines in left.lines.values()
            )
        return batches

    def _expiries(self, batch: _Batch) -> list[wire.Command]:
        """An ``EXPIRE`` for each stream that is new, due again, or ended."""
        moment = time.monotonic()
        refresh_at = self._refresh_at
        if len(refresh_at) > MAX_TRACKED:
            refresh_at.clear()
        commands: list[wire.Command] = []
        for key, ttl in batch.ttls.items():
            if key not in batch.ends and refresh_at.get(key, moment) > moment:
                continue
            commands.append(("EXPIRE", key, ttl))
            refresh_at[key] = moment + min(EXPIRE_REFRESH, ttl / 2)
        for key, ttl in batch.ends.items():
            if key not in batch.ttls:  # its lines went out before
                commands.append(("EXPIRE", key, ttl))
            refresh_at.pop(key, None)
        return commands

    def _write(self, connection: redis.Redis, batch: _Batch) -> None:
        starts = []
        commands: list[wire.Command] = []
        for staged, check_id in batch.starts:  # first: before any of their checks' ends
            starts.append((len(commands), len(commands) + len(staged), check_id))
            commands += staged
        try:
            commands += [_added(key, entries) for key, entries in batch.lines.items()]
            commands += self._expiries(batch)
            commands += batch.added
            shared = len(commands)
            spans = []
            for staged, written in batch.commits:
                spans.append((len(commands), len(commands) + len(staged), written))
                commands += staged
            if not commands:  # a wait for what was handed over before: all written
                return
            # A check's start or result among them: one transaction, in order.
            replies = wire.of(connection).execute(
                commands, transaction=bool(batch.commits or batch.starts)
            )
            self.round_trips += 1
            for start, end, written in spans:
                written.error = wire.first_error(replies[start:end])
            for start, end, check_id in starts:
                error = wire.first_error(replies[start:end])
                if error is not None:
                    log.warning("check %s: its start was not written: %s", check_id, error)
            first = starts[-1][1] if starts else 0
            failed = wire.first_error(replies[first:shared])
            if failed is not None:  # a caller's or a line's command: the checks go on
                log.warning("publishing transcript lines: a command failed: %s", failed)
            elif self._failing:
                log.info("transcript lines are published again")
            self._failing = False
        except Exception as exc:  # Redis away, or a bug: the thread goes on
            for _, written in batch.commits:
                written.error = exc
            if not isinstance(exc, redis.exceptions.RedisError):
                for _, _, check_id in starts:
                    log.warning("check %s: its start was not written: %s", check_id, exc)
                log.exception("publishing transcript lines failed")
            elif not self._failing:  # one warning per outage, not one per check; they go on
                lost = sum(len(entries) for entries in batch.lines.values())
                log.warning(
                    "cannot publish %d transcript lines (and %d checks' starts): %s",
                    lost,
                    len(starts),
                    exc,
                )
                self._failing = True
        finally:
            for done in batch.done:
                done.event.set()


_publisher = Publisher()


def publisher() -> Publisher:
    """This process's publisher."""
    return _publisher


_current: ContextVar[CheckEvents | None] = ContextVar("check_events", default=None)


class HeldEnd:
    """A check's end (its last lines and what its caller adds), kept by
    :func:`holding` until the worker writes it with the check's result."""

    def __init__(self) -> None:
        self.events: CheckEvents | None = None
        self.commands: Commands | None = None

    @property
    def pending(self) -> bool:
        return self.events is not None

    def writes_to(self, connection: redis.Redis) -> bool:
        """Whether an end is held and goes to ``connection``'s Redis."""
        return self.events is not None and self.events.connection is connection

    def flush(self) -> bool:
        """Write the end on its own (no result with it): a failure, a retry, a
        check failed meanwhile. False when its lines took past ``FINISH_WAIT``."""
        events, self.events = self.events, None
        return events is None or events.write_end(self.commands)

    def commit(self, commands: Commands) -> None:
        """Write the end and ``commands`` (RQ's end of the check) in one
        transaction, waiting for it; raises what made it fail. Either way the
        end is no longer held."""
        events, self.events = self.events, None
        assert events is not None
        written = events.publisher.finish(
            events.connection, self.commands, events.key, events.ttl, commit=commands
        )
        # Bounded by the publisher's round trip, which the read timeout of the
        # worker's connections bounds (workers/pool.py): a Redis that stops
        # answering fails it (and so this end) within that timeout.
        written.wait()
        if written.error is not None:
            raise written.error


_held: ContextVar[HeldEnd | None] = ContextVar("held_end", default=None)


@contextlib.contextmanager
def holding() -> Iterator[HeldEnd]:
    """Inside this block (in this thread), a published check's ``finish``
    keeps its end in the :class:`HeldEnd` instead of writing it."""
    held = HeldEnd()
    token = _held.set(held)
    try:
        yield held
    finally:
        _held.reset(token)


class CheckEvents:
    """One check's side of the publisher: its stream key and TTL."""

    def __init__(
        self,
        connection: redis.Redis,
        check_id: str,
        ttl: int,
        publisher: Publisher | None = None,
    ) -> None:
        self.connection = connection
        self.key = EVENTS_KEY_PREFIX + check_id
        self.ttl = ttl
        self.publisher = publisher or _publisher
        self.finished = False

    def line(self, entry: dict[str, Any]) -> None:
        data = entry_json(entry)
        self.publisher.line(self.connection, self.key, self.ttl, data)

    def finish(self, commands: Commands | None = None) -> bool:
        """Write the rest of the check's lines (and ``commands``) now; True once
        they are in Redis, False when that took longer than ``FINISH_WAIT``.
        Inside :func:`holding`, the end is kept there instead (True)."""
        self.finished = True
        held = _held.get()
        if held is not None and not held.pending:
            held.events, held.commands = self, commands
            return True
        return self.write_end(commands)

    def write_end(self, commands: Commands | None) -> bool:
        started = time.monotonic()
        done = self.publisher.finish(self.connection, commands, self.key, self.ttl)
        written = done.wait(FINISH_WAIT)
        if not written:
            log.warning(
                "transcript lines of %s not written after %.1f s; storing the result anyway",
                self.key,
                time.monotonic() - started,
            )
        return written


@contextlib.contextmanager
def publishing(
    connection: redis.Redis, check_id: str, ttl: int, publisher: Publisher | None = None
) -> Iterator[CheckEvents]:
    """Publish every transcript line recorded in this block (in this thread).

    Leaving the block without :meth:`CheckEvents.finish` (an exception) still
    writes the lines first."""
    events = CheckEvents(connection, check_id, ttl, publisher)
    token = _current.set(events)
    try:
        with listening(events.line):
            yield events
    finally:
        _current.reset(token)
        if not events.finished:
            events.finish()


def written_so_far(connection: redis.Redis, publisher: Publisher | None = None) -> bool:
    """Wait until what was handed to the publisher for ``connection`` (a
    check's start) is in Redis, at most ``FINISH_WAIT``: before a write that
    must come after it but does not go through the publisher."""
    return (publisher or _publisher).finish(connection).wait(FINISH_WAIT)


def defer(connection: redis.Redis, commands: Commands) -> bool:
    """Send ``commands`` with the running check's next round trip (its next
    lines', within ``LINGER``, or its end's, which the end waits for).
    False outside a published check or for another Redis: run them yourself."""
    events = _current.get()
    if events is None or events.connection is not connection or events.finished:
        return False
    events.publisher.add(connection, commands)
    return True
