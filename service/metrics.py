"""``GET /metrics``: Prometheus text exposition.

Two sources, one scrape:

- HTTP requests by route, method and status, and their latency, counted in
  this API process with prometheus-client. Under gunicorn, ``smtpcheck api``
  sets ``PROMETHEUS_MULTIPROC_DIR`` so every process writes its samples
  there and the scrape adds them up (prometheus-client's multiprocess mode).
- What lives in Redis and so is the same from every API process: checks
  submitted, queued, running, finished by outcome (written by the workers,
  see ``workers/stats.py``: the API never imports it, the key names are the
  contract), check durations, and live workers per vantage.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.multiprocess import MultiProcessCollector
from rq.registry import StartedJobRegistry

from smtpcheck.contract import DURATION_KEY, FINISHED_KEY

from .jobstore import JobStore

blueprint = Blueprint("metrics", __name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Label values are fixed sets: a method outside these, or a path no route
#: matches, folds into one value, so no caller can grow the scrape.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"
UNMATCHED_ROUTE = "unmatched"

HTTP_REQUESTS = Counter(
    "smtpcheck_http_requests_total",
    "HTTP requests answered, by route, method and status.",
    ["route", "method", "status"],
)
CHECKS_ACCEPTED = Counter(
    "smtpcheck_checks_accepted_total",
    "Checks accepted by this API (each vantage of a vantage 'all' check counts).",
)
HTTP_LATENCY = Histogram(
    "smtpcheck_http_request_duration_seconds",
    "Time to answer an HTTP request, by route (long polls included).",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 60),
)


def labels_of(rule: str | None, method: str, status: int) -> tuple[str, str, str]:
    """The (route, method, status) labels of one answered request, from fixed sets."""
    route = rule if rule is not None else UNMATCHED_ROUTE
    method = method if method in METHODS else OTHER_METHOD
    return route, method, str(status) if 100 <= status <= 599 else "other"


# The labelled children of the two metrics above, as ``.labels()`` returns them,
# kept so that an answer skips its checks and lock; the label values come from
# fixed sets (labels_of), so the caches stay small.
@functools.cache
def _requests(route: str, method: str, status: str) -> Any:
    return HTTP_REQUESTS.labels(route, method, status)


@functools.cache
def _latency(route: str) -> Any:
    return HTTP_LATENCY.labels(route)


def count(rule: str | None, method: str, status: int, seconds: float | None) -> None:
    """Count one answered request (errors included) and, when it was timed from its
    start, its latency: service/requestlog.py calls this for every answer."""
    route, method, status_label = labels_of(rule, method, status)
    _requests(route, method, status_label).inc()
    if seconds is not None:
        _latency(route).observe(seconds)


@blueprint.get("/metrics")
def metrics() -> Response:
    store: JobStore = current_app.extensions["smtpcheck"]
    shared = CollectorRegistry(auto_describe=True)
    shared.register(RedisCollector(store))
    body = generate_latest(process_registry()) + generate_latest(shared)
    return Response(body, content_type=CONTENT_TYPE)


def process_registry() -> Any:
    """This process's HTTP metrics, or all gunicorn processes' in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return registry
    from prometheus_client import REGISTRY

    return REGISTRY


class RedisCollector:
    """Reads the figures every API process shares from Redis at scrape time."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        store = self.store
        labels = ["vantage"]
        workers = GaugeMetricFamily("smtpcheck_workers", "Live workers per vantage.", labels=labels)
        queued = GaugeMetricFamily(
            "smtpcheck_queue_depth", "Checks waiting for a worker.", labels=labels
        )
        running = GaugeMetricFamily(
            "smtpcheck_checks_running", "Checks a worker is running.", labels=labels
        )
        submitted = CounterMetricFamily(
            "smtpcheck_checks_submitted", "Checks accepted by the API.", labels=labels
        )
        counts = store.submitted()
        for listing in store.vantages():
            name = listing["name"]
            workers.add_metric([name], listing["workers"])
            queued.add_metric([name], listing["queued"])
            started = StartedJobRegistry(queue=store.queue(name))
            running.add_metric([name], started.get_job_count(cleanup=False))
            submitted.add_metric([name], counts.get(name, 0))
        yield from (workers, queued, running, submitted)

        finished = CounterMetricFamily(
            "smtpcheck_checks_finished",
            "Checks run to a verdict, by vantage and outcome.",
            labels=["vantage", "outcome"],
        )
        for field, value in sorted(_hash(store, FINISHED_KEY).items()):
            vantage, _, outcome = field.rpartition("|")
            finished.add_metric([vantage, outcome], float(value))
        yield finished

        durations: dict[str, dict[str, float]] = {}
        for field, value in _hash(store, DURATION_KEY).items():
            vantage, _, part = field.rpartition("|")
            durations.setdefault(vantage, {})[part] = float(value)
        histogram = HistogramMetricFamily(
            "smtpcheck_check_duration_seconds",
            "Time a check took, from dialling to QUIT, by vantage.",
            labels=["vantage"],
        )
        for vantage, parts in sorted(durations.items()):
            bounds = sorted(float(k) for k in parts if k not in ("sum", "count"))
            buckets = [(f"{b:g}", parts[f"{b:g}"]) for b in bounds]
            buckets.append(("+Inf", parts.get("count", 0.0)))
            histogram.add_metric([vantage], buckets, sum_value=parts.get("sum", 0.0))
        yield histogram


def _hash(store: JobStore, key: str) -> dict[str, str]:
    raw: dict[bytes, bytes] = store.connection.hgetall(key)  # type: ignore[assignment]
    return {k.decode(): v.decode() for k, v in raw.items()}
