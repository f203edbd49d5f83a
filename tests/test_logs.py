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
