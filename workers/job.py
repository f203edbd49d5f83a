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
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from rq import get_current_job
from rq.job import Job

from smtpcheck.config import Settings
from smtpcheck.sealing import unseal
from workers.check import run_check


class RetryLater(Exception):
    """Raised to make RQ schedule the next attempt of a greylisted check."""


def _attempt_summary(result: dict[str, Any]) -> dict[str, Any]:
    """An earlier attempt, kept without its transcript to stay small."""
    keep = ("outcome", "stage", "summary", "started_at", "finished_at", "target", "rcpt", "mail")
    return {key: result.get(key) for key in keep}


def run_check_job(request: dict[str, Any], sealed_password: str | None = None) -> dict[str, Any]:
    settings = Settings.from_env()
    job = get_current_job()
    password = None
    if sealed_password is not None:
        password = unseal(sealed_password, settings.secret_key or "")
    result = run_check(
        request, settings, password=password, check_id=job.id if job is not None else None
    )
    del password
    if job is not None:
        result["worker"] = job.worker_name
        _retry_if_greylisted(job, request, result)
    return result


def _retry_if_greylisted(job: Job, request: dict[str, Any], result: dict[str, Any]) -> None:
    attempts: list[dict[str, Any]] = list((job.meta or {}).get("attempts") or [])
    retry = request.get("retry") or {}
    allowed = int(retry.get("attempts") or 1) if request.get("retry_temporary") else 1
    if attempts:
        result["attempts"] = [*attempts, _attempt_summary(result)]
    if result.get("outcome") != "temporary_failure" or len(attempts) + 1 >= allowed:
        return
    delay = float(retry.get("delay") or 0)
    attempts.append(_attempt_summary(result))
    job.meta["attempts"] = attempts
    next_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay)
    job.meta["next_attempt_at"] = next_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    job.save_meta()
    raise RetryLater(
        f"attempt {len(attempts)} of {allowed} ended in temporary_failure; "
        f"next attempt in {delay:g} s"
    )
