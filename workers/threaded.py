"""Many checks in flight per worker process: RQ's worker with a thread per check.

A check spends nearly all its time waiting on a remote server, and the engine
is blocking-socket code with a deadline on every wait, so each check runs in
a thread of its own (the measured memory per check is in the README and in
bench/README.md). :class:`ThreadedCheckWorker` is RQ's ``SimpleWorker`` with
its work loop replaced:

* The main thread dequeues only while a slot is free, and starts a daemon
  thread for the check. With one queue it waits in RQ's ``BLMOVE`` into the
  queue's intermediate list with a script right behind it, so that the check
  comes with its job hash and up to ``TAKE_AT_ONCE`` checks in all (no more
  than the free slots) come in one round trip (the script doing RQ's
  ``LMOVE`` for each of the others). Checks taken but not started when it
  stops go back to the queue's front; the script lists them in the process's
  taken list too, so that if the process dies its pool puts them back there.
  Everything else of RQ's is kept per check: the
  thread creates the check's own ``Execution`` (its entry in the started
  registry and in the worker's execution set), runs the job through
  ``perform_job`` and finishes it through RQ's own success, failure and retry
  paths, so ``started``, ``finished``, ``failed`` and the abandoned-job
  cleanup stay true for every check in flight.
* One heartbeat thread beats for every check in flight, in one pipeline per
  ``JOB_MONITORING_INTERVAL``: the worker's registration, each execution and
  each started-registry entry (``HEARTBEAT_TTL``). It also notices what a
  Redis restart lost and writes it again (the worker's registration, a
  running check's job hash, execution and registry entry), and runs the
  watchdog.
* Watchdog: RQ's job timeout is a ``SIGALRM`` and only works in a process's
  main thread. Every check's engine bounds its own waits and the whole check
  (``timeouts.total``); the job timeout the API sets is that total plus a
  margin. A check still running past it is failed (``JobTimeoutException``)
  and its thread is left to end by itself, keeping its slot until it does; a
  process with a quarter of its slots held by such threads retires so that
  the pool starts a fresh one.
* Fairness: while other keys' checks wait, one API key (``job.meta["owner"]``,
  the key's name) holds at most ``KEY_SHARE`` of a process's slots: a check of
  a key at its share goes back to the end of the queue. Once the worker has
  gone round the whole queue seeing only such checks (nobody else waits), they
  take the free slots beyond the share but ``RESERVE_SHARE`` of them (20 of
  200), kept for whoever comes next; then it waits for a check to end.
* A plain success (no ``callback``: nothing depends on the check) ends in one
  round trip: RQ's end transaction is staged in the check's thread and the
  publisher (workers/events.py) writes it with the check's last lines, its
  counters and its slot's release, and whatever other checks' lines and
  ends go out at that moment, in one ``MULTI``/``EXEC``.
* Results are never silently lost: storing one is retried while Redis is
  away (up to ``STORE_RETRY_SECONDS``), a check whose job hash Redis lost is
  written again whole (a plain success writes the whole job in any case;
  other ends look first), and a result that still cannot be stored is
  reported in an ERROR line naming the check and its outcome.
* Signals (the pool sends SIGTERM): the first is a warm stop (take no new
  check, let every check in flight end by its own deadline, then exit); the
  next one is a cold stop: every check still in flight is failed at once,
  with the reason, and the process exits.

Log lines name the check they are about: each check's thread starts with its
own ``log_context`` (check id, vantage, request id); the main thread logs the
dequeue itself with the check's id.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import signal
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from queue import Empty, SimpleQueue
from types import FrameType, TracebackType
from typing import Any, TypeVar, cast
from uuid import uuid4

import redis
from rq.exceptions import DequeueTimeout, NoSuchJobError
from rq.executions import Execution, ExecutionRegistry
from rq.job import Job, JobStatus, Retry
from rq.queue import Queue
from rq.rate_limit import release_slot
from rq.registry import BaseRegistry, FinishedJobRegistry, StartedJobRegistry
from rq.results import Result
from rq.timeouts import BaseDeathPenalty
from rq.utils import current_timestamp, now, utcformat
from rq.worker import DequeueStrategy, SimpleWorker, WorkerStatus

from smtpcheck import wire
from smtpcheck.contract import JOB_FUNCTION, TAKEN_KEY_PREFIX
from smtpcheck.logs import log_context
from smtpcheck.redis_client import Outage
from workers import events
from workers.pool import DEFAULT_CONCURRENCY, HEARTBEAT_TTL, _Reregistering

log = logging.getLogger("smtpcheck.worker")

#: The part of one process's slots one API key may hold while other keys' checks wait.
KEY_SHARE = 0.5
#: The part of one process's slots kept free for the next caller when one key,
#: alone in the queue, runs past its share.
RESERVE_SHARE = 0.1
#: Seconds the main thread blocks in one BLMOVE (and so at most between a
#: stop signal and the loop noticing it).
DEQUEUE_BLOCK = 1
#: Checks taken from the queue at most in one round trip while slots are free.
TAKE_AT_ONCE = 16
#: Seconds the process's list of checks taken but not started lives after a take.
TAKEN_TTL = 60
#: How long a finished check keeps trying to store its result while Redis is away.
STORE_RETRY_SECONDS = 60.0
#: Watchdog margin when a job carries no timeout of its own.
DEFAULT_CHECK_LIMIT = 330
#: A check's start refreshes the worker's own heartbeat (RQ does it per job)
#: only when it was last written longer ago than this (seconds): a burst of
#: starts wrote it once each, three commands a check, while the heartbeat
#: thread writes it every ``JOB_MONITORING_INTERVAL`` anyway.
WORKER_BEAT_EVERY = 1.0
#: Seconds a check's thread, its check ended, waits for the next one before
#: it ends: a burst reuses its threads instead of starting one per check.
SPARE_IDLE = 10.0
#: A process whose slots are this much held by checks past their deadline retires.
STUCK_SHARE = 0.25

_ENDED = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
#: Check ends waiting for Redis to answer again, logged once per episode.
_ENDS_OUTAGE = Outage(log, "storing check results")

# Up to ARGV[1] checks from the queue KEYS[1] into its intermediate list
# KEYS[2], each as RQ's LMOVE does, with its job hash (ARGV[2]: the job key
# prefix): {id, {field, value, ...}, ...}; an id whose hash is gone comes with
# none and stays in the intermediate list, as with RQ's dequeue. With ARGV[3]
# '1' (sent right behind a BLMOVE into KEYS[2], which Redis runs first), the
# reply starts with the last id in KEYS[2] and its hash: the BLMOVE's check,
# unless another worker's move came between them ('' when KEYS[2] is empty).
# Every id taken with its hash is also appended to the process's taken list
# KEYS[3] (it lives ARGV[4] seconds): the pool puts those not started back if
# the process dies (workers/pool.py, Pool._abandon); a start or a put-back
# removes its id.
_TAKE = wire.Script("""
local taken = {}
local ids = {}
if ARGV[3] == '1' then
  local id = redis.call('LINDEX', KEYS[2], -1)
  if id then
    taken[1] = id
    taken[2] = redis.call('HGETALL', ARGV[2] .. id)
    if #taken[2] > 0 then
      ids[1] = id
    end
  else
    taken[1] = ''
    taken[2] = {}
  end
