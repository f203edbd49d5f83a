"""Checks as RQ jobs in Redis: enqueue, read, wait, delete, list vantages.

The queue contract (docs/architecture.md): queue ``vantage:<name>``, job
function ``workers.job.run_check_job`` enqueued by dotted path with kwargs
``{"request", "sealed_password"}`` (with a ``callback``, a second, deferred
job: see smtpcheck/delivery.py), JSON serializer, description
``smtpcheck``, ``job.meta = {"owner", "vantage"}``. The check id is the RQ
job id. This module never imports ``workers``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from redis.client import Pipeline
from redis.exceptions import WatchError
from redis.typing import EncodableT
from rq import Queue, Worker
from rq import Retry as RQRetry
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.utils import current_timestamp, now, utcformat

from smtpcheck import delivery, wire
from smtpcheck.config import Settings
from smtpcheck.contract import (
    CANCEL_KEY_PREFIX,
    DEFAULT_VANTAGE,
    JOB_FUNCTION,
    QUEUE_PREFIX,
    SECRET_MASK,
    SUBMITTED_KEY,
    CheckDocument,
    ListedCheck,
    Vantage,
    queue_name,
)
from smtpcheck.document import (
    PUBLIC_STATUS,
    TERMINAL,
    StoredCheck,
    check_document,
    public_status,
)
from smtpcheck.logs import log_context
from smtpcheck.redis_client import FailoverRedis, connect
from smtpcheck.sealing import seal

from . import events, listing
from .held import Lease
from .problems import CHECK_RUNNING, MISCONFIGURED, NOT_FOUND, Problem, validation_problem
from .ratelimit import Command
from .schemas import check_id_is_valid

DESCRIPTION = "smtpcheck"
JOB_TIMEOUT_MARGIN = 30

#: Tries of the delete transaction before a 409 (each retry means a worker wrote meanwhile).
DELETE_ATTEMPTS = 5

log = logging.getLogger("smtpcheck.service")


@dataclass
class Prepared:
    """One check, made but not yet written: its id, its job hash and its queue
    (:meth:`JobStore.writes` stages the commands that enqueue it)."""

    id: str
    queue: Queue
    vantage: str
    created_at: datetime
    #: The job hash as RQ's ``Queue.create_job`` and ``enqueue_job`` write it
    #: (:func:`rq_job_hash`; tests/service/test_job_writes.py compares the two).
    fields: list[EncodableT]
    sealed_callback: str | None = None


class JobStore:
    """Checks kept as RQ jobs. One per app, in ``app.extensions["smtpcheck"]``."""

    def __init__(self, settings: Settings, job_function: str = JOB_FUNCTION) -> None:
        self.settings = settings
        self.job_function = job_function
        # Fails fast (503) while Redis or its primary is away, and follows a failover.
        self.connection = connect(settings, read_timeout=2.0)
        # XREAD for ?wait=N blocks up to N seconds: it gets its own read timeout.
        self.blocking = connect(settings, read_timeout=settings.limits.max_wait + 5.0)
        self._queues: dict[str, Queue] = {}

    def close(self) -> None:
        for client in (self.connection, self.blocking):
            wire.shared(client).close()
            client.close()

    def ping(self) -> None:
        self.connection.ping()

    def queue(self, vantage: str) -> Queue:
        """The vantage's RQ queue (one object per vantage, which caches the server version)."""
        found = self._queues.get(vantage)
        if found is None:
            found = self._queues[vantage] = self._new_queue(vantage)
        return found

    def _new_queue(self, vantage: str) -> Queue:
        return Queue(queue_name(vantage), connection=self.connection, serializer=JSONSerializer)

    # -- submit ---------------------------------------------------------------

    def prepare(self, request: dict[str, Any], owner: str) -> Prepared:
        """A check ready to enqueue, its id chosen; nothing written yet.

        The AUTH password (and the callback secret) leave in a seal. An
        unknown vantage is a 422 here, before anything is counted.
        """
        request, password, callback_secret = mask_secrets(request)
        sealed = None if password is None else self.seal(password, "AUTH passwords")
        sealed_callback = None
        if callback_secret is not None:
            sealed_callback = self.seal(callback_secret, "callback secrets")
        vantage = request["vantage"]
        self.require_vantage(vantage)
        ttl = self.settings.result_ttl
        retry = None
        if request.get("retry_temporary") and request["retry"]["attempts"] > 1:
            # The worker raises to ask for the next attempt; RQ's scheduler runs it.
            retry = RQRetry(
                max=request["retry"]["attempts"] - 1,
                interval=math.ceil(request["retry"]["delay"]),
            )
        moment = now()
        fields = rq_job_hash(
            self.job_function,
            {"request": request, "sealed_password": sealed},
            origin=queue_name(vantage),
            timeout=math.ceil(request["timeouts"]["total"]) + JOB_TIMEOUT_MARGIN,
            ttl=ttl,
            meta={"owner": owner, "vantage": vantage, **_request_context()},
            retry=retry,
            moment=moment,
        )
        return Prepared(
            str(uuid.uuid4()), self.queue(vantage), vantage, moment, fields, sealed_callback
        )

    def writes(
        self,
        prepared: list[Prepared],
        owner: str,
        *,
        listed: bool = True,
        also: Callable[[Pipeline], None] | None = None,
    ) -> list[Command]:
        """The commands that write ``prepared`` checks: the jobs and their queues as RQ's
        ``enqueue_job`` writes them, the submitted counters, the owner's listing, and
        what ``also`` adds. Nothing is sent: the admission script runs them
        (service/ratelimit.py), so a check is counted against its key's limits exactly
        when it is written.
        """
        commands: list[Command] = []
        pipe = self.connection.pipeline(transaction=False)
        try:
            for item in prepared:
                key = Job.key_for(item.id)
                commands += [
                    ("SADD", Queue.redis_queues_keys, item.queue.key),
                    ("HSET", key, *item.fields),
                    # RQ's cleanup also sets this TTL on the job's dependents and dependencies
                    # keys: a new check has neither, so those two EXPIREs would do nothing.
                    ("EXPIRE", key, self.settings.result_ttl),
                    ("RPUSH", item.queue.key, item.id),
                    ("HINCRBY", SUBMITTED_KEY, item.vantage, 1),
                ]
                if listed:
                    listing.stage(pipe, owner, item.id, self.settings.result_ttl)
            if also is not None:
                also(pipe)
            return commands + [tuple(args) for args, _ in pipe.command_stack]
        finally:
            pipe.reset()

    def after_written(self, prepared: list[Prepared]) -> None:
        """What follows the write: a check with a ``callback`` has its first webhook
        delivery queued, deferred until the check ends (an RQ dependency, so it needs
        the check to exist)."""
        for item in prepared:
            if item.sealed_callback is not None:  # a worker POSTs the check once it ends
                delivery.enqueue(
                    item.queue,
                    item.id,
                    item.sealed_callback,
                    attempt=1,
                    ttl=self.settings.result_ttl,
                    after_check=True,
                )

    def seal(self, secret: str, what: str) -> str:
        if not self.settings.secret_key:
            raise Problem(
                503,
                "Service Unavailable",
                f"this service has no SMTPCHECK_SECRET_KEY, so it cannot accept {what}; "
                "ask its operator",
                type=MISCONFIGURED,
            )
        return seal(secret, self.settings.secret_key)

    def require_vantage(self, vantage: str) -> None:
        """Refuse a vantage no worker serves and no check ever used (a typo, most likely)."""
        if vantage == DEFAULT_VANTAGE:
            return
        queue = self.queue(vantage)
        if self.connection.sismember(Queue.redis_queues_keys, queue.key):
            return
        if Worker.all(queue=queue):
            return
        raise validation_problem(
            {"vantage": [f"no worker serves vantage {vantage!r}; see GET /v1/vantages"]}
        )

    # -- read -----------------------------------------------------------------

    def load(self, check_id: str, owner: str) -> StoredCheck:
        """The job for ``check_id`` if ``owner`` made it; else 404."""
        if not check_id_is_valid(check_id):
            raise _not_found(check_id)
        raw, latest = reads(self.connection, fetch_commands(check_id))
        return self.loaded(check_id, owner, raw, latest)

    def loaded(self, check_id: str, owner: str, raw: Any, latest: Any) -> StoredCheck:
        """:meth:`load` of the replies to :func:`fetch_commands` (a caller may read
        more beside)."""
        return self.reap_if_abandoned(self.owned(check_id, owner, raw, latest))

    def owned(self, check_id: str, owner: str, raw: Any, latest: Any) -> StoredCheck:
        """The check the replies to :func:`fetch_commands` read, if ``owner`` made it;
        else 404. Not yet tested for a gone worker (:meth:`reap_if_abandoned`)."""
        try:
            check = read_check(check_id, raw, latest)
        except NoSuchJobError:
            raise _not_found(check_id) from None
        meta = check.meta if isinstance(check.meta, dict) else {}
        if check.description != DESCRIPTION or meta.get("owner") != owner:
            raise _not_found(check_id)
        return check

    def fetch(self, check_id: str) -> StoredCheck:
        """The job and its latest result, in one round trip (retried like a read);
        NoSuchJobError if there is no such job."""
        raw, latest = reads(self.connection, fetch_commands(check_id))
        return read_check(check_id, raw, latest)

    def rq_job(self, check: StoredCheck) -> Job:
        """RQ's own job, restored from the hash ``check`` was read from: for what RQ
        writes (a cancel, a delete)."""
        job = Job(check.id, connection=self.connection, serializer=JSONSerializer)
        job.restore(check.raw)
        return job

    def status_now(self, check_id: str) -> JobStatus:
        """The job's status as Redis has it now (RQ's ``job.get_status(refresh=True)``)."""
        status = self.connection.hget(Job.key_for(check_id), "status")
        if not status:
            raise InvalidJobOperation(f"Failed to retrieve status for job: {check_id}")
        return JobStatus(cast(bytes, status).decode())

    def reap_if_abandoned(self, job: StoredCheck) -> StoredCheck:
        """A running job whose worker is gone reads as failed, never hangs.

        Jobs whose heartbeat lapsed are moved to failed by RQ's own
        StartedJobRegistry cleanup. A worker that said it stopped (RQ writes
        ``death`` into its hash as it unregisters, e.g. a cold shutdown)
        while its last heartbeat is still fresh has its entries for this job
        expired now, then the same cleanup runs. A worker merely missing from
        Redis is not taken for dead: after a Redis restart a live worker
        registers again within a heartbeat, and one really gone is failed by
        its lapsed heartbeat (or by its pool, at once).

        The common case, a live worker, costs one round trip of reads; a check
        that is not running, none.
        """
        if job.status != JobStatus.STARTED or not self.may_be_abandoned([job])[0]:
            return job
        return self.reap(job)

    def reap_each(self, jobs: Sequence[StoredCheck]) -> list[StoredCheck | None]:
        """:meth:`reap_if_abandoned` of each of ``jobs`` (None: deleted meanwhile),
        the running ones tested in one round trip."""
        running = [job for job in jobs if job.status == JobStatus.STARTED]
        maybe = self.may_be_abandoned(running)
        suspects = {job.id for job, suspect in zip(running, maybe, strict=True) if suspect}
        return [self._reaped_if_there(job) if job.id in suspects else job for job in jobs]

    def _reaped_if_there(self, job: StoredCheck) -> StoredCheck | None:
        try:
            return self.reap(job)
        except Problem:  # 404: deleted meanwhile
            return None

    def reap(self, job: StoredCheck) -> StoredCheck:
        """:meth:`reap_if_abandoned` of a running ``job`` :meth:`may_be_abandoned`."""
        registry = StartedJobRegistry(queue=self.queue_of(job))
        registry.cleanup()
        if self.status_now(job.id) != JobStatus.STARTED:
            return self.refetch(job)
        if not job.worker_name or not self.worker_stopped(job.worker_name):
            return job
        if self.status_now(job.id) != JobStatus.STARTED:  # finished meanwhile
            return self.refetch(job)
        members = {
            f"{job_id}:{execution_id}": 0
            for job_id, execution_id in registry.get_job_and_execution_ids(cleanup=False)
            if job_id == job.id
        }
        # No entry left (it expired a moment ago)? A stand-in entry for the job
        # sends it down the same cleanup path.
        self.connection.zadd(registry.key, members or {f"{job.id}:abandoned": 0})
        log.warning("check %s: worker %s is gone; marking it failed", job.id, job.worker_name)
        registry.cleanup()
        return self.refetch(job)

    def may_be_abandoned(self, jobs: Sequence[StoredCheck]) -> list[bool]:
        """For each of ``jobs``, whether an entry of its started registry has lapsed
        (RQ's cleanup has work to do) or its worker said it stopped; all in one
        round trip (none for no jobs)."""
        commands: list[Command] = []
        for job in jobs:
            worker_key = Worker.redis_worker_namespace_prefix + (job.worker_name or "")
            commands += [
                (
                    "ZRANGEBYSCORE",
                    StartedJobRegistry.key_template.format(job.origin),
                    0,
                    current_timestamp(),
                    "LIMIT",
                    0,
                    1,
                ),
                ("SISMEMBER", Worker.redis_workers_keys, worker_key),
                ("HEXISTS", worker_key, "death"),
            ]
        replies = iter(reads(self.connection, commands) if commands else [])
        return [
            bool(lapsed) or (bool(job.worker_name) and bool(died) and not registered)
            for job, lapsed, registered, died in zip(jobs, replies, replies, replies, strict=True)
        ]

    def worker_stopped(self, worker_name: str) -> bool:
        """True when the worker unregistered itself (its hash keeps ``death`` a while)."""
        key = Worker.redis_worker_namespace_prefix + worker_name
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.sismember(Worker.redis_workers_keys, key)
            pipe.hexists(key, "death")
            registered, died = pipe.execute()
        return bool(died) and not registered

    def queue_of(self, job: StoredCheck) -> Queue:
        return Queue(job.origin, connection=self.connection, serializer=JSONSerializer)

    def refetch(self, job: StoredCheck) -> StoredCheck:
        try:
            return self.fetch(job.id)
        except NoSuchJobError:
            raise _not_found(job.id) from None

    def wait(self, job: StoredCheck, seconds: float, lease: Lease | None = None) -> StoredCheck:
        """Hold until the job has a result or ``seconds`` pass (a blocking XREAD).

        The job is read again, and ``lease`` (the room this held response takes,
        service/held.py) given back, by commands sent behind the XREAD in the same
        pipeline: Redis runs them as soon as the XREAD returns, so the wake-up
        costs no round trip of its own.
        """
        if seconds <= 0 or public_status(job) in TERMINAL:
            return job

        block = max(1, round(seconds * 1000))  # ms; 0 would block for ever
        # Any result wakes it (the first is enough: the job is read again).
        commands: list[Command] = [
            ("XREAD", "BLOCK", block, "COUNT", 1, "STREAMS", Result.get_key(job.id), "0-0"),
            *fetch_commands(job.id),
        ]
        if lease is not None:
            # Safe to send again, like a read: it only removes this hold's own member.
            commands.append(lease.release_command())
        _, raw, latest, *_ = reads(self.blocking, commands)
        try:
            job = read_check(job.id, raw, latest)
        except NoSuchJobError:  # deleted meanwhile
            raise _not_found(job.id) from None
        return self.reap_if_abandoned(job)

    def describe(self, job: StoredCheck) -> CheckDocument:
        """The GET /v1/checks/{id} body."""
        return check_document(job)

    def list_item(self, job: StoredCheck) -> ListedCheck:
        """A check as ``GET /v1/checks`` lists it: its document without the transcript."""
        document: dict[str, Any] = dict(check_document(job))
        if isinstance(document.get("result"), dict):
            document["result"] = {k: v for k, v in document["result"].items() if k != "transcript"}
        return cast(ListedCheck, document)

    def lines_so_far(self, job: StoredCheck) -> list[dict[str, Any]]:
        """The transcript lines a running check has recorded yet."""
        return events.lines_so_far(self.connection, job.id)

    def result(self, job: StoredCheck) -> dict[str, Any] | None:
        """The worker's result dict, once finished."""
        if public_status(job) != "finished":
            return None
        latest = job.latest
        if latest is None or latest.type != Result.Type.SUCCESSFUL:
            return None
        value = latest.return_value
        return value if isinstance(value, dict) else None

    # -- delete ---------------------------------------------------------------

    def cancel(self, job: StoredCheck) -> bool:
        """Cancel a check that has not ended; False if it had ended already.

        A queued (or retrying) check is canceled in RQ and reads ``canceled``;
        a running one gets the flag its worker polls (workers/cancel.py) and
        ends within a second with outcome ``canceled``, its transcript so far.
        """
        status = self.status_now(job.id)
        if status != JobStatus.STARTED and PUBLIC_STATUS.get(status) != "queued":
            return False
        self.connection.set(CANCEL_KEY_PREFIX + job.id, "1", ex=self.settings.result_ttl)
        if status != JobStatus.STARTED:
            with contextlib.suppress(InvalidJobOperation):  # canceled meanwhile
                # its webhook, if any, still goes out
                self.rq_job(job).cancel(enqueue_dependents=True)
        return True

    def delete(self, job: StoredCheck) -> None:
        """Delete an ended check (and what it left: listing, events, cancel flag)."""
        if not self.delete_all([job]):
            raise Problem(
                409,
                "Conflict",
                "the check has not ended; DELETE cancels it first",
                type=CHECK_RUNNING,
            )

    def delete_all(
        self,
        jobs: Sequence[StoredCheck],
        *,
        also: tuple[str, ...] = (),
        unlist: tuple[str, str] | None = None,
    ) -> bool:
        """Delete every one of ``jobs`` and the keys ``also`` in one transaction, or none
        (``unlist``: an ``(owner, id)`` to take out of the owner's listing with them).

        Only ended checks are deleted: False, with nothing deleted, when one of
        them has not ended (or turned back, as a retry does). The job hashes
        are watched, so a worker changing one meanwhile makes the transaction
        start over rather than delete a check that just began to run.
        """
        keys = [job.key for job in jobs]
        for _ in range(DELETE_ATTEMPTS):
            with self.connection.pipeline() as pipe:
                try:
                    if keys:
                        pipe.watch(*keys)
                    for key in keys:
                        raw = pipe.hget(key, "status")
                        if raw is not None and _public(raw) not in TERMINAL:
                            return False
                    pipe.multi()
                    for job in jobs:
                        # its webhook too
                        self.rq_job(job).delete(pipeline=pipe, delete_dependents=True)
                        owner = (job.meta or {}).get("owner")
                        if owner:
                            pipe.zrem(listing.index_key(str(owner)), job.id)
                        pipe.delete(events.events_key(job.id), CANCEL_KEY_PREFIX + job.id)
                    if also:
                        pipe.delete(*also)
                    if unlist is not None:
                        pipe.zrem(listing.index_key(unlist[0]), unlist[1])
                    pipe.execute()
                    return True
                except WatchError:
                    continue
        raise Problem(
            409,
            "Conflict",
            "the check kept changing while it was being deleted; try again",
            type=CHECK_RUNNING,
        )

    # -- vantages -------------------------------------------------------------

    def vantages(self) -> list[Vantage]:
        """Every known vantage with its live workers and queue depth."""
        names = {DEFAULT_VANTAGE}
        for key in self.connection.smembers(Queue.redis_queues_keys):
            name = key.decode() if isinstance(key, bytes) else str(key)
            name = name.removeprefix(Queue.redis_queue_namespace_prefix)
            if name.startswith(QUEUE_PREFIX):
                names.add(name.removeprefix(QUEUE_PREFIX))
        for worker in Worker.all(connection=self.connection):
            for listened in worker.queue_names():
                if listened.startswith(QUEUE_PREFIX):
                    names.add(listened.removeprefix(QUEUE_PREFIX))
        listing: list[Vantage] = []
        for name in sorted(names):
            queue = self.queue(name)
            listing.append(
                {"name": name, "workers": len(Worker.all(queue=queue)), "queued": queue.count}
            )
        return listing

    def submitted(self) -> dict[str, int]:
        raw: dict[bytes, bytes] = self.connection.hgetall(SUBMITTED_KEY)  # type: ignore[assignment]
        return {key.decode(): int(value) for key, value in raw.items()}


