"""The RQ entry point: ``workers.job.run_check_job``, enqueued by dotted path.

Arguments arrive as JSON (``rq.serializers.JSONSerializer``): the normalized
request, with ``auth.password`` already ``****``, and the real password
sealed for this worker. The seal is opened only here, just before the check,
and the clear text lives only in this call's frame.
"""

from __future__ import annotations

from typing import Any

from rq import get_current_job

from smtpcheck.config import Settings
from smtpcheck.sealing import unseal
from workers.check import run_check


def run_check_job(request: dict[str, Any], sealed_password: str | None = None) -> dict[str, Any]:
    settings = Settings.from_env()
    job = get_current_job()
    password = None
    if sealed_password is not None:
        password = unseal(sealed_password, settings.secret_key or "")
    result = run_check(
        request, settings, password=password, check_id=job.id if job is not None else None
    )
    if job is not None:
        result["worker"] = job.worker_name
    return result
