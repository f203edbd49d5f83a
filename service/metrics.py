"""``GET /metrics``: Prometheus text exposition, read from Redis.

Every figure comes from Redis, so each gunicorn process reports the same
numbers and a restart loses nothing.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

from .jobstore import JobStore

blueprint = Blueprint("metrics", __name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@blueprint.get("/metrics")
def metrics() -> Response:
    store: JobStore = current_app.extensions["smtpcheck"]
    return Response(exposition(store), content_type=CONTENT_TYPE)


def exposition(store: JobStore) -> str:
    vantages = store.vantages()
    submitted = store.submitted()
    families: list[tuple[str, str, str, list[tuple[str, float]]]] = [
        ("smtpcheck_workers", "gauge", "Live workers serving a vantage.", []),
        ("smtpcheck_checks_queued", "gauge", "Checks waiting for a worker.", []),
        ("smtpcheck_checks_running", "gauge", "Checks a worker is running.", []),
        ("smtpcheck_checks_finished", "gauge", "Finished checks still stored.", []),
        ("smtpcheck_checks_failed", "gauge", "Checks that failed to run, still stored.", []),
        ("smtpcheck_checks_submitted_total", "counter", "Checks accepted by the API.", []),
    ]
    samples = {name: rows for name, _, _, rows in families}
    for vantage in vantages:
        name = vantage["name"]
        queue = store.queue(name)
        label = f'vantage="{escape(name)}"'
        samples["smtpcheck_workers"].append((label, vantage["workers"]))
        samples["smtpcheck_checks_queued"].append((label, vantage["queued"]))
        for family, registry_class in (
            ("smtpcheck_checks_running", StartedJobRegistry),
            ("smtpcheck_checks_finished", FinishedJobRegistry),
            ("smtpcheck_checks_failed", FailedJobRegistry),
        ):
            count = registry_class(queue=queue).get_job_count(cleanup=False)
            samples[family].append((label, count))
        samples["smtpcheck_checks_submitted_total"].append((label, submitted.get(name, 0)))
    lines = []
    for name, kind, help_text, rows in families:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{{{label}}} {value:g}" for label, value in rows)
    return "\n".join(lines) + "\n"


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