def rq_job_hash(
    function: str,
    kwargs: dict[str, Any],
    *,
    origin: str,
    timeout: int,
    ttl: int,
    meta: dict[str, Any],
    retry: RQRetry | None,
    moment: datetime,
) -> list[EncodableT]:
    """A new check's job hash, field by field as RQ writes it for
    ``Queue(origin).create_job(function, kwargs=kwargs, timeout=timeout, result_ttl=ttl,
    failure_ttl=ttl, ttl=ttl, description=DESCRIPTION, meta=meta, retry=retry,
    status=QUEUED)`` and ``enqueue_job``: ``status`` first (``enqueue_job`` sets it
    before it saves the job), then ``Job.to_dict``'s fields in its order, the call
    JSON-serialized and compressed. ``moment`` is ``created_at`` and ``enqueued_at``
    both: the check is made and queued in one go.

    Built here rather than through an RQ ``Job`` (its attributes, its serializer,
    its pipeline of five commands), which cost the POST a fifth of its Python work."""
    stamp = utcformat(moment)
    fields: list[EncodableT] = [
        "status", JobStatus.QUEUED.value,
        "created_at", stamp,
        "data", zlib.compress(JSONSerializer.dumps((function, None, (), kwargs))),
        "success_callback_name", "",
        "failure_callback_name", "",
        "stopped_callback_name", "",
        "started_at", "",
        "ended_at", "",
        "last_heartbeat", "",
        "worker_name", "",
        "group_id", "",
    ]  # fmt: skip
    if retry is not None:  # (enqueue_at_front is False: RQ leaves it out)
        fields += ["retries_left", retry.max, "retry_intervals", json.dumps(retry.intervals)]
    fields += [
        "origin", origin,
        "description", DESCRIPTION,
        "enqueued_at", stamp,
        "timeout", timeout,
        "result_ttl", ttl,
        "failure_ttl", ttl,
        "meta", JSONSerializer.dumps(meta),
        "ttl", ttl,
    ]  # fmt: skip
    return fields


