"""The RQ entry point: ``workers.job.run_check_job``, enqueued by dotted path.

Arguments arrive as JSON (``rq.serializers.JSONSerializer``): the normalized
request, with ``auth.password`` already ``****``, and the real password
sealed for this worker. The seal is opened only here, just before the check,
and the clear text lives only in this call's frame.

Greylisting: with ``retry_temporary``, a check that ends in
``temporary_failure`` is kept in ``job.meta["attempts"]`` and handed back to
RQ's scheduler (the API enqueued the job with a matching ``Retry``), so the
same check id runs again after ``retry.delay`` seconds; the last attempt's
result lists every attempt before it.

The seal itself is dropped from the stored job (``sealed_password: null``)
once no attempt can need it: at the start of the last attempt RQ may run
(so a worker killed mid-check leaves no seal behind either), or when an
earlier attempt ends without asking for another. The job object RQ saves
at the end is the one scrubbed here, so RQ's own save does not bring the
seal back.

Every check is gated by :class:`workers.politeness.TargetGate`: at most
``SMTPCHECK_MAX_CONCURRENT_PER_TARGET`` checks talk to one address at once,
and one API key (``job.meta["owner"]``, the key's name) holds at most its
share of those slots.

The job runs in a thread of its own in a :class:`workers.threaded.ThreadedCheckWorker`
(many checks in flight per process): everything here is per call or per
thread (``log_context`` and RQ's current job are context variables), and the
settings are the worker process's own (:func:`use_settings`: ``--vantage``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import zlib
from typing import Any

from rq import get_current_job
from rq.job import Job

from smtpcheck.config import Settings
from smtpcheck.contract import CheckRequest
from smtpcheck.logs import log_context
from smtpcheck.sealing import unseal
from workers import cancel, events, stats
from workers.engine import run_check
from workers.politeness import TargetGate

log = logging.getLogger("smtpcheck.worker")

# Rewrite the job's stored arguments, unless the job was deleted meanwhile
# (a plain HSET would bring back a bare hash that never expires).
_REWRITE_DATA = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'data', ARGV[1])
end
"""


class RetryLater(Exception):
    """Raised to make RQ schedule the next attempt of a greylisted check."""


def _attempt_summary(result: dict[str, Any]) -> dict[str, Any]:
    """An earlier attempt, kept without its transcript to stay small."""
    keep = ("outcome", "stage", "summary", "started_at", "finished_at", "target", "rcpt", "mail")
    return {key: result.get(key) for key in keep}


_worker_settings: Settings | None = None


def use_settings(settings: Settings) -> None:
    """The settings every check of this worker process runs with (the pool
    calls this with ``--vantage`` applied); without it, the environment's."""
    global _worker_settings
    _worker_settings = settings


def current_settings() -> Settings:
    return _worker_settings if _worker_settings is not None else Settings.from_env()


def run_check_job(request: CheckRequest, sealed_password: str | None = None) -> dict[str, Any]:
    settings = current_settings()
    job = get_current_job()
    if job is not None:  # every log line of this check names it, RQ's included
        log_context.set(
            {
                "check_id": job.id,
                "vantage": settings.vantage,
                "request_id": (job.meta or {}).get("request_id"),
            }
        )
    if job is not None and sealed_password is not None and not job.retries_left:
        scrub_sealed_password(job)  # RQ will not run this job again: nothing needs the seal
    password = None
    if sealed_password is not None:
        password = unseal(sealed_password, settings.secret_key or "")
    gate = None
    if job is not None:
        owner = (job.meta or {}).get("owner")
        gate = TargetGate(job.connection, settings.max_concurrent_per_target, owner=owner)
    with contextlib.ExitStack() as live:
        published = None
        if job is not None:  # lines published as they happen; DELETE cancels
            published = live.enter_context(
                events.publishing(job.connection, job.id, settings.result_ttl)
            )
            live.enter_context(cancel.watching(job.connection, job.id))
        result = run_check(
            request,
            settings,
            password=password,
            check_id=job.id if job is not None else None,
            gate=gate,
        )
        if job is not None and published is not None:
            result["worker"] = job.worker_name
            # The last lines and the /metrics counters in one round trip, before the result.
            published.finish(_report(job, settings, result))
    del password
    if job is not None:
        _retry_if_greylisted(job, request, result)  # raises (seal kept) to run again
        if sealed_password is not None:
            scrub_sealed_password(job)
    return result


def _report(job: Job, settings: Settings, result: dict[str, Any]) -> events.Commands:
    """One log line per check, and the counters behind /metrics for the
    check's last round trip; never a secret."""
    meta = job.meta or {}
    seconds = float((result.get("timings") or {}).get("total") or 0) / 1000
    log.info(
        "check %s: %s",
        job.id,
        result.get("outcome"),
        extra={
            "check_id": job.id,
            "request_id": meta.get("request_id"),
            "vantage": settings.vantage,
            "worker": job.worker_name,
            "host": (result.get("target") or {}).get("host"),
            "address": (result.get("target") or {}).get("address"),
            "outcome": result.get("outcome"),
            "stage": result.get("stage"),
            "duration_ms": round(seconds * 1000, 1),
        },
    )
    # (metrics never fail a check: the publisher logs a failed command)
    return [stats.counted(settings.vantage, str(result.get("outcome")), seconds)]


def scrub_sealed_password(job: Job) -> None:
    """Store the job's arguments again with ``sealed_password: null``."""
    kwargs = dict(job.kwargs)
    if kwargs.get("sealed_password") is None:
        return
    kwargs["sealed_password"] = None
    job.kwargs = kwargs  # RQ rebuilds `data` from this when it saves the job at the end
    job.connection.eval(_REWRITE_DATA, 1, job.key, zlib.compress(job.data))


def _retry_if_greylisted(job: Job, request: CheckRequest, result: dict[str, Any]) -> None:
    attempts: list[dict[str, Any]] = list((job.meta or {}).get("attempts") or [])
    retry = request["retry"]  # complete, as the API normalized it
    allowed = retry["attempts"] if request["retry_temporary"] else 1
    if attempts:
        result["attempts"] = [*attempts, _attempt_summary(result)]
    if result.get("outcome") != "temporary_failure" or len(attempts) + 1 >= allowed:
        return
    delay = float(retry["delay"])
    attempts.append(_attempt_summary(result))
    job.meta["attempts"] = attempts
    next_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay)
    job.meta["next_attempt_at"] = next_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    job.save_meta()
    raise RetryLater(
        f"attempt {len(attempts)} of {allowed} ended in temporary_failure; "
        f"next attempt in {delay:g} s"
    )
