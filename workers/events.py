"""A running check's transcript lines, published as the engine records them.

Each line goes to the Redis stream ``smtpcheck:events:<check id>``
(smtpcheck/contract.py) as ``{"event": "line", "data": <the JSON entry>}``,
capped at ``EVENTS_MAXLEN`` entries and expiring with the check. The lines
are the transcript's own, so AUTH secrets are already ``****``. The API
reads the stream for ``GET /v1/checks/{id}/events`` and for the text
transcript of a check still running. Publishing never fails a check: when
Redis is away, the lines are still in the result.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from typing import Any

import redis

from smtpcheck.contract import EVENTS_KEY_PREFIX, EVENTS_MAXLEN
from workers.transcript import listening

log = logging.getLogger("smtpcheck.worker")


class EventPublisher:
    """Appends one check's transcript lines to its stream."""

    def __init__(self, connection: redis.Redis, check_id: str, ttl: int) -> None:
        self.connection = connection
        self.key = EVENTS_KEY_PREFIX + check_id
        self.ttl = ttl
        self.broken = False

    def line(self, entry: dict[str, Any]) -> None:
        self.publish("line", entry)

    def publish(self, event: str, payload: dict[str, Any]) -> None:
        if self.broken:
            return
        try:
            pipe = self.connection.pipeline(transaction=False)
            pipe.xadd(
                self.key,
                {"event": event, "data": json.dumps(payload, ensure_ascii=False)},
                maxlen=EVENTS_MAXLEN,
                approximate=False,
            )
            pipe.expire(self.key, self.ttl)
            pipe.execute()
        except redis.exceptions.RedisError as exc:
            self.broken = True  # one warning, then the check goes on unpublished
            log.warning("cannot publish transcript lines to %s: %s", self.key, exc)


@contextlib.contextmanager
def publishing(connection: redis.Redis, check_id: str, ttl: int) -> Iterator[EventPublisher]:
    """Publish every transcript line recorded in this block (in this thread)."""
    publisher = EventPublisher(connection, check_id, ttl)
    with listening(publisher.line):
        yield publisher