def reads(client: FailoverRedis, commands: list[Command]) -> list[Any]:
    """The raw replies to ``commands`` (reads, or writes safe to send twice), sent
    in one round trip as they are (smtpcheck/wire.py: without redis-py's pipeline
    and its reply callbacks, some 20 Python calls a command, on the path to every
    answer) on a connection the client's :func:`wire.shared` keeps (no pool checkout
    and release, some 35 calls a batch; a batch cut off half way, a held GET's
    XREAD among them, leaves its connection to be connected anew) and retried like
    a read across a failover; the first failed command's error is raised."""
    batch = wire.shared(client)

    def send() -> list[Any]:
        replies = batch.execute(commands)
        failed = wire.first_error(replies)
        if failed is not None:
            raise failed
        return replies

    return client.read_retry.call_with_retry(send, lambda _error: None)


def fetch_commands(check_id: str) -> list[Command]:
    """Read a job's hash, then its latest result (:func:`read_check` reads the replies).

    The two are read one after the other without a transaction, which is enough:
    a worker writes a job's end and its result in one transaction, so a hash read
    as ended has its result beside it, and only a check that has not ended (a
    retry's next attempt) can add a result after its hash was read, one its
    document does not show.
    """
    return [
        ("HGETALL", Job.key_for(check_id)),
        ("XREVRANGE", Result.get_key(check_id), "+", "-", "COUNT", 1),
    ]


