"""The worker pool: N RQ worker processes for one vantage point, supervised.

``smtpcheck worker`` runs :func:`run_pool`. The parent process only
supervises: it forks one RQ worker process per slot, restarts one that dies,
and on SIGTERM/SIGINT asks every worker for a warm shutdown (take no new
check, let every check in flight end by its own deadline, then exit),
exiting itself once they are all gone. A second signal makes the stop cold
(RQ's own meaning of a second signal: the checks still in flight fail at
once, with the reason).

Worker class: ``threads`` (:class:`workers.threaded.ThreadedCheckWorker`,
many checks at once per process, a thread each) is the default;
:class:`CheckWorker` (``simple``: RQ's ``SimpleWorker``, one check at a time
in the worker process) and :class:`ForkingCheckWorker` (``fork``: RQ's
``Worker``, one forked work horse per job) are kept as options. The
measured costs and the reasons are in the README and docs/architecture.md.

A worker that dies mid-check must never leave its check ``running``:

* the pool notices at once when one of its workers dies (SIGKILL, OOM kill,
  a crash) and sends the checks that worker held through RQ's own
  abandoned-job path (``StartedJobRegistry.cleanup``: failed, or retried if
  the job has retries left); the checks a threaded worker had taken off the
  queue but not started go back to the head of the queue, in order;
* when the whole pool dies (machine lost, pool SIGKILLed), each check's
  entry in the started registry expires ``HEARTBEAT_TTL`` seconds after its
  last heartbeat (a thread beats every ``JOB_MONITORING_INTERVAL`` seconds
  while a check runs), and any live worker on the queue sweeps it within
  ``MAINTENANCE_INTERVAL`` (+ one dequeue timeout).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any, cast

import redis
from redis.client import Pipeline
from rq import Queue, SimpleWorker, Worker, worker_registration
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.executions import WORKER_EXECUTIONS_KEY_TEMPLATE, Execution
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.scheduler import RQScheduler
from rq.scheduler import run as run_scheduler
from rq.serializers import JSONSerializer
from rq.utils import as_text, parse_composite_key
from rq.worker import BaseWorker, WorkerStatus
from rq.worker_registration import REDIS_WORKER_KEYS, WORKERS_BY_QUEUE_KEY

from smtpcheck import wire
from smtpcheck.config import Settings
from smtpcheck.contract import TAKEN_KEY_PREFIX, queue_name
from smtpcheck.logs import JSONFormatter
from smtpcheck.redis_client import connect

log = logging.getLogger("smtpcheck.pool")

#: Seconds between heartbeats of a running check.
JOB_MONITORING_INTERVAL = 3
#: A running check's registry entry expires this long after its last heartbeat.
HEARTBEAT_TTL = 4 * JOB_MONITORING_INTERVAL
#: Seconds a worker's registration lives without a heartbeat; an idle worker
#: wakes every ``WORKER_TTL - 15`` seconds (RQ's dequeue timeout) to beat and
#: run maintenance.
WORKER_TTL = 20
#: Seconds between registry sweeps (abandoned checks, dead workers), per queue.
MAINTENANCE_INTERVAL = 5
#: A worker process exits after this many checks and the pool starts a fresh one,
#: so a slow leak in one process cannot grow without bound.
MAX_JOBS_PER_PROCESS = 1000
#: How often the parent looks at its children.
SUPERVISE_INTERVAL = 0.2
#: Seconds a blocking command's reply may take past its own block (the dequeue's).
BLOCK_MARGIN = 1.0

WORKER_CLASSES = ("threads", "simple", "fork")
#: Checks in flight per process by default (``threads``): sized for I/O-bound
#: checks, so a burst of slow ones (tarpits, dead hosts) leaves room for the rest.
DEFAULT_CONCURRENCY = 200


# The checks a dead process had taken off the queue KEYS[1] and not started
# (its taken list KEYS[3]) back to the head of the queue, in the order taken:
# each one still 'queued' (its job hash under the prefix ARGV[1]) and still
# in the intermediate list KEYS[2], from which it is removed. Returns how many.
_PUT_BACK_TAKEN = wire.Script("""
local ids = redis.call('LRANGE', KEYS[3], 0, -1)
local back = 0
for i = #ids, 1, -1 do
  local id = ids[i]
  if redis.call('HGET', ARGV[1] .. id, 'status') == 'queued'
      and redis.call('LREM', KEYS[2], 1, id) == 1 then
    redis.call('LPUSH', KEYS[1], id)
    back = back + 1
  end
