"""gunicorn's settings for ``smtpcheck api`` (``-c python:service.server``).

JSON log lines like the rest of smtpcheck, and prometheus-client's
multiprocess mode: each gunicorn process writes its HTTP metrics into
``PROMETHEUS_MULTIPROC_DIR`` (a fresh folder ``smtpcheck api`` makes), a
dead process's files are marked so, and the folder goes when gunicorn does.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from prometheus_client import multiprocess

from smtpcheck.config import Settings
from smtpcheck.logs import gunicorn_logconfig

METRICS_DIR_PREFIX = "smtpcheck-metrics-"

logconfig_dict = gunicorn_logconfig(Settings.from_env().log_level)


def child_exit(server: Any, worker: Any) -> None:
    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    # Only the folder smtpcheck api made for this run, never an operator's own.
    if folder and Path(folder).name.startswith(METRICS_DIR_PREFIX):
        shutil.rmtree(folder, ignore_errors=True)


def metrics_dir() -> str:
    """A fresh, empty folder for this run's multiprocess metrics."""
    return tempfile.mkdtemp(prefix=METRICS_DIR_PREFIX)