def read_check(check_id: str, raw: Any, latest: Any) -> StoredCheck:
    """The check from the raw replies to :func:`fetch_commands` (NoSuchJobError: none)."""
    return StoredCheck.read(
        check_id,
        _fields(raw),
        [(entry_id, _fields(fields)) for entry_id, fields in latest or ()],
    )


def _fields(reply: Any) -> dict[bytes, bytes]:
    """A hash or a stream entry's fields as a raw reply has them (RESP2: a flat list
    of field, value, ...; RESP3: a map)."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2], strict=True))


def _public(raw: bytes | str) -> str:
    text = raw.decode() if isinstance(raw, bytes) else raw
    try:
        return PUBLIC_STATUS.get(JobStatus(text), "queued")
    except ValueError:
        return "queued"


def _request_context() -> dict[str, str]:
    """The HTTP request id, so the worker's log lines can name it too."""
    request_id = (log_context.get() or {}).get("request_id")
    return {"request_id": str(request_id)} if request_id else {}


def mask_secrets(request: dict[str, Any]) -> tuple[dict[str, Any], str | None, str | None]:
    """The request with ``auth.password`` and ``callback.secret`` as ``****``,
    then the password and the callback secret themselves."""
    masked = dict(request)
    password = callback_secret = None
    if request.get("auth"):
        password = request["auth"].get("password")
        masked["auth"] = {**request["auth"], "password": SECRET_MASK}
    if request.get("callback"):
        callback_secret = request["callback"].get("secret")
        masked["callback"] = {**request["callback"], "secret": SECRET_MASK}
    return masked, password, callback_secret


def _not_found(check_id: str) -> Problem:
    return Problem(404, "Not Found", f"no check {check_id!r} for this API key", type=NOT_FOUND)