end
for _ = 1, tonumber(ARGV[1]) do
  local id = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
  if not id then
    break
  end
  local fields = redis.call('HGETALL', ARGV[2] .. id)
  taken[#taken + 1] = id
  taken[#taken + 1] = fields
  if #fields > 0 then
    ids[#ids + 1] = id
  end
end
if #ids > 0 then
  redis.call('RPUSH', KEYS[3], unpack(ids))
  redis.call('EXPIRE', KEYS[3], ARGV[4])
end
return taken
""")
_Registry = TypeVar("_Registry", bound=BaseRegistry)

# A plain success's end (RQ's commands for it, each as its number of words
# and then its words, from ARGV[2] on), run unless it has run already: the
# latest entry of the check's result stream KEYS[1] names this execution
# (ARGV[1]). A try whose reply was lost (Redis stopped answering) may still
# land after it was sent again, in either order; only the first one writes.
_END_ONCE = wire.Script("""
local latest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
if latest then
  local fields = latest[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'execution_id' then
      if fields[i + 1] == ARGV[1] then
        return 0
      end
      break
    end
  end
end
local i = 2
while i <= #ARGV do
  local words = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + words))
  i = i + words + 1
end
return 1
""")
ExcInfo = tuple[type[BaseException] | None, BaseException | None, TracebackType | None]


class StoppedMidCheck(Exception):
    """The worker was stopped at once (a second stop signal) during the check."""


class _NoDeathPenalty(BaseDeathPenalty):
    """RQ's job timeout is a SIGALRM, which threads cannot use: the watchdog replaces it."""

    def setup_death_penalty(self) -> None:
        pass

    def cancel_death_penalty(self) -> None:
        pass


@dataclass(eq=False)
class Flight:
    """One check in flight in this process."""

    job: Job
    queue: Queue
    owner: str
    started: float
    deadline: float
    execution: Execution | None = None
    expired: bool = False  # failed by the watchdog; its thread may still run
    held: events.HeldEnd | None = None  # its end, kept to go out with its result
    _settled: threading.Lock = field(default_factory=threading.Lock)
    #: Held while its thread hands its start to the publisher, and by whoever
    #: fails it from outside (the watchdog, a cold stop) before that failure
    #: is written: a start is then either in Redis first or never sent.
    beginning: threading.Lock = field(default_factory=threading.Lock)

    def settle(self) -> bool:
        """True for exactly one caller: the one that stores how the check ended."""
        return self._settled.acquire(blocking=False)

    @property
    def settled(self) -> bool:
        return self._settled.locked()


@dataclass(eq=False)
class _Spare:
    """A check's thread between two checks: the next one is handed over here
    (a C queue: the woken thread runs no Python of an Event's to get it)."""

    handoff: SimpleQueue[Flight] = field(default_factory=SimpleQueue)


class ThreadedCheckWorker(_Reregistering, SimpleWorker):
    """RQ's SimpleWorker running up to ``concurrency`` checks at once, one thread each."""

    death_penalty_class = _NoDeathPenalty

    def __init__(
        self,
        *args: Any,
        concurrency: int = DEFAULT_CONCURRENCY,
        key_share: float = KEY_SHARE,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.concurrency = concurrency
        self.owner_cap = max(1, math.ceil(concurrency * key_share))
        self.reserve = max(1, math.ceil(concurrency * RESERVE_SHARE))
        self._flights: dict[str, Flight] = {}
        self._by_owner: Counter[str] = Counter()
        self._stuck = 0
        self._changed = threading.Condition()
        self._local = threading.local()
        self._cold = False
        self._retiring = False
        self._beat_stop = threading.Event()
        self._redis_ok = True
        self._worker_beat_at = -math.inf  # monotonic time of the last worker heartbeat
        self._failing = 0  # checks the watchdog is failing right now (out of _flights)
        self._taken: deque[tuple[Job, Queue]] = deque()  # dequeued, not yet started
        self._registries: dict[tuple[type[BaseRegistry], str], BaseRegistry] = {}  # see _registry
        self._spares: list[_Spare] = []  # idle check threads (guarded by _spare_lock)
        self._spare_lock = threading.Lock()

    @property
    def taken_key(self) -> str:
        """The list of checks this process took off its queue and has not
        started (nor put back), which the pool puts back if the process dies."""
        return TAKEN_KEY_PREFIX + self.name

    # -- the work loop ----------------------------------------------------------

    def work(
        self,
        burst: bool = False,
        logging_level: str | None = "INFO",
        date_format: str = "%H:%M:%S",
        log_format: str = "%(asctime)s %(message)s",
        max_jobs: int | None = None,
        max_idle_time: int | None = None,
        with_scheduler: bool = False,
        dequeue_strategy: DequeueStrategy = DequeueStrategy.DEFAULT,
    ) -> bool:
        self.bootstrap(logging_level, date_format, log_format)
        self._dequeue_strategy = dequeue_strategy
        if with_scheduler:
            self._start_scheduler(burst, logging_level, date_format, log_format)
        self._install_signal_handlers()
        beating = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        beating.start()
        log.info(
            "Worker %s: up to %d checks at once, %d per API key while others wait "
            "(alone: all but %d)",
            self.name,
            self.concurrency,
            self.owner_cap,
            self.reserve,
        )
        started = 0
        rotation: str | None = None  # first check put back since one last started
        # Went round the queue and found only checks of keys at their share:
        # until that changes, they may take the slots beyond it but the reserve.
        alone = False
        try:
            while not self._stop_requested:
                self._maintain()
                if not self._wait_for_slot(timeout=1.0):
                    continue
                result = self._dequeue(None if burst else DEQUEUE_BLOCK)
                if result is None:
                    if burst:
                        break
                    self._idle_if_no_flights()
                    continue
                job, queue = result
                if self._stop_requested:  # a stop came while we waited: keep its place
                    self._taken.appendleft((job, queue))
                    break
                if self._over_share(job):
                    if rotation == job.id:  # round the whole queue: nobody else waits here
                        rotation = None
                        alone = True
                    if not (alone and self._room_beyond_share()):
                        self._put_back(job, queue, front=False)
                        if alone:  # no room left but the reserve: wait for a check to end
                            alone = False
                            with self._changed:
                                self._changed.wait(1.0)
                        elif rotation is None:
                            rotation = job.id
                        continue
                rotation = None
                self._launch(job, queue)
                started += 1
                if max_jobs is not None and started >= max_jobs:
                    log.info("Worker %s: started %d checks, retiring", self.name, started)
                    break
            self._give_back_taken()
            self._drain()
        finally:
            self._beat_stop.set()
            self.teardown()
        return bool(started)

    @property
    def dequeue_timeout(self) -> int:
        """Seconds one wait on the queue blocks (RQ's name; the read timeout
        of the worker's connections covers it: workers/pool.py)."""
        return DEQUEUE_BLOCK

    def _maintain(self) -> None:
        if not self.should_run_maintenance_tasks:
            return
        try:
            self.run_maintenance_tasks()
        except _ENDED as exc:
            log.warning("Worker %s: registry maintenance skipped: %s", self.name, exc)

    def _idle_if_no_flights(self) -> None:
        """RQ's worker state IDLE once a wait on the queue found nothing and no
        check runs (a check's start writes BUSY when it is not): a worker
        running checks one after the other stays BUSY, instead of two writes
        a check, and reads BUSY for up to ``DEQUEUE_BLOCK`` after its last one."""
        if self.get_state() == WorkerStatus.IDLE:
            return
        with self._changed:
            if self._flights:
                return
        with contextlib.suppress(redis.exceptions.RedisError):
            self.set_state(WorkerStatus.IDLE)

    def _wait_for_slot(self, timeout: float) -> bool:
        with self._changed:
            return (
                self._changed.wait_for(
                    lambda: (
                        self._stop_requested or len(self._flights) + self._stuck < self.concurrency
                    ),
                    timeout,
                )
                and not self._stop_requested
            )

    def _dequeue(self, timeout: int | None) -> tuple[Job, Queue] | None:
        if self._taken:
            return self._taken.popleft()
        try:
            if len(self._ordered_queues) == 1:  # several checks at once while slots are free
                with self._changed:
                    free = self.concurrency - len(self._flights) - self._stuck
                most = min(free, TAKE_AT_ONCE)
                queue = self._ordered_queues[0]
                if timeout is None:
                    self._take(queue, most)
                else:
                    self._wait_and_take(queue, timeout, most)
                result = self._taken.popleft() if self._taken else None
            else:
                result = self.queue_class.dequeue_any(
                    self._ordered_queues,
                    timeout,
                    connection=self.connection,
                    job_class=self.job_class,
                    serializer=self.serializer,
                    death_penalty_class=self.death_penalty_class,
                )
        except DequeueTimeout:
            return None
        except _ENDED as exc:
            if self._redis_ok:
                log.error("Worker %s: cannot reach Redis: %s; retrying", self.name, exc)
            self._redis_ok = False
            time.sleep(1.0)
            return None
        if not self._redis_ok:
            log.info("Worker %s: Redis reachable again", self.name)
            self._redis_ok = True
        return result

    def _take(self, queue: Queue, most: int) -> None:
        """Up to ``most`` checks and their job hashes in one round trip (each
        moved to the intermediate list as RQ's dequeue moves it), restored as
        RQ's ``Job.fetch`` restores them, into ``_taken``; none if the queue is empty.
        (The main thread's batches go on a connection of its own, as the
        publisher's do: no pool checkout per batch.)"""
        reply = wire.of(self.connection).script(
            _TAKE,
            [queue.key, queue.intermediate_queue_key, self.taken_key],
            [most, self.job_class.redis_job_namespace_prefix, 0, TAKEN_TTL],
        )
        self._restore_taken(queue, reply)

    def _wait_and_take(self, queue: Queue, timeout: int, most: int) -> None:
        """RQ's blocking dequeue (``BLMOVE`` into the intermediate list, up to
        ``timeout`` seconds) and, in the same round trip, the check's job hash
        and up to ``most - 1`` more checks with theirs, into ``_taken``.

        The take script goes right behind the ``BLMOVE`` (Redis runs it once
        the ``BLMOVE`` returns): it reads the last id in the intermediate list,
        which is the ``BLMOVE``'s check unless another worker's move came in
        between; then its hash is fetched apart, as RQ's dequeue does."""
        inter = queue.intermediate_queue_key
        moved, reply = wire.of(self.connection).execute(
            [
                ("BLMOVE", queue.key, inter, "LEFT", "RIGHT", timeout),
                (
                    "EVAL",
                    _TAKE.text,
                    3,
                    queue.key,
                    inter,
                    self.taken_key,
                    most - 1,
                    self.job_class.redis_job_namespace_prefix,
                    1,
                    TAKEN_TTL,
                ),
            ]
        )
        failed = wire.first_error([moved, reply])
        if failed is not None:
            raise failed
        last, fields = reply[:2]
        if moved is not None:
            if last == moved:
                self._restore_taken(queue, [moved, fields])
            else:
                # The script listed the other worker's check as taken: list this one instead.
                with self.connection.pipeline() as pipe:
                    pipe.lrem(self.taken_key, 1, last)
                    pipe.rpush(self.taken_key, moved)
                    pipe.execute()
                with contextlib.suppress(NoSuchJobError):  # gone meanwhile: RQ passes over it too
                    job = self.job_class.fetch(
                        moved.decode(), connection=self.connection, serializer=self.serializer
                    )
                    self._taken.append((job, queue))
        self._restore_taken(queue, reply[2:])

    def _restore_taken(self, queue: Queue, reply: list[Any]) -> None:
        """``{id, {field, value, ...}, ...}`` restored as RQ's ``Job.fetch``
        restores a job, into ``_taken``; an id with no hash (the job is gone)
        is passed over, as RQ's dequeue passes over it."""
        for job_id, fields in zip(reply[::2], reply[1::2], strict=True):
            if not fields:
                continue
            job = self.job_class(
                job_id.decode(), connection=self.connection, serializer=self.serializer
            )
            job.restore(dict(zip(fields[::2], fields[1::2], strict=True)))
            self._taken.append((job, queue))

    def _give_back_taken(self) -> None:
        """Checks dequeued but not started go back to the front of their queue, in order."""
        while self._taken:
            job, queue = self._taken.pop()
            self._put_back(job, queue, front=True)

    def _over_share(self, job: Job) -> bool:
        with self._changed:
            return self._by_owner[_owner(job)] >= self.owner_cap

    def _room_beyond_share(self) -> bool:
        """Whether one more check past its key's share leaves the reserve free."""
        with self._changed:
            taken = len(self._flights) + self._stuck
            return self.concurrency - taken - 1 >= self.reserve

    def _put_back(self, job: Job, queue: Queue, *, front: bool) -> None:
        """Undo a dequeue: the check goes back to the queue, still ``queued``."""
        try:
            with self.connection.pipeline() as pipe:
                pipe.lrem(queue.intermediate_queue_key, 1, job.id)
                pipe.lrem(self.taken_key, 1, job.id)
                if front:
                    pipe.lpush(queue.key, job.id)
                else:
                    pipe.rpush(queue.key, job.id)
                pipe.execute()
        except _ENDED as exc:  # RQ's intermediate-queue cleanup puts it back later
            log.warning("check %s: could not put it back on the queue: %s", job.id, exc)

    def _launch(self, job: Job, queue: Queue) -> None:
        started = time.monotonic()
        limit = job.timeout if job.timeout and job.timeout > 0 else DEFAULT_CHECK_LIMIT
        flight = Flight(job, queue, _owner(job), started, started + float(limit))
        with self._changed:
            self._flights[job.id] = flight
            self._by_owner[flight.owner] += 1
        log.info(
            "Worker %s: %s: check %s started",
            self.name,
            queue.name,
            job.id,
            extra={
                "check_id": job.id,
                "vantage": _vantage(queue),
                "request_id": (job.meta or {}).get("request_id"),
            },
        )
        with self._spare_lock:
            spare = self._spares.pop() if self._spares else None
        if spare is not None:
            spare.handoff.put(flight)
            return
        thread = threading.Thread(
            target=self._serve, args=(flight,), name=f"check-{job.id[:8]}", daemon=True
        )
        thread.start()

    def _serve(self, flight: Flight) -> None:
        """A check's thread: runs its check, then the next ones handed to it,
        each in a fresh context (as a new thread's), until idle ``SPARE_IDLE``."""
        spare = _Spare()
        this = threading.current_thread()
        while True:
            this.name = f"check-{flight.job.id[:8]}"
            contextvars.Context().run(self._run_flight, flight)
            with self._spare_lock:
                self._spares.append(spare)
            try:
                flight = spare.handoff.get(timeout=SPARE_IDLE)
            except Empty:
                with self._spare_lock:
                    if spare in self._spares:  # nobody took it: end
                        self._spares.remove(spare)
                        return
                flight = spare.handoff.get()  # taken just now: its check is being handed over

    def _drain(self) -> None:
        """Let the checks in flight end (each by its deadline), unless told to stop at once."""
        with self._changed:
            waiting = len(self._flights)
        if waiting:
            log.info(
                "Worker %s: waiting for %d check(s) in flight to end (signal again to stop now)",
                self.name,
                waiting,
            )
        while True:
            if self._cold:
                self._stop_cold()
                return
            with self._changed:
                # Nor one the watchdog is failing: a worker gone before that
                # failure is written leaves its check 'started' (then "abandoned").
                if not self._flights and not self._failing:
                    return
                self._changed.wait(0.5)

    # -- one check, in its own thread -------------------------------------------

    def _run_flight(self, flight: Flight) -> None:
        job = flight.job
        log_context.set(
            {
                "check_id": job.id,
                "vantage": _vantage(flight.queue),
                "request_id": (job.meta or {}).get("request_id"),
            }
        )
        self._local.flight = flight
        try:
            with flight.beginning:
                if flight.settled:  # failed before its thread got to it: nothing to start
                    return
                execution = self._begin(job, flight.queue)
                flight.execution = execution
            self.perform_job(job, flight.queue, execution)
        except Exception:
            log.exception("check %s: the worker could not run it", job.id)
        finally:
            with self._changed:
                if self._flights.get(job.id) is flight:
                    del self._flights[job.id]
                elif flight.expired:
                    self._stuck -= 1
                self._by_owner[flight.owner] -= 1
                if self._by_owner[flight.owner] <= 0:
                    del self._by_owner[flight.owner]
                self._changed.notify_all()

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """How long a check's execution, its started-registry entry and the
        worker's registration live from its start: ``HEARTBEAT_TTL``, as with
        the simple and fork classes, since the heartbeat thread beats them all
        every ``JOB_MONITORING_INTERVAL``. (RQ's own, the job timeout plus
        60 s, left a check whose whole pool was lost before its first beat
        reading ``running`` for 150 s by default.)"""
        return HEARTBEAT_TTL

    def _begin(self, job: Job, queue: Queue) -> Execution:
        """RQ's ``prepare_execution`` and ``prepare_job_execution`` in one
        transaction (they were two), sent with the publisher's next round trip
        (the one the check's first line asks for, or its end; nobody waits for
        it, nor is a thread woken for it, so the engine starts at once): the
        check's execution and its entry in
        the started registry, the worker BUSY (written only when it was not),
        the worker's heartbeat (only when not written for ``WORKER_BEAT_EVERY``),
        the job ``started`` (with its first heartbeat), out of the intermediate list.

        The execution's and the job's commands are RQ's (``Execution.create``,
        ``Job.prepare_for_execution``; tests/service/test_worker_start.py holds
        them to RQ's own), built as they are sent: through RQ's calls and a
        redis-py pipeline they were a fifth of the worker's own Python per check."""
        ttl = self.get_heartbeat_ttl(job)
        started = now()
        execution = Execution(uuid4().hex, job.id, self.connection, worker_name=self.name)
        execution.created_at = execution.last_heartbeat = started
        execution._job = job
        self.executions[execution.id] = execution  # RQ's cleanup_execution pops it
        commands = _start_commands(
            job, execution, self._registry(StartedJobRegistry, queue.name), ttl
        )
        busy = self.get_state() == WorkerStatus.BUSY
        moment = time.monotonic()
        beat = moment - self._worker_beat_at >= WORKER_BEAT_EVERY
        if not busy or beat:
            with self.connection.pipeline() as pipe:
                if not busy:
                    self.set_state(WorkerStatus.BUSY, pipeline=pipe)
                if beat:
                    self.heartbeat(ttl, pipeline=pipe)
                    self._worker_beat_at = moment
                commands += wire.staged(pipe)
                pipe.reset()
        # (RQ's job.heartbeat here only wrote last_heartbeat, which this writes too.)
        job.worker_name = self.name
        job.started_at = job.last_heartbeat = started
        job._status = JobStatus.STARTED
        stamp = utcformat(started)
        commands += [
            (
                "HSET",
                job.key,
                *("last_heartbeat", stamp, "status", JobStatus.STARTED),
                *("started_at", stamp, "worker_name", self.name),
            ),
            ("PERSIST", job.key),
        ]
        if len(self.queues) == 1:
            commands += [
                ("LREM", queue.intermediate_queue_key, 1, job.id),
                ("LREM", self.taken_key, 1, job.id),
            ]
        # With the publisher's next round trip, ahead of everything later of
        # this check; a check's (not a webhook delivery's) wakes no thread: its
        # first line (noted before it resolves its host, or dials) asks for it.
        check = job.func_name == JOB_FUNCTION
        events.publisher().start(self.connection, commands, job.id, wake=not check)
        return execution

    def execute_job(self, job: Job, queue: Queue) -> None:
        """One check run to its end in the calling thread (RQ's own entry point)."""
        started = time.monotonic()
        flight = Flight(job, queue, _owner(job), started, started + DEFAULT_CHECK_LIMIT)
        with self._changed:
            self._flights[job.id] = flight
            self._by_owner[flight.owner] += 1
        self._run_flight(flight)

    def perform_job(self, job: Job, queue: Queue, execution: Execution) -> bool:
        """RQ's ``perform_job`` without the signal-based timeout, whose
        ending is stored once: by this thread, unless the watchdog or a cold
        stop has already failed the check."""
        flight: Flight | None = getattr(self._local, "flight", None)
        exc_info: ExcInfo | None = None
        return_value: Any = None
        with events.holding() as held:
            try:
                job.started_at = now()
                return_value = job.perform()
            except BaseException:
                exc_info = sys.exc_info()
        if (
            flight is not None
            and exc_info is None
            and not isinstance(return_value, Retry)
            and _plain(job)
            and held.writes_to(self.connection)
        ):
            flight.held = held  # a plain success's end goes out with its result
        else:
            held.flush()
        if flight is not None and not flight.settle():
            held.flush()
            log.warning(
                "check %s ended after it was failed (%s); this ending is not stored",
                job.id,
                "past its deadline" if flight.expired else "worker stopped",
            )
            return False
        try:
            return self._store(job, queue, execution, return_value, exc_info)
        finally:
            held.flush()  # not written with a result (it could not be stored): on its own

    def handle_job_success(
        self,
        job: Job,
        queue: Queue,
        started_job_registry: StartedJobRegistry,
        execution: Execution,
    ) -> None:
        """RQ's success transaction; for a check nothing can depend on, without
        the WATCH and the read of its dependents (two round trips between the
        check's end and its result).

        Only a webhook delivery ever depends on a check (smtpcheck/delivery.py),
        and only on a check whose request has a ``callback``; every other job
        (a check with a callback, a repeat, a job without a check request, such
        as a delivery) takes RQ's own path."""
        if not _plain(job):
            super().handle_job_success(job, queue, started_job_registry, execution)
            return
        assert job.started_at is not None and job.ended_at is not None
        held = self._held_end(job)
        # RQ's increment_successful_job_count and increment_total_working_time
        working = (job.ended_at - job.started_at).total_seconds()
        commands: list[wire.Command] = [
            ("HINCRBY", self.key, "successful_job_count", 1),
            ("HINCRBYFLOAT", self.key, "total_working_time", working),
        ]
        result_ttl = job.get_result_ttl(self.default_result_ttl)
        job._status = JobStatus.FINISHED
        if result_ttl != 0:
            # RQ's job._handle_success, in fewer commands: its status goes in
            # the job's one HSET, and with its meta too (RQ saves the job
            # without it), so a job Redis lost while it ran comes back whole
            # (no lost-job check before this).
            mapping = job.to_dict(include_meta=False, include_result=False)
            mapping["meta"] = job._serialize_meta()
            commands.append(("HSET", job.key, *_flat(mapping)))
            result = Result(
                job.id,
                Result.Type.SUCCESSFUL,
                self.connection,
                return_value=job._result,
                worker_name=self.name,
                serializer=job.serializer,
                execution_id=execution.id,
                execution_started_at=execution.created_at,
                execution_ended_at=job.ended_at,
            )
            commands += _result_commands(result, result_ttl)
            # RQ's FinishedJobRegistry.add
            finished = self._registry(FinishedJobRegistry, job.origin)
            score = "+inf" if result_ttl == -1 else current_timestamp() + result_ttl
            commands.append(("ZADD", finished.key, score, job.id))
        if result_ttl > 0:  # RQ's job.cleanup, less the EXPIREs of the job's
            # dependents and dependencies sets, which a plain check never has
            commands.append(("EXPIRE", job.key, result_ttl))
        else:
            with self.connection.pipeline() as pipeline:
                job.cleanup(result_ttl, pipeline=pipeline, remove_from_queue=False)
                commands += wire.staged(pipeline)
                pipeline.reset()
        # RQ's cleanup_execution (Execution.delete), on the started registry
        # at hand rather than one built anew from the job
        composite = execution.composite_key
        commands += [
            ("DEL", execution.key),
            ("ZREM", started_job_registry.key, composite),
            ("ZREM", ExecutionRegistry.key_template.format(job.id), execution.id),
        ]
        if execution.worker_name:
            commands.append(("SREM", execution.worker_executions_key, composite))
        self.executions.pop(execution.id, None)
        ended = _end_once(job, execution, commands)
        if held is not None and held.writes_to(self.connection):
            # With the check's last lines, counters and slot, in the publisher's round trip.
            held.commit([ended])
        else:  # one script: as atomic as RQ's MULTI ... EXEC
            wire.pooled(self.connection).command(*ended)
        release_slot(job)

    def _held_end(self, job: Job) -> events.HeldEnd | None:
        """The end this thread's check keeps to go out with its result
        (``perform_job``), when ``job`` is that check."""
        flight: Flight | None = getattr(self._local, "flight", None)
        return flight.held if flight is not None and flight.job is job else None

    def _registry(self, kind: type[_Registry], queue_name: str) -> _Registry:
        """The queue's registry of ``kind`` (started, finished), as
        ``job.started_job_registry`` and its kin build it for each job (built
        once: each build checks its serializer anew)."""
        registry = self._registries.get((kind, queue_name))
        if registry is None:
            registry = self._registries[kind, queue_name] = kind(
                queue_name,
                connection=self.connection,
                job_class=self.job_class,
                serializer=self.serializer,
            )
        return cast(_Registry, registry)

    def handle_execution_ended(self, job: Job, queue: Queue, heartbeat_ttl: int) -> None:
        """RQ's, without its lone round trip writing the job's last heartbeat:
        a success saves the whole job hash right after (with it), and nothing
        reads an ended job's heartbeat (abandoned checks are found by their
        started-registry entries, which the end removes)."""
        job.ended_at = now()
        job.last_heartbeat = job.ended_at

    def _store(
        self,
        job: Job,
        queue: Queue,
        execution: Execution,
        return_value: Any,
        exc_info: ExcInfo | None,
    ) -> bool:
        """RQ's success or failure path, retried while Redis cannot be reached."""
        give_up = time.monotonic() + STORE_RETRY_SECONDS
        pause = 0.25
        held = self._held_end(job)
        if held is None or not held.pending:  # this end goes straight to Redis:
            events.written_so_far(self.connection)  # after the check's start
        retried = False
        while True:
            try:
                if held is None or not held.pending:
                    # (A plain success's end, written with its lines, writes
                    # the whole job, its meta too: no round trip to look first.)
                    self._restore_if_lost(job, execution)
                if exc_info is None:
                    self._finalize_success(job, queue, execution, return_value)
                else:
                    self._finalize_failure(job, queue, execution, exc_info)
                if retried:
                    _ENDS_OUTAGE.answered()
                return exc_info is None
            except _ENDED as exc:
                # A try whose reply was lost may land later still: a plain
                # success's end runs once whichever lands first (_end_once).
                retried = True
                outcome = return_value.get("outcome") if isinstance(return_value, dict) else None
                if time.monotonic() + pause > give_up or self._cold:
                    log.error(
                        "check %s: its result (outcome %s) could not be stored: Redis "
                        "unreachable for %.0f s (%s); the check is lost",
                        job.id,
                        outcome or "none, it raised",
                        STORE_RETRY_SECONDS,
                        exc,
                        extra={"outcome": outcome},
                    )
                    return False
                if not _ENDS_OUTAGE.failed(exc):  # one line per episode, not one per check
                    log.debug(
                        "check %s: cannot store its result yet (%s); retrying in %.2f s",
                        job.id,
                        exc,
                        pause,
                    )
                time.sleep(pause)
                pause = min(pause * 2, 5.0)

    def _restore_if_lost(self, job: Job, execution: Execution | None) -> None:
        """Write a running check back to Redis if Redis lost it (restarted empty)."""
        if self.connection.hexists(job.key, "data"):
            return
        log.warning(
            "check %s: Redis lost this running check (restarted?); writing it again", job.id
        )
        with self.connection.pipeline() as pipe:
            job.save(pipeline=pipe)
            if execution is not None:
                execution.save(ttl=HEARTBEAT_TTL, pipeline=pipe)
                job.started_job_registry.add_execution(
                    execution, pipeline=pipe, ttl=HEARTBEAT_TTL, xx=False
                )
                pipe.sadd(execution.worker_executions_key, execution.composite_key)
            pipe.execute()

    # -- heartbeats, re-registration, the watchdog ------------------------------

    def _beat(self) -> None:
        failing = False
        while not self._beat_stop.wait(self.job_monitoring_interval):
            try:
                self._watch()
                self._beat_once()
            except redis.exceptions.RedisError as exc:
                if not failing:
                    log.warning("Worker %s: heartbeat failed: %s", self.name, exc)
                failing = True
            except Exception:
                log.exception("Worker %s: heartbeat failed", self.name)
            else:
                if failing:
                    log.info("Worker %s: heartbeats resumed", self.name)
                failing = False

    def _beat_once(self) -> None:
        with self._changed:
            flights = [f for f in self._flights.values() if f.execution is not None]
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.hexists(self.key, "birth")
            for flight in flights:  # a whole job hash has its data (a stray HSET has not)
                pipe.hexists(flight.job.key, "data")
            self.heartbeat(pipeline=pipe)
            self._worker_beat_at = time.monotonic()
            for flight in flights:
                assert flight.execution is not None
                flight.execution.heartbeat(
                    flight.job.started_job_registry, HEARTBEAT_TTL, pipeline=pipe
                )
            results = pipe.execute()
        if not results[0]:
            self.register_again()
        for flight, exists in zip(flights, results[1 : 1 + len(flights)], strict=True):
            if not exists and not flight.settled:
                self._restore_if_lost(flight.job, flight.execution)

    def _watch(self) -> None:
        """Fail the checks past their deadline (the engine's own plus a margin)."""
        moment = time.monotonic()
        with self._changed:
            late = [f for f in self._flights.values() if moment > f.deadline]
        for flight in late:
            if not flight.settle():
                continue
            with self._changed:
                self._flights.pop(flight.job.id, None)
                flight.expired = True
                self._stuck += 1
                stuck = self._stuck
                self._failing += 1  # a stop waits for it: see _drain
                self._changed.notify_all()
            waited = moment - flight.started
            log.error(
                "check %s: still running %.0f s after it started, past its deadline; "
                "failing it (its thread ends by itself)",
                flight.job.id,
                waited,
                extra={"check_id": flight.job.id, "vantage": _vantage(flight.queue)},
            )
            try:
                self._fail(
                    flight,
                    f"rq.timeouts.JobTimeoutException: the check was still running {waited:.0f} s "
                    "after it started, past its deadline",
                )
            finally:
                with self._changed:
                    self._failing -= 1
                    self._changed.notify_all()
            if stuck >= max(1, math.ceil(self.concurrency * STUCK_SHARE)) and not self._retiring:
                self._retiring = True
                self._stop_requested = True
                log.error(
                    "Worker %s: %d checks ran past their deadlines; retiring this process",
                    self.name,
                    stuck,
                )

    def _fail(self, flight: Flight, reason: str) -> None:
        job = flight.job
        job.ended_at = now()
        with flight.beginning:  # its thread either handed its start over or never will
            begun = flight.execution is not None
        if begun:
            events.written_so_far(self.connection)  # its start first (it went to the publisher)
        try:
            self.handle_job_failure(
                job, flight.queue, exc_string=reason, execution=flight.execution
            )
            if not begun:  # still in the list RQ dequeued it into; RQ's cleanup would fail it again
                self.connection.lrem(flight.queue.intermediate_queue_key, 1, job.id)
        except redis.exceptions.RedisError as exc:
            log.error("check %s: could not mark it failed (%s): %s", job.id, reason, exc)

    # -- signals ----------------------------------------------------------------

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        """First signal: a warm stop. Only flags here; the loops act on them."""
        self._shutdown_requested_date = now()
        self._stop_requested = True
        signal.signal(signal.SIGINT, self.request_force_stop)
        signal.signal(signal.SIGTERM, self.request_force_stop)
        log.info(
            "Worker %s: warm shutdown: taking no new checks; %d in flight end by their deadlines",
            self.name,
            len(self._flights),
        )

    def request_force_stop(self, signum: int, frame: FrameType | None) -> None:
        """Next signal: a cold stop, carried out by the main loop."""
        if not self._cold:
            log.warning("Worker %s: cold shutdown: failing the checks in flight", self.name)
        self._cold = True
        self._stop_requested = True

    def _stop_cold(self) -> None:
        with self._changed:
            flights = list(self._flights.values())
        failed = 0
        for flight in flights:
            if not flight.settle():
                continue
            spent = time.monotonic() - flight.started
            self._fail(
                flight,
                "workers.threaded.StoppedMidCheck: the worker was stopped at once "
                f"(a second stop signal) {spent:.1f} s into the check",
            )
            failed += 1
        if failed:
            log.warning("Worker %s: %d check(s) in flight marked failed", self.name, failed)


def _start_commands(
    job: Job, execution: Execution, started: StartedJobRegistry, ttl: int
) -> list[wire.Command]:
    """RQ's ``Execution.create``: the execution's hash, its entry in the job's
    execution registry and in the started registry, and in the worker's
    execution set, each living ``ttl`` seconds (the registries a minute more)."""
    score = current_timestamp()
    registry = ExecutionRegistry.key_template.format(job.id)
    composite = execution.composite_key
    workers_set = execution.worker_executions_key
    return [
        ("HSET", execution.key, *_flat(execution.serialize())),
        ("EXPIRE", execution.key, ttl),
        ("ZADD", registry, score + ttl + 60, execution.id),
        ("EXPIRE", registry, ttl + 60),
        ("ZADD", started.key, score + ttl, composite),
        ("SADD", workers_set, composite),
        ("EXPIRE", workers_set, ttl + 60),
    ]


def _result_commands(result: Result, ttl: int) -> list[wire.Command]:
    """RQ's ``Result.save``: the result's entry in the job's result stream
    (``XADD ... MAXLEN ~ 10``, as redis-py's ``xadd(maxlen=10)`` sends it), and
    the stream's TTL (none for -1)."""
    key = Result.get_key(result.job_id)
    added = ("XADD", key, "MAXLEN", "~", 10, "*", *_flat(result.serialize()))
    return [added, ("PERSIST", key) if ttl == -1 else ("EXPIRE", key, ttl)]


def _flat(mapping: dict[str, Any]) -> list[Any]:
    return [item for pair in mapping.items() for item in pair]


def _end_once(job: Job, execution: Execution, commands: list[wire.Command]) -> wire.Command:
    """``commands`` (a plain success's end) as one script that writes them at
    most once for ``execution``, however often it is sent (``_END_ONCE``)."""
    words = [word for command in commands for word in (len(command), *command)]
    return ("EVAL", _END_ONCE.text, 1, Result.get_key(job.id), execution.id, *words)


def _plain(job: Job) -> bool:
    """A check nothing can depend on (no ``callback``: a webhook delivery
    depends on its check), with no repeats and no RQ callback of its own."""
    kwargs = job.kwargs if isinstance(job.kwargs, dict) else {}
    request = kwargs.get("request")
    return (
        isinstance(request, dict)
        and request.get("callback") is None
        and not job.repeats_left
        and job._success_callback_name is None
    )


def _owner(job: Job) -> str:
    """The API key's name the check belongs to ('' when unknown)."""
    meta = job.meta if isinstance(job.meta, dict) else {}
    return str(meta.get("owner") or "")


def _vantage(queue: Queue) -> str:
    return queue.name.removeprefix("vantage:")
