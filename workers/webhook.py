"""Webhooks: once a check ends, POST its document to the request's ``callback.url``.

How a delivery travels (smtpcheck/delivery.py has the job's shape):

- The API queues the first delivery job together with the check, *depending
  on* it (RQ ``Dependency``, ``allow_failure=True``). RQ enqueues it only once
  the check has ended and its result is stored — finished (a check canceled
  while it ran finishes with outcome ``canceled``), failed in a way RQ knows
  (an exception, its time limit, a worker that died), or canceled before it
  ran (the API cancels with ``enqueue_dependents``) — so the document
  :func:`deliver` sends is the one ``GET /v1/checks/{id}`` returns then. The
  callback secret travels only in the delivery jobs' arguments, sealed.
- Each delivery job makes one attempt, bounded in time
  (:data:`workers.https.CONNECT_TIMEOUT`, :data:`ATTEMPT_TIMEOUT`), and writes
  it to the check's ``job.meta["callback"]``, which the check's document shows
  as ``callback``. A retryable failure (5xx, 408, 429, a timeout, a connection,
  TLS or temporary DNS error) queues the next attempt as a new job through RQ's
  scheduler after :data:`RETRY_DELAYS`; nothing sleeps in a worker slot.
  Every delivery job is deleted when it ends, and its seal with it.

Why jobs and not a thread: a worker's work horse may exit as soon as the
check returns (RQ's forking worker), taking any thread with it, and a thread
would hold the clear secret for minutes. A job per attempt costs a slot for
at most :data:`ATTEMPT_TIMEOUT` seconds and survives a worker restart.

The HTTP side: the URL passes :func:`smtpcheck.targetpolicy.http_target`
again, then :func:`workers.https.exchange` (shared with the MTA-STS policy
fetch) resolves the host, judges every address by the same table as a mail
server's and dials the vetted address itself (no second lookup, so DNS
rebinding gains nothing), with TLS verified against the system store plus
``SMTPCHECK_CA_FILE``. Redirects are not followed (a 3xx is a failed
attempt); at most :data:`MAX_RESPONSE_BYTES` of the answer are read.
"""

from __future__ import annotations

import http.client
import json
import logging
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from rq import Queue, get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from smtpcheck import delivery, signature
from smtpcheck.config import Settings
from smtpcheck.document import StoredCheck, check_document, isoformat
from smtpcheck.logs import log_context
from smtpcheck.sealing import SealError, unseal
from smtpcheck.targetpolicy import http_target
from workers.errors import DNSError
from workers.https import Refused, exchange

log = logging.getLogger("smtpcheck.webhook")

#: Seconds before attempts 2, 3, ...: six attempts over about eight minutes.
RETRY_DELAYS = (1, 5, 30, 120, 300)
ATTEMPT_TIMEOUT = 10.0  # resolve, connect, TLS, send, and read the answer
MAX_RESPONSE_BYTES = 64 * 1024
USER_AGENT = "smtpcheck-webhook/1"

