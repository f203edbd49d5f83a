"""Checks as RQ jobs in Redis: enqueue, read, wait, delete, list vantages.

The queue contract (docs/architecture.md): queue ``vantage:<name>``, job
function ``workers.job.run_check_job`` enqueued by dotted path with kwargs
``{"request", "sealed_password"}``, JSON serializer, description
``smtpcheck``, ``job.meta = {"owner", "vantage"}``. The check id is the RQ
job id. This module never imports ``workers``.
"""

from __future__ import annotations

import contextlib
import logging
import math
from datetime import UTC, datetime
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from rq import Queue, Worker
from rq import Retry as RQRetry
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer

from smtpcheck.config import Settings
from smtpcheck.logs import log_context
from smtpcheck.sealing import seal

from .problems import CHECK_RUNNING, MISCONFIGURED, NOT_FOUND, Problem, validation_problem
from .schemas import DEFAULT_VANTAGE, SECRET_MASK, check_id_is_valid

JOB_FUNCTION = "workers.job.run_check_job"
QUEUE_PREFIX = "vantage:"
DESCRIPTION = "smtpcheck"
JOB_TIMEOUT_MARGIN = 30
SUBMITTED_KEY = "smtpcheck:metrics:submitted"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

#: RQ status -> the four statuses callers see.
PUBLIC_STATUS: dict[JobStatus, str] = {
    JobStatus.CREATED: "queued",
    JobStatus.QUEUED: "queued",
    JobStatus.DEFERRED: "queued",
    JobStatus.SCHEDULED: "queued",
    JobStatus.RATE_LIMITED: "queued",
    JobStatus.READY_TO_ENQUEUE: "queued",
    JobStatus.STARTED: "running",
    JobStatus.FINISHED: "finished",
    JobStatus.FAILED: "failed",
    JobStatus.STOPPED: "failed",
    JobStatus.CANCELED: "failed",
}
TERMINAL = frozenset({"finished", "failed"})

log = logging.getLogger("smtpcheck.service")


def connect(url: str | None, *, read_timeout: float = 2.0) -> redis.Redis:
    """A Redis client that fails fast (503) while Redis is away and reconnects by itself."""
    return redis.Redis.from_url(
        url or DEFAULT_REDIS_URL,
        socket_connect_timeout=2.0,
        socket_timeout=read_timeout,
        socket_keepalive=True,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), retries=1),
        retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
    )


