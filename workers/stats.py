"""What workers tell the API's /metrics: finished checks by outcome and a
duration histogram per vantage, kept in Redis so that one scrape of any API
process tells the whole story, whichever machine ran the check."""

from __future__ import annotations

import redis

from smtpcheck import wire
from smtpcheck.contract import DURATION_KEY, FINISHED_KEY

# Seconds: SMTP checks take from milliseconds (a refused port) to minutes (tarpits).
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def record(connection: redis.Redis, vantage: str, outcome: str, seconds: float) -> None:
    """Count one finished check; one round trip."""
    connection.execute_command(*counted(vantage, outcome, seconds))


#: One check's counters in one command (they were 15, a fifth of a fast
#: check's Redis commands): KEYS the two hashes; ARGV the outcome's field,
#: then (field, increment) pairs of the duration hash, its float sum last.
_COUNT = """
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
local n = #ARGV
for i = 2, n - 2, 2 do
  redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('HINCRBYFLOAT', KEYS[2], ARGV[n - 1], ARGV[n])
return 1
"""


def counted(vantage: str, outcome: str, seconds: float) -> wire.Command:
    """The command counting one finished check (sent in the worker's last
    round trip of the check), atomically: the outcome, every bucket of the
    cumulative duration histogram (each present from the first check), the
    count and the sum."""
    args: list[str | int | float] = [f"{vantage}|{outcome}"]
    for bound in BUCKETS:
        args += (f"{vantage}|{bound:g}", 1 if seconds <= bound else 0)
    args += (f"{vantage}|count", 1, f"{vantage}|sum", repr(float(seconds)))
    # EVAL, not EVALSHA: in a batch a missing script would fail the command.
    return ("EVAL", _COUNT, 2, FINISHED_KEY, DURATION_KEY, *args)
