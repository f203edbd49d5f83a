"""gunicorn's settings for ``smtpcheck api`` (``-c python:cli.gunicorn_config``).

- **Worker class gevent** (gunicorn's, with the leaner write of
  ``cli/gunicorn_worker.py``), chosen by measurement (``bench/connections.py``,
  README "Serving"): every connection is a greenlet, so slow or idle clients
  and held ``?wait`` requests cost memory, not one of a few threads, and
  ``/healthz`` never queues behind them. gthread blocks a thread on a
  request whose headers never finish.
- **Header and idle timeout** ``HEADER_TIMEOUT``: gunicorn's gevent worker
  reads every request's head (the first on a connection too) under a
  ``keepalive``-second timeout and closes the connection when it passes, so
  a partial request or an idle keep-alive connection ends within it.
- ``worker_connections`` bounds the connections one process serves at once
  (``smtpcheck api --connections``); what held responses may take of them is
  bounded again in ``service/held.py``.

JSON log lines like the rest of smtpcheck, and prometheus-client's
multiprocess mode: each gunicorn process writes its HTTP metrics into
``PROMETHEUS_MULTIPROC_DIR`` (a fresh folder ``smtpcheck api`` makes). The
folder stays bounded: a dead process's counters are folded into one
archive file per metric type (:func:`compact`), the folder goes when
gunicorn does, and folders a killed gunicorn left behind go at the next
start (:func:`sweep_stale`).

This module sits outside ``service`` and imports neither Redis nor Flask:
gunicorn's master loads it before the gevent worker patches the standard
library, and a module imported before that keeps the unpatched ``ssl``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from gunicorn.glogging import Logger as GunicornLogger

from smtpcheck.config import Settings
from smtpcheck.logs import gather_only_what_is_written, gunicorn_logconfig

METRICS_DIR_PREFIX = "smtpcheck-metrics-"
#: A folder of ours held by no gunicorn (the flock below) is removed at start,
#: once it is older than this (a just-started sibling has not locked it yet).
STALE_AFTER_SECONDS = 60
LOCK_NAME = ".gunicorn.lock"
#: The metric types whose samples add up across processes (no gauges here).
SUMMED_TYPES = ("counter", "histogram", "summary")
ARCHIVE_PID = "archive"

#: Seconds a client has to send a request's head, and an idle keep-alive
#: connection is kept.
HEADER_TIMEOUT = 5

worker_class = "cli.gunicorn_worker.Worker"
worker_connections = 1000
keepalive = HEADER_TIMEOUT
timeout = 30


def _log_level() -> str:
    """SMTPCHECK_LOG_LEVEL as Settings reads it, and only that: reading all of the
    settings would validate REDIS_URL, which imports redis into the master."""
    level = os.environ.get("SMTPCHECK_LOG_LEVEL")
    return Settings.from_env({"SMTPCHECK_LOG_LEVEL": level} if level else {}).log_level


logconfig_dict = gunicorn_logconfig(_log_level())
gather_only_what_is_written()  # every line here is JSONFormatter's


class Logger(GunicornLogger):
    """gunicorn's logger without its access log: service/requestlog.py writes one JSON
    line per request. With a ``logconfig_dict`` gunicorn would otherwise build every
    request's access-log fields (a dozen atoms and a date) only for its
    ``gunicorn.access`` logger to drop them (smtpcheck.logs sets it to WARNING)."""

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        return None


logger_class = Logger

_lock_file: Any = None


def on_starting(server: Any) -> None:
    """Hold this run's metrics folder (an flock), and clear folders dead runs left."""
    global _lock_file
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if not folder or not Path(folder).name.startswith(METRICS_DIR_PREFIX):
        return
    _lock_file = (Path(folder) / LOCK_NAME).open("a")
    fcntl.flock(_lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    sweep_stale(Path(folder))


def child_exit(server: Any, worker: Any) -> None:
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if folder:
        compact(Path(folder), worker.pid)


def on_exit(server: Any) -> None:
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    # Only the folder smtpcheck api made for this run, never an operator's own.
    if folder and Path(folder).name.startswith(METRICS_DIR_PREFIX):
        shutil.rmtree(folder, ignore_errors=True)


def metrics_dir() -> str:
    """A fresh, empty folder for this run's multiprocess metrics."""
    return tempfile.mkdtemp(prefix=METRICS_DIR_PREFIX)


def compact(folder: Path, pid: int) -> None:
    """Fold a dead process's metric files into one archive file per type.

    prometheus-client keeps a dead process's counter and histogram files so
    their counts stay in the sum; without this, every restarted gunicorn
    worker would leave two files behind for good. The archive is one more
    file of the same type, which the multiprocess collector adds up like
    any other.
    """
    from prometheus_client import multiprocess
    from prometheus_client.mmap_dict import MmapedDict

    multiprocess.mark_process_dead(pid, str(folder))  # its gauge files, if any
    for kind in SUMMED_TYPES:
        dead = folder / f"{kind}_{pid}.db"
        if not dead.exists():
            continue
        archive = MmapedDict(str(folder / f"{kind}_{ARCHIVE_PID}.db"))
        try:
            for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(str(dead)):
                old, _ = archive.read_value(key)
                archive.write_value(key, old + value, timestamp)
        finally:
            archive.close()
        dead.unlink()


def sweep_stale(own: Path) -> None:
    """Remove the metrics folders of gunicorns that are gone (killed, not stopped)."""
    for folder in own.parent.glob(METRICS_DIR_PREFIX + "*"):
        if folder == own or not folder.is_dir():
            continue
        with contextlib.suppress(OSError):
            if time.time() - folder.stat().st_mtime < STALE_AFTER_SECONDS:
                continue
            lock = folder / LOCK_NAME
            if lock.exists():
                with lock.open("a") as handle:
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # a live gunicorn holds it
            shutil.rmtree(folder, ignore_errors=True)