def isoformat(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    text = moment.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def public_status(job: Job) -> str:
    status = job.get_status(refresh=False)
    if status == JobStatus.SCHEDULED and (job.meta or {}).get("attempts"):
        return "retrying"  # a greylisted check waiting for its next attempt
    return PUBLIC_STATUS.get(status, "queued")


def failure_reason(job: Job, result: Result | None) -> str:
    """One line saying why a check did not produce a result."""
    status = job.get_status(refresh=False)
    if status == JobStatus.CANCELED:
        return "the check was canceled before it ran"
    if status == JobStatus.STOPPED:
        return "the check was stopped before it finished"
    text = (result.exc_string if result is not None else None) or ""
    if "AbandonedJobError" in text:
        return "the worker running this check stopped before it finished"
    if "JobTimeoutException" in text:
        return "the check ran past its time limit and was stopped"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines:
        return f"the worker failed: {lines[-1][:300]}"
    return "the check failed without a reason"


class JobStore:
    """Checks kept as RQ jobs. One per app, in ``app.extensions["smtpcheck"]``."""

    def __init__(self, settings: Settings, job_function: str = JOB_FUNCTION) -> None:
        self.settings = settings
        self.job_function = job_function
        self.connection = connect(settings.redis_url)
        # XREAD for ?wait=N blocks up to N seconds: it gets its own read timeout.
        self.blocking = connect(settings.redis_url, read_timeout=settings.limits.max_wait + 5.0)

    def close(self) -> None:
        self.connection.close()
        self.blocking.close()

    def ping(self) -> None:
        self.connection.ping()

    def queue(self, vantage: str) -> Queue:
        return Queue(QUEUE_PREFIX + vantage, connection=self.connection, serializer=JSONSerializer)

    # -- submit ---------------------------------------------------------------

    def submit(self, request: dict[str, Any], owner: str) -> Job:
        """Queue a validated, normalized request. The AUTH password leaves in a seal."""
        request, password = mask_password(request)
        sealed = None
        if password is not None:
            if not self.settings.secret_key:
                raise Problem(
                    503,
                    "Service Unavailable",
                    "this service has no SMTPCHECK_SECRET_KEY, so it cannot accept AUTH "
                    "passwords; ask its operator",
                    type=MISCONFIGURED,
                )
            sealed = seal(password, self.settings.secret_key)
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
        job = self.queue(vantage).enqueue(
            self.job_function,
            kwargs={"request": request, "sealed_password": sealed},
            retry=retry,
            job_timeout=math.ceil(request["timeouts"]["total"]) + JOB_TIMEOUT_MARGIN,
            result_ttl=ttl,
            failure_ttl=ttl,
            ttl=ttl,
            description=DESCRIPTION,
            meta={"owner": owner, "vantage": vantage, **_request_context()},
        )
        self.connection.hincrby(SUBMITTED_KEY, vantage, 1)
        return job

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

    def load(self, check_id: str, owner: str) -> Job:
        """The job for ``check_id`` if ``owner`` made it; else 404."""
        if not check_id_is_valid(check_id):
            raise _not_found(check_id)
        try:
            job = Job.fetch(check_id, connection=self.connection, serializer=JSONSerializer)
        except NoSuchJobError:
            raise _not_found(check_id) from None
        meta = job.meta if isinstance(job.meta, dict) else {}
        if job.description != DESCRIPTION or meta.get("owner") != owner:
            raise _not_found(check_id)
        if job.get_status(refresh=False) == JobStatus.STARTED:
            job = self.reap_if_abandoned(job)
        return job

    def reap_if_abandoned(self, job: Job) -> Job:
        """A running job whose worker is gone reads as failed, never hangs.

        Jobs whose heartbeat lapsed are moved to failed by RQ's own
        StartedJobRegistry cleanup. A worker that unregistered (it died or
        was shut down cold) while its last heartbeat is still fresh has its
        entries for this job expired now, then the same cleanup runs.
        """
        registry = StartedJobRegistry(queue=self.queue_of(job))
        registry.cleanup()
        if job.get_status(refresh=True) != JobStatus.STARTED:
            return self.refetch(job)
        if not job.worker_name or self.worker_alive(job.worker_name):
            return job
        if job.get_status(refresh=True) != JobStatus.STARTED:  # finished meanwhile
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

    def worker_alive(self, worker_name: str) -> bool:
        key = Worker.redis_worker_namespace_prefix + worker_name
        return bool(self.connection.sismember(Worker.redis_workers_keys, key))

    def queue_of(self, job: Job) -> Queue:
        return Queue(job.origin, connection=self.connection, serializer=JSONSerializer)

    def refetch(self, job: Job) -> Job:
        try:
            return Job.fetch(job.id, connection=self.connection, serializer=JSONSerializer)
        except NoSuchJobError:
            raise _not_found(job.id) from None

    def wait(self, job: Job, seconds: int) -> Job:
        """Hold until the job has a result or ``seconds`` pass (a blocking XREAD)."""
        if seconds <= 0 or public_status(job) in TERMINAL:
            return job
        watcher = Job(job.id, connection=self.blocking, serializer=JSONSerializer)
        watcher.latest_result(timeout=seconds)
        job = self.refetch(job)
        if job.get_status(refresh=False) == JobStatus.STARTED:
            job = self.reap_if_abandoned(job)
        return job

    def describe(self, job: Job) -> dict[str, Any]:
        """The GET /v1/checks/{id} body."""
        status = public_status(job)
        result: Result | None = job.latest_result() if status in TERMINAL else None
        value = None
        error = None
        if status == "finished" and result is not None and result.type == Result.Type.SUCCESSFUL:
            value = result.return_value
        elif status == "failed":
            error = failure_reason(job, result)
        ended = job.ended_at
        if ended is None and result is not None and status in TERMINAL:
            ended = result.created_at
        return {
            "id": job.id,
            "status": status,
            "vantage": (job.meta or {}).get("vantage", DEFAULT_VANTAGE),
            "created_at": isoformat(job.created_at),
            "started_at": isoformat(job.started_at),
            "ended_at": isoformat(ended) if status in TERMINAL else None,
            "request": (job.kwargs or {}).get("request"),
            "result": value,
            "error": error,
            **self._retrying(job, status),
            "links": links(job.id),
        }

    @staticmethod
    def _retrying(job: Job, status: str) -> dict[str, Any]:
        """What a greylisted check's attempts so far said, and when it runs again."""
        meta = job.meta or {}
        if status != "retrying":
            return {}
        return {
            "attempts": meta.get("attempts", []),
            "next_attempt_at": meta.get("next_attempt_at"),
        }

    def result(self, job: Job) -> dict[str, Any] | None:
        """The worker's result dict, once finished."""
        if public_status(job) != "finished":
            return None
        value = job.return_value()
        return value if isinstance(value, dict) else None

    # -- delete ---------------------------------------------------------------

    def delete(self, job: Job) -> None:
        """Cancel a queued check or delete a stored one; a running one is 409."""
        status = job.get_status(refresh=True)
        if status == JobStatus.STARTED:
            raise Problem(
                409,
                "Conflict",
                "the check is running; it ends by itself within its total timeout, "
                "delete it after that",
                type=CHECK_RUNNING,
            )
        if PUBLIC_STATUS.get(status) == "queued":
            with contextlib.suppress(InvalidJobOperation):  # canceled meanwhile
                job.cancel()
        job.delete()

    # -- vantages -------------------------------------------------------------

    def vantages(self) -> list[dict[str, Any]]:
        """Every known vantage with its live workers and queue depth."""
        names = {DEFAULT_VANTAGE}
        for key in self.connection.smembers(Queue.redis_queues_keys):
            name = key.decode() if isinstance(key, bytes) else str(key)
            name = name.removeprefix(Queue.redis_queue_namespace_prefix)
            if name.startswith(QUEUE_PREFIX):
                names.add(name.removeprefix(QUEUE_PREFIX))
        for worker in Worker.all(connection=self.connection):
            for queue_name in worker.queue_names():
                if queue_name.startswith(QUEUE_PREFIX):
                    names.add(queue_name.removeprefix(QUEUE_PREFIX))
        listing = []
        for name in sorted(names):
            queue = self.queue(name)
            listing.append(
                {"name": name, "workers": len(Worker.all(queue=queue)), "queued": queue.count}
            )
        return listing

    def submitted(self) -> dict[str, int]:
        raw: dict[bytes, bytes] = self.connection.hgetall(SUBMITTED_KEY)  # type: ignore[assignment]
        return {key.decode(): int(value) for key, value in raw.items()}


def _request_context() -> dict[str, str]:
    """The HTTP request id, so the worker's log lines can name it too."""
    request_id = (log_context.get() or {}).get("request_id")
    return {"request_id": str(request_id)} if request_id else {}


def mask_password(request: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The request with ``auth.password`` as ``****``, and the password itself."""
    auth = request.get("auth")
    if not auth:
        return request, None
    password = auth.get("password")
    return {**request, "auth": {**auth, "password": SECRET_MASK}}, password


def links(check_id: str) -> dict[str, str]:
    return {
        "self": f"/v1/checks/{check_id}",
        "transcript": f"/v1/checks/{check_id}/transcript",
    }


def _not_found(check_id: str) -> Problem:
    return Problem(404, "Not Found", f"no check {check_id!r} for this API key", type=NOT_FOUND)