# Write the check's meta, unless the check was deleted meanwhile (a plain
# HSET would bring back a bare hash that never expires).
_WRITE_META = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'meta', ARGV[1])
end
"""


# ---------------------------------------------------------------------------
# one delivery attempt, as an RQ job
# ---------------------------------------------------------------------------


def deliver(check_id: str, sealed_secret: str, attempt: int = 1) -> None:
    """POST the check's document once; record the attempt; schedule the next if due."""
    settings = Settings.from_env()
    job = get_current_job()
    if job is None:
        raise RuntimeError("workers.webhook.deliver runs as an RQ job")
    log_context.set({"check_id": check_id, "vantage": settings.vantage})
    try:
        check = Job.fetch(check_id, connection=job.connection, serializer=JSONSerializer)
    except NoSuchJobError:
        log.info("check %s was deleted before its webhook went out", check_id)
        return
    document = check_document(StoredCheck.of(check, check.latest_result()))
    callback = dict(check.meta.get("callback") or {})
    attempts = list(callback.get("attempts") or [])
    try:
        secret = unseal(sealed_secret, settings.secret_key or "")
    except SealError as exc:
        record, retry = Attempt.failed(f"cannot sign: {exc}"), False
    else:
        record, retry = post(document, secret, settings)
        del secret
    attempts.append(record.as_dict())
    callback = {"status": "delivered" if record.ok else "failed", "attempts": attempts}
    if retry and attempt <= len(RETRY_DELAYS):
        delay = RETRY_DELAYS[attempt - 1]
        callback["status"] = "retrying"
        callback["next_attempt_at"] = isoformat(datetime.now(UTC) + timedelta(seconds=delay))
        queue = Queue(job.origin, connection=job.connection, serializer=JSONSerializer)
        delivery.enqueue(
            queue,
            check_id,
            sealed_secret,
            attempt=attempt + 1,
            ttl=settings.result_ttl,
            delay=delay,
        )
    check.meta["callback"] = callback
    job.connection.eval(_WRITE_META, 1, check.key, check.serializer.dumps(check.meta))
    log.info(
        "check %s: webhook attempt %d: %s",
        check_id,
        attempt,
        record.status_code or record.error,
        extra={
            "check_id": check_id,
            "host": record.host,
            "address": record.address,
            "status": callback["status"],
            "duration_ms": record.duration_ms,
        },
    )


@dataclass
class Attempt:
    """One POST: when, what came back (a status code, or why none), how long."""

    at: str
    duration_ms: float
    status_code: int | None = None
    error: str | None = None
    host: str | None = None
    address: str | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @classmethod
    def failed(cls, error: str) -> Attempt:
        return cls(at=isoformat(datetime.now(UTC)) or "", duration_ms=0.0, error=error)

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "status_code": self.status_code,
            "error": self.error,
            "duration_ms": self.duration_ms,
            "address": self.address,
        }


def post(document: Mapping[str, Any], secret: str, settings: Settings) -> tuple[Attempt, bool]:
    """One signed POST of ``document``; the attempt, and whether another is worth it."""
    started = time.monotonic()
    record = Attempt(at=isoformat(datetime.now(UTC)) or "", duration_ms=0.0)
    retry = False
    try:
        target = http_target(
            document["request"]["callback"]["url"],
            settings.callback_ports,
            allow_http=settings.callback_http,
        )
        record.host = target.host
        body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "webhook-id": document["id"],  # the same on every retry, so receivers can dedupe
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature.sign(secret, document["id"], timestamp, body),
        }
        deadline = started + ATTEMPT_TIMEOUT
        response = exchange(
            target,
            settings,
            deadline,
            method="POST",
            body=body,
            headers=headers,
            max_bytes=MAX_RESPONSE_BYTES,  # at most this much; the rest is never read
        )
        status = response.status
        record.address = str(response.address)
        record.status_code = status
        if 300 <= status < 400:
            record.error = "the receiver answered with a redirect; redirects are not followed"
        elif not 200 <= status < 300:
            record.error = f"the receiver answered {status}"
            retry = status >= 500 or status in (408, 429)
    except ssl.SSLError as exc:  # before ValueError: a certificate error is both
        record.error = f"TLS: {getattr(exc, 'verify_message', None) or exc.reason or exc}"
        retry = True
    except (ValueError, Refused) as exc:
        record.error = f"refused: {exc}"
    except DNSError as exc:
        record.error = f"DNS: {exc}"
        retry = exc.temporary  # SERVFAIL or a timeout; a name that does not exist stays so
    except TimeoutError:
        record.error = f"timed out (at most {ATTEMPT_TIMEOUT:g} s per attempt)"
        retry = True
    except (OSError, http.client.HTTPException) as exc:
        record.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        retry = True
    record.duration_ms = round((time.monotonic() - started) * 1000, 1)
    return record, retry