end
redis.call('DEL', KEYS[3])
return back
""")


def worker_name(vantage: str) -> str:
    """A unique RQ worker name that says where the worker is."""
    return f"{vantage}.{socket.gethostname()}.{uuid.uuid4().hex[:8]}"


class _ScopedScheduler(RQScheduler):
    """RQ's scheduler (it runs greylisting retries), in a child process that
    ends with the worker that started it: RQ's own would outlive a worker
    killed with SIGKILL and keep running, unsupervised, for ever."""

    def start(self) -> BaseProcess:
        self._status = self.Status.STARTED
        self._connection = None  # not shared across the fork
        process = multiprocessing.get_context("fork").Process(
            target=_run_scheduler, args=(self, os.getpid()), name="Scheduler"
        )
        process.start()
        self._process = process  # type: ignore[assignment]  # RQ annotates it as None
        return process


def _run_scheduler(scheduler: RQScheduler, parent: int) -> None:
    _die_with_parent()  # SIGTERM: RQ's scheduler stops at its next tick
    if os.getppid() != parent:
        sys.exit(0)
    run_scheduler(scheduler)


class _Reregistering:
    """Put a worker back into RQ's registry when Redis lost it (a restart
    without persistence, a failover), so ``/v1/vantages`` keeps counting it.
    Looked at no more than once per ``MAINTENANCE_INTERVAL``."""

    _registration_checked = 0.0

    def _set_connection(self, connection: redis.Redis) -> redis.Redis:
        """Every reply on this worker's connections is bounded by the read
        timeout it was made with (``SMTPCHECK_WORKER_REDIS_TIMEOUT``, a few
        seconds), raised only as far as its dequeue's block plus
        ``BLOCK_MARGIN``. (RQ's own raises it to that block plus 10 s, 15 s.)
        A Redis that holds a connection open without answering then costs a
        command that bound, not the many minutes until TCP gives up."""
        options = connection.connection_pool.connection_kwargs
        least = cast(BaseWorker, self).dequeue_timeout + BLOCK_MARGIN
        if options.get("socket_timeout") is None or options["socket_timeout"] < least:
            options["socket_timeout"] = least
        return connection

    def handle_exception(self, job: Job, *exc_info: Any) -> None:
        """A greylisted check asking for its next attempt is routine, not an
        error: one info line instead of RQ's ERROR with a traceback."""
        from workers.job import RetryLater

        if exc_info and isinstance(exc_info[1], RetryLater):
            cast(BaseWorker, self).log.info("check %s: %s", job.id, exc_info[1])
            return
        super().handle_exception(job, *exc_info)  # type: ignore[misc]

    def _start_scheduler(
        self,
        burst: bool = False,
        logging_level: str | None = "INFO",
        date_format: str = DEFAULT_LOGGING_DATE_FORMAT,
        log_format: str = DEFAULT_LOGGING_FORMAT,
    ) -> None:
        """RQ's own, with :class:`_ScopedScheduler` in place of RQScheduler."""
        worker = cast(BaseWorker, self)
        scheduler = _ScopedScheduler(
            worker.queues,
            connection=worker.connection,
            logging_level=logging_level or "INFO",
            serializer=worker.serializer,
        )
        worker.scheduler = scheduler
        scheduler.acquire_locks()
        if not scheduler.acquired_locks:
            return  # another worker's scheduler serves this queue
        if not burst:
            scheduler.start()
            return
        try:
            scheduler.register_birth()
            scheduler.enqueue_scheduled_jobs()
        finally:
            scheduler.release_locks()
            scheduler.register_death()

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        if pipeline is None:  # one round trip instead of three, several times per check
            with cast(BaseWorker, self).connection.pipeline(transaction=False) as batch:
                super().heartbeat(timeout, batch)  # type: ignore[misc]
                batch.execute()
        else:
            super().heartbeat(timeout, pipeline)  # type: ignore[misc]
        if (
            pipeline is not None
            or time.monotonic() - self._registration_checked < MAINTENANCE_INTERVAL
        ):
            return
        self._registration_checked = time.monotonic()
        worker = cast(BaseWorker, self)
        if not worker.connection.hexists(worker.key, "birth"):
            self.register_again(timeout)

    def register_again(self, timeout: int | None = None) -> None:
        """Write this worker's registration anew (Redis lost it)."""
        worker = cast(BaseWorker, self)
        worker.log.warning(
            "Worker %s: registration lost (Redis restarted?); registering again", worker.name
        )
        with worker.connection.pipeline() as pipe:
            pipe.hset(worker.key, mapping=worker.serialize())
            pipe.hset(worker.key, "state", worker.get_state())
            pipe.expire(worker.key, timeout or worker.worker_ttl + 60)
            worker_registration.register(worker, pipe)
            pipe.execute()


class CheckWorker(_Reregistering, SimpleWorker):
    """RQ's SimpleWorker, with a heartbeat while a check runs.

    SimpleWorker sends no heartbeat during a job, so its started-registry entry
    has to outlive the longest check (job timeout + 60 s). One thread per
    process beats for the check in hand every ``JOB_MONITORING_INTERVAL``, so
    the entry can expire soon after the process is gone.
    """

    _running: tuple[Job, Execution] | None = None
    _beating: threading.Thread | None = None

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return HEARTBEAT_TTL

    def execute_job(self, job: Job, queue: Queue) -> None:
        execution = self.prepare_execution(job)
        if self._beating is None:
            self._beating = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
            self._beating.start()
        self._running = (job, execution)
        try:
            self.perform_job(job, queue, execution)
        finally:
            self._running = None
        self.set_state(WorkerStatus.IDLE)

    def _beat(self) -> None:
        while True:
            time.sleep(self.job_monitoring_interval)
            running = self._running
            if running is None:
                continue
            job, execution = running
            try:
                # Safe against a check that ends meanwhile: RQ's heartbeat only
                # refreshes registry entries that still exist.
                self.maintain_heartbeats(job, execution)
            except redis.exceptions.RedisError as exc:
                self.log.warning("Worker %s: heartbeat for %s failed: %s", self.name, job.id, exc)


class ForkingCheckWorker(_Reregistering, Worker):
    """RQ's forking Worker with the same short heartbeat TTL."""

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return HEARTBEAT_TTL

    def handle_job_failure(self, job: Job, queue: Queue, *args: Any, **kwargs: Any) -> None:
        # The parent holds a stale copy of the job from before the work horse
        # scrubbed the seal; saving it here must not bring the seal back.
        if not job.should_retry:
            from workers.job import scrub_sealed_password

            scrub_sealed_password(job)
        super().handle_job_failure(job, queue, *args, **kwargs)


def worker_class(kind: str) -> type[Worker] | type[SimpleWorker]:
    if kind == "threads":
        from workers.threaded import ThreadedCheckWorker

        return ThreadedCheckWorker
    if kind == "simple":
        return CheckWorker
    if kind == "fork":
        return ForkingCheckWorker
    raise ValueError(f"unknown worker class {kind!r}; choose one of {', '.join(WORKER_CLASSES)}")


def build_worker(
    settings: Settings,
    connection: redis.Redis,
    *,
    vantage: str,
    name: str,
    kind: str = "threads",
    concurrency: int | None = None,
) -> Worker | SimpleWorker:
    """An RQ worker for ``vantage`` with the pool's tuning (used by the pool and the bench)."""
    queue = Queue(queue_name(vantage), connection=connection, serializer=JSONSerializer)
    options: dict[str, Any] = {}
    if kind == "threads" and concurrency is not None:
        options["concurrency"] = concurrency
    return worker_class(kind)(
        [queue],
        name=name,
        connection=connection,
        serializer=JSONSerializer,
        default_result_ttl=settings.result_ttl,
        worker_ttl=WORKER_TTL,
        maintenance_interval=MAINTENANCE_INTERVAL,
        job_monitoring_interval=JOB_MONITORING_INTERVAL,
        **options,
    )


class _RoutineMaintenance(logging.Filter):
    """Keep RQ's every-few-seconds maintenance chatter out of INFO logs."""

    ROUTINE = ("Worker %s: cleaning registries", "Worker %s: cleaning group registries")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO or not record.name.startswith("rq."):
            return True
        return not (isinstance(record.msg, str) and record.msg.startswith(self.ROUTINE))


def configure_logging(level: str) -> None:
    """JSON lines on stderr (RQ's loggers use a handler found on the root)."""
    root = logging.getLogger()
    if not any(getattr(h, "_smtpcheck", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.addFilter(_RoutineMaintenance())
        handler.setFormatter(JSONFormatter())
        handler._smtpcheck = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)


def _die_with_parent() -> None:
    """Ask Linux to send us SIGTERM (a warm stop) if the pool process dies."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


def _run_child(
    settings: Settings,
    vantage: str,
    name: str,
    kind: str,
    burst: bool,
    parent: int,
    concurrency: int | None = None,
) -> None:
    """Body of one worker process (forked by the pool)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Our own session: a terminal's Ctrl-C reaches only the pool, which then
    # stops each worker exactly once (two signals would make RQ stop cold).
    with contextlib.suppress(OSError):
        os.setsid()
    _die_with_parent()
    if os.getppid() != parent:  # the pool died before prctl took effect
        sys.exit(0)
    configure_logging(settings.log_level)
    import workers.job  # load the engine once, not in every forked work horse

    # Results, logs and metrics say the vantage this pool serves (--vantage).
    workers.job.use_settings(dataclasses.replace(settings, vantage=vantage))
    connection = connect(settings, read_timeout=settings.worker_redis_timeout)
    try:
        worker = build_worker(
            settings, connection, vantage=vantage, name=name, kind=kind, concurrency=concurrency
        )
        max_jobs = MAX_JOBS_PER_PROCESS
        if kind == "threads":  # a retiring process drains first: retire rarely
            max_jobs *= 10 * (concurrency or DEFAULT_CONCURRENCY)
        worker.work(
            burst=burst,
            logging_level=settings.log_level,
            max_jobs=max_jobs,
            # RQ's scheduler runs greylisting retries (one per queue holds the lock).
            with_scheduler=True,
        )
    except redis.exceptions.ConnectionError as exc:
        log.error("worker %s: cannot reach Redis: %s", name, exc)
        sys.exit(75)  # EX_TEMPFAIL: the pool starts another after a pause


@dataclass
class Slot:
    """One place in the pool and the worker process currently filling it."""

    index: int
    process: BaseProcess | None = None
    name: str = ""
    started: float = 0.0
    failures: int = 0
    not_before: float = 0.0
    done: bool = False


@dataclass
class Pool:
    settings: Settings
    vantage: str
    processes: int
    kind: str = "threads"
    concurrency: int | None = None
    burst: bool = False
    slots: list[Slot] = field(default_factory=list)
    stopping: int = 0  # 0 running, 1 warm stop asked, 2 cold stop asked
    _redis: redis.Redis | None = None

    def run(self) -> int:
        context = multiprocessing.get_context("fork")
        self.slots = [Slot(i) for i in range(self.processes)]
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        log.info(
            "pool %d: %d %s worker(s) for queue %s on %s",
            os.getpid(),
            self.processes,
            self.kind if self.kind != "threads" else f"threaded ({self.concurrency} checks)",
            queue_name(self.vantage),
            _redacted(self.settings.redis_url),
        )
        status = 0
        try:
            while True:
                for slot in self.slots:
                    if slot.process is not None and not slot.process.is_alive():
                        status = max(status, self._reap(slot))
                    if (
                        slot.process is None
                        and not slot.done
                        and not self.stopping
                        and time.monotonic() >= slot.not_before
                    ):
                        self._spawn(context, slot)
                if all(slot.process is None for slot in self.slots) and (
                    self.stopping or all(slot.done for slot in self.slots)
                ):
                    break
                time.sleep(SUPERVISE_INTERVAL)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self._redis is not None:
                self._redis.close()
        log.info("pool %d: all workers stopped", os.getpid())
        return 0 if self.stopping else status

    def _spawn(self, context: Any, slot: Slot) -> None:
        slot.name = worker_name(self.vantage)
        slot.process = context.Process(
            target=_run_child,
            args=(
                self.settings,
                self.vantage,
                slot.name,
                self.kind,
                self.burst,
                os.getpid(),
                self.concurrency,
            ),
            name=f"smtpcheck-worker-{slot.index}",
        )
        slot.process.start()
        slot.started = time.monotonic()
        log.debug("pool: started worker %s (pid %s)", slot.name, slot.process.pid)

    def _reap(self, slot: Slot) -> int:
        process, slot.process = slot.process, None
        assert process is not None
        process.join()
        code = process.exitcode if process.exitcode is not None else 1
        lived = time.monotonic() - slot.started
        if code < 0:
            why = f"killed by {signal.Signals(-code).name}"
        else:
            why = f"exited with status {code}"
        if code != 0:
            # With the simple class the check ran inside that process, so a
            # check in hand is lost; a forked work horse may still finish its own.
            self._abandon(slot.name, checks=self.kind in ("threads", "simple"))
        if self.stopping:
            log.info("pool: worker %s %s", slot.name, why)
            return 0
        if self.burst and code == 0:
            slot.done = True
            return 0
        if code == 0 and lived > 10:  # recycled after MAX_JOBS_PER_PROCESS
            slot.failures = 0
            log.info("pool: worker %s retired, starting a fresh one", slot.name)
            return 0
        slot.failures = slot.failures + 1 if lived < 10 else 1
        delay = min(30.0, 0.5 * 2 ** (slot.failures - 1))
        slot.not_before = time.monotonic() + delay
        if self.burst:
            slot.done = True
        log.warning(
            "pool: worker %s %s; %s",
            slot.name,
            why,
            "not restarting (burst)" if self.burst else f"restarting in {delay:.1f}s",
        )
        return 1

    def _abandon(self, name: str, *, checks: bool) -> None:
        """Forget a dead worker now; with ``checks``, fail the checks it held
        and put back those it had taken but not started.

        The held checks go through RQ's own abandoned-job path (failed, or
        retried when the job has retries left), as they would after their
        heartbeat expired, only without the wait. The taken ones never
        reached the target: they go back to the head of the queue, still
        ``queued``, for the next worker (instead of RQ failing them as
        "stuck in intermediate queue" a minute later).
        """
        try:
            if self._redis is None:
                self._redis = connect(self.settings, read_timeout=5, connect_timeout=5)
            connection = self._redis
            key = Worker.redis_worker_namespace_prefix + name
            with connection.pipeline() as pipeline:
                pipeline.srem(REDIS_WORKER_KEYS, key)
                pipeline.srem(WORKERS_BY_QUEUE_KEY % queue_name(self.vantage), key)
                pipeline.delete(key, WORKER_EXECUTIONS_KEY_TEMPLATE.format(name))
                pipeline.execute()
            if not checks:
                return
            queue = Queue(queue_name(self.vantage), connection=connection)
            back = wire.pooled(connection).script(
                _PUT_BACK_TAKEN,
                [queue.key, queue.intermediate_queue_key, TAKEN_KEY_PREFIX + name],
                [Job.redis_job_namespace_prefix],
            )
            if back:
                log.warning(
                    "pool: worker %s died with %d check(s) taken but not started: "
                    "put back at the head of the queue",
                    name,
                    back,
                )
            registry = StartedJobRegistry(
                queue_name(self.vantage), connection=connection, serializer=JSONSerializer
            )
            lost: list[str] = []
            for member in cast(list[bytes], connection.zrange(registry.key, 0, -1)):
                composite = as_text(member)
                job_id, execution_id = parse_composite_key(composite)
                holder = connection.hget(
                    Execution(execution_id, job_id, connection).key, "worker_name"
                )
                if holder is not None and as_text(cast(bytes, holder)) == name:
                    lost.append(composite)
            if lost:
                connection.zadd(registry.key, dict.fromkeys(lost, 0), xx=True)
                registry.cleanup()
                log.warning("pool: worker %s died during %d check(s): failed", name, len(lost))
        except redis.exceptions.RedisError as exc:
            log.warning(
                "pool: cannot clean up after worker %s (%s); its checks expire in %ds",
                name,
                exc,
                HEARTBEAT_TTL,
            )

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping += 1
        live = [slot.process for slot in self.slots if slot.process is not None]
        if self.stopping == 1:
            log.info(
                "pool: %s received; warm shutdown: workers finish their checks (again to force)",
                signal.Signals(signum).name,
            )
        else:
            log.warning("pool: %s received again; cold shutdown", signal.Signals(signum).name)
        for process in live:
            if process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
                    if self.stopping >= 2:
                        # RQ ignores a second signal that follows the first within 1 s.
                        threading.Timer(1.1, _signal_quietly, (process.pid,)).start()


def _signal_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)


def _redacted(url: str | None) -> str:
    if not url:
        return "redis://127.0.0.1:6379/0"
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "****@" + rest.rpartition("@")[2]
    return scheme + sep + rest


def run_pool(
    settings: Settings,
    *,
    vantage: str | None = None,
    processes: int = 2,
    burst: bool = False,
    kind: str = "threads",
    concurrency: int | None = None,
) -> int:
    """Run ``processes`` supervised RQ workers for ``vantage`` until signalled.

    Returns the exit status for the ``smtpcheck worker`` command.
    """
    worker_class(kind)  # refuse an unknown kind before forking anything
    if processes < 1:
        raise ValueError("processes must be at least 1")
    if concurrency is not None and concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    configure_logging(settings.log_level)
    pool = Pool(
        settings=settings,
        vantage=vantage or settings.vantage,
        processes=processes,
        kind=kind,
        concurrency=(concurrency or DEFAULT_CONCURRENCY) if kind == "threads" else None,
        burst=burst,
    )
    return pool.run()
