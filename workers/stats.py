"""What workers tell the API's /metrics: finished checks by outcome and a
duration histogram per vantage, kept in Redis so that one scrape of any API
process tells the whole story, whichever machine ran the check."""

from __future__ import annotations

import redis
from redis.client import Pipeline

from smtpcheck.contract import DURATION_KEY, FINISHED_KEY

# Seconds: SMTP checks take from milliseconds (a refused port) to minutes (tarpits).
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def record(connection: redis.Redis, vantage: str, outcome: str, seconds: float) -> None:
    """Count one finished check; one round trip."""
    with connection.pipeline(transaction=False) as pipe:
        stage(pipe, vantage, outcome, seconds)
        pipe.execute()


def stage(pipe: Pipeline, vantage: str, outcome: str, seconds: float) -> None:
    """Count one finished check in ``pipe`` (the worker's last round trip of the check)."""
    pipe.hincrby(FINISHED_KEY, f"{vantage}|{outcome}", 1)
    for bound in BUCKETS:  # cumulative, and every bucket present from the first check
        pipe.hincrby(DURATION_KEY, f"{vantage}|{bound:g}", 1 if seconds <= bound else 0)
    pipe.hincrbyfloat(DURATION_KEY, f"{vantage}|sum", seconds)
    pipe.hincrby(DURATION_KEY, f"{vantage}|count", 1)
