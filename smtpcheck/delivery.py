"""A webhook delivery as an RQ job: its shape on the queue, in one place.

The API queues the first delivery with the check itself, deferred until the
check ends (an RQ ``Dependency`` on it, failure allowed); a worker runs it
(``workers.webhook.deliver``, enqueued by dotted path) and queues the next
attempt when one is due. Every delivery job carries the sealed callback
secret and is deleted as it ends (``result_ttl=0``), so the seal goes with it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from rq import Queue
from rq.job import Dependency, Job

FUNCTION = "workers.webhook.deliver"
DESCRIPTION = "smtpcheck-webhook"
JOB_TIMEOUT = 60  # seconds; one attempt takes at most workers.webhook.ATTEMPT_TIMEOUT
FAILURE_TTL = 24 * 3600  # a delivery job that died (its worker did) is kept this long


def job_id(check_id: str, attempt: int) -> str:
    return f"{check_id}-webhook-{attempt}"


def enqueue(
    queue: Queue,
    check_id: str,
    sealed_secret: str,
    *,
    attempt: int,
    ttl: int,
    delay: int = 0,
    after_check: bool = False,
) -> Job:
    """Queue delivery attempt ``attempt``: after the check ends, in ``delay`` seconds, or now."""
    options: dict[str, Any] = {
        "kwargs": {"check_id": check_id, "sealed_secret": sealed_secret, "attempt": attempt},
        "job_id": job_id(check_id, attempt),
        "description": DESCRIPTION,
        "job_timeout": JOB_TIMEOUT,
        "result_ttl": 0,
        "failure_ttl": FAILURE_TTL,
        "ttl": ttl,
        "meta": {"check_id": check_id},
    }
    if delay:
        return queue.enqueue_in(timedelta(seconds=delay), FUNCTION, **options)
    depends_on = None
    if after_check:  # finished, failed or canceled: RQ enqueues it once the check ends
        depends_on = Dependency(jobs=[check_id], allow_failure=True, enqueue_at_front=True)
    return queue.enqueue(FUNCTION, depends_on=depends_on, at_front=True, **options)
