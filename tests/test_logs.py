"""JSON log lines: context in, secrets out."""

from __future__ import annotations

import io
import json
import logging

from smtpcheck.logs import JSONFormatter, log_context


def line_for(message: str, **extra: object) -> dict:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    logger = logging.getLogger("smtpcheck.test-logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning(message, extra=extra)
    finally:
        logger.removeHandler(handler)
    return json.loads(stream.getvalue())


def test_one_json_object_with_the_context() -> None:
    token = log_context.set({"request_id": "r-1", "check_id": "c-1"})
    try:
        entry = line_for("check %s", outcome="ok", host="mx.example.com")
    finally:
        log_context.reset(token)
    assert entry["message"] == "check %s"
    assert entry["level"] == "warning" and entry["logger"] == "smtpcheck.test-logs"
    assert entry["time"].endswith("+00:00")
    assert (entry["request_id"], entry["check_id"]) == ("r-1", "c-1")
    assert (entry["outcome"], entry["host"]) == ("ok", "mx.example.com")


def test_library_extras_such_as_job_arguments_never_reach_the_line() -> None:
    """RQ logs a failing job with extra={'kwargs': job.kwargs}; those hold the seal."""
    entry = line_for(
        "job failed",
        kwargs={"sealed_password": "gAAAAA-sealed"},
        arguments=["x"],
        func="workers.job.run_check_job",
        job_id="j-1",
    )
    assert "gAAAAA" not in json.dumps(entry)
    assert "kwargs" not in entry and "arguments" not in entry and "func" not in entry
    assert entry["job_id"] == "j-1"


def test_a_line_is_the_same_without_what_logging_no_longer_gathers() -> None:
    """gather_only_what_is_written() (the API's gunicorn) changes no field of a line.
    In a process of its own: the switches are process-wide."""
    import subprocess
    import sys

    code = """
import io, json, logging
from smtpcheck.logs import JSONFormatter, gather_only_what_is_written, log_context
stream = io.StringIO()
handler = logging.StreamHandler(stream)
handler.setFormatter(JSONFormatter())
log = logging.getLogger("smtpcheck.access")
log.addHandler(handler)
log.setLevel(logging.INFO)
log_context.set({"request_id": "r-1"})
def line():
    log.info("%s %s %s", "GET", "/v1/checks/<check_id>", 200,
             extra={"status": 200, "duration_ms": 1.25, "api_key": "alice"})
line()
gather_only_what_is_written()
line()
print(stream.getvalue())
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    before, after = (json.loads(line) for line in done.stdout.splitlines() if line)
    assert list(before) == list(after)
    before.pop("time"), after.pop("time")
    assert before == after
    assert after == {
        "level": "info",
        "logger": "smtpcheck.access",
        "message": "GET /v1/checks/<check_id> 200",
        "request_id": "r-1",
        "status": 200,
        "duration_ms": 1.25,
        "api_key": "alice",
    }
